"""`StanceClassifier`: load a trained model folder and classify posts.

    >>> from stance import StanceClassifier
    >>> clf = StanceClassifier.load("models/default")
    >>> clf.predict(["Bomb the labs. About time.", "¿Esto es legal?"])
    ['support', 'question']
"""
from __future__ import annotations

import os
from collections import Counter
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from .blend import Blend
from .engines import TfidfEngine, TransformerEngine
from .errors import StanceError
from .folder import COMPANION_DIR, ModelMeta
from .labels import score_columns
from .hardware import Hardware, detect
from .metrics import softmax
from .runtime import ONNX_INT8, RUNTIMES, TFIDF, TORCH_BF16, Choice, FolderFacts, choose_runtime
from .textnorm import Normalizer

class StanceClassifier:
    """A trained stance model: `predict`, `predict_proba`, `score_records`, `score_frame`.

    A blended model (`stance.json` has a `blend`) also loads the TF-IDF model in its `companion/` folder, and
    every probability it gives is the blend of the two (blend.py)."""

    def __init__(self, folder: Path, meta: ModelMeta, engine, runtime_reason: str = ""):
        self.folder = folder
        self.meta = meta
        self.engine = engine
        self.runtime_reason = runtime_reason or engine.name
        self.normalizer = Normalizer.from_dict(meta.normalizer)
        self.blend: Optional[Blend] = None
        self.companion: Optional["StanceClassifier"] = None
        if meta.blend:
            self.blend = Blend.from_dict(meta.blend, str(folder / "stance.json"))
            self.companion = StanceClassifier.load(folder / COMPANION_DIR)
            self.runtime_reason += "; blended with its TF-IDF companion"

    @classmethod
    def load(cls, path: Union[str, os.PathLike] = "models/default", device: str = "auto",
             threads: Optional[int] = None, runtime: str = "auto",
             hardware: Optional[Hardware] = None) -> "StanceClassifier":
        """Load a model folder.

        ``runtime``: ``auto`` picks, on CPU, the model's int8 ONNX file where it passed its check and
        int8 products are exact on this CPU, else bfloat16 where the CPU has it natively and the model
        passed its bf16 check, else fp32 PyTorch; a GPU is used through PyTorch (see runtime.py).
        ``torch`` (fp32), ``onnx`` (int8) and ``bf16`` force one. `runtime_reason` says why.
        """
        if runtime not in RUNTIMES:
            raise StanceError(f"unknown runtime '{runtime}'; use {', '.join(RUNTIMES)}")
        folder = Path(path)
        meta = ModelMeta.read(folder)
        from . import onnx_runtime
        hw = hardware or (detect() if meta.engine != "tfidf" else Hardware())
        facts = FolderFacts.of(meta, onnx_runtime.int8_file(folder).is_file())
        choice = choose_runtime(facts, hw, runtime, device, onnx_runtime.available())
        if choice.runtime == ONNX_INT8:
            engine = _onnx_engine(folder, meta, threads)
            if choice.recheck:
                passed, detail = onnx_runtime.recheck(folder, engine, hw)
                if not passed:
                    choice = choose_runtime(facts, hw, runtime, device, True, recheck_failed=detail)
                else:
                    choice = Choice(choice.runtime, choice.reason + f": {detail}")
            if choice.runtime == ONNX_INT8:
                return cls(folder, meta, engine, choice.reason)
        if choice.runtime == TFIDF:
            return cls(folder, meta, TfidfEngine(folder, meta), choice.reason)
        if threads:
            import torch
            torch.set_num_threads(threads)
        return cls(folder, meta, TransformerEngine(folder, meta, device=device, bf16=choice.runtime == TORCH_BF16),
                   choice.reason)

    from_pretrained = load

    @property
    def runtime(self) -> str:
        """Which engine scores: 'onnx-int8', 'torch-cpu', 'torch-cpu-bf16', 'torch-cuda' or 'tfidf'."""
        return self.engine.name

    @property
    def labels(self) -> List[str]:
        return list(self.meta.labels)

    @property
    def output_columns(self) -> List[str]:
        return score_columns(self.labels)

    def logits(self, texts: Sequence[str], batch_size: int = 64) -> Tuple[np.ndarray, np.ndarray]:
        """Raw logits of the normalised texts (this model's own, before any blend) and, per text, whether
        it was cut to max_length."""
        return self.engine.logits([self.normalizer(t) for t in texts], batch_size=batch_size)

    def _probabilities(self, texts: Sequence[str], batch_size: int) -> Tuple[np.ndarray, np.ndarray]:
        """Calibrated (and, for a blended model, blended) probabilities, and which texts were cut."""
        logits, truncated = self.logits(texts, batch_size)
        probs = softmax(logits, self.meta.scoring_temperature)
        if self.blend is not None:
            probs = self.blend.apply(probs, self.companion.predict_proba(texts, batch_size))
        return probs, truncated

    def predict_proba(self, texts: Union[str, Sequence[str]], batch_size: int = 64) -> np.ndarray:
        """Calibrated probabilities, one row per text, columns in `labels` order (one row for one string)."""
        if isinstance(texts, str):
            texts = [texts]
        if len(texts) == 0:
            return np.zeros((0, len(self.labels)), dtype=np.float32)
        return self._probabilities(texts, batch_size)[0]

    def predict(self, texts: Union[str, Sequence[str]], batch_size: int = 64) -> Union[str, List[str]]:
        """The label of one post (a string), or a list of labels for a list of posts."""
        probs = self.predict_proba(texts, batch_size)
        labels = [self.labels[i] for i in probs.argmax(axis=1)]
        return labels[0] if isinstance(texts, str) else labels

    def score_records(self, records: List[Dict], text_column: Union[str, Sequence[str]] = "text",
                      min_confidence: Optional[float] = None, batch_size: int = 64) -> Tuple[List[Dict], Counter]:
        """Score one batch of row dicts: new dicts with the output columns added, and counts of notes.
        Several text columns (a Reddit title and body) are joined with a blank line.

        Rows with no text get an empty ``stance`` and a ``stance_note`` saying why; rows whose top
        probability is below ``min_confidence`` (default: the model's) are noted ``uncertain``.
        """
        threshold = self.meta.min_confidence if min_confidence is None else min_confidence
        columns = [text_column] if isinstance(text_column, str) else list(text_column)
        notes: Counter = Counter()
        todo, texts, no_text = [], [], {}
        for i, rec in enumerate(records):
            values = [rec.get(c) for c in columns]
            present = [str(v) for v in values if not (v is None or (isinstance(v, float) and v != v))]
            parts = [v for v in present if v.strip()]
            if not present:
                no_text[i] = "missing_text"
            elif not parts:
                no_text[i] = "empty_text"
            else:
                todo.append(i)
                texts.append("\n\n".join(parts))
        notes.update(no_text.values())
        probs = np.zeros((0, len(self.labels)), dtype=np.float32)
        if texts:
            probs, truncated = self._probabilities(texts, batch_size)
            notes["truncated"] += int(truncated.sum())
        row_probs = dict(zip(todo, probs))
        out = []
        for i, rec in enumerate(records):
            new = dict(rec)
            p = row_probs.get(i)
            if p is None:
                new.update({"stance": "", "confidence": None, **{f"p_{l}": None for l in self.labels},
                            "stance_note": no_text[i]})
            else:
                top = int(p.argmax())
                uncertain = float(p[top]) < threshold
                notes["uncertain"] += uncertain
                new.update({"stance": self.labels[top], "confidence": round(float(p[top]), 4),
                            **{f"p_{l}": round(float(v), 4) for l, v in zip(self.labels, p)},
                            "stance_note": "uncertain" if uncertain else ""})
            out.append(new)
        return out, notes

    def score_frame(self, df, text_column: str = "text", min_confidence: Optional[float] = None,
                    batch_size: int = 64):
        """A copy of a pandas DataFrame with the output columns added: a pure function of one batch,
        for engines such as Ray Data or Spark to map over batches."""
        import pandas as pd
        scored, _ = self.score_records(df.to_dict("records"), text_column, min_confidence, batch_size)
        return pd.DataFrame.from_records(scored, columns=list(df.columns) + self.output_columns)


def _onnx_engine(folder: Path, meta: ModelMeta, threads: Optional[int]):
    from . import onnx_runtime
    if not onnx_runtime.available():
        raise StanceError("the onnx runtime needs onnxruntime", hint="pip install 'stance[onnx]'")
    if not onnx_runtime.int8_file(folder).is_file():
        raise StanceError("this model has no int8 ONNX file", path=str(folder),
                          hint="use --runtime auto or torch, or retrain to build it")
    return onnx_runtime.OnnxEngine(folder, meta, threads=threads)


def classify(texts: Union[str, Sequence[str]], model: str = "models/default") -> Union[str, List[str]]:
    """One line: the label of a post, or labels of a list of posts, with the given (default) model."""
    return StanceClassifier.load(model).predict(texts if isinstance(texts, str) else list(texts))
