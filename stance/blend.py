"""A model blended with a TF-IDF companion: how the two are mixed, and how the mix is chosen.

A fine-tuned transformer and a TF-IDF model err on different posts: the transformer's confident errors are
support/oppose swaps on plain posts, where word and character n-grams are seldom fooled, and TF-IDF's are
posts whose stance is not in their words. Their product of experts (a weighted sum of log-probabilities,
then one temperature) is right more often than either and, above all, is seldom confidently wrong.

The weight and the temperature are chosen on out-of-writer predictions of both configs (`stance crossfit`,
the same writer folds): posts by writers neither model trained on, as the posts of a real export are. Dev
shares writers with training and would reward the transformer's familiarity with them.

    p = softmax((w * log p_model + (1 - w) * log soften(p_companion, companion_factor)) / temperature)

`p_model` and `p_companion` are each model's own calibrated probabilities; `companion_factor` is the
companion's cross-fit temperature factor (the model's own is already in its temperature).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Dict, List, Tuple

import numpy as np

from .crossfit import Crossfit, soften
from .errors import StanceError
from .folder import COMPANION_DIR  # noqa: F401  (where a blended model keeps its companion)
from .metrics import (compute_metrics, confident, coverage_curve, expected_calibration_error, fit_temperature,
                      log_probs, softmax)

WEIGHTS = np.round(np.linspace(0.0, 1.0, 21), 2)


@dataclass(frozen=True)
class Blend:
    weight: float              # of the model's log-probabilities; the companion's is 1 - weight
    temperature: float         # of the mix
    companion_factor: float    # the companion's cross-fit temperature factor

    def logits(self, model_probs: np.ndarray, companion_probs: np.ndarray) -> np.ndarray:
        """The mix before its temperature: w log p_model + (1 - w) log p_companion (softened)."""
        return (self.weight * log_probs(model_probs)
                + (1 - self.weight) * log_probs(soften(companion_probs, self.companion_factor)))

    def apply(self, model_probs: np.ndarray, companion_probs: np.ndarray) -> np.ndarray:
        """The blended probabilities of posts, from each model's calibrated probabilities."""
        return softmax(self.logits(model_probs, companion_probs), self.temperature).astype(np.float32)

    def to_dict(self) -> Dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw, where: str) -> "Blend":
        """Read `stance.json`'s `blend`, refusing numbers that would not make probabilities."""
        try:
            blend = cls(**{k: float(raw[k]) for k in ("weight", "temperature", "companion_factor")})
        except (KeyError, TypeError, ValueError) as exc:
            raise StanceError(f"damaged blend in stance.json: {exc!r}", path=where) from None
        if not (0 <= blend.weight <= 1 and blend.temperature > 0 and blend.companion_factor > 0
                and all(math.isfinite(v) for v in (blend.temperature, blend.companion_factor))):
            raise StanceError("damaged blend in stance.json: weight must be within 0-1, temperature and "
                              "companion_factor above 0", path=where)
        return blend


def _nll(probs: np.ndarray, gold: np.ndarray) -> float:
    return float(-log_probs(probs[np.arange(len(gold)), gold]).mean())


def _summary(probs: np.ndarray, gold: np.ndarray, labels) -> Dict:
    pred = probs.argmax(1)
    return {"macro_f1": round(compute_metrics([labels[i] for i in gold], [labels[i] for i in pred], labels)["macro_f1"], 4),
            "ece": round(expected_calibration_error(probs, gold), 4),
            **{k: None if v is None else round(v, 4) for k, v in confident(probs, gold).items()}}


@dataclass
class OutOfWriter:
    """The blend's probabilities on the labelled posts, each from models that never saw its writer."""
    ids: List[str]
    gold: np.ndarray
    probs: np.ndarray


def fit_blend(model: Crossfit, companion: Crossfit) -> Tuple[Blend, Dict, OutOfWriter]:
    """The weight (on a grid) and temperature of the mix with the least log loss, chosen on the posts both cross-fit
    results hold out by writer; a report: the out-of-writer figures of each model and of the mix, and the
    default confidence threshold chosen on the mix; and the mix's out-of-writer probabilities."""
    if model.labels != companion.labels:
        raise StanceError(f"the cross-fit files list different labels ({model.labels} and {companion.labels})")
    row = {i: n for n, i in enumerate(companion.ids)}
    shared = [n for n, i in enumerate(model.ids) if i in row]
    if len(shared) < 0.9 * len(model.ids):
        raise StanceError(f"the companion's cross-fit file holds only {len(shared)} of the model's "
                          f"{len(model.ids)} posts: were they made from the same labelled files?")
    other = [row[model.ids[n]] for n in shared]
    gold = model.gold[shared]
    if (companion.gold[other] != gold).any():
        raise StanceError("the two cross-fit files give some posts different gold labels")
    mine, theirs = model.calibrated[shared], companion.probs[other]
    factor = companion.temperature_factor
    candidates = []
    for w in WEIGHTS:             # each weight at its own best temperature: the mix is judged calibrated
        mix = Blend(float(w), 1.0, factor).logits(mine, theirs)
        blend = Blend(float(w), round(fit_temperature(mix, gold), 4), factor)
        candidates.append((_nll(softmax(mix, blend.temperature), gold), blend))
    blend = min(candidates, key=lambda c: c[0])[1]
    mixed = blend.apply(mine, theirs)
    curve = coverage_curve(mixed, gold)
    labels = model.labels
    report = {"fitted_on": "out-of-writer predictions of both configs", "posts": len(shared),
              "out_of_writer": {"model": _summary(mine, gold, labels),
                                "companion": _summary(soften(theirs, factor), gold, labels),
                                "blend": _summary(mixed, gold, labels)},
              "min_confidence": curve["threshold"] or 0.0,
              "crossfit_coverage_at_min_confidence": curve["coverage_at_threshold"]}
    return blend, report, OutOfWriter([model.ids[n] for n in shared], gold, mixed)
