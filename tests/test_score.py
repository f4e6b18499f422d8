"""`stance score`: round trips, formats, piping, resume, and every bad-input case."""
import csv
import gzip
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from stance import StanceClassifier
from stance.errors import StanceError
from stance.scoring import ScoreOptions, score_files

ROOT = Path(__file__).resolve().parents[1]
STANCE = [sys.executable, "-m", "stance.cli"]
ADDED = ["stance", "confidence", "p_support", "p_oppose", "p_question", "p_neutral", "stance_note"]


def export(path: Path, n: int = 50, extra_rows=()):
    """A small export shaped like X's: ids, handles, text with commas, quotes and newlines."""
    texts = ["Bomb the labs, finally.", 'He said "no invasion"\nand meant it', "¿Es legal esto?",
             "=HYPERLINK(\"http://x\")", "Hands off Venezuela 🇻🇪", "-1 for this war", "@user what?"]
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["post_id", "author_handle", "text", "like_count"])
        for i in range(n):
            w.writerow([f"{1000 + i}", f"@h{i}", texts[i % len(texts)] + f" #{i}", i])
        for row in extra_rows:
            w.writerow(row)
    return path


def fail_on_chunk(clf, monkeypatch, chunk: int, exc: BaseException):
    """Make the classifier raise `exc` on its `chunk`-th batch (1-based), as a Ctrl-C or a full disk would."""
    real, calls = clf.score_records, {"n": 0}

    def failing(*a, **k):
        calls["n"] += 1
        if calls["n"] == chunk:
            raise exc
        return real(*a, **k)
    monkeypatch.setattr(clf, "score_records", failing)
    return real


@pytest.fixture
def clf(tfidf_model):
    return StanceClassifier.load(tfidf_model)


def test_round_trip_keeps_columns_and_rows(tmp_path, clf):
    src = export(tmp_path / "in.csv", 50, extra_rows=[["9998", "@e", "", 0], ["9999", "@w", "   ", 0]])
    out = tmp_path / "out.csv"
    summary = score_files([str(src)], str(out), clf, ScoreOptions(chunk_size=16))
    df_in = pd.read_csv(src, dtype=str, keep_default_na=False)
    df = pd.read_csv(out, dtype=str, keep_default_na=False)
    assert list(df.columns) == list(df_in.columns) + ADDED
    pd.testing.assert_frame_equal(df[df_in.columns], df_in)   # input columns unchanged, same order
    assert set(df["stance"][:50]) <= set(clf.labels)
    assert list(df["stance_note"][-2:]) == ["empty_text", "empty_text"] and list(df["stance"][-2:]) == ["", ""]
    probs = df.loc[:49, ["p_support", "p_oppose", "p_question", "p_neutral"]].astype(float).sum(axis=1)
    assert ((probs - 1).abs() < 1e-3).all()
    assert summary.rows == 52 and summary.scored == 50 and summary.notes["empty_text"] == 2
    # No partial, checkpoint or lock left; only the provenance beside the output.
    assert [p.name for p in tmp_path.glob("out.csv.*")] == ["out.csv.meta.json"]


def test_min_confidence_marks_uncertain(tmp_path, clf):
    src = export(tmp_path / "in.csv", 20)
    score_files([str(src)], str(tmp_path / "a.csv"), clf, ScoreOptions(min_confidence=0.0))
    conf = pd.read_csv(tmp_path / "a.csv")["confidence"]
    threshold = float(conf.median())
    score_files([str(src)], str(tmp_path / "o.csv"), clf, ScoreOptions(min_confidence=threshold))
    df = pd.read_csv(tmp_path / "o.csv", dtype=str, keep_default_na=False)
    uncertain = df["stance_note"] == "uncertain"
    assert uncertain.any() and (~uncertain).any()
    assert (uncertain == (df["confidence"].astype(float) < threshold - 1e-4)).all()
    assert (df["stance"] != "").all()           # uncertain rows keep their most likely stance


@pytest.mark.parametrize("fmt", ["jsonl", "parquet", "tsv"])
def test_output_formats(tmp_path, clf, fmt):
    src = export(tmp_path / "in.csv", 30)
    out = tmp_path / f"out.{fmt}"
    score_files([str(src)], str(out), clf, ScoreOptions(chunk_size=7))
    df = {"jsonl": lambda p: pd.read_json(p, lines=True, dtype=False), "parquet": pd.read_parquet,
          "tsv": lambda p: pd.read_csv(p, sep="\t", dtype=str)}[fmt](out)
    assert len(df) == 30 and list(df.columns)[-7:] == ADDED
    assert [p.name for p in tmp_path.glob(f"out.{fmt}.*")] == [f"out.{fmt}.meta.json"]


