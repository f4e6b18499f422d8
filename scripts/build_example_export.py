"""Turn the hand-written unlabelled posts into data/examples/export.csv, shaped like an X/Reddit export.

Texts, handles, dates and languages are written by hand (data/README.md); this
script only adds the metadata an export tool would carry (post ids, like and
repost counts, URLs), drops posts that (near-)duplicate the labelled corpus,
and writes the CSV.

    python scripts/build_example_export.py data/raw/export_posts.jsonl
"""
from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
from stance.check import near_duplicate_pairs, normalise_for_matching

COLUMNS = ["post_id", "created_at", "author_handle", "text", "lang", "like_count", "repost_count", "url"]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("posts")
    ap.add_argument("--out", default=str(ROOT / "data/examples/export.csv"))
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args()
    rng = np.random.default_rng(args.seed)
    posts = [json.loads(l) for l in open(args.posts, encoding="utf-8") if l.strip()]
    corpus = [json.loads(l)["text"] for split in ("train", "dev", "test")
              for l in open(ROOT / f"data/{split}.jsonl", encoding="utf-8")]
    texts = [p["text"] for p in posts]
    seen = {normalise_for_matching(t) for t in corpus}
    clash = {i for i, t in enumerate(texts) if normalise_for_matching(t) in seen}
    pairs = near_duplicate_pairs(corpus + texts)
    n = len(corpus)
    clash |= {j - n for i, j, _ in pairs if j >= n}        # near an earlier text (corpus or export)
    clash |= {i - n for i, j, _ in pairs if i >= n and j < n}
    keep = [p for i, p in enumerate(posts) if i not in clash]
    keep.sort(key=lambda p: p["created_at"])
    print(f"kept {len(keep)} of {len(posts)} posts ({len(clash)} duplicate the corpus or each other)", file=sys.stderr)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "w", encoding="utf-8", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(COLUMNS)
        for p in keep:
            pid = str(1950000000000000000 + int(rng.integers(0, 10**17)))
            likes = int(rng.lognormal(1.8, 1.6))
            handle = p["author_handle"].lstrip("@")
            if p.get("source") == "reddit":
                url = f"https://www.reddit.com/r/news/comments/{pid[-7:]}/comment/{pid[-9:-2]}/"
            else:
                url = f"https://x.com/{handle}/status/{pid}"
            w.writerow([pid, p["created_at"], "@" + handle, p["text"], p["lang"], likes,
                        int(likes * rng.beta(1, 6)), url])


if __name__ == "__main__":
    main()
