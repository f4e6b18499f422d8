"""The shipped corpus: size, mix, annotation fields, and no duplicates or leakage (enforced here)."""
import json
from collections import Counter
from pathlib import Path

import pytest

from stance.check import check_files
from stance.labels import LABELS

DATA = Path(__file__).resolve().parents[1] / "data"
SPLITS = {s: [json.loads(l) for l in open(DATA / f"{s}.jsonl", encoding="utf-8")] for s in ("train", "dev", "test")}
ALL = [r for rows in SPLITS.values() for r in rows]


def test_size_and_splits():
    assert len(ALL) >= 4000
    assert len(SPLITS["dev"]) >= 500 and len(SPLITS["test"]) >= 500


def test_columns_and_values():
    for r in ALL:
        assert {"id", "text", "label", "lang", "platform", "created_at", "hard"} <= set(r)
        assert r["label"] in LABELS and r["lang"] in ("en", "es", "mixed") and isinstance(r["hard"], bool)
        assert "2025-08-01" <= r["created_at"][:10] <= "2025-12-31"


def test_mix():
    n = len(ALL)
    labels, langs = Counter(r["label"] for r in ALL), Counter(r["lang"] for r in ALL)
    for label, share in (("support", .30), ("oppose", .30), ("question", .20), ("neutral", .20)):
        assert abs(labels[label] / n - share) < 0.03, (label, labels[label] / n)
    assert langs["en"] / n >= 0.60 and langs["es"] / n >= 0.20 and langs["mixed"] / n >= 0.05
    assert sum(r["hard"] for r in ALL) / n >= 0.30


@pytest.mark.parametrize("split", ["dev", "test"])
def test_stratified_by_label_and_language(split):
    share = lambda rows, key, v: sum(r[key] == v for r in rows) / len(rows)
    for key, values in (("label", LABELS), ("lang", ("en", "es", "mixed"))):
        for v in values:
            assert abs(share(SPLITS[split], key, v) - share(SPLITS["train"], key, v)) < 0.03


@pytest.mark.parametrize("split", ["dev", "test"])
def test_second_annotation_kept(split):
    for r in SPLITS[split]:
        assert r["label_writer"] in LABELS and r["label_annotator"] in LABELS
        if r["label_writer"] == r["label_annotator"]:
            assert r["label"] == r["label_writer"]


def test_no_duplicates_or_leakage():
    """Exact and near duplicates (character 5-gram Jaccard >= 0.6) inside and across splits."""
    report = check_files([str(DATA / f"{s}.jsonl") for s in ("train", "dev", "test")])
    assert [str(p) for p in report.problems] == []


EXTERNAL = [json.loads(l) for l in open(DATA / "external" / "external.jsonl", encoding="utf-8")]


def test_external_set_is_writer_disjoint_double_annotated_and_plain():
    assert len(EXTERNAL) >= 800
    writers = {r["writer"] for r in EXTERNAL}
    assert writers and not writers & {r["id"].split("-")[0] for r in ALL}      # no training writer
    for r in EXTERNAL:
        assert r["label"] in LABELS and r["lang"] in ("en", "es", "mixed") and isinstance(r["hard"], bool)
        assert r["label_writer"] in LABELS and r["label_annotator"] in LABELS
        if r["label_writer"] == r["label_annotator"]:
            assert r["label"] == r["label_writer"]
    assert sum(r["hard"] for r in EXTERNAL) / len(EXTERNAL) <= 0.25          # mostly plain posts, as in real feeds
    langs = Counter(r["lang"] for r in EXTERNAL)
    assert langs["es"] / len(EXTERNAL) >= 0.2 and langs["mixed"] > 0


def test_external_set_does_not_leak_into_the_corpus():
    report = check_files([str(DATA / f"{s}.jsonl") for s in ("train", "dev", "test")]
                         + [str(DATA / "external" / "external.jsonl")])
    assert [str(p) for p in report.problems] == []
