"""A model blended with a TF-IDF companion: the mix, how it is chosen on out-of-writer predictions, and a
trained blended folder scoring, checking itself and reporting as one model."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from typer.testing import CliRunner

from conftest import POSTS, write_jsonl
from stance import StanceClassifier, crossfit_train
from stance.blend import Blend, fit_blend
from stance.cli import app
from stance.config import load_config
from stance.crossfit import Crossfit, soften
from stance.errors import StanceError
from stance.folder import folder_digest
from stance.metrics import softmax
from stance.prevalence import LabelledOutputs

LABELS = ["support", "oppose", "question", "neutral"]


def _probs(rng, gold, right_share, strength):
    """Noisy probabilities whose top label is right on `right_share` of posts, else the next label;
    `strength` sets how sure they are, right or wrong."""
    top = np.where(rng.random(len(gold)) < right_share, gold, (gold + 1) % 4)
    return softmax(strength * np.eye(4)[top] + rng.normal(size=(len(gold), 4)), 1.0)


def _crossfit(ids, gold, probs, labels=LABELS):
    return Crossfit(labels, list(ids), np.array([i.split("-")[0] for i in ids]), np.asarray(gold), probs,
                    [], "recipe", {})


def test_apply_is_a_weighted_product_of_the_two_models():
    rng = np.random.default_rng(0)
    p, q = softmax(rng.normal(size=(30, 4)) * 2, 1.0), softmax(rng.normal(size=(30, 4)), 1.0)
    assert np.allclose(Blend(1.0, 1.0, 1.7).apply(p, q), p, atol=1e-6)
    assert np.allclose(Blend(0.0, 1.0, 1.7).apply(p, q), soften(q, 1.7), atol=1e-6)
    b = Blend(0.6, 0.8, 1.2).apply(p, q)
    expected = softmax((0.6 * np.log(p) + 0.4 * np.log(q) / 1.2) / 0.8, 1.0)
    assert np.allclose(b, expected, atol=1e-5) and np.allclose(b.sum(1), 1, atol=1e-5)


def test_the_blend_is_chosen_where_each_model_is_confidently_wrong_on_other_posts():
    rng = np.random.default_rng(3)
    n = 2000
    gold = rng.integers(0, 4, n)
    ids = [f"w{i % 8}-{i}" for i in range(n)]
    model = _probs(rng, gold, 0.85, strength=6.0)       # sure of itself, swaps included
    companion = _probs(rng, gold, 0.80, strength=3.0)   # errs elsewhere, and less sure
    mine = _crossfit(ids, gold, model)
    blend, report, held = fit_blend(mine, _crossfit(ids[::-1], gold[::-1], companion[::-1]))
    assert held.ids == ids and np.array_equal(held.gold, gold)          # in the model's order, whatever theirs
    assert np.allclose(held.probs, blend.apply(mine.calibrated, companion), atol=1e-6)
    assert 0 < blend.weight < 1
    oow = report["out_of_writer"]
    # Where the two agree the mix is sure, where they disagree it is not: its confident labels are right.
    assert oow["blend"]["accuracy_at_0.9"] > max(0.93, oow["model"]["accuracy_at_0.9"] + 0.08)
    assert oow["blend"]["share_at_0.9"] > oow["model"]["share_at_0.9"]
    assert oow["blend"]["ece"] < oow["model"]["ece"]
    assert oow["model"]["macro_f1"] > oow["companion"]["macro_f1"]
    assert report["posts"] == n and 0 < report["min_confidence"] < 1

    noise = softmax(rng.normal(size=(n, 4)), 1.0)              # a companion that knows nothing gets no weight
    assert fit_blend(_crossfit(ids, gold, model), _crossfit(ids, gold, noise))[0].weight >= 0.9


def test_crossfit_files_that_do_not_match_are_refused():
    rng = np.random.default_rng(0)
    gold = rng.integers(0, 4, 100)
    ids = [f"w{i % 4}-{i}" for i in range(100)]
    probs = _probs(rng, gold, 0.8, 3.0)
    mine = _crossfit(ids, gold, probs)
    with pytest.raises(StanceError, match="different labels"):
        fit_blend(mine, _crossfit(ids, gold, probs, labels=["a", "b", "c", "d"]))
    with pytest.raises(StanceError, match="only 50 of the model's 100 posts"):
        fit_blend(mine, _crossfit(ids[:50], gold[:50], probs[:50]))
    with pytest.raises(StanceError, match="different gold labels"):
        fit_blend(mine, _crossfit(ids, (gold + 1) % 4, probs))


@pytest.mark.parametrize("sets, message", [
    (["training.companion=models/tfidf.yaml"], "needs training.crossfit and training.companion_crossfit"),
    (["training.companion_crossfit=x.json"], "are for training.companion"),
    (["training.companion_train=x.jsonl"], "are for training.companion"),
])
def test_companion_settings_are_checked(sets, message):
    with pytest.raises(StanceError, match=message):
        load_config(None, sets)


@pytest.fixture(scope="module")
def blended(tiny_backbone, tmp_path_factory):
    """A tiny transformer trained with a TF-IDF companion, both cross-fitted on four writers."""
    d = tmp_path_factory.mktemp("blend")
    rows = {"train": [], "dev": [], "test": []}
    for w in ("w1", "w2", "w3", "w4"):
        for i, (text, label) in enumerate(POSTS):
            rows[{0: "dev", 1: "test"}.get(i % 6, "train")].append(
                {"id": f"{w}-{i:03d}", "text": f"{text} ({w} #{i})", "label": label})
    files = {name: write_jsonl(d / f"{name}.jsonl", r) for name, r in rows.items()}
    data = [f"data.{n}={p}" for n, p in files.items()]
    (d / "tfidf.yaml").write_text("model:\n  backbone: tfidf\ntraining:\n  tfidf_C: 2.0\n", encoding="utf-8")
    tiny = [*data, f"model.backbone={tiny_backbone}", "training.epochs=2", "training.batch_size=8",
            "model.max_length=32", "training.threads=1", "training.learning_rate=0.001", "model.fast_path=false"]
    crossfit_train.run_crossfit(load_config(None, [*tiny, f"output_dir={d / 'x'}"]), str(d / "tiny.xf.json"), folds=2)
    crossfit_train.run_crossfit(load_config(str(d / "tfidf.yaml"), data), str(d / "tfidf.xf.json"), folds=2)
    cfg = load_config(None, [*tiny, f"output_dir={d / 'model'}", f"training.crossfit={d / 'tiny.xf.json'}",
                             f"training.companion={d / 'tfidf.yaml'}",
                             f"training.companion_crossfit={d / 'tfidf.xf.json'}"])
    result = crossfit_train.train(cfg, progress=False)
    return d / "model", files, result


def test_a_blended_model_scores_with_both_models(blended):
    folder, files, result = blended
    meta = json.loads((folder / "stance.json").read_text())
    assert (folder / "companion" / "tfidf.safetensors").is_file()
    blend = Blend(**meta["blend"])
    assert blend.to_dict() == {k: result.metrics["blend"][k] for k in ("weight", "temperature", "companion_factor")}
    assert meta["min_confidence"] == result.metrics["blend"]["min_confidence"]

    clf = StanceClassifier.load(folder)
    texts = [json.loads(line)["text"] for line in open(files["dev"], encoding="utf-8")]
    alone = softmax(clf.logits(texts)[0], clf.meta.scoring_temperature)
    expected = blend.apply(alone, clf.companion.predict_proba(texts))
    assert np.allclose(clf.predict_proba(texts), expected, atol=1e-6)
    assert "blended with its TF-IDF companion" in clf.runtime_reason
    scored, _ = clf.score_records([{"text": t} for t in texts[:5]])
    assert [r["p_support"] for r in scored] == [round(float(p), 4) for p in expected[:5, 0]]
    # What `stance report` takes as the model's error rates: the blend's, on posts by writers it never saw.
    d = folder.parent
    _, _, held = fit_blend(Crossfit.load(d / "tiny.xf.json", LABELS), Crossfit.load(d / "tfidf.xf.json", LABELS))
    outputs = LabelledOutputs.from_model(folder, LABELS)
    assert np.allclose(outputs.probs, held.probs, atol=1e-4) and np.array_equal(outputs.gold, held.gold)
    assert "never saw its writer" in outputs.source and len(set(outputs.groups)) == 4
    card = (folder / "README.md").read_text()
    assert "Blend with a TF-IDF companion" in card and f"w = {blend.weight}" in card


def test_a_blended_model_is_one_model_to_check_resume_and_evaluate(blended, tmp_path):
    folder, files, _ = blended
    copy = tmp_path / "m"
    shutil.copytree(folder, copy)
    before = folder_digest(copy)
    with open(copy / "companion" / "tfidf.json", "a", encoding="utf-8") as fh:
        fh.write(" ")                                      # still valid JSON, another file
    assert folder_digest(copy) != before                   # a changed companion is a changed model
    res = CliRunner().invoke(app, ["evaluate", str(files["test"]), "--model", str(folder), "-o", str(tmp_path / "e")])
    assert res.exit_code == 0, res.output

    (copy / "companion" / "tfidf.safetensors").unlink()
    with pytest.raises(StanceError, match="missing tfidf.safetensors") as exc:
        StanceClassifier.load(copy)
    assert "companion" in str(exc.value)
    shutil.rmtree(copy / "companion")
    with pytest.raises(StanceError, match="companion/stance.json is missing"):
        StanceClassifier.load(copy)
    meta = json.loads((folder / "stance.json").read_text())
    shutil.copytree(folder / "companion", copy / "companion")
    (copy / "stance.json").write_text(json.dumps({**meta, "blend": {**meta["blend"], "temperature": -1}}))
    with pytest.raises(StanceError, match="damaged blend"):
        StanceClassifier.load(copy)


def test_a_companion_that_is_not_tfidf_is_refused_before_training(blended, tiny_backbone, tmp_path):
    folder, files, _ = blended
    bad = tmp_path / "bad.yaml"
    bad.write_text(f"model:\n  backbone: {tiny_backbone}\n", encoding="utf-8")
    d = folder.parent
    cfg = load_config(None, [*(f"data.{n}={p}" for n, p in files.items()), "model.backbone=tfidf",
                             f"output_dir={tmp_path / 'm'}", f"training.crossfit={d / 'tfidf.xf.json'}",
                             f"training.companion={bad}", f"training.companion_crossfit={d / 'tfidf.xf.json'}"])
    with pytest.raises(StanceError, match="must name a TF-IDF config") as exc:
        crossfit_train.train(cfg, progress=False)
    assert str(bad) in str(exc.value) and not (tmp_path / "m").exists()


def test_scoring_and_reporting_with_a_blended_model_say_so(blended, tmp_path):
    import csv
    folder, _, _ = blended
    src = tmp_path / "posts.csv"
    with open(src, "w", encoding="utf-8", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["id", "text"])
        w.writerows([i, POSTS[i % len(POSTS)][0]] for i in range(60))
    out = tmp_path / "scored.csv"
    res = CliRunner().invoke(app, ["score", str(src), "-o", str(out), "--model", str(folder), "-q"])
    assert res.exit_code == 0, res.output
    with open(out, encoding="utf-8", newline="") as fh:
        rows = list(csv.DictReader(fh))
    expected = StanceClassifier.load(folder).predict_proba([r["text"] for r in rows])
    assert [r["p_oppose"] for r in rows] == [f"{round(float(p), 4)}" for p in expected[:, 1]]
    meta = json.loads((tmp_path / "scored.csv.meta.json").read_text())
    assert meta["blend"] == json.loads((folder / "stance.json").read_text())["blend"]
    assert "blended with its TF-IDF companion" in meta["runtime_reason"]
    res = CliRunner().invoke(app, ["report", str(out), "-o", str(tmp_path / "rep")])
    assert res.exit_code == 0, res.output
    assert "blended with its TF-IDF companion" in (tmp_path / "rep" / "report.md").read_text()


def test_adapting_a_blended_model_retrains_its_companion_on_the_original_posts_and_the_gold(blended, tmp_path):
    from stance.adapt import AdaptOptions, adapt
    folder, files, _ = blended
    gold = write_jsonl(tmp_path / "gold.jsonl", [{"text": f"{t} (gold {i})", "label": l}
                                                 for i in range(2) for t, l in POSTS])
    info = adapt(str(folder), str(gold), str(tmp_path / "adapted"), AdaptOptions(epochs=1, replay=10),
                       progress=False)
    out = tmp_path / "adapted"
    companion_train = out / "adapt_data" / "companion_train.jsonl"
    assert load_config(str(out / "config.yaml")).training.companion_train == str(companion_train)
    assert load_config(str(out / "companion" / "config.yaml")).data.train == str(companion_train)
    texts = [json.loads(line)["text"] for line in open(companion_train, encoding="utf-8")]
    original = [json.loads(line)["text"] for line in open(files["train"], encoding="utf-8")]
    assert len(texts) == len(original) + info["trained_on_gold"] and set(original) <= set(texts)
    held = {json.loads(line)["text"] for line in open(out / "adapt_holdout.jsonl", encoding="utf-8")}
    assert not held & set(texts)                          # the held-out gold stays unseen by both models
    clf = StanceClassifier.load(out)
    assert clf.blend is not None and clf.predict("bomb the labs") in LABELS
    # The cross-fit files describe the corpus and recipe, not the adapted model: its error rates for `stance
    # report` are its own dev and held-out gold posts.
    assert "dev + test posts" in LabelledOutputs.from_model(out, LABELS).source
