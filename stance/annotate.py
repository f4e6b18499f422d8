"""`stance annotate`: label posts in the browser, one at a time, every label saved the moment it is given.

A small Starlette app served by uvicorn on 127.0.0.1. Labels go to SQLite (WAL journal) as one row per
post x annotator with a timestamp, written before the page moves on, so closing the tab or killing the
server loses nothing and reopening continues where it stopped. Two annotators on one file each keep their
own labels; `export_labels` merges them, keeps both, and measures agreement (Cohen's kappa).

Post text is untrusted: the page only ever puts it into the DOM as text (`textContent`), never as HTML.
"""
from __future__ import annotations

import json
import sqlite3
import time
from collections import Counter
from pathlib import Path
from typing import Dict, List, Optional

from .errors import StanceError
from .io import read_rows
from .labels import LABELS

SKIP = "(skipped)"
SCHEMA = """
CREATE TABLE IF NOT EXISTS posts (pos INTEGER PRIMARY KEY, id TEXT UNIQUE, text TEXT, suggestion TEXT, row TEXT);
CREATE TABLE IF NOT EXISTS labels (id TEXT, annotator TEXT, label TEXT, at REAL, PRIMARY KEY (id, annotator));
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT);
"""


class LabelStore:
    """The SQLite file: the posts to label (loaded once) and every annotator's labels."""

    def __init__(self, db: str):
        self.path = db
        self.conn = sqlite3.connect(db, check_same_thread=False, isolation_level=None)
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute("PRAGMA synchronous=FULL")     # a label acknowledged to the page is on disk
        self.conn.executescript(SCHEMA)

    def load_posts(self, path: str, text_column: str = "text", id_column: str = "id") -> int:
        """Add the file's posts (once; a second load of the same file adds nothing)."""
        columns, rows = read_rows(path)
        if text_column not in columns:
            raise StanceError(f"no text column '{text_column}'", path=path, column=text_column)
        source = self.conn.execute("SELECT value FROM meta WHERE key='source'").fetchone()
        if source and source[0] != str(Path(path).resolve()):
            raise StanceError(f"this label database belongs to {source[0]}", path=self.path,
                              hint="use another --db for another file")
        self.conn.execute("INSERT OR IGNORE INTO meta VALUES ('source', ?)", (str(Path(path).resolve()),))
        added = 0
        for row in rows:
            text = row.values.get(text_column)
            if text is None or not str(text).strip():
                continue
            pid = str(row.values.get(id_column) if id_column in columns else f"line-{row.line}")
            cur = self.conn.execute("INSERT OR IGNORE INTO posts (id, text, suggestion, row) VALUES (?, ?, ?, ?)",
                                    (pid, str(text), str(row.values.get("stance") or ""),
                                     json.dumps(row.values, ensure_ascii=False, default=str)))
            added += cur.rowcount
        return added

    def next_post(self, annotator: str) -> Optional[Dict]:
        row = self.conn.execute("SELECT pos, id, text, suggestion FROM posts WHERE id NOT IN "
                                "(SELECT id FROM labels WHERE annotator = ?) ORDER BY pos LIMIT 1",
                                (annotator,)).fetchone()
        return dict(zip(("pos", "id", "text", "suggestion"), row)) if row else None

    def progress(self, annotator: str) -> Dict:
        total = self.conn.execute("SELECT COUNT(*) FROM posts").fetchone()[0]
        done = self.conn.execute("SELECT COUNT(*) FROM labels WHERE annotator = ?", (annotator,)).fetchone()[0]
        return {"done": done, "total": total}

    def label(self, annotator: str, post_id: str, label: str) -> None:
        if label not in (*LABELS, SKIP):
            raise StanceError(f"unknown label '{label}'")
        if not self.conn.execute("SELECT 1 FROM posts WHERE id = ?", (post_id,)).fetchone():
            raise StanceError(f"unknown post id '{post_id}'")
        self.conn.execute("INSERT OR REPLACE INTO labels VALUES (?, ?, ?, ?)", (post_id, annotator, label, time.time()))

    def undo(self, annotator: str) -> Optional[str]:
        row = self.conn.execute("SELECT id FROM labels WHERE annotator = ? ORDER BY at DESC LIMIT 1",
                                (annotator,)).fetchone()
        if row:
            self.conn.execute("DELETE FROM labels WHERE id = ? AND annotator = ?", (row[0], annotator))
        return row[0] if row else None

    def labels(self) -> Dict[str, Dict[str, str]]:
        out: Dict[str, Dict[str, str]] = {}
        for pid, annotator, label in self.conn.execute("SELECT id, annotator, label FROM labels"):
            out.setdefault(pid, {})[annotator] = label
        return out


