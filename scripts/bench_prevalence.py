"""How close each share estimator of `stance report` gets to the true shares, and how often its 95% interval covers them.

Prior-shift simulation: from a pool of labelled posts the model has scored, draw exports of --size posts
(with replacement) whose true support share runs from 10% to 60% (the other labels keep their relative
shares), --resamples times; estimate the shares with each estimator and compare with the truth. Two pools:
- `test`: the test split, with the model's error rates measured on dev only (same writers as training);
- `external`: data/external (writers never seen in training), with the error rates `stance report` uses for a
  real export: the model folder's `labelled_outputs.json` (its dev + test predictions), or with --crossfit
  FILE the out-of-writer predictions of `stance crossfit`.
`ppi` gets --gold posts drawn at random from each simulated export; its interval is compared with the interval
from those gold posts alone (no model). Prints a table and writes docs/prevalence.png.

    python scripts/bench_prevalence.py --model models/default
Ends with lines `mae_<estimator>_<pool>: N.NN` (points) and `coverage_<estimator>_<pool>: N.N` (%).
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from stance import StanceClassifier
from stance.crossfit import Crossfit
from stance.data import load_labelled
from stance.hardware import detect
from stance.prevalence import GroupStats, LabelledOutputs, estimate

ROOT = Path(__file__).resolve().parents[1]
ESTIMATORS = ("cc", "pcc", "acc", "pacc", "emq", "ppi")


def scored(clf: StanceClassifier, path: Path):
    """Gold label ids, calibrated probabilities and writers (from the ids) of a labelled file."""
    data = load_labelled(str(path))
    index = {l: i for i, l in enumerate(clf.labels)}
    groups = LabelledOutputs.writer_groups(data.columns.get("id"))
    return np.array([index[l] for l in data.labels]), clf.predict_proba(data.texts), groups


def simulate(pool_gold, pool_probs, calibration: LabelledOutputs, args, rng, support: int):
    k = pool_probs.shape[1]
    by_class = [np.flatnonzero(pool_gold == c) for c in range(k)]
    base = np.bincount(pool_gold, minlength=k) / len(pool_gold)
    rows = []
    for r in range(args.resamples):
        s = 0.10 + 0.50 * r / max(args.resamples - 1, 1)
        rest = np.delete(base, support)
        target = np.insert(rest / rest.sum() * (1 - s), support, s)
        counts = rng.multinomial(args.size, target)
        idx = np.concatenate([rng.choice(by_class[c], n) for c, n in enumerate(counts) if n])
        gold, probs = pool_gold[idx], pool_probs[idx]
        truth = np.bincount(gold, minlength=k) / len(gold)
        stats = GroupStats(k, seed=r).add(probs)
        pick = rng.choice(len(idx), args.gold, replace=False)
        gold_sample = LabelledOutputs(gold[pick], probs[pick], "simulated gold", random_sample=True)
        for est in ESTIMATORS:
            e = estimate(stats, est, calibration, gold_sample, n_boot=args.boot, seed=r)
            rows.append((est, s, np.abs(e.shares - truth).mean(), np.all((e.low <= truth) & (truth <= e.high)),
                         np.mean((e.low <= truth) & (truth <= e.high)), np.mean(e.high - e.low)))
        onehot = np.eye(k)[gold[pick]]            # the gold sample alone: a normal interval on its own shares
        half = 1.96 * onehot.std(0) / np.sqrt(args.gold)
        rows.append(("gold alone", s, np.abs(onehot.mean(0) - truth).mean(),
                     np.all(np.abs(onehot.mean(0) - truth) <= half), np.mean(np.abs(onehot.mean(0) - truth) <= half),
                     np.mean(2 * half)))
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=str(ROOT / "models/default"))
    ap.add_argument("--resamples", type=int, default=200)
    ap.add_argument("--size", type=int, default=5000)
    ap.add_argument("--gold", type=int, default=200)
    ap.add_argument("--boot", type=int, default=100, help="bootstrap resamples per interval")
    ap.add_argument("--plot", default=str(ROOT / "docs/prevalence.png"))
    ap.add_argument("--post-bootstrap", action="store_true",
                    help="bootstrap the error rates over posts instead of whole writers")
    ap.add_argument("--crossfit-external", action="store_true",
                    help="also: the stored error rates plus half of the external writers, shares of the other half")
    ap.add_argument("--crossfit", help="error rates of the external pool from this `stance crossfit` file")
    args = ap.parse_args()
    t0 = time.time()
    clf = StanceClassifier.load(args.model)
    support = clf.labels.index("support")
    dev, test, ext = (scored(clf, ROOT / p) for p in ("data/dev.jsonl", "data/test.jsonl",
                                                       "data/external/external.jsonl"))
    stored = LabelledOutputs.from_model(args.model, clf.labels)       # what `stance report` adjusts with
    if args.crossfit:
        xf = Crossfit.load(args.crossfit, clf.labels)
        stored = LabelledOutputs(xf.gold, xf.calibrated, f"out-of-writer predictions ({args.crossfit})",
                                 groups=xf.groups)
    if args.post_bootstrap:             # resample posts, not writers, for the error rates (as before writers)
        dev, stored.groups = (dev[0], dev[1], None), None
    cal_external = [stored.gold, stored.probs, stored.groups]
    pools = {"test": (test[:2], LabelledOutputs(dev[0], dev[1], "dev", groups=dev[2])),
             "external": (ext[:2], stored)}
    print(f"external pool: error rates from {stored.source}")
    if args.crossfit_external:
        # Error rates measured on new writers too: two of the external set's four writers calibrate, the
        # other two are the export, and the other way round (no post both calibrates and is estimated).
        for name, cal_writers in (("ext x3+x4 | cal +x1+x2", ("e1", "e2")), ("ext x1+x2 | cal +x3+x4", ("e3", "e4"))):
            cal = np.isin(ext[2], cal_writers)
            pools[name] = ((ext[0][~cal], ext[1][~cal]),
                           LabelledOutputs(np.concatenate([cal_external[0], ext[0][cal]]),
                                           np.concatenate([cal_external[1], ext[1][cal]]),
                                           stored.source + " + 2 external writers",
                                           groups=np.concatenate([cal_external[2], ext[2][cal]])))
    rng = np.random.default_rng(0)
    results = {name: simulate(*pool, cal, args, rng, support) for name, (pool, cal) in pools.items()}
    print(f"model {args.model} ({clf.runtime}); {args.resamples} resamples of {args.size} posts per pool, support "
          f"10-60%; {args.gold} gold posts for ppi; CPU {detect().cpu}; {time.time() - t0:.0f} s")
    print(f"{'pool':<9} {'estimator':<11} {'MAE (pts)':>9} {'max err':>8} {'coverage':>9} {'per share':>9} {'width':>7}")
    summary = {}
    for pool, rows in results.items():
        for est in (*ESTIMATORS, "gold alone"):
            r = [x for x in rows if x[0] == est]
            err = np.array([x[2] for x in r]) * 100
            cover, cover_each, width = np.mean([x[3] for x in r]), np.mean([x[4] for x in r]), np.mean([x[5] for x in r])
            summary[(pool, est)] = (err.mean(), cover_each)
            print(f"{pool:<9} {est:<11} {err.mean():>9.2f} {err.max():>8.2f} {cover:>9.1%} {cover_each:>9.1%} "
                  f"{width * 100:>6.1f}")
    _plot(results, args.plot)
    for (pool, est), (mae, cover) in summary.items():
        if est != "gold alone":
            print(f"mae_{est}_{pool}: {mae:.2f}")
            print(f"coverage_{est}_{pool}: {100 * cover:.1f}")


def _plot(results, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, len(results), figsize=(11, 3.8), sharey=True)
    for ax, (pool, rows) in zip(np.atleast_1d(axes), results.items()):
        for est in ESTIMATORS:
            r = sorted((x[1], x[2]) for x in rows if x[0] == est)
            s, err = np.array(r).T
            bins = np.linspace(0.1, 0.6, 11)
            which = np.clip(np.digitize(s, bins) - 1, 0, 9)
            ax.plot((bins[:-1] + bins[1:]) / 2, [err[which == b].mean() * 100 for b in range(10)], "o-", ms=3, label=est)
        ax.set_title(f"{pool} pool")
        ax.set_xlabel("true support share")
    np.atleast_1d(axes)[0].set_ylabel("MAE of shares (points)")
    np.atleast_1d(axes)[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"plot: {path}")


if __name__ == "__main__":
    main()
