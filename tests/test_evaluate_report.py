"""`stance evaluate` and `stance report`: numbers against scikit-learn, schema, rendered HTML."""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score

from conftest import POSTS, write_jsonl
from stance.metrics import compute_metrics, expected_calibration_error

ROOT = Path(__file__).resolve().parents[1]
LABELS = ["support", "oppose", "question", "neutral"]


def test_metrics_match_sklearn_on_known_fixture():
    gold = ["support", "support", "oppose", "oppose", "question", "neutral", "neutral", "support"]
    pred = ["support", "oppose", "oppose", "support", "question", "neutral", "question", "support"]
    m = compute_metrics(gold, pred, LABELS)
    assert m["macro_f1"] == pytest.approx(f1_score(gold, pred, labels=LABELS, average="macro"))
    assert m["accuracy"] == pytest.approx(accuracy_score(gold, pred)) == 0.625
    assert m["confusion_matrix"] == confusion_matrix(gold, pred, labels=LABELS).tolist()
    # by hand: support P=2/3 R=2/3; oppose P=1/2 R=1/2 -> F_avg = (2/3 + 1/2) / 2
    assert m["f_avg"] == pytest.approx((2 / 3 + 1 / 2) / 2)
    assert m["per_class"]["question"]["precision"] == pytest.approx(0.5)


def test_ece_of_perfectly_calibrated_and_overconfident():
    probs = np.array([[0.9, 0.1, 0, 0]] * 10)
    gold = np.array([0] * 9 + [1])
    assert expected_calibration_error(probs, gold) == pytest.approx(0.0)
    assert expected_calibration_error(probs, np.array([1] * 10)) == pytest.approx(0.9)


