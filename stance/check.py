"""`stance data check`: validate labelled files before training or evaluation."""
from __future__ import annotations

import re
import unicodedata
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from .data import row_problems
from .errors import StanceError, suggestion
from .io import TableReader
from .labels import LABELS

NEAR_DUPLICATE_JACCARD = 0.6
SHINGLE = 5


@dataclass
class Problem:
    path: str
    line: Optional[int]
    column: Optional[str]
    message: str

    def __str__(self) -> str:
        where = self.path + (f":{self.line}" if self.line is not None else "")
        col = f" [{self.column}]" if self.column else ""
        return f"{where}{col}: {self.message}"


@dataclass
class CheckReport:
    problems: List[Problem] = field(default_factory=list)
    counts: Dict[str, Counter] = field(default_factory=lambda: defaultdict(Counter))  # split -> label counts
    langs: Dict[str, Counter] = field(default_factory=lambda: defaultdict(Counter))
    unreadable: bool = False

    @property
    def exit_code(self) -> int:
        return 2 if self.unreadable else (1 if self.problems else 0)


def normalise_for_matching(text: str) -> str:
    """Case-, accent- and space-insensitive form used to find (near) duplicates."""
    text = unicodedata.normalize("NFKC", text).casefold()
    return re.sub(r"\s+", " ", text).strip()


def near_duplicate_pairs(texts: Sequence[str], threshold: float = NEAR_DUPLICATE_JACCARD,
                         block: int = 512) -> List[Tuple[int, int, float]]:
    """Pairs (i, j, jaccard) with i < j whose character 5-gram sets overlap >= threshold.

    Sparse shingle matrix times its transpose, in row blocks so memory stays
    bounded; exact for every pair, no hashing approximations.
    """
    from sklearn.feature_extraction.text import CountVectorizer

    norm = [normalise_for_matching(t) for t in texts]
    usable = [i for i, t in enumerate(norm) if len(t) >= SHINGLE]
    if len(usable) < 2:
        return []
    vec = CountVectorizer(analyzer="char", ngram_range=(SHINGLE, SHINGLE), binary=True, lowercase=False,
                          dtype=np.int32)
    X = vec.fit_transform([norm[i] for i in usable]).tocsr()
    sizes = np.asarray(X.sum(axis=1)).ravel()
    XT = X.T.tocsc()
    pairs = []
    for start in range(0, X.shape[0], block):
        inter = (X[start:start + block] @ XT).tocoo()
        rows = inter.row + start
        keep = inter.col > rows
        r, c, v = rows[keep], inter.col[keep], inter.data[keep]
        jac = v / (sizes[r] + sizes[c] - v)
        hit = jac >= threshold
        pairs.extend((usable[a], usable[b], float(j)) for a, b, j in zip(r[hit], c[hit], jac[hit]))
    return pairs


def check_files(paths: Sequence[str], text_column: str = "text", label_column: str = "label",
                labels: Sequence[str] = LABELS, id_column: str = "id",
                near_threshold: float = NEAR_DUPLICATE_JACCARD) -> CheckReport:
    report = CheckReport()
    # (path, line, text, id) of every readable post, across all files, for cross-file checks.
    posts: List[Tuple[str, int, str, Optional[str]]] = []
    for path in paths:
        _check_one(path, text_column, label_column, labels, id_column, report, posts)
    _check_duplicates(posts, report, near_threshold, text_column, id_column)
    return report


def _check_one(path, text_column, label_column, labels, id_column, report, posts) -> None:
    reader = TableReader(path, on_bad_lines="skip")
    try:
        reader.open()
        rows = list(reader.rows())
    except StanceError as exc:
        report.problems.append(Problem(path, exc.line, exc.column, exc.message))
        # Reading stopped (missing file, bad encoding, broken JSON array): the rest went unchecked.
        report.unreadable = True
        return
    for line, reason in reader.skipped:
        report.problems.append(Problem(path, line, None, reason))
    missing = [c for c in (text_column, label_column) if c not in reader.columns]
    for col in missing:
        near = suggestion(col, reader.columns)
        report.problems.append(Problem(path, 1, col, f"required column '{col}' is missing"
                                       + (f"; {near}" if near else "")
                                       + f" (columns: {', '.join(reader.columns)})"))
    if missing:
        return
    split = path
    for row in rows:
        text, raw = row.values.get(text_column), row.values.get(label_column)
        label = raw if isinstance(raw, str) and raw in labels else None
        for column, message in row_problems(text, raw, label, text_column, label_column, labels):
            report.problems.append(Problem(path, row.line, column, message))
        text = "" if text is None else str(text)
        raw = "" if raw is None else str(raw)
        report.counts[split][raw or "(missing)"] += 1
        report.langs[split][str(row.values.get("lang") or "(none)")] += 1
        if text.strip():
            ident = row.values.get(id_column)
            posts.append((path, row.line, text, None if ident in (None, "") else str(ident)))


def _check_duplicates(posts, report, near_threshold, text_column, id_column) -> None:
    first_id: Dict[str, Tuple[str, int]] = {}
    first_text: Dict[str, Tuple[str, int]] = {}
    exact = set()
    for idx, (path, line, text, ident) in enumerate(posts):
        if ident is not None:
            if ident in first_id:
                p, l = first_id[ident]
                report.problems.append(Problem(path, line, id_column, f"duplicate id '{ident}' (first at {p}:{l})"))
            else:
                first_id[ident] = (path, line)
        key = normalise_for_matching(text)
        if key in first_text:
            p, l = first_text[key]
            kind = "leaks across splits" if p != path else "duplicate text"
            report.problems.append(Problem(path, line, text_column, f"{kind}: same text as {p}:{l}"))
            exact.add(idx)
        else:
            first_text[key] = (path, line)
    texts = [t for _, _, t, _ in posts]
    for i, j, jac in near_duplicate_pairs(texts, near_threshold):
        if i in exact or j in exact:
            continue
        (pi, li, _, _), (pj, lj, _, _) = posts[i], posts[j]
        kind = "near duplicate leaks across splits" if pi != pj else "near duplicate"
        report.problems.append(Problem(pj, lj, text_column,
                                       f"{kind} of {pi}:{li} (character 5-gram Jaccard {jac:.2f})"))


def summary_table(report: CheckReport) -> str:
    """Counts by split (file) and label, then by language, as fixed-width text."""
    splits = list(report.counts)
    label_names = list(LABELS) + sorted({l for c in report.counts.values() for l in c} - set(LABELS))
    langs = sorted({l for c in report.langs.values() for l in c})
    width = max([len(s) for s in splits] + [5])

    def table(title: str, cols: List[str], source: Dict[str, Counter]) -> List[str]:
        head = f"{title:<{width}}  " + "  ".join(f"{c:>9}" for c in cols) + f"  {'total':>7}"
        lines = [head, "-" * len(head)]
        totals = Counter()
        for s in splits:
            cnt = source[s]
            totals.update(cnt)
            lines.append(f"{s:<{width}}  " + "  ".join(f"{cnt.get(c, 0):>9}" for c in cols)
                         + f"  {sum(cnt.values()):>7}")
        if len(splits) > 1:
            lines.append(f"{'all':<{width}}  " + "  ".join(f"{totals.get(c, 0):>9}" for c in cols)
                         + f"  {sum(totals.values()):>7}")
        return lines

    return "\n".join(table("split", label_names, report.counts) + [""] + table("split", langs, report.langs))
