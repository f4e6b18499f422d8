"""The faster scoring paths of a freshly trained transformer, each kept only where it matches fp32.

- int8 ONNX (onnx_runtime.py): exported, then checked on dev + test against the fp32 logits;
- bfloat16 weights: checked the same way, on CPUs with native bf16.
`stance train` calls both after evaluation; a path that fails its check is switched off, never the model.
"""
from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path
from typing import Dict, List

import numpy as np

from .data import LabelledData
from .engines import TransformerEngine
from .folder import ModelMeta
from .hardware import detect

log = logging.getLogger("stance.train")


def build_fast_path(folder: Path, meta: ModelMeta, texts: Dict[str, List[str]], splits: Dict[str, LabelledData],
                    fp32_logits: Dict[str, np.ndarray]) -> Dict:
    """Export the int8 ONNX model and keep it only if it matches fp32 closely on dev + test."""
    from . import onnx_runtime
    if not onnx_runtime.available():
        log.info("onnxruntime is not installed: no int8 fast path (pip install 'stance[onnx]')")
        return {"enabled": False, "reason": "onnxruntime not installed"}
    t0 = time.time()
    try:
        built = onnx_runtime.export_int8(folder, texts["train"], meta.max_length)
        check = {**onnx_runtime.validate_int8(folder, meta, *_check_set(texts, splits, fp32_logits)), **built}
    except Exception:
        shutil.rmtree(folder / onnx_runtime.ONNX_DIR, ignore_errors=True)   # no half-built fast path left behind
        raise
    check["build_seconds"] = round(time.time() - t0, 1)
    if not check["enabled"]:
        shutil.rmtree(folder / onnx_runtime.ONNX_DIR, ignore_errors=True)
    _log_check("int8 fast path", check)
    return check


def check_bf16(folder: Path, meta: ModelMeta, texts: Dict[str, List[str]], splits: Dict[str, LabelledData],
               fp32_logits: Dict[str, np.ndarray]) -> Dict:
    """Score dev + test with bfloat16 weights on this CPU; enable bf16 scoring only if it matches fp32."""
    from .metrics import compare_with_fp32
    if not detect().bf16:
        return {"enabled": False, "reason": "this CPU has no native bfloat16 (AVX-512 BF16 or AMX)"}
    check_texts, gold, fp32 = _check_set(texts, splits, fp32_logits)
    bf16_logits, _ = TransformerEngine(folder, meta, device="cpu", bf16=True).logits(check_texts)
    check = compare_with_fp32(bf16_logits, fp32, gold, meta.labels)
    _log_check("bfloat16", check)
    return check


def _log_check(name: str, check: Dict) -> None:
    log.info("%s: %s of labels equal to fp32 on %d posts, macro-F1 %+.4f -> %s", name,
             f"{check['label_agreement']:.2%}", check["n"], check["macro_f1_delta"],
             "enabled" if check["enabled"] else "disabled")


def _check_set(texts: Dict[str, List[str]], splits: Dict[str, LabelledData], fp32_logits: Dict[str, np.ndarray]):
    """Normalised dev + test texts, their gold labels and fp32 logits (computed once, by the evaluation)."""
    names = [n for n in ("dev", "test") if n in splits]
    return ([t for n in names for t in texts[n]], [l for n in names for l in splits[n].labels],
            np.concatenate([fp32_logits[n] for n in names]))
