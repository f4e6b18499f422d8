"""Reports a person can read (Markdown, self-contained HTML, PNG plots) and a program can parse (JSON).

This module holds the evaluation report of `stance evaluate` and the pieces every report is built
from (`Doc`, `pyplot`, `save_figure`); share_report.py builds `stance report` from them.
"""
from __future__ import annotations

import base64
import html
import json
from pathlib import Path
from typing import Dict, List

import numpy as np

from .evaluation import public_view
from .metrics import pct

_CSS = """body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;max-width:1100px;margin:2em auto;
padding:0 1em;color:#222}table{border-collapse:collapse;margin:1em 0}th,td{border:1px solid #ccc;padding:4px 8px;
text-align:right}th{background:#f3f3f3}td.t{text-align:left;max-width:600px}img{max-width:100%;margin:.5em 0;
border:1px solid #eee}h1{font-size:1.6em}h2{margin-top:1.6em;border-bottom:1px solid #ddd}"""


def pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def save_figure(fig, path: Path) -> str:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    pyplot().close(fig)
    return path.name



class Doc:
    """Builds the Markdown and HTML versions of one report side by side."""

    def __init__(self, title: str, folder: Path):
        self.md: List[str] = [f"# {title}", ""]
        self.html: List[str] = [f"<h1>{html.escape(title)}</h1>"]
        self.folder = folder

    def heading(self, text: str) -> None:
        self.md += [f"## {text}", ""]
        self.html.append(f"<h2>{html.escape(text)}</h2>")

    def para(self, text: str) -> None:
        self.md += [text, ""]
        self.html.append(f"<p>{html.escape(text)}</p>")

    def table(self, header: List[str], rows: List[List[object]], text_cols=()) -> None:
        clean = lambda v: str(v).replace("|", "\\|").replace("\n", " ")
        self.md += ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
        self.md += ["| " + " | ".join(clean(v) for v in r) + " |" for r in rows] + [""]
        body = "".join("<tr>" + "".join(f"<td class=\"{'t' if i in text_cols else ''}\">{html.escape(str(v))}</td>"
                                        for i, v in enumerate(r)) + "</tr>" for r in rows)
        self.html.append("<table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in header) + f"</tr>{body}</table>")

    def image(self, name: str, alt: str) -> None:
        self.md += [f"![{alt}]({name})", ""]
        data = base64.b64encode((self.folder / name).read_bytes()).decode()
        self.html.append(f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">')

    def write(self, title: str) -> None:
        (self.folder / "report.md").write_text("\n".join(self.md), encoding="utf-8")
        page = (f"<!doctype html><html><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
                f"<style>{_CSS}</style></head><body>{''.join(self.html)}</body></html>")
        (self.folder / "report.html").write_text(page, encoding="utf-8")


# ---------------------------------------------------------------------------
# evaluation reports

def _plot_confusion(cm, labels, path: Path, title: str) -> str:
    plt = pyplot()
    cm = np.asarray(cm)
    fig, ax = plt.subplots(figsize=(4.8, 4.2))
    ax.imshow(cm, cmap="Blues")
    ax.set_xticks(range(len(labels)), labels, rotation=30)
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("gold")
    for i in range(len(labels)):
        for j in range(len(labels)):
            ax.text(j, i, cm[i, j], ha="center", va="center", color="white" if cm[i, j] > cm.max() / 2 else "black")
    ax.set_title(title)
    return save_figure(fig, path)


def _plot_per_class(models: Dict[str, Dict], labels, path: Path) -> str:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.6))
    width = 0.8 / len(models)
    for k, (name, m) in enumerate(models.items()):
        ax.bar(np.arange(len(labels)) + k * width, [m["per_class"][l]["f1"] for l in labels], width, label=name)
    ax.set_xticks(np.arange(len(labels)) + 0.4 - width / 2, labels)
    ax.set_ylim(0, 1)
    ax.set_ylabel("F1")
    ax.legend(fontsize=8)
    ax.set_title("per-class F1")
    return save_figure(fig, path)


