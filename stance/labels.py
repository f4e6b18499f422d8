"""The label set of the codebook. A model's own label order is `ModelMeta.labels` (its head's order)."""
from __future__ import annotations

from typing import Mapping, Optional, Sequence

LABELS: tuple[str, ...] = ("support", "oppose", "question", "neutral")

# The two "sided" labels; F_avg (the SemEval measure) averages their F1.
SIDED_LABELS: tuple[str, ...] = ("support", "oppose")


def score_columns(labels: Sequence[str]) -> list[str]:
    """The columns scoring adds to every row, in order (local files and Ray parts alike)."""
    return ["stance", "confidence", *[f"p_{l}" for l in labels], "stance_note"]


def map_label(raw: object, labels: Sequence[str], label_map: Optional[Mapping[str, str]] = None) -> Optional[str]:
    """Map a raw gold label to one of ``labels``, or None when it is not one.

    ``label_map`` translates other vocabularies (FAVOR -> support) first; the
    comparison is exact after the map, so 'Support' is reported as a near miss
    rather than silently accepted.
    """
    if raw is None:
        return None
    value = str(raw).strip()
    if label_map:
        value = label_map.get(value, value)
    return value if value in labels else None
