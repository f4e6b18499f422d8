"""Run configuration: one YAML file describes a training run, one dataclass per concern.

The resolved config (defaults filled in, --set overrides applied) is saved in
the output folder as ``config.yaml``: `stance train --config DIR/config.yaml`
reproduces that model.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import yaml

from .errors import StanceError, suggestion
from .io import read_mapping
from .labels import LABELS


@dataclass
class DataConfig:
    train: str = "data/train.jsonl"
    dev: Optional[str] = "data/dev.jsonl"
    test: Optional[str] = "data/test.jsonl"
    # Posts by writers the training data never saw: scored after training for the card, never used to choose
    # anything (epochs, temperature and thresholds come from dev).
    external: Optional[str] = None
    text_column: str = "text"
    label_column: str = "label"
    labels: List[str] = field(default_factory=lambda: list(LABELS))


@dataclass
class ModelConfig:
    backbone: str = "minilm"          # short name (minilm, mpnet, e5-multilingual, tfidf) or a local HF folder
    max_length: int = 128
    normalize_urls: bool = True
    normalize_mentions: bool = True
    emoji_to_text: bool = True
    freeze_embeddings: bool = False   # cheaper steps for large-vocabulary backbones
    fast_path: bool = True            # build and check the int8 ONNX model for fast CPU scoring


@dataclass
class TrainingConfig:
    epochs: int = 6
    learning_rate: float = 5e-5
    batch_size: int = 16
    eval_batch_size: int = 64
    weight_decay: float = 0.01
    warmup_ratio: float = 0.1
    seed: int = 13
    class_weighting: str = "balanced"   # balanced | none
    early_stopping_patience: int = 2    # epochs without a better dev macro-F1
    threads: Optional[int] = None       # torch CPU threads; None = all cores
    device: str = "auto"                # auto | cpu | cuda
    # Out-of-writer predictions made by `stance crossfit` (a JSON file): they set how much softer than the
    # dev-fitted temperature new writers need, and the default confidence threshold.
    crossfit: Optional[str] = None
    # Share of each training post's target taken from its out-of-writer probabilities in `crossfit` (the rest
    # is its label; below 0.5 the label always stays the most likely class). 0 trains on labels alone.
    crossfit_target_weight: float = 0.0
    # A TF-IDF config whose model is trained beside this one (into OUTPUT/companion) and blended with it; the
    # mix is chosen on the out-of-writer predictions of both: `crossfit` and `companion_crossfit` (blend.py).
    companion: Optional[str] = None
    companion_crossfit: Optional[str] = None
    # The companion's training file, when not data.train (`stance adapt`: the original training posts and the
    # user's gold, where the transformer continues from its weights on the gold and a replay sample).
    companion_train: Optional[str] = None
    # TF-IDF baseline only
    tfidf_C: float = 4.0
    tfidf_max_features: int = 200000


@dataclass
class RunConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    output_dir: str = "models/default"

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)

    def save(self, path: Path) -> None:
        path.write_text(yaml.safe_dump(self.to_dict(), sort_keys=False, allow_unicode=True), encoding="utf-8")


_SECTIONS = {"data": DataConfig, "model": ModelConfig, "training": TrainingConfig}


def _coerce(value: Any, current: Any, key: str, source: str, optional: bool = False) -> Any:
    """Parse a --set string (or YAML scalar) into the type of the default; `null` clears an optional key."""
    if optional and (value is None or (isinstance(value, str) and value.strip().lower() in ("null", "~", "none"))):
        return None
    if isinstance(value, str) and not isinstance(current, str):
        value = yaml.safe_load(value)
    if isinstance(current, float) and isinstance(value, str):
        try:                      # YAML 1.1 reads "1e-4" as a string
            value = float(value)
        except ValueError:
            pass
    if isinstance(current, bool) and not isinstance(value, bool):
        raise StanceError(f"'{key}' must be true or false, not {value!r}", path=source)
    if isinstance(current, int) and not isinstance(current, bool) and isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(current, float) and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if current is not None and value is not None and not isinstance(value, type(current)):
        raise StanceError(f"'{key}' must be {type(current).__name__}, not {value!r}", path=source)
    return value


def _apply(cfg: RunConfig, key: str, value: Any, source: str) -> None:
    parts = key.split(".")
    if len(parts) == 1:
        if key != "output_dir":
            raise StanceError(f"unknown config key '{key}'", path=source,
                              hint=suggestion(key, ["output_dir", *_SECTIONS]) or "use section.key, e.g. training.epochs")
        cfg.output_dir = str(value)
        return
    if len(parts) != 2 or parts[0] not in _SECTIONS:
        raise StanceError(f"unknown config key '{key}'", path=source,
                          hint=suggestion(parts[0], _SECTIONS) or f"sections are {', '.join(_SECTIONS)}")
    section = getattr(cfg, parts[0])
    names = [f.name for f in dataclasses.fields(section)]
    if parts[1] not in names:
        near = suggestion(parts[1], names)
        raise StanceError(f"unknown config key '{key}'", path=source,
                          hint=near.replace("'", f"'{parts[0]}.", 1) if near else f"keys of {parts[0]}: {', '.join(names)}")
    optional = "Optional" in str({f.name: f.type for f in dataclasses.fields(section)}[parts[1]])
    setattr(section, parts[1], _coerce(value, getattr(section, parts[1]), key, source, optional))


def load_config(path: Optional[str], overrides: Sequence[str] = ()) -> RunConfig:
    """Defaults, then the YAML file, then ``key=value`` overrides, checked key by key."""
    cfg = RunConfig()
    if path:
        raw = read_mapping(path, "a config (sections data, model, training)")
        for top, value in raw.items():
            if isinstance(value, dict) and top in _SECTIONS:
                for key, sub in value.items():
                    _apply(cfg, f"{top}.{key}", sub, path)
            else:
                _apply(cfg, str(top), value, path)
    for item in overrides:
        if "=" not in item:
            raise StanceError(f"--set takes key=value, got '{item}'")
        key, value = item.split("=", 1)
        _apply(cfg, key.strip(), value, "--set")
    _validate(cfg, path or "config")
    return cfg


def _validate(cfg: RunConfig, source: str) -> None:
    t = cfg.training
    if t.epochs < 1 or t.batch_size < 1 or cfg.model.max_length < 8:
        raise StanceError("epochs and batch_size must be >= 1 and max_length >= 8", path=source)
    if not 0 < t.learning_rate < 1:
        raise StanceError(f"training.learning_rate {t.learning_rate} is out of range", path=source)
    if t.class_weighting not in ("balanced", "none"):
        raise StanceError("training.class_weighting must be 'balanced' or 'none'", path=source)
    if not 0 <= t.crossfit_target_weight < 0.5:
        raise StanceError("training.crossfit_target_weight must be at least 0 and below 0.5, so that every "
                          "post's own label stays its most likely class", path=source)
    if t.crossfit_target_weight and not t.crossfit:
        raise StanceError("training.crossfit_target_weight needs training.crossfit (the out-of-writer "
                          "probabilities it mixes into the targets)", path=source)
    if t.companion and not (t.crossfit and t.companion_crossfit):
        raise StanceError("training.companion needs training.crossfit and training.companion_crossfit: the "
                          "blend is chosen on the out-of-writer predictions of both configs", path=source,
                          hint="make them with `stance crossfit --config CONFIG -o FILE`")
    if (t.companion_crossfit or t.companion_train) and not t.companion:
        raise StanceError("training.companion_crossfit and companion_train are for training.companion (the "
                          "config to blend with)", path=source)
    if t.device not in ("auto", "cpu", "cuda"):
        raise StanceError("training.device must be auto, cpu or cuda", path=source)
    if len(set(cfg.data.labels)) != len(cfg.data.labels) or len(cfg.data.labels) < 2:
        raise StanceError("data.labels must list at least two distinct labels", path=source)
