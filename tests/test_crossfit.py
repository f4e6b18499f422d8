"""Writer cross-fitting: every labelled post scored by a model that never saw its writer, and what training
takes from that (a softer temperature for new writers, out-of-writer error rates for share estimates)."""
from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from conftest import POSTS, write_jsonl
from stance import crossfit_train
from stance.cli import app
from stance.config import load_config
from stance.crossfit import Crossfit, recipe_digest, soften
from stance.errors import StanceError
from stance.metrics import softmax
from stance.prevalence import LabelledOutputs

LABELS = ["support", "oppose", "question", "neutral"]
WRITERS = ["w1", "w2", "w3", "w4"]


@pytest.fixture()
def writer_files(tmp_path):
    """Four writers, each writing every test post in their own words; 4 + 4 of each writer's 24 to dev and test."""
    rows = {"train": [], "dev": [], "test": []}
    for w in WRITERS:
        for i, (text, label) in enumerate(POSTS):
            split = {0: "dev", 1: "test"}.get(i % 6, "train")
            rows[split].append({"id": f"{w}-{i:03d}", "text": f"{text} ({w} #{i})", "label": label})
    return {name: write_jsonl(tmp_path / f"{name}.jsonl", r) for name, r in rows.items()}


def _config(files, out, *extra):
    return load_config(None, [f"data.{n}={p}" for n, p in files.items()]
                       + ["model.backbone=tfidf", f"output_dir={out}", *extra])


def test_soften_is_a_higher_temperature():
    z = np.random.default_rng(0).normal(size=(50, 4)) * 3
    assert np.allclose(soften(softmax(z, 1.3), 1.7), softmax(z, 1.3 * 1.7), atol=1e-9)


def test_every_post_is_scored_by_a_model_that_never_saw_its_writer_and_a_crash_keeps_finished_folds(
        writer_files, tmp_path, monkeypatch):
    trained_on = []
    real_train = crossfit_train.train

    def recording_train(cfg, progress=None):
        if len(trained_on) == 1 and not (tmp_path / "crashed").exists():
            (tmp_path / "crashed").touch()
            raise KeyboardInterrupt                       # the second fold dies
        ids = [json.loads(line)["id"] for line in open(cfg.data.train, encoding="utf-8")]
        trained_on.append({i.split("-")[0] for i in ids})
        return real_train(cfg, progress)

    monkeypatch.setattr(crossfit_train, "train", recording_train)
    out = tmp_path / "xf.json"
    cfg = _config(writer_files, tmp_path / "m")
    with pytest.raises(KeyboardInterrupt):
        crossfit_train.run_crossfit(cfg, str(out), folds=2)
    assert not out.exists() and (tmp_path / "xf.json.partial").exists() and len(trained_on) == 1
    result = crossfit_train.run_crossfit(cfg, str(out), folds=2)
    assert len(trained_on) == 2                           # the finished fold was not trained again
    assert not (tmp_path / "xf.json.partial").exists()

    all_ids = sorted(json.loads(line)["id"] for p in writer_files.values() for line in open(p, encoding="utf-8"))
    assert sorted(result.ids) == all_ids                  # each labelled post exactly once
    for fold, seen in zip(result.folds, trained_on):
        assert not set(fold["held_out"]) & seen and set(fold["held_out"]) | seen == set(WRITERS)
    held_of = {w: k for k, f in enumerate(result.folds) for w in f["held_out"]}
    assert all(held_of[i.split("-")[0]] == held_of[g] for i, g in zip(result.ids, result.groups))

    loaded = Crossfit.load(out, LABELS)                   # what training reads back
    assert loaded.recipe == recipe_digest(cfg) and np.allclose(loaded.probs, result.probs, atol=1e-5)
    assert loaded.summary()["posts"] == len(all_ids) and loaded.summary()["writers"] == 4
    assert loaded.stale_for(cfg) is None
    assert "other model or training settings" in loaded.stale_for(_config(writer_files, tmp_path / "m",
                                                                           "training.tfidf_C=1.0"))
    with open(writer_files["dev"], "a", encoding="utf-8") as fh:
        fh.write(json.dumps({"id": "w9-001", "text": "Sink them all.", "label": "support"}) + "\n")
    assert "the dev file" in loaded.stale_for(cfg)


def test_crossfit_command(writer_files, tmp_path):
    cfg_file = tmp_path / "tfidf.yaml"
    cfg_file.write_text("data:\n" + "".join(f"  {n}: {p}\n" for n, p in writer_files.items())
                        + "model:\n  backbone: tfidf\n", encoding="utf-8")
    res = CliRunner().invoke(app, ["crossfit", "--config", str(cfg_file), "-o", str(tmp_path / "new" / "x.json"),
                                   "--folds", "4"])
    assert res.exit_code == 0, res.output
    assert "leave-writers-out macro-F1" in res.output and "4 writers, 96 posts" in res.output
    res = CliRunner().invoke(app, ["crossfit", "--config", str(cfg_file), "-o", str(tmp_path / "y.json"),
                                   "--folds", "5"])
    assert res.exit_code != 0 and "between 2 and the number of writers (4)" in str(res.exception)