def cohen_kappa(a: List[str], b: List[str]) -> float:
    n = len(a)
    if n == 0:
        return float("nan")
    observed = sum(x == y for x, y in zip(a, b)) / n
    ca, cb = Counter(a), Counter(b)
    expected = sum(ca[k] * cb[k] for k in set(ca) | set(cb)) / (n * n)
    return 1.0 if expected == 1 else (observed - expected) / (1 - expected)


def export_labels(db: str, output: str) -> Dict:
    """gold JSONL: one row per labelled post with every annotator's label; `label` where they all agree."""
    store = LabelStore(db)
    posts = {pid: (text, json.loads(row)) for pid, text, row in store.conn.execute("SELECT id, text, row FROM posts")}
    labels = store.labels()
    annotators = sorted({a for v in labels.values() for a in v})
    rows, disagreements = [], []
    for pid, by in labels.items():
        given = {a: l for a, l in by.items() if l != SKIP}
        if not given:
            continue
        agreed = len(set(given.values())) == 1
        text, original = posts[pid]
        rec = {"id": pid, "text": text, "label": next(iter(given.values())) if agreed else "",
               **{f"label_{a}": given.get(a, "") for a in annotators},
               **{k: v for k, v in original.items() if k.startswith("sample_")}}
        rows.append(rec)
        if not agreed:
            disagreements.append(rec)
    pairs = [(by[annotators[0]], by[annotators[1]]) for by in labels.values()
             if len(annotators) >= 2 and all(by.get(a) not in (None, SKIP) for a in annotators[:2])]
    kappa = cohen_kappa([p[0] for p in pairs], [p[1] for p in pairs]) if pairs else None
    tmp = Path(output + ".partial")
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows if r["label"])
    tmp.replace(output)
    return {"annotators": annotators, "labelled": len(rows), "agreed": len(rows) - len(disagreements),
            "both": len(pairs), "kappa": kappa, "disagreements": disagreements}


def make_app(store: LabelStore, annotator: str, show_suggestion: bool = False):
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import HTMLResponse, JSONResponse
    from starlette.routing import Route

    guide = _guide()

    async def page(request: Request):
        return HTMLResponse(PAGE.replace("__CONFIG__", json.dumps({
            "annotator": annotator, "labels": list(LABELS), "suggest": show_suggestion, "guide": guide})
            .replace("<", "\\u003c")))

    async def current(request: Request):
        post = store.next_post(annotator)
        if post and not show_suggestion:
            post.pop("suggestion")           # anchoring: the model's label stays hidden unless asked for
        return JSONResponse({"post": post, **store.progress(annotator)})

    async def label(request: Request):
        body = await request.json()
        try:
            if body.get("undo"):
                store.undo(annotator)
            else:
                store.label(annotator, str(body["id"]), str(body["label"]))
        except (StanceError, KeyError) as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        return await current(request)

    return Starlette(routes=[Route("/", page), Route("/api/current", current),
                             Route("/api/label", label, methods=["POST"])])


def serve(path: str, db: Optional[str], annotator: str, port: int, host: str = "127.0.0.1",
          show_suggestion: bool = False, text_column: str = "text", id_column: str = "id") -> None:
    import uvicorn
    store = LabelStore(db or str(Path(path).with_suffix(".labels.sqlite")))
    added = store.load_posts(path, text_column, id_column)
    print(f"{added} new posts loaded into {store.path}; labelling as '{annotator}' at http://{host}:{port}/ "
          "(Ctrl-C to stop; every label is already saved)")
    uvicorn.run(make_app(store, annotator, show_suggestion), host=host, port=port, log_level="warning")


