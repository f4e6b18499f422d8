"""`stance score` keeps every value and type of the input, whatever its format (issue 14: F3-F5, F8
and the format items), and says in the output how it was made."""
import csv
import gzip
import io
import json
import subprocess
import sys
from decimal import Decimal

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from stance import StanceClassifier
from stance.errors import StanceError
from stance.outputs import PROVENANCE_KEY
from stance.scoring import ScoreOptions, score_files
from test_score import fail_on_chunk

STANCE = [sys.executable, "-m", "stance.cli"]


@pytest.fixture
def clf(tfidf_model):
    return StanceClassifier.load(tfidf_model)


def read_csv(path):
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def test_jsonl_keys_first_seen_late_are_kept_in_csv_and_parquet(tmp_path, clf):
    src = tmp_path / "in.jsonl"
    lines = [{"id": i, "text": f"bomb the labs {i}"} for i in range(30)]
    lines[25]["lang"] = "es"                      # only in the second chunk
    src.write_text("".join(json.dumps(r) + "\n" for r in lines), encoding="utf-8")
    for name in ("out.csv", "out.parquet"):
        score_files([str(src)], str(tmp_path / name), clf, ScoreOptions(chunk_size=10))
    rows = read_csv(tmp_path / "out.csv")
    assert list(rows[0])[:3] == ["id", "text", "lang"]
    assert rows[25]["lang"] == "es" and rows[0]["lang"] == ""
    table = pq.read_table(tmp_path / "out.parquet")
    assert table.column("lang").to_pylist()[25] == "es"


def test_a_jsonl_key_named_like_an_output_column_late_in_the_file_is_refused(tmp_path, clf):
    src = tmp_path / "in.jsonl"
    rows = [{"text": "war now"}] * 20 + [{"text": "no war", "stance": "oppose"}]
    src.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    with pytest.raises(StanceError, match="already has column"):
        score_files([str(src)], str(tmp_path / "o.jsonl"), clf, ScoreOptions(chunk_size=5))


def test_jsonl_files_with_different_keys_are_united(tmp_path, clf):
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    a.write_text(json.dumps({"id": 1, "text": "strike them"}) + "\n", encoding="utf-8")
    b.write_text(json.dumps({"id": 2, "text": "no invasion", "platform": "x"}) + "\n", encoding="utf-8")
    score_files([str(a), str(b)], str(tmp_path / "o.csv"), clf)
    rows = read_csv(tmp_path / "o.csv")
    assert [r["platform"] for r in rows] == ["", "x"]


def test_parquet_with_a_duplicated_column_is_refused(tmp_path, clf):
    table = pa.Table.from_arrays([pa.array(["1", "2"]), pa.array(["a", "b"]), pa.array(["9", "8"])],
                                 names=["id", "text", "id"])
    pq.write_table(table, tmp_path / "dup.parquet")
    with pytest.raises(StanceError, match="'id' appears 2 times") as err:
        score_files([str(tmp_path / "dup.parquet")], str(tmp_path / "o.parquet"), clf)
    assert err.value.column == "id"


def test_parquet_types_survive_scoring(tmp_path, clf):
    n = 25
    table = pa.table({
        "text": [f"send the navy {i}" for i in range(n)],
        "likes": pa.array([None] * 10 + list(range(n - 10)), pa.int64()),        # all-null in chunk 1
        "verified": pa.array([None] * 10 + [True] * (n - 10), pa.bool_()),
        "price": pa.array([Decimal("1.50")] * 10 + [Decimal("1234567.25")] * (n - 10), pa.decimal128(9, 2)),
    })
    pq.write_table(table, tmp_path / "in.parquet")
    score_files([str(tmp_path / "in.parquet")], str(tmp_path / "o.parquet"), clf, ScoreOptions(chunk_size=10))
    out = pq.read_table(tmp_path / "o.parquet")
    for name in ("likes", "verified", "price"):
        assert out.schema.field(name).type == table.schema.field(name).type
        assert out.column(name).to_pylist() == table.column(name).to_pylist()
    assert out.schema.field("confidence").type == pa.float64()


def test_provenance_rides_in_parquet_metadata_and_beside_text_outputs(tmp_path, clf):
    (tmp_path / "in.csv").write_text("text\nhit the cartels\n", encoding="utf-8")
    score_files([str(tmp_path / "in.csv")], str(tmp_path / "o.parquet"), clf)
    meta = json.loads(pq.read_schema(tmp_path / "o.parquet").metadata[PROVENANCE_KEY])
    assert meta["model_digest"] and meta["runtime"] == clf.runtime and meta["labels"] == clf.labels
    assert meta["inputs"][0]["sha256"] and meta["rows"] == 1
    assert json.loads((tmp_path / "o.parquet.meta.json").read_text())["model_digest"] == meta["model_digest"]