def _line_plot(series: Dict[str, List], path: Path, size, xlabel: str, ylabel: str, title: str,
               reference=None, style: str = "o-", **line) -> str:
    """One line per model; `reference` draws a diagonal ("diagonal") or a horizontal line at a value."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=size)
    if reference == "diagonal":
        ax.plot([0, 1], [0, 1], "k--", lw=1, label="perfect calibration")
    elif reference is not None:
        ax.axhline(reference, color="grey", lw=1, ls=":")
    for name, pts in series.items():
        ax.plot(*zip(*pts), style, label=name, **line)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=8)
    ax.set_title(title)
    return save_figure(fig, path)


def _plot_reliability(models: Dict[str, Dict], path: Path) -> str:
    series = {f"{name} (ECE {m['calibration']['ece']:.3f})":
              [(b["confidence"], b["accuracy"]) for b in m["calibration"]["reliability"] if b["n"]]
              for name, m in models.items()}
    return _line_plot(series, path, (4.6, 4.2), "confidence", "accuracy", "reliability diagram", "diagonal")


def _plot_coverage(models: Dict[str, Dict], path: Path) -> str:
    series = {name: [(p["coverage"], p["accuracy"]) for p in m["calibration"]["coverage"]["points"]
                     if p["accuracy"] is not None] for name, m in models.items()}
    return _line_plot(series, path, (5.4, 3.8), "coverage (share of posts kept)", "accuracy of kept posts",
                      "coverage-accuracy as the confidence threshold rises", 0.9, ms=3)


def write_evaluation_report(report: Dict, folder: Path) -> None:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    labels, models = report["labels"], report["models"]
    (folder / "metrics.json").write_text(json.dumps(public_view(report), indent=2, ensure_ascii=False),
                                         encoding="utf-8")
    title = "Model evaluation"
    doc = Doc(title, folder)
    doc.para(f"Data: {', '.join(report['data'])} ({report['n']} posts). Labels: {', '.join(labels)}.")
    doc.heading("Summary")
    doc.table(["model", "macro-F1", "95% CI", "F_avg", "accuracy", "ECE", "confidence ≥ 0.9: share / right"],
              [[n, pct(m["macro_f1"]), f"{pct(m['ci']['macro_f1'][0])}–{pct(m['ci']['macro_f1'][1])}",
                pct(m["f_avg"]), pct(m["accuracy"]), f"{m['ece']:.3f}",
                f"{pct(m['confident']['share_at_0.9'])}% / {pct(m['confident']['accuracy_at_0.9'])}%"]
               for n, m in models.items()])
    for n, m in models.items():
        if m.get("absent_labels"):
            doc.para(f"Warning ({n}): no gold posts are labelled {', '.join(m['absent_labels'])}; macro-F1 counts "
                     f"them as F1 = 0. Over the labels present it is {pct(m['macro_f1_present_labels'])}.")
    for c in report["comparison"]:
        doc.para(f"Paired bootstrap, {c['model_a']} minus {c['model_b']}: macro-F1 difference "
                 f"{100 * c['difference']:+.1f} points (95% CI {100 * c['ci_low']:+.1f} to {100 * c['ci_high']:+.1f}), "
                 f"p = {c['p_value']:.3f}.")
    doc.image(_plot_per_class(models, labels, folder / "per_class_f1.png"), "per-class F1")
    for i, (name, m) in enumerate(models.items()):
        doc.heading(f"{name}: per class")
        doc.table(["label", "precision", "recall", "F1", "support"],
                  [[l, pct(pc["precision"]), pct(pc["recall"]), pct(pc["f1"]), pc["support"]]
                   for l, pc in m["per_class"].items()])
        doc.image(_plot_confusion(m["confusion_matrix"], labels, folder / f"confusion_matrix_{i}.png", name),
                  f"confusion matrix, {name}")
        for col, slices in m["slices"].items():
            doc.heading(f"{name}: by {col}")
            doc.table([col, "n", "macro-F1", "F_avg", "accuracy", *[f"F1 {l}" for l in labels]],
                      [[v, s["n"], pct(s["macro_f1"]), pct(s["f_avg"]), pct(s["accuracy"]),
                        *[pct(s["per_class_f1"][l]) for l in labels]] for v, s in slices.items()])
        cov = m["calibration"]["coverage"]
        doc.heading(f"{name}: calibration and confidence threshold")
        if cov["threshold"] is not None and cov["coverage_at_threshold"] == 1.0:
            doc.para("Accuracy is at least 0.90 on all posts: no --min-confidence threshold is needed for this data.")
        elif cov["threshold"] is not None:
            doc.para(f"Keeping only posts with confidence >= {cov['threshold']:.3f} gives accuracy >= 0.90 on "
                     f"{pct(cov['coverage_at_threshold'])}% of posts: a sensible --min-confidence for this data.")
        else:
            doc.para("No confidence threshold reaches accuracy 0.90 on this data.")
        doc.heading(f"{name}: most confident errors")
        doc.table(["text", "gold", "predicted", "confidence", "where"],
                  [[e["text"][:300], e["gold"], e["predicted"], f"{e['confidence']:.3f}", f"{e['file']}:{e['line']}"]
                   for e in m["confident_errors"]], text_cols=(0,))
    doc.heading("Calibration")
    doc.image(_plot_reliability(models, folder / "reliability.png"), "reliability diagram")
    doc.image(_plot_coverage(models, folder / "coverage.png"), "coverage-accuracy curve")
    prov = report["provenance"]
    doc.heading("How this report was made")
    doc.para(f"stance {prov['stance_version']}, {prov['created']}: `{' '.join(prov['command'])}`.")
    doc.table(["model", "folder", "digest", "runtime"],
              [[n, m["folder"], m["digest"][:12], f"{m['runtime']} ({m['runtime_reason']})"]
               for n, m in prov["models"].items()], text_cols=(1, 3))
    doc.table(["data file", "sha256"], [[d["path"], d["sha256"][:12]] for d in prov["data"]], text_cols=(0,))
    doc.write(title)