@pytest.fixture(scope="module")
def eval_report(tfidf_model, tiny_model, tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    data = write_jsonl(out.parent / "gold.jsonl",
                       [{"text": t, "label": {"support": "FAVOR", "oppose": "AGAINST"}.get(l, l.upper()),
                         "lang": "es" if "¿" in t or "ó" in t else "en", "platform": "x" if i % 2 else "reddit"}
                        for i, (t, l) in enumerate(POSTS)])
    lm = out.parent / "map.json"
    lm.write_text(json.dumps({"FAVOR": "support", "AGAINST": "oppose", "QUESTION": "question", "NEUTRAL": "neutral"}))
    r = subprocess.run([sys.executable, "-m", "stance.cli", "evaluate", str(data), "--model", str(tfidf_model),
                        "--model", str(tiny_model), "--label-map", str(lm), "-o", str(out)],
                       capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    return out


def test_evaluate_writes_all_outputs(eval_report):
    names = {p.name for p in eval_report.iterdir()}
    assert {"metrics.json", "report.md", "report.html", "per_class_f1.png", "confusion_matrix_0.png",
            "confusion_matrix_1.png", "reliability.png", "coverage.png"} <= names
    m = json.loads((eval_report / "metrics.json").read_text())
    assert m["n"] == len(POSTS) and m["labels"] == LABELS
    assert set(m["models"]) == {"tfidf", "tiny"}
    assert set(m["models"]["tfidf"]["slices"]) >= {"lang", "platform"}
    assert m["comparison"][0]["model_a"] == "tfidf" and 0 <= m["comparison"][0]["p_value"] <= 1
    assert m["ci"]["macro_f1"][0] <= m["macro_f1"] <= m["ci"]["macro_f1"][1]
    md = (eval_report / "report.md").read_text()
    assert "most confident errors" in md and "Paired bootstrap" in md
    prov = m["provenance"]            # how the report was made: models by digest, data by checksum
    assert set(prov["models"]) == {"tfidf", "tiny"} and prov["models"]["tfidf"]["runtime"] == "tfidf"
    assert len(prov["data"]) == 1 and len(prov["data"][0]["sha256"]) == 64
    assert "How this report was made" in md and prov["models"]["tiny"]["digest"][:12] in md


def test_metrics_json_matches_schema(eval_report):
    import jsonschema
    schema = json.loads((ROOT / "stance/schemas/metrics.schema.json").read_text())
    jsonschema.validate(json.loads((eval_report / "metrics.json").read_text()), schema)
    broken = json.loads((eval_report / "metrics.json").read_text())
    del broken["macro_f1"]
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, schema)


def test_unknown_gold_label_names_rows(tfidf_model, tmp_path):
    data = write_jsonl(tmp_path / "g.jsonl", [{"text": "x", "label": "support"}, {"text": "y", "label": "FAVOR"}])
    r = subprocess.run([sys.executable, "-m", "stance.cli", "evaluate", str(data), "--model", str(tfidf_model),
                        "-o", str(tmp_path / "r")], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 2 and "line 2, column 'label': unknown label 'FAVOR'" in r.stderr and "--label-map" in r.stderr


def test_gold_with_one_label_warns_and_gives_macro_f1_over_present_labels(tfidf_model, tmp_path):
    """Every row right but only `support` in the gold: macro-F1 0.25 is explained, not silently reported."""
    from stance import StanceClassifier
    clf = StanceClassifier.load(tfidf_model)
    texts = [t for t, l in POSTS if l == "support"]
    right = [t for t, p in zip(texts, clf.predict(texts)) if p == "support"]
    data = write_jsonl(tmp_path / "g.jsonl", [{"text": t, "label": "support"} for t in right])
    r = subprocess.run([sys.executable, "-m", "stance.cli", "evaluate", str(data), "--model", str(tfidf_model),
                        "-o", str(tmp_path / "r")], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    assert "no gold posts labelled oppose, question, neutral" in r.stderr
    m = json.loads((tmp_path / "r/metrics.json").read_text())["models"]["tfidf"]
    assert m["macro_f1"] == pytest.approx(0.25) and m["macro_f1_present_labels"] == pytest.approx(1.0)
    assert "Over the labels present it is 100.0" in (tmp_path / "r/report.md").read_text()


def _chromium():
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


def _render(html: Path, tmp_path: Path) -> str:
    exe = _chromium()
    if not exe:
        pytest.skip("chromium is not installed (.ci/run installs Debian's chromium)")
    r = subprocess.run([exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                        "--disable-component-update", "--disable-sync", "--no-first-run",
                        f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=3000",
                        "--dump-dom", html.resolve().as_uri()],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    return r.stdout


def test_html_report_renders_with_images_in_chromium(eval_report, tmp_path):
    # The page draws each image onto a canvas after load: naturalWidth > 0 only for a decoded PNG.
    page = (eval_report / "report.html").read_text()
    probe = tmp_path / "probe.html"
    probe.write_text(page.replace("</body>", "<script>window.onload=()=>{const ok=[...document.images]"
                                  ".filter(i=>i.complete&&i.naturalWidth>100).length;"
                                  "document.body.setAttribute('data-loaded',ok+'/'+document.images.length)}"
                                  "</script></body>"))
    dom = _render(probe, tmp_path)
    n = page.count("<img ")
    assert n == 5          # per-class F1, two confusion matrices, reliability, coverage
    assert f'data-loaded="{n}/{n}"' in dom
    assert "Model evaluation" in dom


def test_report_on_scored_export(tfidf_model, tmp_path):
    import pandas as pd
    src = tmp_path / "posts.csv"
    days = pd.date_range("2025-09-01", periods=40, freq="D").strftime("%Y-%m-%dT12:00:00Z")
    pd.DataFrame({"text": [POSTS[i % len(POSTS)][0] for i in range(200)],
                  "created_at": [days[i % 40] for i in range(200)],
                  "lang": ["en", "es"] * 100, "platform": ["x", "reddit", "youtube", "x"] * 50}).to_csv(src, index=False)
    scored = tmp_path / "scored.csv"
    run = lambda *a: subprocess.run([sys.executable, "-m", "stance.cli", *a], capture_output=True, text=True, cwd=ROOT)
    assert run("score", str(src), "-o", str(scored), "--model", str(tfidf_model), "-q").returncode == 0
    r = run("report", str(scored), "-o", str(tmp_path / "rep"))
    assert r.returncode == 0, r.stderr
    summary = json.loads((tmp_path / "rep/summary.json").read_text())
    assert summary["rows"] == 200 and sum(v["count"] for v in summary["shares"].values()) == 200
    for v in summary["shares"].values():
        assert v["ci95"][0] <= v["share"] <= v["ci95"][1]
    assert summary["over_time"]["frequency"] == "daily" and len(summary["over_time"]["periods"]) == 40
    assert set(summary["by"]) == {"lang", "platform"}
    assert {"report.md", "report.html", "shares.png", "over_time.png", "by_lang.png"} <= {p.name for p in (tmp_path / "rep").iterdir()}
    scored_by = json.loads((tmp_path / "scored.csv.meta.json").read_text())
    assert summary["scored_by"] == scored_by and scored_by["model_digest"][:12] in (tmp_path / "rep/report.md").read_text()
    assert run("score", str(src), "-o", str(tmp_path / "s.parquet"), "--model", str(tfidf_model), "-q").returncode == 0
    (tmp_path / "s.parquet.meta.json").unlink()          # the Parquet file's own metadata still says it
    assert run("report", str(tmp_path / "s.parquet"), "-o", str(tmp_path / "rep3")).returncode == 0
    assert json.loads((tmp_path / "rep3/summary.json").read_text())["scored_by"]["model_digest"] == scored_by["model_digest"]
    r = run("report", str(src), "-o", str(tmp_path / "rep2"))
    assert r.returncode == 2 and "output of `stance score`" in r.stderr
