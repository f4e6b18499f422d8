"""Leave-writers-out cross-validation: how a config does on posts by writers it never trained on.

The corpus's dev and test splits share writers with training (each writer batch is split 5/1/1), which
overstates quality on other people's posts. Here all labelled posts (train + dev + test) are grouped by
writer batch (the `b<N>` of their ids) into --folds folds; each fold is scored by a model trained on the
other writers, with early stopping and calibration on one more held-out writer group (so dev is
writer-disjoint too). The external set is not used.

    python scripts/bench_writer_cv.py --config models/tfidf.yaml                 # seconds per fold
    python scripts/bench_writer_cv.py --config models/default.yaml --folds 3     # ~15 min per fold on 2 cores
Ends with `writer_cv_macro_F1: 0.NNN` (mean over folds).
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from stance import StanceClassifier
from stance.config import load_config
from stance.hardware import detect
from stance.metrics import compute_metrics
from stance.train import train

ROOT = Path(__file__).resolve().parents[1]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=str(ROOT / "models/tfidf.yaml"))
    ap.add_argument("--folds", type=int, default=0, help="writer groups per fold (0: one fold per writer batch)")
    ap.add_argument("--set", action="append", default=[], help="extra config overrides")
    args = ap.parse_args()
    rows = [json.loads(line) for split in ("train", "dev", "test")
            for line in open(ROOT / "data" / f"{split}.jsonl", encoding="utf-8")]
    writers = sorted({r["id"].split("-")[0] for r in rows}, key=lambda w: int(w[1:]))
    k = args.folds or len(writers)
    folds = [writers[i::k] for i in range(k)]
    t0 = time.time()
    scores = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, held in enumerate(folds):
            dev_writers = folds[(i + 1) % k]            # early stopping and calibration on other unseen writers
            part = {name: [r for r in rows if r["id"].split("-")[0] in ws] for name, ws in
                    (("test", held), ("dev", dev_writers))}
            part["train"] = [r for r in rows if r["id"].split("-")[0] not in set(held) | set(dev_writers)]
            paths = {}
            for name, data in part.items():
                paths[name] = Path(tmp) / f"{name}_{i}.jsonl"
                paths[name].write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in data), "utf-8")
            out = Path(tmp) / f"model_{i}"
            cfg = load_config(args.config, [f"data.{n}={p}" for n, p in paths.items()]
                              + ["data.external=null", "model.fast_path=false", f"output_dir={out}", *args.set])
            train(cfg, progress=False)
            clf = StanceClassifier.load(out, runtime="torch")
            pred = clf.predict([r["text"] for r in part["test"]])
            m = compute_metrics([r["label"] for r in part["test"]], pred, clf.labels)
            scores.append(m["macro_f1"])
            print(f"fold {i + 1}/{k}: test writers {','.join(held)} ({len(part['test'])} posts), dev writers "
                  f"{','.join(dev_writers)}, train {len(part['train'])}: macro-F1 {m['macro_f1']:.3f}", flush=True)
    print(f"{args.config}: leave-writers-out macro-F1 {np.mean(scores):.3f} (min {np.min(scores):.3f}, max "
          f"{np.max(scores):.3f}) over {k} folds; {time.time() - t0:.0f} s on {detect().cpu}")
    print(f"writer_cv_macro_F1: {np.mean(scores):.3f}")


if __name__ == "__main__":
    main()
