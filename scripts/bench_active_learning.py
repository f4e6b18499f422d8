"""Which posts to label first? Pool-based active learning with `stance sample`'s strategies on real tweets.

SemEval-2016 Task 6 A (all five targets, target given as a text prefix): the official train + trial tweets
are the unlabelled pool, the official test tweets the test set. Each run starts from 50 random labels and
adds 50 per round up to 500, picking them with `stance sample` (uncertainty, diverse or random, run on the
pool scored by the current model) and training the project's TF-IDF model on the labels so far; macro-F1 on
the test set after each round, 5 seeds. The data is read by path and never copied here.

    python scripts/bench_active_learning.py --data-dir ../shared/benchmarks/semeval2016-task6-original
Writes docs/active_learning.png; ends with `final_macro_F1_<strategy>: 0.NNN` (mean over seeds at 500 labels).
"""
from __future__ import annotations

import argparse
import csv
import tempfile
import time
from pathlib import Path

import numpy as np

from stance.hardware import detect
from stance.metrics import compute_metrics, softmax
from stance.sampling import sample_scored
from stance.tfidf import TfidfModel

ROOT = Path(__file__).resolve().parents[1]
LABELS = ["support", "oppose", "neutral"]
TO_CODEBOOK = {"FAVOR": "support", "AGAINST": "oppose", "NONE": "neutral"}
STRATEGIES = ("uncertainty", "diverse", "random")


def load(data_dir: Path):
    pool, test = [], []
    with open(data_dir / "semeval2016_task6_all.utf8.csv", encoding="utf-8", newline="") as fh:
        for r in csv.DictReader(fh):
            if r["split"] == "testB" or r["stance"] not in TO_CODEBOOK:
                continue
            item = (f"{r['target']}: {r['text'].replace('#SemST', '').strip()}", LABELS.index(TO_CODEBOOK[r["stance"]]))
            (test if r["split"] in ("test", "testA") else pool).append(item)
    return pool, test


def fit(texts, ids):
    return TfidfModel.fit(texts, ids, len(LABELS), C=4.0, max_features=50000, class_weight="balanced", seed=0)


def run(strategy: str, seed: int, pool, test, args, tmp: Path):
    rng = np.random.default_rng(seed)
    labelled = list(rng.choice(len(pool), args.start, replace=False))
    curve = []
    while True:
        model = fit([pool[i][0] for i in labelled], [pool[i][1] for i in labelled])
        pred = model.logits([t for t, _ in test]).argmax(1)
        curve.append(compute_metrics([LABELS[y] for _, y in test], [LABELS[p] for p in pred], LABELS)["macro_f1"])
        if len(labelled) >= args.budget:
            return curve
        rest = np.setdiff1d(np.arange(len(pool)), labelled)
        probs = softmax(model.logits([pool[i][0] for i in rest]))
        scored = tmp / f"pool_{strategy}_{seed}.csv"
        with open(scored, "w", encoding="utf-8", newline="") as fh:      # the pool as `stance score` writes it
            w = csv.writer(fh)
            w.writerow(["id", "text", "stance", *[f"p_{l}" for l in LABELS]])
            w.writerows([i, pool[i][0], LABELS[int(p.argmax())], *p] for i, p in zip(rest, probs))
        picked = sample_scored(str(scored), args.step, strategy, seed=seed * 1000 + len(labelled)).rows
        labelled += [int(r["id"]) for r in picked]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", type=Path, default=ROOT.parent / "shared/benchmarks/semeval2016-task6-original")
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--start", type=int, default=50)
    ap.add_argument("--step", type=int, default=50)
    ap.add_argument("--budget", type=int, default=500)
    ap.add_argument("--plot", default=str(ROOT / "docs/active_learning.png"))
    args = ap.parse_args()
    t0 = time.time()
    pool, test = load(args.data_dir)
    sizes = list(range(args.start, args.budget + 1, args.step))
    curves = {}
    with tempfile.TemporaryDirectory() as tmp:
        for strategy in STRATEGIES:
            curves[strategy] = np.array([run(strategy, s, pool, test, args, Path(tmp)) for s in range(args.seeds)])
    print(f"SemEval-2016 A: pool {len(pool)} tweets, test {len(test)}; TF-IDF model; {args.seeds} seeds; "
          f"{time.time() - t0:.0f} s on {detect().cpu}")
    print("labels   " + "  ".join(f"{s:>18}" for s in STRATEGIES))
    for k, n in enumerate(sizes):
        print(f"{n:>6}   " + "  ".join(f"{curves[s][:, k].mean():>10.3f} ± {curves[s][:, k].std():.3f}"
                                       for s in STRATEGIES))
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6, 3.8))
    for s in STRATEGIES:
        m, sd = curves[s].mean(0), curves[s].std(0)
        ax.plot(sizes, m, "o-", ms=3, label=s)
        ax.fill_between(sizes, m - sd, m + sd, alpha=0.15)
    ax.set_xlabel("labelled posts")
    ax.set_ylabel("test macro-F1 (SemEval-2016 A)")
    ax.set_title("active learning with stance sample's strategies")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(args.plot, dpi=110)
    print(f"plot: {args.plot}")
    for s in STRATEGIES:
        print(f"final_macro_F1_{s}: {curves[s][:, -1].mean():.3f}")


if __name__ == "__main__":
    main()