def test_one_stray_quote_costs_one_line_not_the_records_after_it(tmp_path, clf):
    src = tmp_path / "in.csv"
    src.write_text('id,text\n1,hello\n2,"oops a stray quote\n3,fine one\n4,also fine\n5,"ok, quoted"\n',
                   encoding="utf-8")
    out = tmp_path / "o.csv"
    summary = score_files([str(src)], str(out), clf, ScoreOptions(on_bad_lines="skip"))
    assert [r["id"] for r in read_csv(out)] == ["1", "3", "4", "5"]
    assert [line for _, line, _ in summary.skipped_lines] == [3]
    assert "unclosed quote" in summary.skipped_lines[0][2]
    with pytest.raises(StanceError) as err:       # without --on-bad-lines skip: stops at that line
        score_files([str(src)], str(tmp_path / "o2.csv"), clf)
    assert err.value.line == 3


def test_repeated_text_columns_are_joined(tmp_path, clf):
    src = tmp_path / "reddit.csv"
    src.write_text("id,title,selftext\n1,Strike the cartels,Finally someone acts\n2,,\n3,Only a title,\n",
                   encoding="utf-8")
    out = tmp_path / "o.csv"
    score_files([str(src)], str(out), clf, ScoreOptions(text_column=["title", "selftext"]))
    rows = read_csv(out)
    assert rows[1]["stance_note"] == "empty_text" and rows[2]["stance"]
    joined = clf.predict_proba("Strike the cartels\n\nFinally someone acts")[0]
    assert float(rows[0]["confidence"]) == pytest.approx(float(joined.max()), abs=1e-4)
    with pytest.raises(StanceError, match="no text column 'body'"):
        score_files([str(src)], str(tmp_path / "x.csv"), clf, ScoreOptions(text_column=["title", "body"]))


def test_utf16_tsv_and_json_array_inputs(tmp_path, clf):
    (tmp_path / "excel.tsv").write_bytes("id\ttext\n1\tjalapeño: ¡ataquen ya!\n2\tdos\n".encode("utf-16"))
    score_files([str(tmp_path / "excel.tsv")], str(tmp_path / "a.csv"), clf)           # BOM found by itself
    assert read_csv(tmp_path / "a.csv")[0]["text"] == "jalapeño: ¡ataquen ya!"
    (tmp_path / "le.csv").write_bytes("id,text\n1,señor\n".encode("utf-16-le"))
    score_files([str(tmp_path / "le.csv")], str(tmp_path / "b.csv"), clf, ScoreOptions(encoding="utf-16-le"))
    assert read_csv(tmp_path / "b.csv")[0]["text"] == "señor"
    (tmp_path / "posts.json").write_text('[\n {"id": 1, "text": "a", "meta": {"tags": ["x", "y"]}},\n'
                                         ' {"id": 2, "text": "b"}\n]\n', encoding="utf-8")
    score_files([str(tmp_path / "posts.json")], str(tmp_path / "c.csv"), clf)
    rows = read_csv(tmp_path / "c.csv")
    assert [r["id"] for r in rows] == ["1", "2"]
    assert json.loads(rows[0]["meta"]) == {"tags": ["x", "y"]}          # JSON, not Python's repr
    (tmp_path / "bad.json").write_text('[\n {"text": "a"},\n {"text": }\n]\n', encoding="utf-8")
    with pytest.raises(StanceError) as err:
        score_files([str(tmp_path / "bad.json")], str(tmp_path / "d.csv"), clf)
    assert err.value.line == 3 and not (tmp_path / "d.csv").exists()


def interrupted(tmp_path, clf, monkeypatch, out, rows: int, stop_at: int):
    """An export of ``rows`` numbered posts, scored into ``out`` in chunks of 10 until a Ctrl-C at chunk ``stop_at``."""
    src = tmp_path / "in.csv"
    src.write_text("id,text\n" + "".join(f"{i},strike them {i}\n" for i in range(rows)), encoding="utf-8")
    real = fail_on_chunk(clf, monkeypatch, stop_at, KeyboardInterrupt())
    with pytest.raises(KeyboardInterrupt):
        score_files([str(src)], str(out), clf, ScoreOptions(chunk_size=10))
    monkeypatch.setattr(clf, "score_records", real)
    return src


