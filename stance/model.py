"""`StanceClassifier`: load a trained model folder and classify posts.

    >>> from stance import StanceClassifier
    >>> clf = StanceClassifier.load("models/default")
    >>> clf.predict(["Bomb the labs. About time.", "¿Esto es legal?"])
    ['support', 'question']
"""
from __future__ import annotations

import glob
import json
import os
import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from .errors import StanceError
from .metrics import softmax
from .quantize import PER_TOKEN_INT8
from .textnorm import Normalizer

FORMAT_VERSION = 1
META_FILE = "stance.json"
_REQUIRED = {
    "transformer": ["config.json", "model.safetensors", "tokenizer.json"],
    "tfidf": ["tfidf.json", "tfidf.safetensors"],
}


@dataclass
class ModelMeta:
    """What `stance.json` in a model folder records, beside the weights."""

    engine: str                          # transformer | tfidf
    labels: List[str]
    backbone: str
    max_length: int = 128
    normalizer: Dict = field(default_factory=dict)
    temperature: float = 1.0
    min_confidence: float = 0.0
    fast_path: Dict = field(default_factory=dict)   # int8 ONNX check results (see onnx_runtime.py)
    bf16: Dict = field(default_factory=dict)        # bfloat16 check results (CPUs with native bf16)
    format_version: int = FORMAT_VERSION

    @classmethod
    def read(cls, folder: Path) -> "ModelMeta":
        path = folder / META_FILE
        if not folder.is_dir():
            raise StanceError("model folder not found", path=str(folder),
                              hint="train one with `stance train` or `make demo`")
        if not path.exists():
            raise StanceError(f"not a stance model folder: {META_FILE} is missing", path=str(folder))
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
            meta = cls(**{k: raw[k] for k in cls.__dataclass_fields__ if k in raw})
        except (json.JSONDecodeError, TypeError, KeyError) as exc:
            raise StanceError(f"damaged {META_FILE}: {exc}", path=str(path)) from None
        if meta.engine not in _REQUIRED:
            raise StanceError(f"unknown engine '{meta.engine}' in {META_FILE}", path=str(path))
        missing = [f for f in _REQUIRED[meta.engine] if not (folder / f).exists()]
        if missing:
            raise StanceError(f"incomplete model folder: missing {', '.join(missing)}", path=str(folder))
        return meta

    def write(self, folder: Path) -> None:
        (folder / META_FILE).write_text(json.dumps(self.__dict__, indent=2), encoding="utf-8")


def pick_device(requested: str = "auto") -> str:
    """'cuda' when asked or when a GPU is usable, else 'cpu'."""
    if requested != "auto":
        return requested
    if not glob.glob("/dev/nvidia[0-9]*"):
        return "cpu"        # no NVIDIA device: skip importing torch just to ask (CPU scoring never needs it)
    import torch
    return "cuda" if torch.cuda.is_available() else "cpu"


def _cpu_flags() -> str:
    try:
        return Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""


def cpu_has_bf16() -> bool:
    """Whether this CPU multiplies bfloat16 natively (AVX-512 BF16 or AMX); emulated bf16 is slower than fp32."""
    flags = _cpu_flags()
    return " avx512_bf16" in flags or " amx_bf16" in flags


def cpu_int8_exact() -> bool:
    """Whether int8 products with full-range activations are exact here: x86 with VNNI, or not x86.

    Without VNNI, x86 int8 kernels add pairs of u8 x s8 products in int16, which can saturate; the
    int8 check made at training time (on another CPU) would not hold there.
    """
    if platform.machine().lower() not in ("x86_64", "amd64", "i386", "i686"):
        return True
    flags = _cpu_flags()
    return " avx512_vnni" in flags or " avx_vnni" in flags or " amx_int8" in flags