def _overconfident_crossfit(path, n=400):
    """Out-of-writer probabilities that claim 0.99 and are right 70% of the time."""
    rng = np.random.default_rng(1)
    gold = rng.integers(0, 4, n)
    pred = np.where(rng.random(n) < 0.7, gold, (gold + 1) % 4)
    probs = np.full((n, 4), 0.01 / 3)
    probs[np.arange(n), pred] = 0.99
    ids = [f"w{i % 5}-{i:04d}" for i in range(n)]
    Crossfit(LABELS, ids, np.array([i.split("-")[0] for i in ids]), gold, probs,
             [{"held_out": ["w0"], "posts": n, "macro_f1": 0.7, "dev_temperature": 1.0, "seconds": 1.0}],
             "recipe", {}).save(path)
    return gold


def test_training_with_a_crossfit_softens_the_temperature_and_keeps_out_of_writer_error_rates(
        writer_files, tmp_path, caplog):
    xf_path = tmp_path / "xf.json"
    _overconfident_crossfit(xf_path)
    plain = crossfit_train.train(_config(writer_files, tmp_path / "plain"), progress=False)
    with_xf = crossfit_train.train(_config(writer_files, tmp_path / "xf", f"training.crossfit={xf_path}"),
                                   progress=False)
    assert "may not fit this model: it was made with other model or training settings" in caplog.text
    cal = with_xf.metrics["calibration"]
    factor = cal["crossfit"]["temperature_factor"]
    assert factor > 2.5                                   # 0.99 claimed, 70% right: much softer
    assert cal["dev_temperature"] == plain.metrics["calibration"]["temperature"]
    assert cal["temperature"] == pytest.approx(cal["dev_temperature"] * factor, abs=1e-3)
    meta = json.loads((tmp_path / "xf" / "stance.json").read_text())
    assert meta["temperature"] == cal["temperature"]
    assert cal["crossfit"]["ece_after_factor"] < 0.05 < cal["crossfit"]["ece_at_dev_temperature"]

    # The threshold is chosen on the out-of-writer posts: 70% right at every confidence, never 90%.
    assert cal["min_confidence"] == 0.0 and plain.metrics["calibration"]["min_confidence"] > 0
    # The dev and test outputs the share estimators use are at the softer temperature.
    soft, hard = (LabelledOutputs.from_model(tmp_path / name, LABELS) for name in ("xf", "plain"))
    assert np.array_equal(soft.gold, hard.gold)
    assert np.array_equal(soft.probs.argmax(1), hard.probs.argmax(1))
    assert soft.probs.max(1).mean() < hard.probs.max(1).mean() - 0.02
    assert "Leave-writers-out macro-F1" in (tmp_path / "xf" / "README.md").read_text()


def test_a_bad_crossfit_file_is_refused_before_training(writer_files, tmp_path):
    xf_path = tmp_path / "xf.json"
    _overconfident_crossfit(xf_path)
    with pytest.raises(StanceError, match="labels"):
        Crossfit.load(xf_path, ["support", "oppose", "neutral", "question"])
    raw = json.loads(xf_path.read_text())
    raw["probs"] = raw["probs"][:-1]
    xf_path.write_text(json.dumps(raw))
    with pytest.raises(StanceError, match="damaged cross-fit file") as exc:
        crossfit_train.train(_config(writer_files, tmp_path / "m", f"training.crossfit={xf_path}"), progress=False)
    assert str(xf_path) in str(exc.value) and not (tmp_path / "m").exists()
    with pytest.raises(StanceError, match="cannot read the cross-fit file"):
        Crossfit.load(tmp_path / "absent.json", LABELS)


def test_targets_mix_labels_with_out_of_writer_probabilities():
    probs = np.array([[0.1, 0.6, 0.2, 0.1], [0.25, 0.25, 0.25, 0.25]])
    xf = Crossfit(LABELS, ["a-1", "a-2"], np.array(["a", "a"]), np.array([0, 1]), probs, [], "", {})
    target = xf.targets(["a-2", "b-9", "a-1"], np.array([1, 2, 0]), 0.4)
    cal = xf.calibrated
    assert np.allclose(target[0], 0.6 * np.eye(4)[1] + 0.4 * cal[1])
    assert np.array_equal(target[1], np.eye(4)[2])        # not in the result: its label alone
    assert np.allclose(target[2], 0.6 * np.eye(4)[0] + 0.4 * cal[0])
    assert np.allclose(target.sum(1), 1) and list(target.argmax(1)) == [1, 2, 0]   # the label stays first
    assert np.array_equal(xf.targets(["a-1"], np.array([3]), 0.0), np.eye(4)[[3]])