def test_gz_output_is_compressed_and_resumable(tmp_path, clf, monkeypatch):
    out = tmp_path / "o.csv.gz"
    src = interrupted(tmp_path, clf, monkeypatch, out, rows=40, stop_at=3)
    score_files([str(src)], str(out), clf, ScoreOptions(chunk_size=10, resume=True))
    with gzip.open(out, "rt", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["id"] for r in rows] == [str(i) for i in range(40)]
    with pytest.raises(StanceError, match="Parquet compresses"):
        score_files([str(src)], str(tmp_path / "o.parquet.gz"), clf)


def test_data_check_flags_non_text_values_and_unreadable_files(tmp_path):
    lines = [{"text": ["a", "list"], "label": "support"}, {"text": 5, "label": "oppose"},
             {"text": "a real post", "label": "neutral"}]
    (tmp_path / "l.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines), encoding="utf-8")
    run = subprocess.run(STANCE + ["data", "check", str(tmp_path / "l.jsonl")], capture_output=True, text=True)
    assert run.returncode == 1
    assert "l.jsonl:1 [text]: text is a list" in run.stderr and "l.jsonl:2 [text]: text is a number" in run.stderr
    (tmp_path / "enc.csv").write_bytes(b"text,label\nok,support\nbad \xff,oppose\n")
    run = subprocess.run(STANCE + ["data", "check", str(tmp_path / "enc.csv")], capture_output=True, text=True)
    assert run.returncode == 2 and "enc.csv:3" in run.stderr


def test_resume_refuses_a_partial_output_cut_short(tmp_path, clf, monkeypatch):
    out = tmp_path / "o.csv"
    src = interrupted(tmp_path, clf, monkeypatch, out, rows=50, stop_at=4)
    partial = tmp_path / "o.csv.partial"
    with open(partial, "r+b") as fh:
        fh.truncate(100)                    # rows the checkpoint vouches for are gone
    with pytest.raises(StanceError, match="shorter than the checkpoint"):
        score_files([str(src)], str(out), clf, ScoreOptions(chunk_size=10, resume=True))
    assert not out.exists()


def test_a_tfidf_folder_with_reordered_labels_is_refused(tmp_path, tfidf_model):
    import shutil
    folder = tmp_path / "m"
    shutil.copytree(tfidf_model, folder)
    meta = json.loads((folder / "stance.json").read_text())
    meta["labels"] = [meta["labels"][1], meta["labels"][0], *meta["labels"][2:]]     # support <-> oppose
    (folder / "stance.json").write_text(json.dumps(meta))
    with pytest.raises(StanceError, match="trained with"):
        StanceClassifier.load(folder)


def test_lone_surrogates_and_truncated_gzip_are_named_errors(tmp_path, clf, tfidf_model):
    src = tmp_path / "s.jsonl"
    rows = [json.dumps({"id": i, "text": f"war {i}"}) for i in range(20)]
    rows[12] = '{"id": 12, "text": "\\ud800 broken"}'
    src.write_text("\n".join(rows) + "\n", encoding="utf-8")
    with pytest.raises(StanceError, match="lone surrogate") as err:
        score_files([str(src)], str(tmp_path / "a.csv"), clf, ScoreOptions(chunk_size=5))
    assert err.value.line == 13
    summary = score_files([str(src)], str(tmp_path / "b.csv"), clf, ScoreOptions(on_bad_lines="skip"))
    assert summary.rows == 19 and [line for _, line, _ in summary.skipped_lines] == [13]

    whole = gzip.compress(("id,text\n" + "".join(f"{i},bomb the labs {i}\n" for i in range(5000))).encode())
    (tmp_path / "cut.csv.gz").write_bytes(whole[: len(whole) // 2])
    run = subprocess.run(STANCE + ["score", str(tmp_path / "cut.csv.gz"), "-o", str(tmp_path / "c.csv"),
                                   "--model", str(tfidf_model), "-q", "--chunk-size", "100"],
                         capture_output=True, text=True)
    assert run.returncode == 2 and "cut.csv.gz" in run.stderr and "cannot be read past" in run.stderr
    assert "Traceback" not in run.stderr and not (tmp_path / "c.csv").exists()


def test_excel_safe_leaves_jsonl_as_it_is(tmp_path, clf):
    (tmp_path / "in.csv").write_text("=HDR,text\n=SUM(1),@cmd strike\n", encoding="utf-8")
    score_files([str(tmp_path / "in.csv")], str(tmp_path / "o.jsonl"), clf, ScoreOptions(excel_safe=True))
    row = json.loads((tmp_path / "o.jsonl").read_text(encoding="utf-8"))
    assert row["=HDR"] == "=SUM(1)" and row["text"] == "@cmd strike"
