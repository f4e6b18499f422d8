"""Shared by the public-benchmark scripts: train a stance model on converted data and score a test set."""
from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Sequence

import numpy as np

from stance import StanceClassifier
from stance.config import load_config
from stance.train import train


def write_jsonl(path: Path, rows: Sequence[Dict]) -> str:
    with open(path, "w", encoding="utf-8") as fh:
        fh.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    return str(path)


def stratified_holdout(rows: List[Dict], share: float, seed: int = 0):
    """Split off `share` of each label as a dev set (for early stopping and calibration)."""
    rng = np.random.default_rng(seed)
    dev_idx = set()
    for label in sorted({r["label"] for r in rows}):
        idx = [i for i, r in enumerate(rows) if r["label"] == label]
        rng.shuffle(idx)
        dev_idx.update(idx[: max(1, int(round(len(idx) * share)))])
    return [r for i, r in enumerate(rows) if i not in dev_idx], [r for i, r in enumerate(rows) if i in dev_idx]


def train_and_predict(train_rows, dev_rows, test_texts, labels, backbone: str, overrides: Sequence[str] = (),
                      keep: str | None = None):
    """Train with the project's own pipeline; return test predictions and timing."""
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        out = keep or str(tmp / "model")
        cfg = load_config(None, [f"data.train={write_jsonl(tmp / 'train.jsonl', train_rows)}",
                                 f"data.dev={write_jsonl(tmp / 'dev.jsonl', dev_rows)}", "data.test=",
                                 f"data.labels={json.dumps(list(labels))}", f"model.backbone={backbone}",
                                 f"output_dir={out}", *overrides])
        t0 = time.time()
        train(cfg)
        train_s = time.time() - t0
        clf = StanceClassifier.load(out)
        t0 = time.time()
        preds = clf.predict(test_texts)
        rate = len(test_texts) / (time.time() - t0)
    return preds, train_s, rate


# A fresh wrapper per command, so RUSAGE_CHILDREN's peak belongs to that command alone.
_WRAP = ("import resource, subprocess, sys, time; t = time.time(); r = subprocess.run(sys.argv[1:]).returncode; "
         "print(time.time() - t, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, r)")


def run_child(args) -> tuple[float, int]:
    """Run a command; return (wall seconds, peak RSS of the command in MB)."""
    proc = subprocess.run([sys.executable, "-c", _WRAP, *args], cwd=Path(__file__).resolve().parents[1], capture_output=True, text=True)
    wall, rss_kb, rc = proc.stdout.split()[-3:]
    if int(rc) or proc.returncode:
        sys.exit(f"command failed: {' '.join(args)}\n{proc.stderr[-3000:]}")
    return float(wall), int(rss_kb) // 1024
