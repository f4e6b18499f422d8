"""`stance score --engine ray`: the local path's answers, exactly-once parts when the driver or a worker dies,
a two-node cluster on this machine, and the CLI.

The tests share one local Ray instance with 2 CPUs; the cluster test stops it, runs last, and stops its nodes
in a finalizer. Everything is sized to keep the module well under three minutes on 2 cores.
"""
import csv
import gzip
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest

ray = pytest.importorskip("ray")
pytest.importorskip("ray.data")
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")      # Ray Data's own, at start-up

from stance import StanceClassifier  # noqa: E402
from stance.errors import StanceError  # noqa: E402
from stance.ray_scoring import MANIFEST, PLAN, SUCCESS, score_with_ray  # noqa: E402
from stance.scoring import ScoreOptions, score_files  # noqa: E402

BIN = Path(sys.executable).parent
STANCE = [sys.executable, "-m", "stance.cli"]
TEXTS = ["Bomb the labs, finally.", 'He said "no invasion"\nand meant it', "¿Es legal esto?", "No war with Mexico.",
         "Hands off Venezuela 🇻🇪", "Is this even legal without Congress?", "Sink every narco boat."]


def export(path: Path, n: int, blanks: bool = True) -> Path:
    """An export with ids, quotes, newlines inside fields, and (at the end) an empty and a blank text."""
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["post_id", "author_handle", "text", "like_count"])
        for i in range(n):
            w.writerow([f"{1000 + i}", f"@h{i}", TEXTS[i % len(TEXTS)] + f" #{i}", i])
        if blanks:
            w.writerows([["9998", "@e", "", 0], ["9999", "@w", "   ", 0]])
    return path


def opts(**kw) -> ScoreOptions:
    return ScoreOptions(progress=False, **kw)


def read_ids(out: Path):
    return pd.read_parquet(out)["post_id"].tolist()


@pytest.fixture(scope="module")
def _ray_module():
    yield
    ray.shutdown()


@pytest.fixture
def local_ray(_ray_module):
    """A local Ray instance with 2 CPUs, started once; score_with_ray joins it instead of starting its own."""
    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING", object_store_memory=200 << 20)


@pytest.mark.parametrize("model", ["tfidf_model", "tiny_model"])
def test_same_answers_as_local(model, request, tmp_path, local_ray):
    folder = request.getfixturevalue(model)
    src = export(tmp_path / "in.csv", 150)
    clf = StanceClassifier.load(folder)
    score_files([str(src)], str(tmp_path / "local.csv"), clf, opts())
    summary = score_with_ray([str(src)], str(tmp_path / "ray"), str(folder), opts(chunk_size=40), workers=2)

    want = pd.read_csv(tmp_path / "local.csv", dtype=str, keep_default_na=False)
    got = pd.read_parquet(tmp_path / "ray")
    assert list(got.columns) == list(want.columns)
    pd.testing.assert_frame_equal(got[["post_id", "author_handle", "text", "like_count"]],
                                  want[["post_id", "author_handle", "text", "like_count"]])
    assert got["stance"].tolist() == want["stance"].tolist()
    assert got["stance_note"].tolist() == want["stance_note"].tolist()
    assert got["stance_note"].tolist()[-2:] == ["empty_text", "empty_text"]
    probs = [f"p_{l}" for l in clf.labels] + ["confidence"]
    local = want[probs].replace("", "nan").astype(float)
    # fp32 sums may differ in the last bit with another thread count: 4-decimal roundings within one step
    assert (got[probs].fillna(-1) - local.fillna(-1)).abs().max().max() <= 1.01e-4

    manifest = json.loads((tmp_path / "ray" / MANIFEST).read_text())
    assert manifest["runtime"] == clf.runtime and manifest["rows"] == 152 == summary.rows
    assert sum(p["rows"] for p in manifest["parts"]) == 152 and len(manifest["parts"]) >= 3
    assert (tmp_path / "ray" / SUCCESS).exists() and not (tmp_path / "ray" / PLAN).exists()
    assert summary.notes["empty_text"] == 2 and summary.scored == 150

    # `stance report` reads the folder as one table, with the manifest as its provenance
    from stance.share_report import summarise_scored
    shares = summarise_scored(str(tmp_path / "ray"), estimator="cc")
    assert shares["rows"] == 152 and shares["scored_by"]["model_digest"] == manifest["model_digest"]
    assert {l: v["count"] for l, v in shares["shares"].items()} == {l: int((want["stance"] == l).sum())
                                                                     for l in clf.labels}


