"""Every evaluation number the project reports, computed in one place."""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence

import numpy as np

from .labels import SIDED_LABELS


def _f1_from_confusion(cm: np.ndarray) -> np.ndarray:
    tp = np.diagonal(cm, axis1=-2, axis2=-1).astype(float)
    pred = cm.sum(axis=-2)
    gold = cm.sum(axis=-1)
    denom = pred + gold
    return np.divide(2 * tp, denom, out=np.zeros_like(tp), where=denom > 0)


def compute_metrics(gold: Sequence[str], pred: Sequence[str], labels: Sequence[str],
                    probs: Optional[np.ndarray] = None) -> Dict:
    """Macro-F1, F_avg (mean F1 of the sided labels), accuracy, per-class scores, confusion matrix.

    With ``probs`` (rows aligned with ``labels``) also the expected calibration error.
    """
    # Imported here: scikit-learn takes ~1.5 s to import, and scoring needs only softmax from this module.
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

    labels = list(labels)
    p, r, f, s = precision_recall_fscore_support(gold, pred, labels=labels, zero_division=0)
    per_class = {lab: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]), "support": int(s[i])}
                 for i, lab in enumerate(labels)}
    sided = [per_class[lab]["f1"] for lab in SIDED_LABELS if lab in per_class]
    gold_a, pred_a = np.asarray(gold), np.asarray(pred)
    out = {
        "n": int(len(gold_a)),
        "labels": labels,
        "macro_f1": float(np.mean(f)),
        "f_avg": float(np.mean(sided)) if sided else None,
        "accuracy": float(np.mean(gold_a == pred_a)) if len(gold_a) else 0.0,
        "per_class": per_class,
        "confusion_matrix": confusion_matrix(gold, pred, labels=labels).tolist(),
    }
    if probs is not None:
        index = {label: i for i, label in enumerate(labels)}
        out["ece"] = expected_calibration_error(probs, np.array([index[g] for g in gold]))
    return out


def slice_metrics(gold: np.ndarray, pred: np.ndarray, values: Sequence[object], labels) -> Dict[str, Dict]:
    """Metrics per value of a column (language, platform, file...): one dict per value."""
    values = np.array(["(missing)" if v in (None, "") else str(v).lower() for v in values])
    out = {}
    for v in sorted(set(values)):
        keep = values == v
        # Macro-F1 over the labels that occur in this slice's gold: a slice with no `question`
        # posts should not be scored as if it failed on them.
        present = [l for l in labels if l in set(gold[keep])]
        m = compute_metrics(list(gold[keep]), list(pred[keep]), present)
        out[v] = {"n": m["n"], "macro_f1": m["macro_f1"], "f_avg": m["f_avg"], "accuracy": m["accuracy"],
                  "per_class_f1": {l: (m["per_class"][l]["f1"] if l in present else None) for l in labels}}
    return out


def pct(x: Optional[float]) -> str:
    """A share as a percentage with one decimal, for reports and cards ('n/a' for None)."""
    return "n/a" if x is None else f"{100 * x:.1f}"


# A faster numeric path (int8, bf16) replaces fp32 only if it keeps this close on labelled posts.
MIN_AGREEMENT = 0.99
MAX_F1_DROP = 0.005


def compare_with_fp32(fast_logits: np.ndarray, fp32_logits: np.ndarray, gold: Sequence[str],
                      labels: Sequence[str]) -> Dict:
    """Label agreement and macro-F1 change of a faster path against fp32, and whether it passes."""
    fast = [labels[i] for i in fast_logits.argmax(1)]
    ref = [labels[i] for i in fp32_logits.argmax(1)]
    agreement = float(np.mean(np.array(fast) == np.array(ref)))
    delta = compute_metrics(gold, fast, labels)["macro_f1"] - compute_metrics(gold, ref, labels)["macro_f1"]
    return {"n": len(gold), "label_agreement": round(agreement, 4), "macro_f1_delta": round(float(delta), 4),
            "enabled": bool(agreement >= MIN_AGREEMENT and delta >= -MAX_F1_DROP)}


def expected_calibration_error(probs: np.ndarray, gold_ids: np.ndarray, bins: int = 15) -> float:
    conf = probs.max(axis=1)
    correct = probs.argmax(axis=1) == gold_ids
    edges = np.linspace(0, 1, bins + 1)
    idx = np.clip(np.digitize(conf, edges[1:-1]), 0, bins - 1)
    ece = 0.0
    for b in range(bins):
        m = idx == b
        if m.any():
            ece += m.mean() * abs(correct[m].mean() - conf[m].mean())
    return float(ece)


def reliability_bins(probs: np.ndarray, gold_ids: np.ndarray, bins: int = 10) -> List[Dict]:
    conf = probs.max(axis=1)
    correct = probs.argmax(axis=1) == gold_ids
    edges = np.linspace(0, 1, bins + 1)
    idx = np.clip(np.digitize(conf, edges[1:-1]), 0, bins - 1)
    return [{"lower": float(edges[b]), "upper": float(edges[b + 1]), "n": int((idx == b).sum()),
             "confidence": float(conf[idx == b].mean()) if (idx == b).any() else None,
             "accuracy": float(correct[idx == b].mean()) if (idx == b).any() else None}
            for b in range(bins)]


