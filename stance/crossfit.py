"""Writer cross-fitting: what a config's model does on posts by writers it never trained on.

The dev split shares writers with training, so a temperature fitted on it is fitted to familiar writers,
and error rates measured on it are a familiar writer's. Here the labelled posts are cut into groups of
whole writers; each group is scored by a model trained, with the same config, on the other writers'
posts. That gives every labelled post an out-of-writer prediction (scikit-learn's
`CalibratedClassifierCV(ensemble=False)` and QuaPy's `ACC(val_split=k)` do the same with random folds;
grouping by writer is what makes it about new writers). `stance train` takes from the result:

- a temperature factor: how much softer than the dev-fitted temperature probabilities must be to be
  calibrated on writers the model never saw (the final model's temperature is its dev temperature times it),
  and the default confidence threshold, chosen on the out-of-writer predictions;
- optionally (`training.crossfit_target_weight`), soft training targets: label and out-of-writer
  probabilities mixed.
(As error rates for `stance report`'s acc a lone model's did worse than dev + test; a blend's, better: blend.py,
docs/prevalence.md.)

The result is a small JSON file (ids, gold labels, probabilities), kept beside the config that made it.
This module is that file; `crossfit_train` makes it.
"""
from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np

from .config import RunConfig
from .data import LabelledData
from .errors import StanceError
from .folder import file_sha256
from .metrics import (compute_metrics, coverage_curve, expected_calibration_error, fit_temperature, log_probs,
                      softmax)
from .outputs import read_json, write_json

log = logging.getLogger(__name__)
FORMAT = "stance-crossfit/1"
# Sections of the config that decide what a fold model is; the data paths, output folder, threads,
# device and the blend (fold models are never blended) do not (the data is checked by its own digest).
_RECIPE_SKIP = {"training": {"crossfit", "crossfit_target_weight", "companion", "companion_crossfit",
                             "companion_train", "threads", "device"}, "model": {"fast_path"}}


def recipe_digest(cfg: RunConfig) -> str:
    """A short digest of the model and training settings a cross-fit result is only valid for."""
    d = cfg.to_dict()
    recipe = {s: {k: v for k, v in d[s].items() if k not in _RECIPE_SKIP.get(s, ())} for s in ("model", "training")}
    recipe["labels"] = d["data"]["labels"]
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:16]


def soften(probs: np.ndarray, factor: float) -> np.ndarray:
    """Probabilities at `factor` times their temperature: softmax(log p / factor)."""
    return softmax(log_probs(probs), factor)