@pytest.mark.parametrize("sets, message", [
    (["training.crossfit_target_weight=0.3"], "needs training.crossfit"),
    (["training.crossfit=x.json", "training.crossfit_target_weight=0.5"], "below 0.5"),
])
def test_target_weight_is_checked(sets, message):
    with pytest.raises(StanceError, match=message):
        load_config(None, sets)


def test_soft_cross_entropy_is_weighted_cross_entropy_and_pulls_toward_its_targets():
    import torch
    from stance.train import soft_cross_entropy
    g = torch.Generator().manual_seed(0)
    logits, gold = torch.randn(32, 4, generator=g), torch.randint(0, 4, (32,), generator=g)
    weight = torch.tensor([0.5, 1.0, 2.0, 4.0])
    hard = torch.nn.CrossEntropyLoss(weight=weight)(logits, gold)
    onehot = torch.nn.functional.one_hot(gold, 4).float()
    assert torch.allclose(soft_cross_entropy(logits, onehot, weight[gold]), hard, atol=1e-6)
    # Minimised over free logits, the model's probabilities become the targets.
    targets = torch.tensor([[0.6, 0.2, 0.1, 0.1], [0.1, 0.55, 0.3, 0.05]])
    z = torch.zeros(2, 4, requires_grad=True)
    opt = torch.optim.Adam([z], lr=0.1)
    for _ in range(500):
        opt.zero_grad()
        soft_cross_entropy(z, targets, torch.tensor([1.0, 3.0])).backward()
        opt.step()
    assert torch.allclose(torch.softmax(z, -1), targets, atol=1e-3)


def test_training_with_a_target_weight_records_it(tiny_backbone, labelled_files, tmp_path):
    from conftest import train_model
    rows = [json.loads(line) for line in open(labelled_files["train"], encoding="utf-8")]
    xf_path = tmp_path / "xf.json"
    Crossfit(LABELS, [r["id"] for r in rows], np.array([f"w{i % 3}" for i in range(len(rows))]),
             np.array([LABELS.index(r["label"]) for r in rows]), np.full((len(rows), 4), 0.25), [], "", {}
             ).save(xf_path)
    result = train_model(tiny_backbone, labelled_files, tmp_path / "soft", **{
        "training.crossfit": xf_path, "training.crossfit_target_weight": 0.3})
    assert load_config(str(tmp_path / "soft" / "config.yaml")).training.crossfit_target_weight == 0.3
    assert result.metrics["calibration"]["crossfit"]["posts"] == len(rows)
    with pytest.raises(StanceError, match="TF-IDF"):
        crossfit_train.train(load_config(None, [f"data.{n}={p}" for n, p in labelled_files.items()] + [
            "model.backbone=tfidf", f"output_dir={tmp_path / 't'}", f"training.crossfit={xf_path}",
            "training.crossfit_target_weight=0.3"]), progress=False)


def test_groups_from_a_column_and_ids_that_name_no_writer(tmp_path):
    """Posts whose ids say nothing of their writer are grouped by --group-column; without one, a clear error."""
    rows = {"train": [], "dev": []}
    for w, source in enumerate(["r/politics", "r/mexico", "r/news"]):
        for i, (text, label) in enumerate(POSTS):
            rows["dev" if i % 6 == 0 else "train"].append(
                {"id": f"{w}{i:03d}", "text": f"{text} ({source})", "label": label, "source": source})
    files = {n: write_jsonl(tmp_path / f"{n}.jsonl", r) for n, r in rows.items()}
    cfg = load_config(None, [f"data.{n}={p}" for n, p in files.items()]
                      + ["data.test=null", "model.backbone=tfidf", f"output_dir={tmp_path / 'm'}"])
    with pytest.raises(StanceError, match="cannot tell the posts' writers apart") as exc:
        crossfit_train.run_crossfit(cfg, str(tmp_path / "x.json"), folds=3)
    assert "--group-column" in str(exc.value)
    result = crossfit_train.run_crossfit(cfg, str(tmp_path / "x.json"), folds=3, group_column="source")
    assert sorted(f["held_out"][0] for f in result.folds) == ["r/mexico", "r/news", "r/politics"]
    assert len(result.ids) == 3 * len(POSTS)
    assert all(g == next(r["source"] for r in rows["train"] + rows["dev"] if r["id"] == i)
               for i, g in zip(result.ids, result.groups))
