"""Engines turn normalised texts into logits; each has a `name` saying what runs.

- `TransformerEngine`: the fine-tuned Hugging Face encoder in PyTorch (fp32, bf16, or on a GPU).
- `TfidfEngine`: the TF-IDF + logistic regression baseline.
- `onnx_runtime.OnnxEngine`: the int8 ONNX file (the fast CPU path), built on the helpers here.

Batches are sorted by length and padded per batch, so little compute goes to padding.
"""
from __future__ import annotations

from pathlib import Path
from typing import List, Sequence, Tuple

import numpy as np

from .errors import StanceError
from .folder import ModelMeta
from .hardware import pick_device


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


class TransformerEngine:
    """Fine-tuned Hugging Face encoder in PyTorch.

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
        if model.config.num_labels != len(meta.labels):
            raise StanceError(f"the weights have {model.config.num_labels} outputs but stance.json lists "
                              f"{len(meta.labels)} labels", path=str(folder))
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

    @property
    def name(self) -> str:
        return f"torch-{self.device}" + ("-bf16" if self.bf16 else "")

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


class TfidfEngine:
    name = "tfidf"

    def __init__(self, folder: Path, meta: ModelMeta, device: str = "auto"):
        from .tfidf import TfidfModel
        try:
            self.model = TfidfModel.load(folder)
        except Exception as exc:
            raise StanceError(f"cannot load the TF-IDF model: {exc}", path=str(folder)) from None
        if self.model.coef.shape[0] != len(meta.labels):
            raise StanceError(f"the TF-IDF weights have {self.model.coef.shape[0]} outputs but stance.json lists "
                              f"{len(meta.labels)} labels", path=str(folder))

    def logits(self, texts: Sequence[str], batch_size: int = 64) -> Tuple[np.ndarray, np.ndarray]:
        return self.model.logits(texts).astype(np.float32), np.zeros(len(texts), dtype=bool)