class TransformerEngine:
    """Fine-tuned Hugging Face encoder; length-sorted batches with dynamic padding.

    ``bf16`` casts the weights to bfloat16: each value is rounded on its own, so a post's label never
    depends on the posts batched with it.
    """

    def __init__(self, folder: Path, meta: ModelMeta, device: str = "auto", bf16: bool = False):
        from transformers import AutoModelForSequenceClassification, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()   # a bar per load would drown scoring's own progress
        try:
            tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
            model = AutoModelForSequenceClassification.from_pretrained(
                str(folder), local_files_only=True, use_safetensors=True)
        except Exception as exc:  # transformers raises many types for a damaged folder
            raise StanceError(f"cannot load the model weights or tokenizer: {exc}", path=str(folder)) from None
        self._setup(model, tokenizer, meta.max_length, device, bf16)

    @classmethod
    def from_objects(cls, model, tokenizer, max_length: int, device: str = "auto") -> "TransformerEngine":
        """Wrap an in-memory model (used for dev evaluation during training)."""
        engine = cls.__new__(cls)
        engine._setup(model, tokenizer, max_length, device)
        return engine

    def _setup(self, model, tokenizer, max_length: int, device: str, bf16: bool = False) -> None:
        import torch
        self.torch = torch
        self.device = pick_device(device)
        self.bf16 = bf16
        self.model, self.tokenizer, self.max_length = model, tokenizer, max_length
        self.model.to(self.device, dtype=torch.bfloat16 if bf16 else None).eval()

    def logits(self, texts: Sequence[str], batch_size: int = 64) -> Tuple[np.ndarray, np.ndarray]:
        """Logits in input order and, per text, whether it was cut to max_length."""
        torch = self.torch
        ids, truncated = encode(self.tokenizer, texts, self.max_length)
        out = np.empty((len(ids), self.model.config.num_labels), dtype=np.float32)
        with torch.inference_mode():
            for idx, input_ids, mask in length_sorted_batches(ids, batch_size, self.tokenizer.pad_token_id or 0):
                logits = self.model(input_ids=torch.from_numpy(input_ids).to(self.device),
                                    attention_mask=torch.from_numpy(mask).to(self.device)).logits
                out[idx] = logits.float().cpu().numpy()
        return out, truncated


def encode(tokenizer, texts: Sequence[str], max_length: int) -> Tuple[List[List[int]], np.ndarray]:
    """Token ids cut to max_length (keeping the final special token), and which texts were cut."""
    if hasattr(tokenizer, "encode_batch"):      # a bare `tokenizers.Tokenizer`
        enc = [e.ids for e in tokenizer.encode_batch(list(texts), add_special_tokens=True)]
    else:                                       # a transformers tokenizer
        enc = tokenizer(list(texts), truncation=False, add_special_tokens=True, verbose=False)["input_ids"]
    truncated = np.array([len(seq) > max_length for seq in enc], dtype=bool)
    return [seq if len(seq) <= max_length else seq[: max_length - 1] + seq[-1:] for seq in enc], truncated


def length_sorted_batches(ids: List[List[int]], batch_size: int, pad_id: int):
    """Yield (positions, input_ids, attention_mask) for batches of similar length: little padding."""
    order = np.argsort([len(s) for s in ids], kind="stable")
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        width = max(len(ids[i]) for i in idx)
        input_ids = np.full((len(idx), width), pad_id, dtype=np.int64)
        mask = np.zeros((len(idx), width), dtype=np.int64)
        for row, i in enumerate(idx):
            input_ids[row, : len(ids[i])] = ids[i]
            mask[row, : len(ids[i])] = 1
        yield idx, input_ids, mask


class TfidfEngine:
    def __init__(self, folder: Path, meta: ModelMeta, device: str = "auto"):
        from .tfidf import TfidfModel
        try:
            self.model = TfidfModel.load(folder)
        except Exception as exc:
            raise StanceError(f"cannot load the TF-IDF model: {exc}", path=str(folder)) from None

    def logits(self, texts: Sequence[str], batch_size: int = 64) -> Tuple[np.ndarray, np.ndarray]:
        return self.model.logits(texts).astype(np.float32), np.zeros(len(texts), dtype=bool)


_ENGINES = {"transformer": TransformerEngine, "tfidf": TfidfEngine}


def _torch_threads(threads: Optional[int]) -> None:
    if threads:
        import torch
        torch.set_num_threads(threads)