def test_gzip_jsonl_and_parquet_inputs(tmp_path, clf):
    rows = [{"id": i, "text": t} for i, t in enumerate(["no war", "bomb them", "is it legal?"])]
    gz = tmp_path / "in.jsonl.gz"
    with gzip.open(gz, "wt", encoding="utf-8") as fh:
        fh.writelines(json.dumps(r) + "\n" for r in rows)
    pq = tmp_path / "in.parquet"
    pd.DataFrame(rows).to_parquet(pq)
    for src in (gz, pq):
        out = tmp_path / (src.name + ".out.jsonl")
        score_files([str(src)], str(out), clf)
        got = [json.loads(l) for l in open(out)]
        assert [g["id"] for g in got] == [0, 1, 2] and all(g["stance"] for g in got)


def test_excel_safe(tmp_path, clf):
    src = export(tmp_path / "in.csv", 7)
    score_files([str(src)], str(tmp_path / "o.csv"), clf, ScoreOptions(excel_safe=True))
    df = pd.read_csv(tmp_path / "o.csv", dtype=str, keep_default_na=False)
    assert df["text"][3].startswith("'=HYPERLINK") and df["text"][5].startswith("'-1")
    assert df["text"][6].startswith("'@user")


def test_stdin_to_stdout(tmp_path, tfidf_model):
    src = export(tmp_path / "in.csv", 10).read_bytes()
    proc = subprocess.run(STANCE + ["score", "-", "-o", "-", "--model", str(tfidf_model), "-q"], input=src,
                          capture_output=True, check=True, cwd=ROOT)
    lines = list(csv.reader(proc.stdout.decode().splitlines()))
    assert lines[0][-7:] == ADDED and len(lines) == 11


def _run_cli(args, **kw):
    return subprocess.run(STANCE + args, capture_output=True, text=True, cwd=ROOT, **kw)


def test_missing_text_column_lists_columns(tmp_path, tfidf_model):
    src = export(tmp_path / "in.csv", 3)
    r = _run_cli(["score", str(src), "-o", str(tmp_path / "o.csv"), "--model", str(tfidf_model),
                  "--text-column", "txt"])
    assert r.returncode == 2
    assert "no text column 'txt'" in r.stderr and "did you mean 'text'" in r.stderr and "post_id" in r.stderr
    assert not list(tmp_path.glob("o.csv*"))


def test_bad_encoding_names_the_line(tmp_path, tfidf_model):
    src = export(tmp_path / "in.csv", 5)          # header + 5 rows, one spanning two lines = 7 lines
    with open(src, "ab") as fh:
        fh.write(b'77,@x,"caf\xe9 con leche",1\n')
    r = _run_cli(["score", str(src), "-o", str(tmp_path / "o.csv"), "--model", str(tfidf_model)])
    assert r.returncode == 2 and "line 8" in r.stderr and "--encoding" in r.stderr
    assert not list(tmp_path.glob("o.csv*"))
    r = _run_cli(["score", str(src), "-o", str(tmp_path / "o.csv"), "--model", str(tfidf_model),
                  "--encoding", "latin-1", "-q"])
    assert r.returncode == 0


def test_malformed_row_error_or_skip(tmp_path, tfidf_model, clf):
    src = export(tmp_path / "in.csv", 5, extra_rows=[["1", "2"]])
    r = _run_cli(["score", str(src), "-o", str(tmp_path / "o.csv"), "--model", str(tfidf_model)])
    assert r.returncode == 2 and "line 8" in r.stderr and "expected 4 fields, found 2" in r.stderr
    assert not list(tmp_path.glob("o.csv*"))
    summary = score_files([str(src)], str(tmp_path / "o.csv"), clf, ScoreOptions(on_bad_lines="skip"))
    assert summary.scored == 5 and summary.skipped_lines[0][1] == 8


def test_huge_text_is_truncated_and_counted(tmp_path, tiny_model):
    clf = StanceClassifier.load(tiny_model)
    src = tmp_path / "in.csv"
    pd.DataFrame({"text": ["no war " * 20000, "bomb them"]}).to_csv(src, index=False)
    summary = score_files([str(src)], str(tmp_path / "o.csv"), clf)
    assert summary.notes["truncated"] == 1
    assert (pd.read_csv(tmp_path / "o.csv")["stance"].notna()).all()


