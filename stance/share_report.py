"""`stance report`: stance shares of a scored export, corrected for the model's errors, with 95% intervals.

One streaming pass over the scored file fills running sums per group (overall, each value of lang,
platform, source and `--by` columns, each day); shares are then estimated per group by one estimator
(prevalence.py), so memory stays flat whatever the number of rows.
"""
from __future__ import annotations

import heapq
import json
import math
from collections import defaultdict
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np

from .errors import StanceError, suggestion
from .io import read_rows
from .labels import LABELS, map_label
from .metrics import pct
from .outputs import open_scored, read_provenance
from .prevalence import ESTIMATORS, NEEDS_LABELLED, GroupStats, LabelledOutputs, estimate
from .reporting import Doc, pyplot, save_figure
from .sampling import is_random_sample

DEFAULT_ESTIMATOR = "acc"   # lowest error over both measured pools (docs/prevalence.md)
GROUP_COLUMNS = ("lang", "platform", "source")


def _period(days: Sequence[str]) -> tuple:
    """Daily up to 60 days, weekly up to two years, monthly beyond: tables a person can read."""
    import pandas as pd
    first, last = pd.Timestamp(min(days)), pd.Timestamp(max(days))
    span = (last - first).days
    freq, name = ("D", "daily") if span <= 60 else ("W", "weekly") if span <= 731 else ("M", "monthly")
    # A week is named by its first day (not "2025-08-04/2025-08-10"); gaps stay in, as empty periods.
    label = lambda p: str(p.start_time.date()) if freq == "W" else str(p)
    every = [label(p) for p in pd.period_range(first, last, freq=freq)]
    key = {d: label(pd.Timestamp(d).to_period(freq)) for d in days}
    return name, every, key


class _Collector:
    """Everything one pass over the scored file keeps: running sums per group, gold posts, examples."""

    def __init__(self, labels: List[str], groups: List[str], gold: Dict[str, int], examples: int):
        k = len(labels)
        self.labels, self.groups, self.gold, self.examples = labels, groups, gold, examples
        self.all = GroupStats(k)
        self.by = {g: defaultdict(lambda: GroupStats(k)) for g in groups}
        self.days = defaultdict(lambda: GroupStats(k))
        self.rows = self.unlabelled = self.uncertain = self.unparsed_dates = 0
        self.gold_rows: List[tuple] = []          # (label id, probs, {group: value}, day)
        self.top = defaultdict(list)

    def add(self, chunk, text_col: Optional[str], date_col: Optional[str], id_col: Optional[str]) -> None:
        import pandas as pd
        values = [r.values for r in chunk]
        self.rows += len(values)
        keep = [i for i, v in enumerate(values) if str(v.get("stance") or "")]
        self.unlabelled += len(values) - len(keep)
        if not keep:
            return
        rows = [values[i] for i in keep]
        lines = [chunk[i].line for i in keep]
        probs = np.array([[_number(v.get(f"p_{l}")) for l in self.labels] for v in rows])
        self.all.add(probs)
        self.uncertain += sum(str(v.get("stance_note") or "") == "uncertain" for v in rows)
        keys = {g: np.array([str(v.get(g) or "(missing)") for v in rows]) for g in self.groups}
        for g, col in keys.items():
            for value in np.unique(col):
                self.by[g][value].add(probs[col == value])
        days = np.full(len(rows), None, dtype=object)
        if date_col:
            raw = [v.get(date_col) for v in rows]
            parsed = pd.to_datetime(pd.Series([str(x) if x not in (None, "") else None for x in raw], dtype=object),
                                    errors="coerce", utc=True, format="mixed")
            ok = parsed.notna().to_numpy()
            self.unparsed_dates += int((~ok).sum())
            days[ok] = parsed[ok].dt.strftime("%Y-%m-%d").to_numpy()
            for day in set(days[ok]):
                self.days[day].add(probs[days == day])
        if id_col and self.gold:
            for i, v in enumerate(rows):
                label = self.gold.get(str(v.get(id_col)))
                if label is not None:
                    self.gold_rows.append((label, probs[i], {g: keys[g][i] for g in self.groups}, days[i]))
        if text_col:
            for i, v in enumerate(rows):
                item = (float(probs[i].max()), lines[i], str(v.get(text_col))[:280])
                top = self.top[str(v.get("stance"))]
                (heapq.heappush if len(top) < self.examples else heapq.heappushpop)(top, item)


def _number(value) -> float:
    try:
        x = float(value)
    except (TypeError, ValueError):
        return 0.0
    return x if math.isfinite(x) else 0.0