@pytest.mark.parametrize("fmt", ["jsonl", "parquet", "csv.gz"])
def test_formats_folders_and_globs(fmt, tmp_path, tfidf_model, local_ray):
    """Each format as two files, read through a folder (JSONL, Parquet) or a glob (gzip: one part per file)."""
    df = pd.read_csv(export(tmp_path / "x.csv", 60, blanks=False), dtype=str, keep_default_na=False)
    df.loc[3, "text"] = None if fmt != "csv.gz" else ""
    src = tmp_path / "src"
    src.mkdir()
    for half, rows in enumerate((df[:30], df[30:])):
        path = src / f"in{half}.{fmt}"
        if fmt == "jsonl":
            rows.to_json(path, orient="records", lines=True, force_ascii=False)
        elif fmt == "parquet":
            rows.to_parquet(path, index=False, row_group_size=7)
        else:
            with gzip.open(path, "wt", encoding="utf-8", newline="") as fh:
                rows.to_csv(fh, index=False)
    inputs = [str(src / "*.csv.gz")] if fmt == "csv.gz" else [str(src)]
    score_with_ray(inputs, str(tmp_path / "ray"), str(tfidf_model), opts(chunk_size=10), workers=2)
    got = pd.read_parquet(tmp_path / "ray")
    assert got["post_id"].tolist() == df["post_id"].tolist()
    assert got["text"].fillna("").tolist() == df["text"].fillna("").tolist()
    assert got["stance_note"][3] == ("missing_text" if fmt != "csv.gz" else "empty_text")
    want = StanceClassifier.load(tfidf_model).predict(df["text"].drop(3).tolist())
    assert got["stance"].drop(3).tolist() == want
    parts = json.loads((tmp_path / "ray" / MANIFEST).read_text())["parts"]
    assert len(parts) == 2 if fmt == "csv.gz" else len(parts) >= 4      # gzip cannot be split


def test_resume_completes_a_partial_folder_exactly_once(tmp_path, tfidf_model, local_ray, monkeypatch):
    """A driver stopped mid-run leaves parts and the plan; --resume scores only what is missing."""
    src, out = export(tmp_path / "in.csv", 400), tmp_path / "ray"
    from stance import progress
    real, calls = progress.Progress.update, {"n": 0}

    def interrupt_after_five(self, n):
        calls["n"] += 1
        if calls["n"] > 5:
            raise KeyboardInterrupt
        real(self, n)
    monkeypatch.setattr(progress.Progress, "update", interrupt_after_five)
    with pytest.raises(KeyboardInterrupt):
        score_with_ray([str(src)], str(out), str(tfidf_model), opts(chunk_size=20), workers=1)
    monkeypatch.setattr(progress.Progress, "update", real)
    parts = sorted(out.glob("part-*.parquet"))
    assert (out / PLAN).exists() and not (out / SUCCESS).exists() and 5 <= len(parts) < 20
    parts[-1].write_bytes(parts[-1].read_bytes()[:100])         # a part cut short (a crash mid-write)
    (out / f".{parts[0].name}.dead.tmp").write_bytes(b"junk")    # a killed actor's temporary file
    kept = {p.name: p.stat().st_mtime_ns for p in parts[:-1]}
    kept_rows = sum(pq.read_metadata(p).num_rows for p in parts[:-1])

    summary = score_with_ray([str(src)], str(out), str(tfidf_model), opts(chunk_size=20), resume=True)
    ids = read_ids(out)
    assert sorted(ids) == sorted(set(ids)) and len(ids) == 402 and ids[:3] == ["1000", "1001", "1002"]
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("part-*.parquet") if p.name in kept} == kept
    assert summary.resumed_from == kept_rows and summary.rows == 402
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith("part-")) == [SUCCESS, MANIFEST]

    # A finished folder: --resume is a no-op; a fresh run or another model refuses to clobber it.
    again = score_with_ray([str(src)], str(out), str(tfidf_model), opts(chunk_size=20), resume=True)
    assert again.rows == 402 and again.resumed_from == 402
    with pytest.raises(StanceError, match="finished run"):
        score_with_ray([str(src)], str(out), str(tfidf_model), opts())
    with pytest.raises(StanceError, match="scoring options changed"):
        score_with_ray([str(src)], str(out), str(tfidf_model), opts(min_confidence=0.9), resume=True)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(StanceError, match="other files"):
        score_with_ray([str(src)], str(tmp_path / "other"), str(tfidf_model), opts())


