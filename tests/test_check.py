"""`stance data check`: each broken case fails with a precise message; clean data passes."""
import subprocess
import sys
from pathlib import Path

import pandas as pd

from conftest import POSTS, write_jsonl
from stance.check import check_files, near_duplicate_pairs

ROOT = Path(__file__).resolve().parents[1]


def rows(n=None):
    return [{"id": f"r{i}", "text": t, "label": l, "lang": "en"} for i, (t, l) in enumerate(POSTS[:n])]


def problems(*paths):
    return [str(p) for p in check_files([str(p) for p in paths]).problems]


def test_clean_file_passes(tmp_path):
    rep = check_files([str(write_jsonl(tmp_path / "ok.jsonl", rows()))])
    assert rep.problems == [] and rep.exit_code == 0


def test_label_near_miss_and_case(tmp_path):
    r = rows()
    r[1]["label"], r[2]["label"], r[3]["label"] = "Support", "opose", "FAVOR"
    out = problems(write_jsonl(tmp_path / "f.jsonl", r))
    assert f"{tmp_path}/f.jsonl:2 [label]: unknown label 'Support'; did you mean 'support'?" in out
    assert f"{tmp_path}/f.jsonl:3 [label]: unknown label 'opose'; did you mean 'oppose'?" in out
    assert any(":4 [label]: unknown label 'FAVOR'; labels are support" in p for p in out)


def test_empty_text_duplicate_id_and_text(tmp_path):
    r = rows(6)
    r[1]["text"] = "   "
    r[2]["id"] = "r0"
    r[4]["text"] = r[3]["text"].upper()
    out = problems(write_jsonl(tmp_path / "f.jsonl", r))
    assert any(p.endswith(":2 [text]: empty or whitespace-only text") for p in out)
    assert any(":3 [id]: duplicate id 'r0'" in p for p in out)
    assert any(":5 [text]: duplicate text: same text as" in p and "f.jsonl:4" in p for p in out)


def test_near_duplicate_and_leakage_across_splits(tmp_path):
    train = write_jsonl(tmp_path / "train.jsonl", rows())
    dev_rows = [{"id": "d1", "text": POSTS[7][0].replace("without consent", "without any consent"), "label": "oppose"},
                {"id": "d2", "text": POSTS[12][0], "label": "question"}]
    dev = write_jsonl(tmp_path / "dev.jsonl", dev_rows)
    out = problems(train, dev)
    assert any("dev.jsonl:1 [text]: near duplicate leaks across splits of" in p and "train.jsonl:8" in p for p in out)
    assert any("dev.jsonl:2 [text]: leaks across splits: same text as" in p for p in out)


def test_missing_column_and_bad_csv(tmp_path):
    src = tmp_path / "f.csv"
    src.write_text("id,body,label\n1,hello,support\n2,\"broken,oppose\n")
    out = problems(src)
    assert any("f.csv:1 [text]: required column 'text' is missing" in p for p in out)
    src2 = tmp_path / "g.csv"
    src2.write_text("id,text,label\n1,hello,support\n2,a,b,c\n")
    assert any("g.csv:3: expected 3 fields, found 4" in p for p in problems(src2))


def test_bad_encoding_names_line(tmp_path):
    src = tmp_path / "f.csv"
    src.write_bytes(b"text,label\nhola,neutral\ncaf\xe9,neutral\n")
    out = problems(src)
    assert any("f.csv:3: bytes at position 4" in p for p in out)


def test_exit_codes_and_summary_table(tmp_path):
    ok = write_jsonl(tmp_path / "ok.jsonl", rows())
    run = lambda *p: subprocess.run([sys.executable, "-m", "stance.cli", "data", "check", *map(str, p)],
                                    capture_output=True, text=True, cwd=ROOT)
    r = run(ok)
    assert r.returncode == 0 and "support" in r.stdout and "total" in r.stdout
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"text": "x", "label": "maybe"}])
    assert run(bad).returncode == 1
    assert run(tmp_path / "missing.jsonl").returncode == 2
    (tmp_path / "empty.csv").write_text("")
    assert run(tmp_path / "empty.csv").returncode == 2


def test_near_duplicate_pairs_threshold():
    texts = ["the navy sank another boat off venezuela today",
             "the navy sank another boat off venezuela today!!",
             "completely different words about something else"]
    pairs = near_duplicate_pairs(texts, 0.6)
    assert [(i, j) for i, j, _ in pairs] == [(0, 1)]


def test_parquet_and_tsv_inputs(tmp_path):
    df = pd.DataFrame(rows())
    df.to_parquet(tmp_path / "f.parquet")
    df.to_csv(tmp_path / "f.tsv", sep="\t", index=False)
    assert problems(tmp_path / "f.parquet") == []
    assert problems(tmp_path / "f.tsv") == []