@dataclass
class Crossfit:
    """Out-of-writer predictions for every labelled post, and what they say about new writers."""

    labels: List[str]
    ids: List[str]
    groups: np.ndarray          # the writer (group) of each post
    gold: np.ndarray            # label ids
    probs: np.ndarray           # each fold model's probabilities, at that model's own dev temperature
    folds: List[Dict]           # per fold: held-out groups, posts, macro-F1, dev temperature, seconds
    recipe: str                 # recipe_digest of the config that made it
    info: Dict                  # data digests, CPU, version, date

    # Fitted once: training asks for the factor, the calibrated probabilities and the summary (which holds both).
    @cached_property
    def temperature_factor(self) -> float:
        """How much softer than dev-fitted the temperature must be for writers the model never saw."""
        return round(fit_temperature(log_probs(self.probs), self.gold), 4)

    def stale_for(self, cfg: RunConfig) -> Optional[str]:
        """Why this result may not fit a model trained with `cfg`, or None."""
        if self.recipe != recipe_digest(cfg):
            return "it was made with other model or training settings than this config"
        for name, digest in self.info.get("data_sha256", {}).items():
            path = getattr(cfg.data, name, None)
            if path and Path(path).is_file() and file_sha256(path) != digest:
                return f"the {name} file ({path}) changed since it was made"
        return None

    @cached_property
    def calibrated(self) -> np.ndarray:
        return soften(self.probs, self.temperature_factor)

    def targets(self, ids: Sequence, gold: np.ndarray, weight: float) -> np.ndarray:
        """Training targets: (1 - weight) x the label + weight x the calibrated out-of-writer probabilities,
        for posts by id; posts the result does not hold keep their label alone."""
        target = np.eye(len(self.labels))[gold]
        if not weight:
            return target
        row = {i: n for n, i in enumerate(self.ids)}
        probs = self.calibrated
        found = np.array([str(i) in row for i in ids])
        if found.any():
            held = probs[[row[str(i)] for i, f in zip(ids, found) if f]]
            target[found] = (1 - weight) * target[found] + weight * held
        return target

    def training_targets(self, train: LabelledData, gold: np.ndarray, weight: float) -> np.ndarray:
        """`targets` for a training file, found by its ids (posts missing from this result: labels alone)."""
        ids = train.columns.get("id")
        if ids is None:
            raise StanceError("training.crossfit_target_weight needs an id column in the training file, to find "
                              "each post's out-of-writer probabilities", path=train.path, column="id")
        missing = len(set(map(str, ids)) - set(self.ids))
        if missing:
            log.warning("%d of %d training posts have no out-of-writer probabilities; they are trained on "
                        "their labels alone", missing, len(ids))
        return self.targets(ids, gold, weight)

    def calibration(self, dev_temperature: float, cfg: RunConfig) -> Dict:
        """What training records: the temperature for new writers (dev-fitted x the factor) and the default
        confidence threshold, chosen on the out-of-writer predictions rather than dev."""
        stale = self.stale_for(cfg)
        if stale:
            log.warning("%s may not fit this model: %s; rerun `stance crossfit` with this config for a "
                        "temperature that does", cfg.training.crossfit, stale)
        curve = coverage_curve(self.calibrated, self.gold)
        return {"temperature": round(dev_temperature * self.temperature_factor, 4),
                "dev_temperature": dev_temperature,
                "min_confidence": curve["threshold"] or 0.0,
                "crossfit_coverage_at_min_confidence": curve["coverage_at_threshold"],
                "fitted_on": "dev x out-of-writer factor",
                "crossfit": {"file": cfg.training.crossfit, **self.summary()}}

    def summary(self) -> Dict:
        pred = [self.labels[i] for i in self.probs.argmax(1)]
        m = compute_metrics([self.labels[i] for i in self.gold], pred, self.labels)
        return {"folds": len(self.folds), "writers": len(set(self.groups.tolist())), "posts": len(self.gold),
                "macro_f1": round(m["macro_f1"], 4),
                "macro_f1_by_fold": [f["macro_f1"] for f in self.folds],
                "ece_at_dev_temperature": round(expected_calibration_error(self.probs, self.gold), 4),
                "temperature_factor": self.temperature_factor,
                "ece_after_factor": round(expected_calibration_error(self.calibrated, self.gold), 4)}

    def to_dict(self) -> Dict:
        return {"format": FORMAT, "labels": self.labels, "recipe": self.recipe, "info": self.info,
                "folds": self.folds, "summary": self.summary(), "ids": self.ids,
                "groups": self.groups.tolist(), "gold": self.gold.tolist(),
                "probs": np.round(self.probs, 5).tolist()}

    def save(self, path) -> None:
        write_json(path, self.to_dict(), indent=None)

    @classmethod
    def load(cls, path, labels: Sequence[str]) -> "Crossfit":
        raw = read_json(path)
        if raw is None:
            raise StanceError("cannot read the cross-fit file (absent or not JSON)", path=str(path),
                              hint="make it with `stance crossfit --config CONFIG -o FILE`")
        if raw.get("format") != FORMAT:
            raise StanceError(f"not a cross-fit file (format {raw.get('format')!r}, expected {FORMAT!r})",
                              path=str(path))
        if raw.get("labels") != list(labels):
            raise StanceError(f"the cross-fit file has labels {raw.get('labels')}, the config {list(labels)}",
                              path=str(path))
        try:
            probs = np.asarray(raw["probs"], dtype=float)
            gold = np.asarray(raw["gold"], dtype=int)
            n = len(raw["ids"])
            ok = probs.shape == (n, len(labels)) and gold.shape == (n,) and len(raw["groups"]) == n
        except (KeyError, TypeError, ValueError):
            ok = False
        if not ok or not np.isfinite(probs).all() or (gold < 0).any() or (gold >= len(labels)).any():
            raise StanceError("damaged cross-fit file: ids, groups, gold and probs do not line up", path=str(path))
        return cls(list(labels), [str(i) for i in raw["ids"]], np.asarray(raw["groups"], dtype=str), gold, probs,
                   raw.get("folds", []), raw.get("recipe", ""), raw.get("info", {}))
