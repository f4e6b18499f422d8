"""The trained model folder: what `stance.json` records, how it is checked, and the folder's digest.

A folder holds the weights (`model.safetensors` + `config.json` + `tokenizer.json`, or
`tfidf.json` + `tfidf.safetensors`), `stance.json` (this module), `config.yaml` (the
run that made it), `metrics.json`, the model card `README.md`, and optionally
`onnx/` (the int8 scoring path) and `companion/` (a TF-IDF model folder the model is blended with,
see blend.py). Only JSON and safetensors are ever read.
"""
from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Dict, Iterable, List

from .errors import StanceError

FORMAT_VERSION = 1
META_FILE = "stance.json"
REQUIRED_FILES = {
    "transformer": ["config.json", "model.safetensors", "tokenizer.json"],
    "tfidf": ["tfidf.json", "tfidf.safetensors"],
}
# The files that decide a model's outputs.
DIGEST_FILES = ("config.json", "model.safetensors", "tokenizer.json", META_FILE, "tfidf.json", "tfidf.safetensors")
COMPANION_DIR = "companion"


@dataclass
class ModelMeta:
    """What `stance.json` in a model folder records, beside the weights."""

    engine: str                          # transformer | tfidf
    labels: List[str]
    backbone: str
    max_length: int = 128
    normalizer: Dict = field(default_factory=dict)
    temperature: float = 1.0             # fitted on dev
    temperature_in_weights: bool = False  # already folded into the classifier (hf_compat.py): score with T = 1
    min_confidence: float = 0.0
    fast_path: Dict = field(default_factory=dict)   # int8 ONNX check results (see onnx_runtime.py)
    bf16: Dict = field(default_factory=dict)        # bfloat16 check results (CPUs with native bf16)
    blend: Dict = field(default_factory=dict)       # mixed with the model in COMPANION_DIR (blend.py); {} = alone
    format_version: int = FORMAT_VERSION

    @classmethod
    def read(cls, folder: Path) -> "ModelMeta":
        """Read and check `stance.json` against the folder's files and the weights' own config."""
        path = folder / META_FILE
        if not folder.is_dir():
            raise StanceError("model folder not found", path=str(folder),
                              hint="train one with `stance train` or `make demo`")
        if not path.exists():
            raise StanceError(f"not a stance model folder: {META_FILE} is missing", path=str(folder))
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
            meta = cls(**{k: raw[k] for k in cls.__dataclass_fields__ if k in raw})
        except (json.JSONDecodeError, TypeError, KeyError, UnicodeDecodeError) as exc:
            raise StanceError(f"damaged {META_FILE}: {exc}", path=str(path)) from None
        meta._check(folder, path)
        return meta

    def _check(self, folder: Path, path: Path) -> None:
        if self.engine not in REQUIRED_FILES:
            raise StanceError(f"unknown engine '{self.engine}' in {META_FILE}", path=str(path))
        if (not isinstance(self.labels, list) or len(self.labels) < 2 or len(set(self.labels)) != len(self.labels)
                or not all(isinstance(l, str) and l for l in self.labels)):
            raise StanceError(f"damaged {META_FILE}: 'labels' must list at least two distinct label names",
                              path=str(path))
        for key in ("temperature", "min_confidence"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise StanceError(f"damaged {META_FILE}: '{key}' must be a number, not {value!r}", path=str(path))
        if self.temperature <= 0 or not 0 <= self.min_confidence <= 1:
            raise StanceError(f"damaged {META_FILE}: temperature must be > 0 and min_confidence within 0-1",
                              path=str(path))
        missing = [f for f in REQUIRED_FILES[self.engine] if not (folder / f).exists()]
        if missing:
            raise StanceError(f"incomplete model folder: missing {', '.join(missing)}", path=str(folder))
        if self.engine == "transformer":
            self._check_against_config(folder / "config.json")
        self._check_against_run_config(folder / "config.yaml")
        if self.blend:
            self._check_companion(folder / COMPANION_DIR)

    def _check_companion(self, companion: Path) -> None:
        if not isinstance(self.blend, dict):
            raise StanceError(f"damaged {META_FILE}: 'blend' must be a mapping", path=str(companion.parent))
        if not (companion / META_FILE).is_file():
            raise StanceError(f"incomplete model folder: {META_FILE} says the model is blended with a companion, "
                              f"but {COMPANION_DIR}/{META_FILE} is missing", path=str(companion.parent),
                              hint="copy the whole model folder, or retrain it")
        theirs = ModelMeta.read(companion)
        if theirs.engine != "tfidf" or theirs.labels != self.labels or theirs.blend:
            raise StanceError(f"the companion must be a TF-IDF model with the labels {self.labels}, not a "
                              f"{theirs.engine} model with {theirs.labels}", path=str(companion))

    def _check_against_run_config(self, path: Path) -> None:
        """The run config saved beside the weights names the labels in training order (TF-IDF folders
        have no config.json): a reordered stance.json would swap labels silently."""
        if not path.exists():
            return
        import yaml
        try:
            trained = ((yaml.safe_load(path.read_text(encoding="utf-8")) or {}).get("data") or {}).get("labels")
        except (yaml.YAMLError, UnicodeDecodeError, AttributeError) as exc:
            raise StanceError(f"damaged config.yaml: {exc}", path=str(path)) from None
        if trained is not None and list(trained) != self.labels:
            raise StanceError(f"{META_FILE} lists labels {self.labels} but the model was trained with {list(trained)} "
                              "(config.yaml data.labels)", path=str(path.parent),
                              hint="the folder was edited by hand or mixes two models; retrain it")

    def _check_against_config(self, config_path: Path) -> None:
        """The label order of `stance.json` must be the classifier head's, or support and oppose swap."""
        try:
            config = json.loads(config_path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise StanceError(f"damaged config.json: {exc}", path=str(config_path)) from None
        id2label = config.get("id2label")
        if isinstance(id2label, dict) and id2label:
            head = [id2label.get(str(i), id2label.get(i)) for i in range(len(id2label))]
            if head != self.labels:
                raise StanceError(f"{META_FILE} lists labels {self.labels} but the weights' classifier head "
                                  f"has {head} (config.json id2label)", path=str(config_path.parent),
                                  hint="the folder was edited by hand or mixes two models; retrain it")

    @property
    def scoring_temperature(self) -> float:
        """What the logits are divided by at scoring time."""
        return 1.0 if self.temperature_in_weights else self.temperature

    def to_dict(self) -> Dict:
        return asdict(self)

    def write(self, folder: Path) -> None:
        (folder / META_FILE).write_text(json.dumps(self.to_dict(), indent=2), encoding="utf-8")


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def folder_digest(folder: Path, names: Iterable[str] = DIGEST_FILES) -> str:
    """A checksum of the files that decide a model's outputs (for resume safety and provenance)."""
    h = hashlib.sha256()
    for name in [*names, *(f"{COMPANION_DIR}/{n}" for n in names)]:
        f = folder / name
        if f.exists():
            h.update(name.encode())
            h.update(file_sha256(f).encode())
    return h.hexdigest()
