"""Loading labelled posts (for training and evaluation) with precise validation."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

from .errors import StanceError, suggestion
from .io import read_mapping, read_rows
from .labels import LABELS, map_label

# Optional columns carried along: for per-slice metrics, and ids (whose writer prefix groups posts).
SLICE_COLUMNS = ("lang", "platform", "hard", "id")


@dataclass
class LabelledData:
    """Posts with gold labels from one file, with the line each came from."""

    path: str
    texts: List[str]
    labels: List[str]
    lines: List[int]
    columns: Dict[str, List[object]] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.texts)


def load_label_map(path: Optional[str]) -> Optional[Dict[str, str]]:
    """A label map from JSON ({"FAVOR": "support"}) or YAML, or None."""
    if not path:
        return None
    mapping = read_mapping(path, "a label map (like {FAVOR: support})")
    return {str(k): str(v) for k, v in mapping.items()}


def row_problems(text: object, raw_label: object, label: Optional[str], text_column: str, label_column: str,
                 labels: Sequence[str], label_map: Optional[Mapping[str, str]] = None) -> List[Tuple[str, str]]:
    """What is wrong with one labelled row, as (column, message) pairs: the one wording used by
    `stance data check`, training and evaluation."""
    problems = []
    if text is not None and not isinstance(text, str):     # JSON/Parquet: a list or number is not a post
        kind = {list: "a list", dict: "an object", bool: "true/false"}.get(type(text), "a number")
        problems.append((text_column, f"text is {kind} ({str(text)[:40]}), not a string"))
    elif text is None or not text.strip():
        problems.append((text_column, "empty or whitespace-only text"))
    if label is None:
        if raw_label is None or str(raw_label).strip() == "":
            problems.append((label_column, "missing label"))
        else:
            near = suggestion(str(raw_label), labels)
            hint = near or (f"labels are {', '.join(labels)}"
                            + (" (pass --label-map to translate other label names)" if label_map is None else ""))
            problems.append((label_column, f"unknown label '{raw_label}'; {hint}"))
    return problems


def load_labelled(path: str, text_column: str = "text", label_column: str = "label",
                  labels: Sequence[str] = LABELS, label_map: Optional[Mapping[str, str]] = None,
                  encoding: str = "utf-8", keep_columns: Sequence[str] = ()) -> LabelledData:
    """Read a labelled file; raise one StanceError listing every bad row (first 10 shown).

    The slice columns (and `keep_columns`) that the file has are kept in `columns`."""
    columns, rows = read_rows(path, encoding=encoding)
    for name, role in ((text_column, "text"), (label_column, "label")):
        if name not in columns:
            near = suggestion(name, columns)
            raise StanceError(f"no {role} column '{name}'", path=path, column=name,
                              hint=(near + " " if near else "") + f"available columns: {', '.join(columns)}")
    if not rows:
        raise StanceError("the file holds no rows", path=path)
    problems: List[str] = []
    data = LabelledData(path, [], [], [], {c: [] for c in (*SLICE_COLUMNS, *keep_columns) if c in columns})
    for row in rows:
        text = row.values.get(text_column)
        raw_label = row.values.get(label_column)
        label = map_label(raw_label, labels, label_map)
        found = row_problems(text, raw_label, label, text_column, label_column, labels, label_map)
        if found:
            problems += [f"line {row.line}, column '{column}': {message}" for column, message in found]
            continue
        data.texts.append(str(text))
        data.labels.append(label)
        data.lines.append(row.line)
        for col in data.columns:
            data.columns[col].append(row.values.get(col))
    if problems:
        shown = "\n  ".join(problems[:10])
        more = f"\n  ... and {len(problems) - 10} more" if len(problems) > 10 else ""
        raise StanceError(f"{len(problems)} bad row(s):\n  {shown}{more}", path=path)
    return data
