"""RumourEval 2019 subtask A (support / deny / query / comment): train on train, early-stop on dev, score test.

Macro-F1 over the four classes, the official measure. The reply is given to the model with the thread's
source post as context. Data is read by path, never copied into this repository.

    python scripts/bench_rumoureval.py --data-dir ../shared/benchmarks/rumoureval --backbone minilm
"""
from __future__ import annotations

import argparse
import csv
import logging
from pathlib import Path

from sklearn.metrics import f1_score

from _bench_common import train_and_predict

LABELS = ["support", "deny", "query", "comment"]
PUBLISHED = [("branchLSTM baseline", 0.4929), ("BUT-FIT (2nd)", 0.6067), ("BLCU_NLP (winner)", 0.6187)]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", required=True, type=Path)
    ap.add_argument("--backbone", default="minilm")
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    rows = list(csv.DictReader(open(args.data_dir / "rumoureval2019_subtaskA.csv", encoding="utf-8")))

    def as_row(r):
        # Context is the thread's source and, for replies to replies, the post replied to: whether a reply
        # denies or supports the rumour often shows only against what it answers.
        text = r["text"].strip() or "(no text)"
        if r["is_source"] == "1":
            return {"text": text, "label": r["label"]}
        context = "source: " + r["source_text"].strip()[:200]
        if r["parent_text"].strip() and r["parent_text"] != r["source_text"]:
            context += " | reply to: " + r["parent_text"].strip()[:200]
        return {"text": f"{text} || {context}", "label": r["label"]}

    # The 90 Reddit stubs without text stay in the test set (the official 1,827) but teach nothing in training.
    split = lambda name, keep_empty=False: [as_row(r) for r in rows if r["split"] == name
                                           and (keep_empty or r["text_missing"] != "1")]
    test = split("test", keep_empty=True)
    overrides = ["training.epochs=4", "model.max_length=192", "model.fast_path=false", *args.overrides]
    preds, train_s, rate = train_and_predict(split("train"), split("dev"), [r["text"] for r in test], LABELS,
                                             args.backbone, overrides)
    gold = [r["label"] for r in test]
    per = f1_score(gold, preds, labels=LABELS, average=None)
    macro = float(per.mean())
    print(f"\nRumourEval 2019 A, test n={len(test)}, backbone {args.backbone}: "
          f"train {train_s:.0f}s, scoring {rate:.0f} posts/s")
    for name, score in PUBLISHED:
        print(f"{name:<24} macro-F1 {score:.4f}")
    print(f"{'stance (' + args.backbone + ')':<24} macro-F1 {macro:.4f}   "
          + ", ".join(f"F1 {l} {f:.3f}" for l, f in zip(LABELS, per)))
    print(f"query_F1: {per[2]:.3f}")
    print(f"macro_F1: {macro:.3f}")


if __name__ == "__main__":
    main()