def _scorer_pids():
    pids = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if b"ShardScorer" in Path(f"/proc/{pid}/cmdline").read_bytes():
                pids.append(int(pid))
        except OSError:
            pass
    return pids


def test_killed_worker_loses_and_duplicates_nothing(tmp_path, tfidf_model, local_ray):
    src, out = export(tmp_path / "in.csv", 600), tmp_path / "ray"
    killed, done = {}, threading.Event()

    def kill_one_worker():
        # No fixed deadline: on a loaded machine the actors can take minutes to start.
        while not done.is_set() and not killed:
            if len(list(out.glob("part-*.parquet"))) >= 3 and _scorer_pids():
                victim = _scorer_pids()[0]
                killed["pid"], killed["finished"] = victim, (out / SUCCESS).exists()
                os.kill(victim, signal.SIGKILL)
            time.sleep(0.02)
    watcher = threading.Thread(target=kill_one_worker, daemon=True)
    watcher.start()
    try:
        summary = score_with_ray([str(src)], str(out), str(tfidf_model), opts(chunk_size=5), workers=2)
    finally:
        done.set()
    watcher.join(5)
    assert killed and not killed["finished"], "the worker was not killed mid-run"
    ids = read_ids(out)
    assert ids == [str(1000 + i) for i in range(600)] + ["9998", "9999"] and summary.rows == 602
    assert not list(out.glob(".*.tmp"))           # the dead actor's temporary file, if any, is gone


def test_bad_row_stops_with_its_file(tmp_path, tfidf_model, local_ray):
    src = tmp_path / "bad.csv"
    src.write_text("post_id,text\n1,fine\n2,too,many,fields\n", encoding="utf-8")
    with pytest.raises(StanceError, match="bad.csv") as err:
        score_with_ray([str(src)], str(tmp_path / "ray"), str(tfidf_model), opts())
    assert "--on-bad-lines skip" in str(err.value)
    score_with_ray([str(src)], str(tmp_path / "ray"), str(tfidf_model), opts(on_bad_lines="skip"))
    assert read_ids(tmp_path / "ray") == ["1"]
    assert json.loads((tmp_path / "ray" / MANIFEST).read_text())["notes"]["skipped_lines"] == 1


def test_without_ray_the_error_says_how_to_install(tmp_path, tfidf_model, monkeypatch):
    from typer.testing import CliRunner
    from stance.cli import app
    monkeypatch.setitem(sys.modules, "ray", None)
    src = export(tmp_path / "in.csv", 3)
    result = CliRunner().invoke(app, ["score", str(src), "-o", str(tmp_path / "out"), "--engine", "ray",
                                      "--model", str(tfidf_model)])
    assert isinstance(result.exception, StanceError) and "pip install 'stance[ray]'" in str(result.exception)