def coverage_curve(probs: np.ndarray, gold_ids: np.ndarray, target_accuracy: float = 0.90) -> Dict:
    """Accuracy of the rows kept at each confidence threshold, and the lowest threshold reaching the target."""
    conf = probs.max(axis=1)
    correct = probs.argmax(axis=1) == gold_ids
    points = []
    for t in np.round(np.arange(0.25, 1.0, 0.025), 3):
        kept = conf >= t
        points.append({"threshold": float(t), "coverage": float(kept.mean()),
                       "accuracy": float(correct[kept].mean()) if kept.any() else None})
    reaching = [p for p in points if p["accuracy"] is not None and p["accuracy"] >= target_accuracy
                and p["coverage"] > 0]
    best = reaching[0] if reaching else None
    return {"target_accuracy": target_accuracy, "points": points,
            "threshold": best["threshold"] if best else None,
            "coverage_at_threshold": best["coverage"] if best else None}


def _confusions(gold_ids: np.ndarray, pred_ids: np.ndarray, k: int, samples: np.ndarray) -> np.ndarray:
    """Confusion matrices of many bootstrap resamples at once: (B, k, k)."""
    codes = gold_ids[samples] * k + pred_ids[samples]                 # (B, n)
    offsets = (np.arange(samples.shape[0]) * k * k)[:, None]
    counts = np.bincount((codes + offsets).ravel(), minlength=samples.shape[0] * k * k)
    return counts.reshape(samples.shape[0], k, k)


def bootstrap_ci(gold_ids: np.ndarray, pred_ids: np.ndarray, k: int, n_boot: int = 1000, seed: int = 0,
                 alpha: float = 0.05) -> Dict[str, List[float]]:
    """Percentile bootstrap intervals for macro-F1 and accuracy."""
    rng = np.random.default_rng(seed)
    n = len(gold_ids)
    samples = rng.integers(0, n, size=(n_boot, n))
    cms = _confusions(gold_ids, pred_ids, k, samples)
    macro = _f1_from_confusion(cms).mean(axis=1)
    acc = np.diagonal(cms, axis1=1, axis2=2).sum(axis=1) / n
    q = [100 * alpha / 2, 100 * (1 - alpha / 2)]
    return {"macro_f1": [float(x) for x in np.percentile(macro, q)],
            "accuracy": [float(x) for x in np.percentile(acc, q)]}


def paired_bootstrap(gold_ids: np.ndarray, pred_a: np.ndarray, pred_b: np.ndarray, k: int,
                     n_boot: int = 2000, seed: int = 0) -> Dict[str, float]:
    """Macro-F1 difference A - B with a 95% interval and a two-sided bootstrap p-value."""
    rng = np.random.default_rng(seed)
    n = len(gold_ids)
    samples = rng.integers(0, n, size=(n_boot, n))
    fa = _f1_from_confusion(_confusions(gold_ids, pred_a, k, samples)).mean(axis=1)
    fb = _f1_from_confusion(_confusions(gold_ids, pred_b, k, samples)).mean(axis=1)
    diff = fa - fb
    observed = float(_f1_from_confusion(_confusions(gold_ids, pred_a, k, np.arange(n)[None]))[0].mean()
                     - _f1_from_confusion(_confusions(gold_ids, pred_b, k, np.arange(n)[None]))[0].mean())
    p = 2 * min((diff <= 0).mean(), (diff >= 0).mean())
    return {"difference": observed, "ci_low": float(np.percentile(diff, 2.5)),
            "ci_high": float(np.percentile(diff, 97.5)), "p_value": float(min(1.0, p))}


def fit_temperature(logits: np.ndarray, gold_ids: np.ndarray) -> float:
    """The temperature T minimising dev NLL of softmax(logits / T) (Guo et al., 2017)."""
    from scipy.optimize import minimize_scalar
    from scipy.special import log_softmax

    def nll(log_t: float) -> float:
        lp = log_softmax(logits / np.exp(log_t), axis=1)
        return float(-lp[np.arange(len(gold_ids)), gold_ids].mean())

    res = minimize_scalar(nll, bounds=(np.log(0.05), np.log(20.0)), method="bounded")
    return float(np.exp(res.x))


def log_probs(probs: np.ndarray) -> np.ndarray:
    """log p, with zeros clipped to 1e-12: probabilities back into logits."""
    return np.log(np.clip(probs, 1e-12, 1.0))


def confident(probs: np.ndarray, gold_ids: np.ndarray, at: float = 0.9) -> Dict:
    """Share of posts at confidence >= `at`, and how often their label is right ("when it says 90%, is it
    right 90% of the time?")."""
    sure = probs.max(axis=1) >= at
    right = probs.argmax(axis=1) == gold_ids
    return {f"share_at_{at}": float(sure.mean()),
            f"accuracy_at_{at}": float(right[sure].mean()) if sure.any() else None}


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    z = logits / temperature
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)
