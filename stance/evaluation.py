"""`stance evaluate`: every number needed to judge one or more models on labelled posts."""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np

from .data import LabelledData, load_label_map, load_labelled
from .errors import StanceError
from .metrics import (bootstrap_ci, compute_metrics, confident, coverage_curve, expected_calibration_error,
                      paired_bootstrap, reliability_bins, slice_metrics)
from .folder import file_sha256, folder_digest
from .model import StanceClassifier
from .outputs import run_record

SCHEMA_VERSION = 1
TOP_ERRORS = 20


def _load_all(paths: Sequence[str], text_column: str, label_column: str, labels: Sequence[str],
              label_map: Optional[Dict[str, str]]) -> LabelledData:
    parts = [load_labelled(p, text_column, label_column, labels, label_map) for p in paths]
    merged = LabelledData(", ".join(paths), [], [], [], {})
    shared_cols = set.intersection(*(set(p.columns) for p in parts))
    merged.columns = {c: [] for c in sorted(shared_cols)}
    merged.columns["file"] = []
    for p in parts:
        merged.texts += p.texts
        merged.labels += p.labels
        merged.lines += p.lines
        for c in shared_cols:
            merged.columns[c] += p.columns[c]
        merged.columns["file"] += [p.path] * len(p)
    return merged


def evaluate_model(clf: StanceClassifier, data: LabelledData, n_boot: int = 1000) -> Dict:
    labels = clf.labels
    probs = clf.predict_proba(data.texts)
    pred_ids = probs.argmax(1)
    index = {label: i for i, label in enumerate(labels)}
    gold_ids = np.array([index[l] for l in data.labels])
    pred = np.array([labels[i] for i in pred_ids])
    gold = np.array(data.labels)
    m = compute_metrics(list(gold), list(pred), labels, probs)
    absent = [l for l in labels if l not in set(data.labels)]
    if absent:      # a label with no gold posts scores F1 = 0 and drags macro-F1 down: say so, and give both
        m["absent_labels"] = absent
        m["macro_f1_present_labels"] = float(np.mean([m["per_class"][l]["f1"] for l in labels if l not in absent]))
    m["runtime"] = clf.runtime
    m["ci"] = bootstrap_ci(gold_ids, pred_ids, len(labels), n_boot=n_boot)
    m["slices"] = {col: slice_metrics(gold, pred, vals, labels)
                   for col, vals in data.columns.items() if col in ("lang", "platform", "hard", "file")
                   and len(set(map(str, vals))) > 1}
    m["calibration"] = {
        "ece": expected_calibration_error(probs, gold_ids),
        "temperature": clf.meta.temperature,
        "reliability": reliability_bins(probs, gold_ids),
        "coverage": coverage_curve(probs, gold_ids, 0.90),
        "model_min_confidence": clf.meta.min_confidence,
    }
    conf = probs.max(1)
    m["confident"] = confident(probs, gold_ids)
    wrong = np.flatnonzero(pred_ids != gold_ids)
    worst = wrong[np.argsort(-conf[wrong], kind="stable")][:TOP_ERRORS]
    m["confident_errors"] = [{"text": data.texts[i], "gold": str(gold[i]), "predicted": str(pred[i]),
                              "confidence": round(float(conf[i]), 4), "file": data.columns["file"][i],
                              "line": data.lines[i]} for i in worst]
    m["_pred_ids"] = pred_ids          # kept for paired tests; stripped before writing
    m["_gold_ids"] = gold_ids
    m["_probs"] = probs
    return m


def evaluate_models(model_paths: Sequence[str], data_paths: Sequence[str], text_column: str = "text",
                    label_column: str = "label", label_map_path: Optional[str] = None, n_boot: int = 1000,
                    runtime: str = "auto") -> Dict:
    """Evaluate each model on the same posts; the first model's metrics are also at the top level."""
    if not model_paths:
        raise StanceError("give at least one --model")
    label_map = load_label_map(label_map_path)
    models = [StanceClassifier.load(p, runtime=runtime) for p in model_paths]
    labels = models[0].labels
    for clf in models[1:]:
        if clf.labels != labels:
            raise StanceError(f"models have different labels ({clf.labels} vs {labels})", path=str(clf.folder))
    data = _load_all(data_paths, text_column, label_column, labels, label_map)
    names = _model_names(model_paths)
    results = {name: evaluate_model(clf, data, n_boot) for name, clf in zip(names, models)}
    comparison = []
    first = names[0]
    for other in names[1:]:
        test = paired_bootstrap(results[first]["_gold_ids"], results[first]["_pred_ids"],
                                results[other]["_pred_ids"], len(labels))
        comparison.append({"model_a": first, "model_b": other, **test})
    top = results[first]
    report = {
        "schema_version": SCHEMA_VERSION,
        "data": list(data_paths),
        "model": first,
        "provenance": {**run_record(), "data": [{"path": p, "sha256": file_sha256(p)} for p in data_paths],
                       "models": {name: {"folder": str(Path(p).resolve()), "digest": folder_digest(Path(p)),
                                         "runtime": clf.runtime, "runtime_reason": clf.runtime_reason}
                                  for name, p, clf in zip(names, model_paths, models)}},
        **{k: top[k] for k in ("n", "labels", "macro_f1", "f_avg", "accuracy", "per_class", "confusion_matrix",
                               "ece", "ci")},
        "models": results,
        "comparison": comparison,
    }
    return report


def _model_names(paths: Sequence[str]) -> List[str]:
    names = []
    for p in paths:
        name = Path(p).name or str(p)
        if name in names:
            name = str(p)
        names.append(name)
    return names


def public_view(report: Dict) -> Dict:
    """The report without the private arrays, ready for JSON."""
    out = dict(report)
    out["models"] = {n: {k: v for k, v in m.items() if not k.startswith("_")} for n, m in report["models"].items()}
    return out