def test_cli_driver_killed_then_resumed(tmp_path, tfidf_model):
    """kill -9 of a `stance score --engine ray` process group, then the same command with --resume."""
    ray.shutdown()          # this test's drivers start their own local instances
    src, out = export(tmp_path / "in.csv", 1500), tmp_path / "ray"
    cmd = [*STANCE, "score", str(src), "-o", str(out), "--engine", "ray", "--model", str(tfidf_model),
           "--chunk-size", "10", "--workers", "2", "-q"]
    for attempt in range(2):    # a driver whose Ray start failed under load is not what this test is about
        with open(tmp_path / "driver.err", "w") as err:
            proc = subprocess.Popen(cmd, start_new_session=True, stdout=subprocess.DEVNULL, stderr=err)
            try:
                deadline = time.time() + 600          # generous: a loaded machine starts Ray slowly
                while time.time() < deadline and len(list(out.glob("part-*.parquet"))) < 10 and proc.poll() is None:
                    time.sleep(0.05)
                exited = proc.poll()
            finally:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)      # the driver and the Ray instance it started
                except ProcessLookupError:
                    pass
                proc.wait()
        if exited is None:
            break
    driver_err = (tmp_path / "driver.err").read_text(errors="replace")[-2000:]
    assert exited is None, f"the driver exited on its own ({exited}), twice: {driver_err}"
    assert not (out / SUCCESS).exists(), "the run ended before it was killed"
    parts_at_kill = len(list(out.glob("part-*.parquet")))
    r = subprocess.run(cmd + ["--resume"], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "resumed after" in r.stderr, (parts_at_kill, driver_err, r.stderr[-3000:])
    assert read_ids(out) == [str(1000 + i) for i in range(1500)] + ["9998", "9999"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def two_node_cluster(tmp_path):
    """A head and a worker node on this machine, 1 CPU each; `ray stop --force` at the end whatever happens."""
    ray.shutdown()
    port = _free_port()
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    ray_cli = str(BIN / "ray")
    stop = lambda: subprocess.run([ray_cli, "stop", "--force"], capture_output=True, timeout=60, env=env)  # noqa: E731
    try:
        common = ["--num-cpus", "1", "--object-store-memory", str(100 << 20), "--disable-usage-stats"]
        subprocess.run([ray_cli, "start", "--head", "--port", str(port), "--include-dashboard=false", *common],
                       check=True, capture_output=True, timeout=300, env=env)
        subprocess.run([ray_cli, "start", "--address", f"127.0.0.1:{port}", *common],
                       check=True, capture_output=True, timeout=300, env=env)
        yield f"127.0.0.1:{port}"
    finally:
        stop()


def test_two_node_cluster_through_the_cli(tmp_path, tfidf_model, two_node_cluster):
    src, out = export(tmp_path / "in.csv", 300), tmp_path / "ray"
    r = subprocess.run([*STANCE, "score", str(src), "-o", str(out), "--engine", "ray", "--address", two_node_cluster,
                        "--model", str(tfidf_model), "--chunk-size", "25", "-q"],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "labelled 300 of 302 rows" in r.stderr
    manifest = json.loads((out / MANIFEST).read_text())
    assert len({w["node"] for w in manifest["workers"]}) == 2       # one actor per node: 1 CPU each
    assert manifest["address"] == two_node_cluster
    assert read_ids(out) == [str(1000 + i) for i in range(300)] + ["9998", "9999"]


def test_shards_end_at_record_boundaries(tmp_path):
    """Byte ranges never cut a record, whatever the quotes and newlines inside fields (no Ray needed)."""
    from stance.shards import plan_shards
    src = export(tmp_path / "in.csv", 97)
    full = list(csv.reader(open(src, newline="", encoding="utf-8")))[1:]
    data = src.read_bytes()
    for rows in (1, 2, 3, 7, 50, 1000):
        shards = plan_shards([str(src)], ["csv"], rows, "utf-8")
        assert shards[-1]["stop"] == len(data) and all(a["stop"] == b["start"] for a, b in zip(shards, shards[1:]))
        parsed = [r for s in shards for r in csv.reader(data[s["start"]:s["stop"]].decode().splitlines(True))]
        assert parsed == full, rows
