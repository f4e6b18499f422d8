import pytest

from stance.config import load_config
from stance.errors import StanceError
from stance.textnorm import Normalizer


def test_emoji_become_words_and_links_mentions_are_normalised():
    n = Normalizer()
    out = n("🇺🇸💪 finally @SecWar https://t.co/AbC123 at 10:30")
    assert out == "flag for United States muscle finally @user http at 10:30"


def test_emoji_shortcut_gives_what_demojize_gives(monkeypatch):
    """Posts with no emoji character skip emoji.demojize; the output must not change."""
    import stance.textnorm as textnorm
    posts = ["plain text 123 #tag *x* ¿Señor ñandú?", "keycaps 1\ufe0f\u20e3 #\ufe0f\u20e3", "\u00a92025 \u2122 \u2139 info",
             "flags \U0001F1F2\U0001F1FD\U0001F1FA\U0001F1F8", "stray a\ufe0eb selector", "private \ue000x_y\ue001 use",
             "family \U0001F468\u200d\U0001F469\u200d\U0001F467", "no \u2764 vs \u2764\ufe0f"]
    norm = Normalizer(emoji_to_text=True)
    fast = [norm(p) for p in posts]

    class Everything:
        def isdisjoint(self, text):
            return False
    monkeypatch.setattr(textnorm, "_EMOJI_CHARS", Everything())
    assert [norm(p) for p in posts] == fast
    assert fast[0] == posts[0] and "mexico" in fast[3].lower()


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