def _guide() -> List[List[str]]:
    return [["support", "approves of, defends or asks for the military action, or more of it; mocks its critics"],
            ["oppose", "disapproves: illegal, an invasion, a pretext, doomed, dangerous; defends sovereignty"],
            ["question", "asks about the action without taking a side (legality, cost, consequences)"],
            ["neutral", "no stance on the action: news without comment, off-topic, spam, cartels with no view on force"],
            ["rule", "A question that answers itself argues: label the side it argues."],
            ["rule", "Sarcasm: label what the author means. Judge the action, not Trump, Mexico or cartels."],
            ["rule", "Mixed posts take the side of their conclusion. Quotes with no comment are neutral."],
            ["rule", "Escalation (\"wipe them all out\") is support; non-military remedies set against force are oppose."],
            ["rule", "Boat strikes, warships off Venezuela, Tren de Aragua: on target. A bare reply answers the action."]]


PAGE = """<!doctype html><html lang="en"><head><meta charset="utf-8"><title>stance annotate</title>
<meta http-equiv="Content-Security-Policy" content="default-src 'self'; script-src 'unsafe-inline'; style-src 'unsafe-inline'">
<style>body{font-family:system-ui,sans-serif;max-width:820px;margin:2em auto;padding:0 1em;color:#222}
#text{font-size:1.5em;line-height:1.45;white-space:pre-wrap;border:1px solid #ddd;border-radius:8px;padding:1em;
min-height:4em}#bar{color:#666;margin:.6em 0}button{font-size:1em;margin:.3em;padding:.5em 1em}
#guide{display:none;background:#f7f7f7;padding:.6em 1em;border-radius:8px}kbd{border:1px solid #aaa;
border-radius:3px;padding:0 4px}#suggest{color:#555}</style></head><body>
<div id="bar"></div><div id="text"></div><p id="suggest"></p><div id="buttons"></div>
<p><kbd>1</kbd>-<kbd>4</kbd> label, <kbd>s</kbd> skip, <kbd>u</kbd> undo, <kbd>g</kbd> labelling guide</p>
<div id="guide"></div><script>
const C = __CONFIG__;
let post = null, busy = false;
const $ = id => document.getElementById(id);
function show(data) {
  post = data.post;
  $("bar").textContent = `${C.annotator}: ${data.done} of ${data.total} labelled`;
  $("text").textContent = post ? post.text : "All posts are labelled. Thank you.";
  $("suggest").textContent = post && C.suggest && post.suggestion ? "model suggests: " + post.suggestion : "";
  document.body.dataset.done = data.done;
  document.body.dataset.post = post ? post.id : "";
}
async function send(body) {
  if (busy) return; busy = true;
  try {
    const r = await fetch("api/label", {method: "POST", headers: {"Content-Type": "application/json"},
                                        body: JSON.stringify(body)});
    show(await r.json());
  } finally { busy = false; }
}
C.labels.forEach((l, i) => { const b = document.createElement("button"); b.textContent = `${i + 1} ${l}`;
  b.onclick = () => post && send({id: post.id, label: l}); $("buttons").appendChild(b); });
C.guide.forEach(([k, v]) => { const p = document.createElement("p"); const b = document.createElement("b");
  b.textContent = k + ": "; p.appendChild(b); p.appendChild(document.createTextNode(v)); $("guide").appendChild(p); });
document.addEventListener("keydown", e => {
  const i = "1234".indexOf(e.key);
  if (i >= 0 && post) send({id: post.id, label: C.labels[i]});
  else if (e.key === "s" && post) send({id: post.id, label: "(skipped)"});
  else if (e.key === "u") send({undo: true});
  else if (e.key === "g") $("guide").style.display = $("guide").style.display === "block" ? "none" : "block";
});
fetch("api/current").then(r => r.json()).then(show);
</script></body></html>"""
