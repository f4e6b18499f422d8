"""Does averaging a transformer's and the TF-IDF model's probabilities help on writers never seen?

The mixing weight is chosen on dev (log loss) only; test and the writer-disjoint external set are
measured, never used to choose. Prints macro-F1, ECE and how often confident labels are right.

    python scripts/bench_ensemble.py --model models/default --tfidf models/tfidf
"""
from __future__ import annotations

import argparse
import json
import platform
import time

import numpy as np

from stance import StanceClassifier
from stance.data import load_labelled
from stance.metrics import compute_metrics, expected_calibration_error, fit_temperature, softmax

SPLITS = {"dev": "data/dev.jsonl", "test": "data/test.jsonl", "external": "data/external/external.jsonl"}


def cpu_name() -> str:
    try:
        return next(l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def summary(probs: np.ndarray, gold: np.ndarray, labels) -> dict:
    pred = probs.argmax(1)
    m = compute_metrics([labels[i] for i in gold], [labels[i] for i in pred], labels, probs)
    sure = probs.max(1) >= 0.9
    return {"macro_f1": round(m["macro_f1"], 4), "ece": round(expected_calibration_error(probs, gold), 4),
            "share_conf_0.9": round(float(sure.mean()), 3),
            "right_at_0.9": round(float((pred == gold)[sure].mean()), 4) if sure.any() else None,
            "f1_support": round(m["per_class"]["support"]["f1"], 4), "f1_oppose": round(m["per_class"]["oppose"]["f1"], 4)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="models/default")
    ap.add_argument("--tfidf", default="models/tfidf")
    ap.add_argument("--runtime", default="torch", help="runtime of the transformer (torch = fp32)")
    args = ap.parse_args()
    t0 = time.time()
    big = StanceClassifier.load(args.model, runtime=args.runtime)
    small = StanceClassifier.load(args.tfidf)
    labels = big.labels
    assert small.labels == labels
    probs, gold = {}, {}
    for name, path in SPLITS.items():
        data = load_labelled(path)
        gold[name] = np.array([labels.index(l) for l in data.labels])
        probs[name] = (big.predict_proba(data.texts), small.predict_proba(data.texts))
    nll = lambda p, g: float(-np.log(np.clip(p[np.arange(len(g)), g], 1e-12, 1)).mean())
    grid = np.round(np.linspace(0, 1, 21), 2)
    dev_loss = [nll(w * probs["dev"][0] + (1 - w) * probs["dev"][1], gold["dev"]) for w in grid]
    w = float(grid[int(np.argmin(dev_loss))])
    print(f"CPU: {cpu_name()}; transformer {args.model} ({big.runtime}), TF-IDF {args.tfidf}")
    print(f"weight of the transformer chosen on dev log loss: {w}")
    # An average of two models is less sure than either: a temperature on its log-probabilities, fitted on dev.
    temp = fit_temperature(np.log(w * probs["dev"][0] + (1 - w) * probs["dev"][1]), gold["dev"])
    print(f"temperature of the mix, fitted on dev: {temp:.3f}")
    rows = {}
    for name in SPLITS:
        t, f = probs[name]
        mix = w * t + (1 - w) * f
        rows[name] = {"transformer": summary(t, gold[name], labels), "tfidf": summary(f, gold[name], labels),
                      f"mix w={w}": summary(mix, gold[name], labels),
                      "mix + T": summary(softmax(np.log(mix), temp), gold[name], labels)}
        for model, s in rows[name].items():
            print(f"{name:9s} {model:12s} " + "  ".join(f"{k} {v}" for k, v in s.items()))
    print(json.dumps({"weight": w, "results": rows, "seconds": round(time.time() - t0, 1)}))


if __name__ == "__main__":
    main()