def _load_gold(path: str, labels: List[str], id_column: str) -> tuple:
    """{id: label id} from a hand-labelled file, and whether it says it is a random sample (`stance sample`)."""
    columns, rows = read_rows(path)
    for col in (id_column, "label"):
        if col not in columns:
            raise StanceError(f"the gold file has no '{col}' column", path=path, column=col,
                              hint=suggestion(col, columns) or f"columns: {', '.join(columns)}")
    gold, bad = {}, []
    for row in rows:
        label = map_label(row.values.get("label"), labels)
        if label is None:
            bad.append(f"line {row.line}: label '{row.values.get('label')}'")
        else:
            gold[str(row.values.get(id_column))] = labels.index(label)
    if bad:
        raise StanceError(f"{len(bad)} gold row(s) with a label the model does not have: {'; '.join(bad[:5])}",
                          path=path, column="label", hint=f"labels are {', '.join(labels)}")
    return gold, bool(is_random_sample([r.values for r in rows]))


def summarise_scored(path: str, estimator: Optional[str] = None, model: Optional[str] = None,
                     gold: Optional[str] = None, by: Sequence[str] = (), date_column: Optional[str] = None,
                     id_column: str = "id", examples: int = 5, n_boot: int = 200) -> Dict:
    """Stream a scored file once and estimate the stance shares overall, per group and per period."""
    reader = open_scored(path)
    for col in ("stance", "confidence"):
        if col not in reader.columns:
            raise StanceError(f"no '{col}' column: is this the output of `stance score`?", path=path, column=col)
    labels = [c[2:] for c in reader.columns if c.startswith("p_")] or list(LABELS)
    for col in [*by, *([date_column] if date_column else [])]:
        if col not in reader.columns:
            raise StanceError(f"no column '{col}'", path=path, column=col,
                              hint=suggestion(col, reader.columns) or f"columns: {', '.join(reader.columns)}")
    date_col = date_column or next((c for c in ("created_at", "date", "timestamp", "time") if c in reader.columns), None)
    text_col = next((c for c in ("text", "body", "content", "message") if c in reader.columns), None)
    groups = list(dict.fromkeys([*(c for c in GROUP_COLUMNS if c in reader.columns), *by]))
    gold_ids, gold_random = _load_gold(gold, labels, id_column) if gold else ({}, False)
    if gold and id_column not in reader.columns:
        raise StanceError(f"--gold is joined by id, but the scored file has no '{id_column}' column", path=path,
                          hint="pass --id-column")
    scored_by = read_provenance(path)
    model = model or scored_by.get("model")      # the folder that scored the file, when it says
    estimator, labelled, notes = _choose(estimator, model, labels, gold_ids, gold)

    c = _Collector(labels, groups, gold_ids, examples)
    for chunk in reader.chunks(4096):
        c.add(chunk, text_col, date_col, id_column if gold else None)
    if c.rows == 0:
        raise StanceError("the scored file holds no rows", path=path)
    if gold:
        found = len(c.gold_rows)
        notes.append(f"{found:,} of {len(gold_ids):,} gold posts found in the scored file by '{id_column}'")
        if estimator == "ppi" and found < 2:
            raise StanceError("too few gold posts match the scored file's ids for 'ppi'", path=gold)
        if estimator != "ppi" and labelled is None:
            labelled = _gold_outputs(c.gold_rows, gold, lambda r: True, gold_random)
    if estimator in ("acc", "pacc", "emq") and labelled is None:
        raise StanceError(f"the '{estimator}' estimator needs labelled posts",
                          hint="pass --model with the folder that scored the file, or --gold")

    def shares(stats: GroupStats, select) -> Dict:
        gold_here = _gold_outputs(c.gold_rows, gold, select, gold_random) if estimator == "ppi" else None
        if estimator == "ppi" and (gold_here is None or len(gold_here.gold) < 2):
            return {"n": stats.n, "notes": ["fewer than 2 gold posts in this group: no estimate"], "shares": {}}
        return estimate(stats, estimator, labelled, gold_here, n_boot=n_boot).to_dict(labels)

    overall = shares(c.all, lambda r: True)
    counts = c.all.counts
    for label, value in overall["shares"].items():
        value["count"] = int(counts[labels.index(label)])       # posts whose most likely label this is
    summary = {
        "schema_version": 2, "file": path, "rows": c.rows, "labelled": c.all.n, "unlabelled": c.unlabelled,
        "uncertain": c.uncertain, "labels": labels, "estimator": estimator,
        "labelled_data": labelled.source if labelled is not None else None, "notes": notes + overall["notes"],
        "model": model, "scored_by": scored_by,
        "shares": overall["shares"],
        "by": {g: {v: shares(s, lambda r, g=g, v=v: r[2][g] == v) for v, s in sorted(vals.items())}
               for g, vals in c.by.items()},
        "examples": {s: [{"confidence": p, "line": l, "text": t} for p, l, t in sorted(items, reverse=True)]
                     for s, items in c.top.items()},
        "over_time": None,
    }
    if c.days:
        name, every, key = _period(list(c.days))
        periods = {p: GroupStats(len(labels)) for p in every}
        for day, stats in c.days.items():
            periods[key[day]].merge(stats)
        by_day = {p: [d for d in c.days if key[d] == p] for p in every}
        summary["over_time"] = {"date_column": date_col, "frequency": name, "unparsed_dates": c.unparsed_dates,
                                "periods": {p: shares(s, lambda r, days=set(by_day[p]): r[3] in days)
                                            for p, s in periods.items()}}
    elif date_col:
        summary["notes"].append(f"no date in column '{date_col}' could be read: no time section")
    if summary["over_time"] and c.unparsed_dates:
        summary["notes"].append(f"{c.unparsed_dates:,} rows have a date that could not be read; they are left "
                                "out of the time section only")
    return summary