def test_damaged_model_folder(tmp_path, tiny_model):
    import shutil
    broken = tmp_path / "broken"
    shutil.copytree(tiny_model, broken)
    (broken / "model.safetensors").unlink()
    r = _run_cli(["score", str(export(tmp_path / "in.csv", 2)), "-o", str(tmp_path / "o.csv"), "--model", str(broken)])
    assert r.returncode == 2 and "missing model.safetensors" in r.stderr
    (broken / "stance.json").write_text("{not json")
    with pytest.raises(StanceError, match="damaged stance.json"):
        StanceClassifier.load(broken)


def test_resume_after_interrupt_and_torn_write(tmp_path, clf, monkeypatch):
    """Ctrl-C after two chunks, then bytes of a half-written chunk: resume loses and duplicates nothing."""
    src = export(tmp_path / "in.csv", 100)
    out = tmp_path / "out.csv"
    real = fail_on_chunk(clf, monkeypatch, 3, KeyboardInterrupt())
    with pytest.raises(KeyboardInterrupt):
        score_files([str(src)], str(out), clf, ScoreOptions(chunk_size=10))
    assert not out.exists()
    ckpt = json.loads(Path(str(out) + ".ckpt.json").read_text())
    assert ckpt["rows_done"] == 20
    with open(str(out) + ".partial", "ab") as fh:          # a kill in the middle of the next write
        fh.write(b"1020,@h20,half a row")
    monkeypatch.setattr(clf, "score_records", real)
    summary = score_files([str(src)], str(out), clf, ScoreOptions(chunk_size=10, resume=True))
    df = pd.read_csv(out, dtype=str)
    assert list(df["post_id"]) == [str(1000 + i) for i in range(100)]
    assert summary.resumed_from == 20 and summary.scored == 100
    assert sum(summary.stances.values()) == 100


