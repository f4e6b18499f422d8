"""Build data/external/external.jsonl, the writer-disjoint test set, from its raw files.

Reads the four writers' batches (data/raw/external/writer_x*.jsonl), gives each post an id
(`e<writer>-<line>`), merges the blind second annotation and the adjudication, drops the posts recorded in dropped_duplicates.json (those that repeated,
exactly or at character 5-gram Jaccard >= 0.6, a corpus post or an earlier external post when the set was
written), and checks that no kept post repeats the corpus as it is now. Composes no text. See data/README.md, "The external set".

    python scripts/build_external.py
"""
from __future__ import annotations

import json
from pathlib import Path

from stance.check import near_duplicate_pairs, normalise_for_matching

DATA = Path(__file__).resolve().parents[1] / "data"
RAW = DATA / "raw" / "external"
FIELDS = ("id", "text", "label", "lang", "platform", "created_at", "hard", "hard_rule", "writer",
          "label_writer", "label_annotator")


def read_jsonl(path: Path):
    return [json.loads(line) for line in open(path, encoding="utf-8") if line.strip()]


def main() -> None:
    second = {r["id"]: r["label"] for r in read_jsonl(RAW / "annotation.jsonl")}
    adjudicated = {r["id"]: r["label"] for r in read_jsonl(RAW / "adjudication.jsonl")}
    posts = []
    for path in sorted(RAW.glob("writer_x*.jsonl")):
        writer = path.stem.split("_")[1]
        for n, rec in enumerate(read_jsonl(path), start=1):
            pid = f"e{writer[1:]}-{n:04d}"
            if second[pid] != rec["label"] and pid not in adjudicated:
                raise SystemExit(f"{pid} has two labels and no adjudication")
            posts.append({**rec, "id": pid, "writer": writer, "hard": bool(rec.get("hard")),
                          "hard_rule": rec.get("hard_rule") or "", "label_writer": rec["label"],
                          "label_annotator": second[pid], "label": adjudicated.get(pid, rec["label"])})
    # Which posts were dropped as repeats was decided once, when the set was written (against the first-round
    # corpus), and is recorded; rebuilding applies that record, then checks that nothing repeats now.
    dropped = set(json.loads((RAW / "dropped_duplicates.json").read_text()))
    kept = [p for p in posts if p["id"] not in dropped]
    corpus = [r["text"] for split in ("train", "dev", "test") for r in read_jsonl(DATA / f"{split}.jsonl")]
    texts = corpus + [p["text"] for p in kept]
    exact = {normalise_for_matching(t) for t in corpus}
    repeats = [p["id"] for p in kept if normalise_for_matching(p["text"]) in exact]
    repeats += [kept[j - len(corpus)]["id"] for _, j, _ in near_duplicate_pairs(texts) if j >= len(corpus)]
    if repeats:
        raise SystemExit(f"external posts repeat the corpus or each other: {sorted(set(repeats))[:10]}; drop the "
                         "corpus posts (scripts/build_corpus.py does for new batches), not these")
    out = DATA / "external" / "external.jsonl"
    out.parent.mkdir(exist_ok=True)
    with open(out, "w", encoding="utf-8") as fh:
        for p in kept:
            fh.write(json.dumps({k: p[k] for k in FIELDS}, ensure_ascii=False) + "\n")
    print(f"{out}: {len(kept)} posts ({len(dropped)} repeats dropped of {len(posts)}, as recorded)")


if __name__ == "__main__":
    main()