def _choose(estimator: Optional[str], model: Optional[str], labels, gold_ids, gold_path):
    """The estimator and the labelled outputs it rests on; the default falls back to pcc when it must."""
    notes: List[str] = []
    if estimator is not None and estimator not in ESTIMATORS:
        raise StanceError(f"unknown estimator '{estimator}'", hint=suggestion(estimator, ESTIMATORS)
                          or f"use one of {', '.join(ESTIMATORS)}")
    if estimator == "ppi" and not gold_ids:
        raise StanceError("the 'ppi' estimator needs --gold: a random sample of this export labelled by hand")
    chosen = estimator or DEFAULT_ESTIMATOR
    labelled = None
    if chosen in NEEDS_LABELLED and chosen != "ppi" and not gold_ids:
        if model:
            try:
                labelled = LabelledOutputs.from_model(Path(model), labels)
            except StanceError as exc:
                if estimator is not None:
                    raise
                notes.append(f"{DEFAULT_ESTIMATOR} needs the model's outputs on labelled posts ({exc.message}): "
                             "shares are the mean probabilities (pcc), not corrected for the model's errors")
                chosen = "pcc"
        elif estimator is not None:
            raise StanceError(f"the '{estimator}' estimator needs --model (the folder that scored the file) or --gold")
        else:
            notes.append("no model folder known for this file (pass --model): shares are the mean probabilities "
                         "(pcc), not corrected for the model's errors")
            chosen = "pcc"
    return chosen, labelled, notes


def _gold_outputs(rows, path, select, random_sample: bool) -> Optional[LabelledOutputs]:
    picked = [r for r in rows if select(r)]
    if not picked:
        return None
    return LabelledOutputs(np.array([r[0] for r in picked]), np.array([r[1] for r in picked]),
                           f"the gold sample {path} ({len(picked):,} posts)", random_sample=random_sample)


