import pytest

from stance.config import load_config
from stance.errors import StanceError
from stance.textnorm import Normalizer


def test_emoji_become_words_and_links_mentions_are_normalised():
    n = Normalizer()
    out = n("🇺🇸💪 finally @SecWar https://t.co/AbC123 at 10:30")
    assert out == "flag for United States muscle finally @user http at 10:30"


def test_normalizer_round_trips_through_dict():
    n = Normalizer(emoji_to_text=False)
    assert Normalizer.from_dict(n.to_dict()) == n
    assert "🔥" in n("🔥 hit them")


def test_config_overrides_and_types(tmp_path):
    cfg_file = tmp_path / "run.yaml"
    cfg_file.write_text("model:\n  backbone: tfidf\ntraining:\n  epochs: 2\noutput_dir: x\n")
    cfg = load_config(str(cfg_file), ["training.learning_rate=1e-4", "training.epochs=3"])
    assert (cfg.model.backbone, cfg.training.epochs, cfg.training.learning_rate, cfg.output_dir) == ("tfidf", 3, 1e-4, "x")


@pytest.mark.parametrize("override,match", [
    ("training.epoch=3", r"did you mean 'training.epochs'"),
    ("modle.backbone=x", r"did you mean 'model'"),
    ("training.epochs=lots", r"must be int"),
    ("model.emoji_to_text=maybe", r"true or false"),
    ("training.class_weighting=sqrt", r"balanced"),
])
def test_bad_config_is_named(override, match):
    with pytest.raises(StanceError, match=match):
        load_config(None, [override])
