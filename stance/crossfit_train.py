"""`stance crossfit`: train one model per group of writers, each scoring the writers it did not see."""
from __future__ import annotations

import json
import logging
import re
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np

from .config import RunConfig
from .crossfit import Crossfit, recipe_digest
from .data import LabelledData, load_labelled
from .errors import StanceError
from .folder import file_sha256
from .metrics import compute_metrics
from .model import StanceClassifier
from .outputs import read_json, write_json
from .prevalence import LabelledOutputs
from .train import train

log = logging.getLogger(__name__)
SPLITS = ("train", "dev", "test")


def _natural(name: str):
    return [(0, int(part), "") if part.isdigit() else (1, 0, part) for part in re.split(r"(\d+)", name)]


def _groups_of(data: LabelledData, group_column: Optional[str]) -> np.ndarray:
    if group_column:
        values = data.columns.get(group_column)
        if values is None or any(v in (None, "") for v in values):
            raise StanceError(f"every post needs a value in the group column '{group_column}'", path=data.path,
                              column=group_column)
        return np.asarray([str(v) for v in values])
    groups = LabelledOutputs.writer_groups(data.columns.get("id"))
    if groups is None:
        raise StanceError("cannot tell the posts' writers apart: ids are not of the form <writer>-<n> for "
                          "at least 3 writers", path=data.path, column="id",
                          hint="name a column holding each post's writer or source with --group-column")
    return groups


def _write_fold_file(path: Path, data: LabelledData, keep: np.ndarray) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        for i in np.flatnonzero(keep):
            row = {"text": data.texts[i], "label": data.labels[i], **{c: v[i] for c, v in data.columns.items()}}
            fh.write(json.dumps(row, ensure_ascii=False, default=str) + "\n")


def run_crossfit(cfg: RunConfig, output: str, folds: int = 3, group_column: Optional[str] = None) -> Crossfit:
    """Train `folds` models of `cfg`, each without one group of writers, and score the posts held out.

    Finished folds are kept in `output`.partial and a rerun with the same config picks up from there.
    """
    d = cfg.data
    cols = d.text_column, d.label_column
    splits = {name: load_labelled(getattr(d, name), *cols, labels=d.labels,
                                  keep_columns=(group_column,) if group_column else ())
              for name in SPLITS if getattr(d, name)}
    groups = {name: _groups_of(data, group_column) for name, data in splits.items()}
    writers = sorted(set(np.concatenate(list(groups.values())).tolist()), key=_natural)   # b2 before b10
    if not 2 <= folds <= len(writers):
        raise StanceError(f"--folds must be between 2 and the number of writers ({len(writers)})")
    held_out = [writers[i::folds] for i in range(folds)]
    info = {"data_sha256": {n: file_sha256(getattr(d, n)) for n in splits}, "group_column": group_column or "id prefix"}
    recipe = recipe_digest(cfg)
    partial = Path(f"{output}.partial")
    partial.parent.mkdir(parents=True, exist_ok=True)     # before hours of training, not after
    state = read_json(partial) or {}
    if state.get("recipe") != recipe or state.get("info") != info or state.get("held_out") != held_out:
        state = {"recipe": recipe, "info": info, "held_out": held_out, "done": {}}
    for k, held in enumerate(held_out):
        if str(k) in state["done"]:
            log.info("fold %d/%d: already done (%s)", k + 1, folds, partial)
            continue
        state["done"][str(k)] = _run_fold(cfg, splits, groups, held, k, folds)
        write_json(partial, state, indent=None, fsync=True)
    from .hardware import detect
    from . import __version__
    info.update({"cpu": detect().cpu, "stance_version": __version__,
                 "date": time.strftime("%Y-%m-%d"), "held_out": held_out})
    done = [state["done"][str(k)] for k in range(folds)]
    result = Crossfit(list(d.labels), [i for f in done for i in f["ids"]],
                      np.asarray([g for f in done for g in f["groups"]]),
                      np.asarray([g for f in done for g in f["gold"]], dtype=int),
                      np.asarray([p for f in done for p in f["probs"]], dtype=float),
                      [f["fold"] for f in done], recipe, info)
    result.save(output)
    partial.unlink(missing_ok=True)
    return result


def _run_fold(cfg: RunConfig, splits: Dict[str, LabelledData], groups: Dict[str, np.ndarray], held: List[str],
              k: int, folds: int) -> Dict:
    t0 = time.time()
    log.info("fold %d/%d: training without writers %s", k + 1, folds, ", ".join(held))
    with tempfile.TemporaryDirectory(prefix="stance-crossfit-") as tmp:
        paths = {}
        for name in ("train", "dev"):
            if name in splits:
                paths[name] = Path(tmp) / f"{name}.jsonl"
                _write_fold_file(paths[name], splits[name], ~np.isin(groups[name], held))
        dev = str(paths["dev"]) if "dev" in paths else None
        fold_cfg = replace(cfg, data=replace(cfg.data, train=str(paths["train"]), dev=dev, test=None, external=None,
                                             text_column="text", label_column="label"),
                           model=replace(cfg.model, fast_path=False),
                           training=replace(cfg.training, crossfit=None, crossfit_target_weight=0.0, companion=None,
                                            companion_crossfit=None, companion_train=None),
                           output_dir=str(Path(tmp) / "model"))
        train(fold_cfg, progress=False)
        clf = StanceClassifier.load(fold_cfg.output_dir, runtime="torch")
        texts, ids, gold, grp = [], [], [], []
        for name, data in splits.items():
            for i in np.flatnonzero(np.isin(groups[name], held)):
                texts.append(data.texts[i])
                ids.append(str(data.columns["id"][i]) if "id" in data.columns else f"{name}:{data.lines[i]}")
                gold.append(cfg.data.labels.index(data.labels[i]))
                grp.append(str(groups[name][i]))
        probs = clf.predict_proba(texts)
        temperature = clf.meta.temperature
    pred = [cfg.data.labels[i] for i in probs.argmax(1)]
    m = compute_metrics([cfg.data.labels[g] for g in gold], pred, cfg.data.labels)
    fold = {"held_out": held, "posts": len(texts), "macro_f1": round(m["macro_f1"], 4),
            "dev_temperature": temperature, "seconds": round(time.time() - t0, 1)}
    log.info("fold %d/%d: %d held-out posts, macro-F1 %.3f (%.0f s)", k + 1, folds, len(texts), m["macro_f1"],
             fold["seconds"])
    return {"fold": fold, "ids": ids, "groups": grp, "gold": gold, "probs": np.round(probs, 6).tolist()}
