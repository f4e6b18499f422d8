"""What `stance adapt` buys on posts by new writers: before/after with 100, 200 and 400 labelled posts.

The external set (writers never seen in training) stands in for a user's own posts: N of them, drawn at
random, are the user's gold labels given to `stance adapt`; the model is measured before and after on the
other external posts, which neither run trained on. Paired bootstrap per N.

    python scripts/bench_adapt.py --model models/default --sizes 100 200 400
Ends with lines `adapt_<N>: <before> -> <after>` (macro-F1).
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from stance.adapt import AdaptOptions, adapt
from stance.evaluation import evaluate_models
from stance.hardware import detect

ROOT = Path(__file__).resolve().parents[1]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=str(ROOT / "models/default"))
    ap.add_argument("--sizes", type=int, nargs="+", default=[100, 200, 400])
    ap.add_argument("--replay", type=int, default=500)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--plot", default=str(ROOT / "docs/adapt.png"))
    args = ap.parse_args()
    rows = [json.loads(line) for line in open(ROOT / "data/external/external.jsonl", encoding="utf-8")]
    order = np.random.default_rng(args.seed).permutation(len(rows))
    lines, points = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.sizes:
            t0 = time.time()
            gold, rest = [rows[i] for i in order[:n]], [rows[i] for i in order[n:]]
            gold_path, rest_path = Path(tmp) / f"gold_{n}.jsonl", Path(tmp) / f"rest_{n}.jsonl"
            for path, part in ((gold_path, gold), (rest_path, rest)):
                path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in part), encoding="utf-8")
            out = Path(tmp) / f"adapted_{n}"
            info = adapt(args.model, str(gold_path), str(out),
                         AdaptOptions(holdout=0.1, replay=args.replay, epochs=args.epochs, seed=args.seed))
            result = evaluate_models([str(out), args.model], [str(rest_path)], n_boot=1000, runtime="torch")
            after, before = result["models"].values()
            c = result["comparison"][0]
            lines.append(f"adapt_{n}: {before['macro_f1']:.3f} -> {after['macro_f1']:.3f}")
            points.append((n, before["macro_f1"], after["macro_f1"], c["ci_low"], c["ci_high"]))
            print(f"N={n}: trained on {info['trained_on_gold']} gold + {info['replay_train']} replayed posts in "
                  f"{info['train_seconds']:.0f} s; on the other {len(rest)} external posts macro-F1 "
                  f"{before['macro_f1']:.3f} -> {after['macro_f1']:.3f} ({100 * c['difference']:+.1f} points, "
                  f"95% CI {100 * c['ci_low']:+.1f} to {100 * c['ci_high']:+.1f}, p = {c['p_value']:.3f}); "
                  f"{time.time() - t0:.0f} s on {detect().cpu}", flush=True)
    plot(points, args.plot)
    print("\n".join(lines))


def plot(points, path: str) -> None:
    """Before and after per number of gold posts; the bars are the paired bootstrap's 95% interval of the gain."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    n, before, after, low, high = (np.array(x, dtype=float) for x in zip(*points))
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    ax.plot(n, before, "o--", label="before (default model)")
    ax.errorbar(n, after, yerr=[after - (before + low), (before + high) - after], fmt="o-", capsize=4,
                label="after stance adapt (95% CI of the gain)")
    ax.set_xlabel("labelled posts by new writers given to adapt")
    ax.set_ylabel("macro-F1 on the other external posts")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"plot: {path}")


if __name__ == "__main__":
    main()
