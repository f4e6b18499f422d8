"""SemEval-2016 Task 6, subtask A: train on the official train (+trial) data, score the official test set.

F_avg = (F1 FAVOR + F1 AGAINST) / 2, pooled over the five targets, as in the task and in PUBLISHED.md.
The data is read from its folder by path and never copied into this repository.

    python scripts/bench_semeval.py --data-dir ../shared/benchmarks/semeval2016-task6-original --backbone minilm
"""
from __future__ import annotations

import argparse
import csv
import logging
from pathlib import Path

from sklearn.metrics import f1_score

from _bench_common import stratified_holdout, train_and_predict

TO_CODEBOOK = {"FAVOR": "support", "AGAINST": "oppose", "NONE": "neutral"}
PUBLISHED = [("MITRE (2016 winner)", 67.82), ("SVM-ngrams baseline", 68.98), ("RoBERTa-base (TweetEval)", 68.0),
             ("BERTweet", 71.2), ("TimeLMs-2021 (best published)", 72.9)]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", required=True, type=Path)
    ap.add_argument("--backbone", default="minilm")
    ap.add_argument("--set", dest="overrides", action="append", default=[],
                    help="config override, e.g. --set training.epochs=4")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    rows = list(csv.DictReader(open(args.data_dir / "semeval2016_task6_all.utf8.csv", encoding="utf-8")))
    # One model for all targets: the target is given to the model as a prefix of the text.
    as_row = lambda r: {"text": f"{r['target']}: {r['text'].replace('#SemST', '').strip()}",
                        "label": TO_CODEBOOK[r["stance"]]}
    train_rows = [as_row(r) for r in rows if r["split"] in ("train", "trial")]
    test = [r for r in rows if r["split"] == "testA"]
    fit, dev = stratified_holdout(train_rows, 0.1)
    overrides = ["training.epochs=5", "model.max_length=96", "model.fast_path=false", *args.overrides]
    preds, train_s, rate = train_and_predict(fit, dev, [as_row(r)["text"] for r in test],
                                             ["support", "oppose", "neutral"], args.backbone, overrides)
    gold = [TO_CODEBOOK[r["stance"]] for r in test]
    f_favor, f_against = f1_score(gold, preds, labels=["support", "oppose"], average=None)
    f_avg = 100 * (f_favor + f_against) / 2
    print(f"\nSemEval-2016 Task 6 A, test n={len(test)}, backbone {args.backbone}: "
          f"train {train_s:.0f}s, scoring {rate:.0f} posts/s")
    print(f"{'system':<34} {'F_avg':>6}")
    for name, score in PUBLISHED:
        print(f"{name:<34} {score:>6.2f}")
    print(f"{'stance (' + args.backbone + ')':<34} {f_avg:>6.2f}   (F_favor {100 * f_favor:.2f}, F_against {100 * f_against:.2f})")
    print(f"F_avg: {f_avg:.2f}")


if __name__ == "__main__":
    main()
