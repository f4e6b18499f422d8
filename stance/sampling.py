"""`stance sample`: pick posts from a scored export for a person to label.

Strategies, each in one streaming pass with bounded memory:
- `random`: a uniform sample (random priorities, the n highest kept). The only one whose labels give
  unbiased accuracy figures and valid `stance report --estimator ppi` intervals.
- `uncertainty`: the posts with the smallest margin between the two most likely labels (active learning).
- `stratified`: the same number from each (predicted label, language) cell, at random within a cell.
- `diverse`: k-means over character n-gram vectors (hashed, so no vocabulary is kept) of a random pool of
  20 x n posts, then the post nearest each of n centres: many kinds of post, not many of one kind. This
  stands in for clustering sentence embeddings, which would mean running a second model over the export.

Empty texts and repeated texts (same text after case, accent and space folding) are never picked.
The output keeps every input column and adds `sample_strategy`, `sample_seed` and `sample_rank`.
"""
from __future__ import annotations

import heapq
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np

from .check import normalise_for_matching
from .errors import StanceError
from .io import TableReader, TableWriter, detect_format

STRATEGIES = ("random", "uncertainty", "stratified", "diverse")
DIVERSE_POOL = 20


@dataclass
class SampleResult:
    rows: List[Dict]
    eligible: int
    skipped_empty: int
    skipped_repeats: int


def sample_scored(path: str, n: int, strategy: str = "random", seed: int = 0, text_column: str = "text",
                  language_column: str = "lang") -> SampleResult:
    """Pick `n` rows of a scored file by `strategy` (see the module docstring)."""
    if strategy not in STRATEGIES:
        raise StanceError(f"unknown strategy '{strategy}'; use one of {', '.join(STRATEGIES)}")
    if n < 1:
        raise StanceError("-n must be at least 1")
    reader = TableReader(path).open()
    reader.require_column(text_column, "text")
    labels = [c[2:] for c in reader.columns if c.startswith("p_")]
    if strategy in ("uncertainty", "stratified") and (not labels or "stance" not in reader.columns):
        raise StanceError(f"'{strategy}' needs a file written by `stance score` (stance and p_* columns)", path=path)
    rng = np.random.default_rng(seed)
    seen, empty, repeats, eligible = set(), 0, 0, 0
    pool: Dict[object, list] = {}         # key -> heap of (priority, order, row)
    size = n * DIVERSE_POOL if strategy == "diverse" else n
    for row in reader.rows():
        text = row.values.get(text_column)
        if text is None or not str(text).strip():
            empty += 1
            continue
        key = hash(normalise_for_matching(str(text)))
        if key in seen:
            repeats += 1
            continue
        seen.add(key)
        eligible += 1
        if strategy == "uncertainty":
            p = sorted((_float(row.values.get(f"p_{l}")) for l in labels), reverse=True)
            priority, cell = -(p[0] - p[1]), None          # smallest margin = highest priority
        elif strategy == "stratified":
            priority = rng.random()
            cell = (str(row.values.get("stance") or ""), str(row.values.get(language_column) or ""))
        else:
            priority, cell = rng.random(), None
        heap = pool.setdefault(cell, [])
        item = (priority, eligible, row.values)
        if len(heap) < size:
            heapq.heappush(heap, item)
        elif priority > heap[0][0]:
            heapq.heapreplace(heap, item)
    if strategy == "stratified":
        picked = _allocate(pool, n)
    elif strategy == "diverse":
        picked = _diverse([v for _, _, v in pool.get(None, [])], n, text_column, seed)
    else:
        picked = [v for _, _, v in sorted(pool.get(None, []), reverse=True)]
    rows = [{**v, "sample_strategy": strategy, "sample_seed": seed, "sample_rank": i + 1}
            for i, v in enumerate(picked)]
    return SampleResult(rows, eligible, empty, repeats)


def _float(value) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return 0.0


def _allocate(pool: Dict, n: int) -> List[Dict]:
    """Round-robin over cells (largest priority first within each) until n rows: equal shares where possible."""
    queues = {cell: sorted(heap, reverse=True) for cell, heap in sorted(pool.items())}
    picked: List[Dict] = []
    while len(picked) < n and any(queues.values()):
        for cell in list(queues):
            if queues[cell] and len(picked) < n:
                picked.append(queues[cell].pop(0)[2])
    return picked


def _diverse(candidates: List[Dict], n: int, text_column: str, seed: int) -> List[Dict]:
    if len(candidates) <= n:
        return candidates
    from sklearn.cluster import MiniBatchKMeans
    from sklearn.feature_extraction.text import HashingVectorizer

    X = HashingVectorizer(analyzer="char_wb", ngram_range=(2, 4), n_features=2 ** 18, alternate_sign=False,
                          norm="l2").transform([str(c[text_column]) for c in candidates])
    km = MiniBatchKMeans(n_clusters=n, random_state=seed, n_init=3, batch_size=1024).fit(X)
    picked, used = [], set()
    distances = km.transform(X)                   # (candidates, centres)
    for centre in range(n):
        for i in np.argsort(distances[:, centre]):
            if i not in used:
                used.add(i)
                picked.append(candidates[i])
                break
    return picked


def write_sample(result: SampleResult, output: str, columns: List[str]) -> None:
    """Write the picked rows (CSV, TSV or JSONL) through a temporary name: never half a file."""
    fmt = detect_format(output)
    if fmt == "parquet":
        raise StanceError("write the sample as CSV, TSV or JSONL (a file to label by hand)", path=output)
    tmp = Path(output + ".partial")
    with open(tmp, "w", encoding="utf-8", newline="") as fh:
        TableWriter(fh, fmt, columns, write_header=True).write(result.rows)
    tmp.replace(output)


def output_columns(path: str) -> List[str]:
    return [*TableReader(path).open().columns, "sample_strategy", "sample_seed", "sample_rank"]


def is_random_sample(rows: List[Dict]) -> Optional[bool]:
    """Whether labelled rows say they came from `stance sample --strategy random` (None: they do not say)."""
    marks = {str(r.get("sample_strategy") or "") for r in rows}
    if marks == {""}:
        return None
    return marks == {"random"}