class StanceClassifier:
    """A trained stance model: `predict`, `predict_proba`, `score_frame`."""

    def __init__(self, folder: Path, meta: ModelMeta, engine):
        self.folder = folder
        self.meta = meta
        self.engine = engine
        self.normalizer = Normalizer.from_dict(meta.normalizer)

    @classmethod
    def load(cls, path: str | os.PathLike = "models/default", device: str = "auto",
             threads: Optional[int] = None, runtime: str = "auto") -> "StanceClassifier":
        """Load a model folder.

        ``runtime``: ``auto`` uses, on CPU, the int8 ONNX path where the folder has one that passed its
        check, onnxruntime is installed and int8 products are exact on this CPU (VNNI on x86), else
        bfloat16 PyTorch where the CPU has native bf16 and the model passed its bf16 check, else fp32
        PyTorch; ``torch`` (fp32), ``onnx`` and ``bf16`` force one. A GPU, when present, is used
        through PyTorch.
        """
        folder = Path(path)
        meta = ModelMeta.read(folder)
        if runtime not in ("auto", "torch", "onnx", "bf16"):
            raise StanceError(f"unknown runtime '{runtime}'; use auto, torch, onnx or bf16")
        if meta.engine != "transformer":
            return cls(folder, meta, _ENGINES[meta.engine](folder, meta, device=device))
        on_cpu = pick_device(device) == "cpu"
        bf16 = runtime == "bf16" or (runtime == "auto" and on_cpu and meta.bf16.get("enabled") and cpu_has_bf16())
        # Folders built before the per-token rewrite hold a slower 8-bit file: bf16 goes first for them.
        legacy_int8 = meta.fast_path.get("method") != PER_TOKEN_INT8
        if runtime == "onnx" or (runtime == "auto" and on_cpu and not (bf16 and legacy_int8)):
            from . import onnx_runtime
            usable = (meta.fast_path.get("enabled") and (folder / meta.fast_path.get("file", "")).is_file()
                      and onnx_runtime.available() and cpu_int8_exact())
            if usable or runtime == "onnx":
                if not onnx_runtime.available():
                    raise StanceError("the onnx runtime needs onnxruntime", hint="pip install 'stance[onnx]'")
                return cls(folder, meta, onnx_runtime.OnnxEngine(folder, meta, threads=threads))
        _torch_threads(threads)
        return cls(folder, meta, TransformerEngine(folder, meta, device=device, bf16=bf16))

    @property
    def runtime(self) -> str:
        """Which engine scores: 'onnx-int8', 'torch-cpu', 'torch-cpu-bf16', 'torch-cuda' or 'tfidf'."""
        name = type(self.engine).__name__
        if name == "OnnxEngine":
            return "onnx-int8"
        if name == "TfidfEngine":
            return "tfidf"
        return f"torch-{self.engine.device}" + ("-bf16" if self.engine.bf16 else "")

    from_pretrained = load

    @property
    def labels(self) -> List[str]:
        return list(self.meta.labels)

    def logits(self, texts: Sequence[str], batch_size: int = 64) -> Tuple[np.ndarray, np.ndarray]:
        return self.engine.logits([self.normalizer(t) for t in texts], batch_size=batch_size)

    def predict_proba(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        """Calibrated probabilities, one row per text, columns in `labels` order."""
        if isinstance(texts, str):
            texts = [texts]
        if len(texts) == 0:
            return np.zeros((0, len(self.labels)), dtype=np.float32)
        logits, _ = self.logits(texts, batch_size)
        return softmax(logits, self.meta.temperature)

    def predict(self, texts: Sequence[str], batch_size: int = 64) -> List[str]:
        probs = self.predict_proba(texts, batch_size)
        return [self.labels[i] for i in probs.argmax(axis=1)]

    def score_frame(self, df, text_column: str = "text", min_confidence: Optional[float] = None,
                    batch_size: int = 64):
        """A copy of ``df`` with stance columns added: a pure function of one batch.

        Engines such as Ray Data or Spark can map it over batches. Rows with no
        text get an empty ``stance`` and a ``stance_note``.
        """
        from .scoring import score_records
        records = df.to_dict("records")
        scored, _ = score_records(self, records, text_column, min_confidence, batch_size)
        import pandas as pd
        return pd.DataFrame.from_records(scored, columns=list(df.columns) + self.output_columns)

    @property
    def output_columns(self) -> List[str]:
        return ["stance", "confidence", *[f"p_{l}" for l in self.labels], "stance_note"]


def classify(texts: Sequence[str] | str, model: str = "models/default") -> List[str]:
    """One line: labels for a list of posts with the given (default) model."""
    return StanceClassifier.load(model).predict([texts] if isinstance(texts, str) else list(texts))