def test_resume_after_kill_9(tmp_path, tfidf_model):
    """A real `kill -9` of the CLI mid-run, then --resume: every row exactly once."""
    n = 60000
    src = tmp_path / "big.csv"
    pd.DataFrame({"id": range(n), "text": [f"bomb the labs now {i}" if i % 2 else f"no war please {i}"
                                          for i in range(n)]}).to_csv(src, index=False)
    out = tmp_path / "big_out.csv"
    args = ["score", str(src), "-o", str(out), "--model", str(tfidf_model), "--chunk-size", "500", "-q"]
    proc = subprocess.Popen(STANCE + args, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckpt = Path(str(out) + ".ckpt.json")
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if ckpt.exists() and json.loads(ckpt.read_text() or "{}").get("rows_done", 0) >= 2000:
            break
        time.sleep(0.05)
    if proc.poll() is not None:
        pytest.fail("scoring finished before it could be killed; make the input larger")
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not out.exists()
    r = _run_cli(args + ["--resume"])
    assert r.returncode == 0, r.stderr
    ids = pd.read_csv(out, usecols=["id"])["id"].tolist()
    assert ids == list(range(n))


def _append_a_row(src, options):
    with open(src, "a") as fh:
        fh.write("1,2,changed,3\n")
    return options


@pytest.mark.parametrize("change, message", [
    (_append_a_row, "the input changed"),
    (lambda src, options: ScoreOptions(**{**options.__dict__, "encoding": "latin-1"}), "scoring options changed"),
])
def test_resume_refuses_a_changed_input_or_encoding(tmp_path, clf, monkeypatch, change, message):
    src = export(tmp_path / "in.csv", 30)
    out = tmp_path / "out.csv"
    real = fail_on_chunk(clf, monkeypatch, 1, KeyboardInterrupt())
    with pytest.raises(KeyboardInterrupt):
        score_files([str(src)], str(out), clf, ScoreOptions(chunk_size=10))
    monkeypatch.setattr(clf, "score_records", real)
    options = change(src, ScoreOptions(chunk_size=10, resume=True))
    with pytest.raises(StanceError, match=message):
        score_files([str(src)], str(out), clf, options)


def test_score_frame_is_a_pure_batch_function(clf):
    df = pd.DataFrame({"id": [1, 2, 3], "text": ["no war", None, "bomb them"]})
    out = clf.score_frame(df, text_column="text")
    assert list(out.columns) == ["id", "text"] + ADDED
    assert out["stance_note"][1] == "missing_text" and out["stance"][0] in clf.labels
    assert list(df.columns) == ["id", "text"]            # the input frame is untouched


# -- outputs a user can trust (each case failed before its fix) -------------------------------------------------

def test_second_run_on_the_same_output_is_refused(tmp_path, clf):
    """Two runs writing one output: the second stops at once instead of interleaving with the first."""
    src = export(tmp_path / "in.csv", 20)
    out = tmp_path / "out.csv"
    import fcntl
    holder = open(str(out) + ".lock", "a+")
    fcntl.flock(holder.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)       # a run in progress
    try:
        with pytest.raises(StanceError, match="another `stance score` run is writing this output"):
            score_files([str(src)], str(out), clf)
        assert not out.exists() and not Path(str(out) + ".partial").exists()
    finally:
        holder.close()
    score_files([str(src)], str(out), clf)                             # free again: it runs
    assert len(pd.read_csv(out)) == 20 and not Path(str(out) + ".lock").exists()


def test_resume_with_nothing_to_resume_starts_fresh_but_a_lost_partial_refuses(tmp_path, clf, monkeypatch):
    src = export(tmp_path / "in.csv", 30)
    out = tmp_path / "out.csv"
    score_files([str(src)], str(out), clf, ScoreOptions(resume=True))         # first run of a cron retry loop
    assert len(pd.read_csv(out)) == 30
    out.unlink()
    real = fail_on_chunk(clf, monkeypatch, 3, KeyboardInterrupt())
    with pytest.raises(KeyboardInterrupt):
        score_files([str(src)], str(out), clf, ScoreOptions(chunk_size=10))
    Path(str(out) + ".partial").unlink()                                       # kill -9, then rm OUT.partial
    monkeypatch.setattr(clf, "score_records", real)
    with pytest.raises(StanceError, match="partial output is gone"):
        score_files([str(src)], str(out), clf, ScoreOptions(chunk_size=10, resume=True))


def test_input_columns_named_like_outputs_are_refused(tmp_path, clf):
    src = tmp_path / "gold.csv"
    pd.DataFrame({"text": ["no war", "bomb them"], "stance": ["oppose", "support"]}).to_csv(src, index=False)
    with pytest.raises(StanceError, match=r"already has column\(s\) stance.*gold_stance"):
        score_files([str(src)], str(tmp_path / "out.csv"), clf)
    assert not (tmp_path / "out.csv").exists()


def test_excel_safe_leaves_numbers_and_escapes_headers(tmp_path, clf):
    src = tmp_path / "in.csv"
    pd.DataFrame({"text": ["=cmd|calc", "-5", "-1e3", "+ not a number", "fine"],
                  "=SUM(A1)": ["a", "b", "c", "d", "e"]}).to_csv(src, index=False)
    out = tmp_path / "out.csv"
    score_files([str(src)], str(out), clf, ScoreOptions(excel_safe=True))
    with open(out, newline="", encoding="utf-8") as fh:
        rows = list(csv.reader(fh))
    assert rows[0][:2] == ["text", "'=SUM(A1)"]
    assert [r[0] for r in rows[1:]] == ["'=cmd|calc", "-5", "-1e3", "'+ not a number", "fine"]


def test_an_error_mid_run_keeps_finished_chunks_for_resume(tmp_path, clf, monkeypatch):
    src = export(tmp_path / "in.csv", 40)
    out = tmp_path / "out.csv"
    real = fail_on_chunk(clf, monkeypatch, 3, OSError(28, "No space left on device"))
    with pytest.raises(OSError):
        score_files([str(src)], str(out), clf, ScoreOptions(chunk_size=10))
    assert json.loads(Path(str(out) + ".ckpt.json").read_text())["rows_done"] == 20
    monkeypatch.setattr(clf, "score_records", real)
    summary = score_files([str(src)], str(out), clf, ScoreOptions(chunk_size=10, resume=True))
    assert summary.resumed_from == 20
    assert list(pd.read_csv(out, dtype=str)["post_id"]) == [str(1000 + i) for i in range(40)]


def test_output_mistakes_are_named_before_any_work(tmp_path, clf):
    src = export(tmp_path / "in.csv", 5)
    with pytest.raises(StanceError, match="is a folder"):
        score_files([str(src)], str(tmp_path), clf)
    with pytest.raises(StanceError, match="Parquet cannot be written to stdout"):
        score_files([str(src)], "-", clf, ScoreOptions(output_format="parquet"))


def test_version_and_set_null(tmp_path):
    r = subprocess.run(STANCE + ["--version"], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0 and r.stdout.startswith("stance ")
    from stance.config import load_config
    cfg = load_config(None, ["data.dev=null", "data.test=~"])
    assert cfg.data.dev is None and cfg.data.test is None
    assert load_config(None, ["output_dir=null"]).output_dir == "null"     # not optional: stays a name
