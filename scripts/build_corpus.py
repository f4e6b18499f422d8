"""Check, de-duplicate and split the hand-written batches into data/{train,dev,test}.jsonl.

The posts themselves are written by hand (see data/README.md); this script never
composes text. It validates each batch line, drops exact and near duplicates
(character 5-gram Jaccard >= 0.6, keeping the first), assigns ids, and makes a
split stratified by label and language. With --annotations it merges the blind
second-annotation pass and the adjudication into the dev and test files.

    python scripts/build_corpus.py data/raw/batch_*.jsonl
    python scripts/build_corpus.py --merge-annotations data/raw/annotation_*.jsonl --adjudication data/raw/adjudication.jsonl
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from collections import Counter
from pathlib import Path

from stance.check import near_duplicate_pairs, normalise_for_matching
from stance.labels import LABELS

DATA = Path(__file__).resolve().parents[1] / "data"
FIELDS = ("id", "text", "label", "lang", "platform", "created_at", "hard", "hard_rule")


def load_batches(paths):
    posts = []
    for path in paths:
        for n, line in enumerate(open(path, encoding="utf-8"), start=1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as exc:
                print(f"{path}:{n}: skipped, invalid JSON ({exc.msg})", file=sys.stderr)
                continue
            if rec.get("label") not in LABELS or not str(rec.get("text", "")).strip() \
                    or rec.get("lang") not in ("en", "es", "mixed"):
                print(f"{path}:{n}: skipped, bad label/text/lang", file=sys.stderr)
                continue
            rec["hard"] = bool(rec.get("hard"))
            rec["hard_rule"] = rec.get("hard_rule") or ""
            rec["_batch"] = Path(path).stem
            rec["_line"] = n
            posts.append(rec)
    return posts


def assign_splits(posts, period=7, dev_slot=5, test_slot=2):
    """Systematic sampling within each (batch, label, lang) group, in file order.

    Stratified by label and language (and by writer batch); a post's split never
    changes when a batch grows, so second annotation can start on early posts.
    """
    seen = Counter()
    for p in posts:
        key = (p["_batch"], p["label"], p["lang"])
        slot = seen[key] % period
        seen[key] += 1
        p["_split"] = "test" if slot == test_slot else "dev" if slot == dev_slot else "train"


def dedupe(posts):
    """Drop exact and near duplicates; from a pair, the train member goes first (keeps dev/test intact).

    Posts that repeat a post of the writer-disjoint external set are dropped too: that set stays as written.
    """
    external = [json.loads(line)["text"] for line in open(DATA / "external" / "external.jsonl", encoding="utf-8")
                if line.strip()] if (DATA / "external" / "external.jsonl").exists() else []
    rank = {"test": 0, "dev": 1, "train": 2}
    order = sorted(range(len(posts)), key=lambda i: rank[posts[i]["_split"]])
    seen, keep = {normalise_for_matching(t) for t in external}, []
    for i in order:
        key = normalise_for_matching(posts[i]["text"])
        if key not in seen:
            seen.add(key)
            keep.append(posts[i])
    pairs = near_duplicate_pairs(external + [p["text"] for p in keep])
    drop = {j - len(external) for _, j, _ in pairs if j >= len(external)}
    print(f"dropped {len(posts) - len(keep)} exact and {len(drop)} near duplicates", file=sys.stderr)
    return [p for i, p in enumerate(keep) if i not in drop]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("batches", nargs="*")
    ap.add_argument("--merge-annotations", nargs="*", default=None)
    ap.add_argument("--adjudication", default=None)
    args = ap.parse_args()
    if args.merge_annotations is not None:
        return merge(args.merge_annotations, args.adjudication)
    # Batches in number order (batch_2 before batch_10), whatever order the shell's glob gave.
    posts = load_batches(sorted(args.batches, key=lambda p: [int(t) if t.isdigit() else t
                                                             for t in re.split(r"(\d+)", Path(p).stem)]))
    for p in posts:
        p["id"] = f"{p['_batch'].replace('batch_', 'b')}-{p['_line']:04d}"
    assign_splits(posts)
    posts = dedupe(posts)
    posts.sort(key=lambda p: p["id"])
    for name in ("train", "dev", "test"):
        rows = [{k: p[k] for k in FIELDS} for p in posts if p["_split"] == name]
        with open(DATA / f"{name}.jsonl", "w", encoding="utf-8") as fh:
            for r in rows:
                fh.write(json.dumps(r, ensure_ascii=False) + "\n")
        print(name, len(rows), dict(Counter(r["label"] for r in rows)), dict(Counter(r["lang"] for r in rows)))


def merge(annotation_files, adjudication_file):
    """Add label_writer / label_annotator to dev and test; `label` becomes the adjudicated label."""
    second = {}
    for path in annotation_files:
        for line in open(path, encoding="utf-8"):
            if line.strip():
                rec = json.loads(line)
                second[rec["id"]] = rec["label"]
    adjudicated = {}
    if adjudication_file:
        for line in open(adjudication_file, encoding="utf-8"):
            if line.strip():
                rec = json.loads(line)
                adjudicated[rec["id"]] = rec["label"]
    for name in ("dev", "test"):
        path = DATA / f"{name}.jsonl"
        rows = [json.loads(l) for l in open(path, encoding="utf-8")]
        for r in rows:
            writer = r.get("label_writer", r["label"])
            r["label_writer"] = writer
            r["label_annotator"] = second.get(r["id"], "")
            if r["label_annotator"] and r["label_annotator"] != writer:
                if r["id"] not in adjudicated:
                    raise SystemExit(f"{path}: {r['id']} has two labels and no adjudication")
                r["label"] = adjudicated[r["id"]]
            else:
                r["label"] = writer
        missing = [r["id"] for r in rows if not r["label_annotator"]]
        if missing:
            raise SystemExit(f"{path}: {len(missing)} posts have no second annotation, e.g. {missing[:3]}")
        with open(path, "w", encoding="utf-8") as fh:
            for r in rows:
                fh.write(json.dumps(r, ensure_ascii=False) + "\n")
        print(f"merged {name}: {len(rows)} posts")


if __name__ == "__main__":
    main()