def write_scored_report(path: str, folder: Path, **options) -> str:
    """summary.json, report.md and report.html (with plots) in `folder`; returns a short text summary."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    summary = summarise_scored(path, **options)
    (folder / "summary.json").write_text(json.dumps(summary, indent=2, ensure_ascii=False), encoding="utf-8")
    labels, est = summary["labels"], summary["estimator"]
    title = f"Stance in {Path(path).name}"
    doc = Doc(title, folder)
    doc.para(f"{summary['rows']:,} rows; {summary['labelled']:,} labelled, {summary['unlabelled']:,} without text, "
             f"{summary['uncertain']:,} marked uncertain (still counted).")
    doc.para(f"Shares are estimated with `{est}` ({_EXPLAIN[est]})"
             + (f", resting on {summary['labelled_data']}" if summary["labelled_data"] else "")
             + ". Every share carries a 95% interval.")
    for note in summary["notes"]:
        doc.para(f"Note: {note}.")
    doc.para(_scored_by(summary["scored_by"]))
    doc.heading("Stance shares")
    doc.table(["stance", "share", "95% interval", "posts labelled so"],
              [[l, pct(v["share"]), f"{pct(v['ci95'][0])}–{pct(v['ci95'][1])}", f"{v['count']:,}"]
               for l, v in summary["shares"].items()])
    doc.image(_bars(summary["shares"], est, folder / "shares.png"), "stance shares")
    ot = summary["over_time"]
    if ot:
        doc.heading(f"Over time ({ot['frequency']}{', weeks named by their Monday' if ot['frequency'] == 'weekly' else ''}"
                    f", by {ot['date_column']}, {est})")
        doc.image(_over_time(ot["periods"], labels, folder / "over_time.png"), "stance over time")
        doc.table(["period", "posts", *[f"{l} % [95%]" for l in labels]],
                  [[p, g["n"], *[_cell(g, l) for l in labels]] for p, g in ot["periods"].items()])
    for g, vals in summary["by"].items():
        doc.heading(f"By {g} ({est})")
        order = sorted(vals, key=lambda k: -vals[k]["n"])
        doc.table([g, "posts", *[f"{l} % [95%]" for l in labels]],
                  [[k, vals[k]["n"], *[_cell(vals[k], l) for l in labels]] for k in order])
        doc.image(_stacked(vals, order[:12], labels, folder / f"by_{g}.png"), f"stance by {g}")
    if summary["examples"]:
        doc.heading("Most confident examples per stance")
        doc.table(["stance", "confidence", "line", "text"],
                  [[s, f"{e['confidence']:.3f}", e["line"], e["text"]] for s, items in summary["examples"].items()
                   for e in items], text_cols=(3,))
    doc.write(title)
    return "\n".join([f"{summary['labelled']:,} labelled posts in {path}; shares by {est}:"]
                     + [f"  {l:<10} {pct(v['share']):>5}%  [{pct(v['ci95'][0])}, {pct(v['ci95'][1])}]"
                        for l, v in summary["shares"].items()] + [f"report: {folder / 'report.html'}"])


_EXPLAIN = {"cc": "predicted labels counted, as if they were right",
            "pcc": "the mean of the calibrated probabilities",
            "acc": "label counts adjusted for the model's confusion between labels",
            "pacc": "mean probabilities adjusted for the model's confusion between labels",
            "emq": "probabilities re-weighted to this export's shares by EM",
            "ppi": "a hand-labelled random sample corrects the model's mean probabilities (prediction-powered inference)"}


def _scored_by(meta: Dict) -> str:
    if not meta:
        return "How the file was scored is not recorded (no .meta.json beside it, no Parquet metadata)."
    return (f"Scored by stance {meta.get('stance_version')} on {meta.get('created')} with model "
            f"{meta.get('model')} (digest {str(meta.get('model_digest'))[:12]}), runtime {meta.get('runtime')}, "
            f"temperature {meta.get('temperature')}, threshold {meta.get('min_confidence')}"
            + (f", blended with its TF-IDF companion (weight {meta['blend'].get('weight')} on the transformer)."
               if meta.get("blend") else "."))


def _cell(group: Dict, label: str) -> str:
    v = group["shares"].get(label)
    if not v or v["share"] != v["share"]:
        return "n/a"
    return f"{pct(v['share'])} [{pct(v['ci95'][0])}–{pct(v['ci95'][1])}]"


def _bars(shares: Dict, est: str, path: Path) -> str:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 3.4))
    names = list(shares)
    vals = np.array([shares[s]["share"] for s in names])
    err = [vals - [shares[s]["ci95"][0] for s in names], [shares[s]["ci95"][1] for s in names] - vals]
    ax.bar(names, vals, yerr=err, capsize=4, color="#4c72b0")
    ax.set_ylabel("share of posts")
    ax.set_title(f"shares ({est}), 95% intervals", fontsize=10)
    return save_figure(fig, path)


def _over_time(periods: Dict, labels, path: Path) -> str:
    plt = pyplot()
    names = list(periods)
    fig, ax = plt.subplots(figsize=(8, 3.6))
    x = np.arange(len(names))      # numeric x: period labels are not parsed again; empty periods leave gaps
    for label in labels:
        mid = np.array([periods[p]["shares"].get(label, {}).get("share", np.nan) for p in names], dtype=float)
        lo = np.array([periods[p]["shares"].get(label, {}).get("ci95", [np.nan] * 2)[0] for p in names], dtype=float)
        hi = np.array([periods[p]["shares"].get(label, {}).get("ci95", [np.nan] * 2)[1] for p in names], dtype=float)
        line, = ax.plot(x, mid, marker="o", ms=3, label=label)
        ax.fill_between(x, lo, hi, alpha=0.15, color=line.get_color())
    ax.set_ylabel("share of posts")
    ax.legend(fontsize=8)
    step = max(1, math.ceil(len(names) / 12))
    ax.set_xticks(range(0, len(names), step), [names[i] for i in range(0, len(names), step)], rotation=30, fontsize=7)
    return save_figure(fig, path)


def _stacked(vals: Dict, keys: List[str], labels, path: Path) -> str:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.2))
    bottom = np.zeros(len(keys))
    for label in labels:
        share = np.array([vals[k]["shares"].get(label, {}).get("share", 0.0) for k in keys], dtype=float)
        share = np.nan_to_num(share)
        ax.bar(range(len(keys)), share, bottom=bottom, label=label)
        bottom += share
    ax.set_xticks(range(len(keys)), keys)
    ax.set_ylabel("share")
    ax.legend(fontsize=7, ncol=len(labels))
    return save_figure(fig, path)
