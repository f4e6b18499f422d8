"""Does blending the transformer with TF-IDF help on writers never seen, and how should the mix be chosen?

1. On the two configs' cross-fit files (out-of-writer predictions, same writer folds): the blend chosen on
   all folds, and for each fold the blend chosen on the other folds, scored on the held-out one.
2. With a blended model folder: dev, test and the writer-disjoint external set for the blend as `stance`
   scores it, for each model alone, and for the older recipe (an average of probabilities, its weight and
   temperature fitted on dev). Nothing is chosen on test or external.

    python scripts/bench_ensemble.py --model models/default \\
        --crossfit models/default.crossfit.json --companion-crossfit models/tfidf.crossfit.json
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np

from stance import StanceClassifier
from stance.blend import fit_blend
from stance.crossfit import Crossfit, soften
from stance.data import load_labelled
from stance.hardware import cpu_name
from stance.metrics import compute_metrics, expected_calibration_error, fit_temperature, softmax

SPLITS = {"dev": "data/dev.jsonl", "test": "data/test.jsonl", "external": "data/external/external.jsonl"}


def summary(probs: np.ndarray, gold: np.ndarray, labels) -> dict:
    pred = probs.argmax(1)
    m = compute_metrics([labels[i] for i in gold], [labels[i] for i in pred], labels, probs)
    sure = probs.max(1) >= 0.9
    return {"macro_f1": round(m["macro_f1"], 4), "ece": round(expected_calibration_error(probs, gold), 4),
            "share_conf_0.9": round(float(sure.mean()), 3),
            "right_at_0.9": round(float((pred == gold)[sure].mean()), 4) if sure.any() else None,
            "f1_support": round(m["per_class"]["support"]["f1"], 4), "f1_oppose": round(m["per_class"]["oppose"]["f1"], 4)}


def subset(xf: Crossfit, keep: np.ndarray) -> Crossfit:
    return Crossfit(xf.labels, [i for i, k in zip(xf.ids, keep) if k], xf.groups[keep], xf.gold[keep],
                    xf.probs[keep], xf.folds, xf.recipe, xf.info)


def aligned(mine: Crossfit, theirs: Crossfit) -> Crossfit:
    """`theirs` in the post order of `mine`."""
    row = {i: n for n, i in enumerate(theirs.ids)}
    order = [row[i] for i in mine.ids]
    return Crossfit(theirs.labels, list(mine.ids), theirs.groups[order], theirs.gold[order], theirs.probs[order],
                    theirs.folds, theirs.recipe, theirs.info)


def by_fold(mine: Crossfit, theirs: Crossfit) -> list:
    """Each fold's posts scored by the blend (and temperature factor) chosen on the other folds' posts."""
    theirs = aligned(mine, theirs)
    rows = []
    for fold in mine.folds:
        held = np.isin(mine.groups, fold["held_out"])
        blend = fit_blend(subset(mine, ~held), subset(theirs, ~held))[0]
        alone = soften(mine.probs[held], subset(mine, ~held).temperature_factor)
        rows.append({"held_out": fold["held_out"], "weight": blend.weight, "temperature": blend.temperature,
                     "blend": summary(blend.apply(alone, theirs.probs[held]), mine.gold[held], mine.labels),
                     "model_alone": summary(alone, mine.gold[held], mine.labels)})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="models/default", help="a blended model folder")
    ap.add_argument("--crossfit", default="models/default.crossfit.json")
    ap.add_argument("--companion-crossfit", default="models/tfidf.crossfit.json")
    ap.add_argument("--runtime", default="auto", help="runtime of the transformer")
    args = ap.parse_args()
    t0 = time.time()
    clf = StanceClassifier.load(args.model, runtime=args.runtime)
    labels = clf.labels
    mine, theirs = Crossfit.load(args.crossfit, labels), Crossfit.load(args.companion_crossfit, labels)
    blend, report, _ = fit_blend(mine, theirs)
    print(f"CPU: {cpu_name()}; {args.model} ({clf.runtime})")
    print(f"blend chosen on all out-of-writer posts: weight {blend.weight}, temperature {blend.temperature}")
    for name, s in report["out_of_writer"].items():
        print(f"  out of writer, {name:10s} " + "  ".join(f"{k} {v}" for k, v in s.items()))
    folds = by_fold(mine, theirs)
    for f in folds:
        print(f"  fold {','.join(f['held_out'])}: chosen on the other folds w {f['weight']} T {f['temperature']}; "
              f"held-out macro-F1 blend {f['blend']['macro_f1']} vs model alone {f['model_alone']['macro_f1']}")
    if clf.blend is None:
        raise SystemExit(f"{args.model} is not a blended model: train it with training.companion")
    probs, gold = {}, {}
    for name, path in SPLITS.items():
        data = load_labelled(path)
        gold[name] = np.array([labels.index(l) for l in data.labels])
        alone = softmax(clf.logits(data.texts)[0], clf.meta.scoring_temperature)
        probs[name] = (alone, clf.companion.predict_proba(data.texts), clf.predict_proba(data.texts))
    nll = lambda p, g: float(-np.log(np.clip(p[np.arange(len(g)), g], 1e-12, 1)).mean())
    grid = np.round(np.linspace(0, 1, 21), 2)
    dev_mean = lambda w, name: w * probs[name][0] + (1 - w) * probs[name][1]
    w_dev = float(grid[int(np.argmin([nll(dev_mean(w, "dev"), gold["dev"]) for w in grid]))])
    t_dev = fit_temperature(np.log(dev_mean(w_dev, "dev")), gold["dev"])
    rows = {}
    for name in SPLITS:
        alone, companion, blended = probs[name]
        rows[name] = {"transformer": summary(alone, gold[name], labels), "tfidf": summary(companion, gold[name], labels),
                      "blend": summary(blended, gold[name], labels),
                      f"mean w={w_dev} (dev) + T": summary(softmax(np.log(dev_mean(w_dev, name)), t_dev), gold[name], labels)}
        for model, s in rows[name].items():
            print(f"{name:9s} {model:20s} " + "  ".join(f"{k} {v}" for k, v in s.items()))
    print(json.dumps({"blend": blend.to_dict(), "out_of_writer": report["out_of_writer"], "by_fold": folds,
                      "results": rows, "seconds": round(time.time() - t0, 1)}))


if __name__ == "__main__":
    main()
