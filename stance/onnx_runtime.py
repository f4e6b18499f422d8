"""The fast CPU path: the fine-tuned encoder exported to ONNX with int8 matrix products.

Plain dynamic int8 quantisation (one activation scale per batch) flipped 2-3%
of labels and made a post's label depend on its batch neighbours. The rewrite
in quantize.py quantises activations per token, after SmoothQuant, and runs the
products on ONNX Runtime's int8 kernels in the form that is exact on the CPU at
hand. The fast path is switched on for a model only when, on its dev and test
posts, it keeps >= 99% of the fp32 labels and macro-F1 within 0.5 points; the
check is recorded in stance.json (with the CPU it ran on) and the model card.
`onnx/check.json` keeps up to 256 of those posts as token ids with their fp32
labels, so that a CPU with other kernels re-checks the file before using it.
"""
from __future__ import annotations

import json
import logging
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Dict, Optional, Sequence, Tuple

import numpy as np

from . import quantize
from .engines import encode, length_sorted_batches
from .errors import StanceError

log = logging.getLogger("stance.onnx")
ONNX_DIR = "onnx"
INT8_FILE = "model.int8.onnx"
CHECK_FILE = "check.json"
RECHECK_POSTS = 256
CALIBRATION_POSTS = 1024    # 256 to all 3,000 training posts kept 99.4-99.8% of MiniLM's fp32 labels


def int8_file(folder: Path) -> Path:
    return folder / ONNX_DIR / INT8_FILE


def available() -> bool:
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
        return True
    except ImportError:
        return False


def export_int8(folder: Path, calibration_texts: Sequence[str], max_length: int = 128) -> Dict:
    """Export the model in `folder` to ONNX and rewrite it to per-token int8; keep only that file.

    ``calibration_texts`` (normalised training posts) set the SmoothQuant factors. Returns how the
    graph was built (recorded beside the accuracy check).
    """
    import onnx

    config = json.loads((folder / "config.json").read_text())
    tokenizer = _tokenizer(folder)
    pad_id = _pad_id(config)
    texts = list(calibration_texts)
    if len(texts) > CALIBRATION_POSTS:
        texts = [texts[i] for i in sorted(np.random.default_rng(0).choice(len(texts), CALIBRATION_POSTS, replace=False))]
    calibration = _batches(tokenizer, texts, max_length, pad_id)
    target = folder / ONNX_DIR
    target.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        fp32 = Path(tmp) / "model.onnx"
        _export_fp32(folder, fp32)
        model = None
        try:
            model = quantize.fuse_attention(str(fp32), config["num_attention_heads"], config["hidden_size"],
                                            config["num_hidden_layers"])
        except Exception as exc:      # fusion is a speed-up; the plain graph quantises the same way
            log.warning("attention fusion failed (%s): keeping the unfused graph", exc)
        info = {"method": quantize.PER_TOKEN_INT8, "attention_fused": model is not None, "cls_only_last_layer": False}
        if model is None:
            model = onnx.load(str(fp32))
        # First, so SmoothQuant is tuned on the graph that ships and its copies stay small.
        _quantize_embedding_tables(model)
        if info["attention_fused"]:
            # Posts in sample order, not sorted by length: mixed lengths, so padding is part of the check.
            info["cls_only_last_layer"] = _try_cls_only(model, _batches(tokenizer, texts[:32], max_length, pad_id,
                                                                        batch_size=32)[0])
        model, info["smoothquant_alpha"], _ = quantize.smooth_and_quantize(model, calibration)
        log.info("int8: %d matrix products quantised per token (SmoothQuant alpha %.1f)",
                 sum(n.op_type == "MatMulIntegerToFloat" for n in model.graph.node), info["smoothquant_alpha"])
        onnx.save(model, str(Path(tmp) / INT8_FILE))
        shutil.move(str(Path(tmp) / INT8_FILE), target / INT8_FILE)
    return info


def _export_fp32(folder: Path, path: Path) -> None:
    import torch
    from transformers import AutoModelForSequenceClassification

    # Eager attention exports as plain MatMul/Softmax, which ONNX Runtime fuses into MultiHeadAttention.
    model = AutoModelForSequenceClassification.from_pretrained(str(folder), local_files_only=True,
                                                               attn_implementation="eager").eval()
    model.config.return_dict = False
    dummy = (torch.ones(2, 16, dtype=torch.long), torch.ones(2, 16, dtype=torch.long))
    axes = {"input_ids": {0: "batch", 1: "seq"}, "attention_mask": {0: "batch", 1: "seq"}, "logits": {0: "batch"}}
    with torch.inference_mode(), warnings.catch_warnings():
        # Tracing warnings concern shape-dependent Python branches that are constant for encoders.
        warnings.simplefilter("ignore")
        # The TorchScript exporter: no extra dependency, and BERT-style encoders export cleanly.
        torch.onnx.export(model, dummy, str(path), input_names=["input_ids", "attention_mask"],
                          output_names=["logits"], dynamic_axes=axes, opset_version=17, dynamo=False)


def _try_cls_only(model, probe: Tuple[np.ndarray, np.ndarray]) -> bool:
    """Apply the [CLS]-only last layer, and undo it unless logits stay the same on a real batch."""
    import onnx

    before = onnx.ModelProto()
    before.CopyFrom(model)
    if not quantize.last_layer_cls_only(model):
        return False
    feeds = {"input_ids": probe[0], "attention_mask": probe[1]}
    try:
        ref, new = (quantize.session(m).run(["logits"], feeds)[0] for m in (before, model))
        same = np.allclose(ref, new, atol=1e-4, rtol=1e-4)
    except Exception as exc:        # e.g. a head that reshapes every position: the surgery does not apply
        log.info("the [CLS]-only last layer does not run (%s)", exc)
        same = False
    if not same:
        log.info("the classifier reads more than the first token: last layer kept whole")
        model.CopyFrom(before)
    return same


def _pad_id(config: Dict) -> int:
    return config.get("pad_token_id") or 0


def _tokenizer(folder: Path):
    from tokenizers import Tokenizer
    # The bare `tokenizers` library reads the same tokenizer.json as transformers' fast tokenizer
    # (same ids, checked by the tests) without importing torch: ~400 MB and seconds saved per run.
    tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
    tokenizer.no_truncation()
    tokenizer.no_padding()
    return tokenizer


def _batches(tokenizer, texts: Sequence[str], max_length: int, pad_id: int, batch_size: int = 64):
    ids, _ = encode(tokenizer, texts, max_length)
    return [(input_ids, mask) for _, input_ids, mask in length_sorted_batches(ids, batch_size, pad_id)]


def _quantize_embedding_tables(model, min_rows: int = 4096) -> None:
    """Store large embedding tables as int8 with one scale per row (in place).

    A 250k-row vocabulary is most of multilingual-e5's size and memory; per-row
    scales keep each token's vector within 0.4% of fp32. ONNX Runtime's own
    Gather quantiser only writes 4 bits, hence this small graph rewrite:
    Gather(W) becomes Gather(W_int8) * Gather(row_scale).
    """
    from onnx import TensorProto, helper, numpy_helper

    inits = {t.name: t for t in model.graph.initializer}
    nodes = []
    for node in model.graph.node:
        table = inits.get(node.input[0]) if node.op_type == "Gather" else None
        w = numpy_helper.to_array(table) if table is not None else None
        if w is None or w.ndim != 2 or w.shape[0] < min_rows or w.dtype != np.float32:
            nodes.append(node)
            continue
        scale = np.maximum(np.abs(w).max(axis=1, keepdims=True), 1e-12) / 127.0
        name, ids, out = table.name, node.input[1], node.output[0]
        model.graph.initializer.remove(table)
        model.graph.initializer.extend([numpy_helper.from_array(np.round(w / scale).astype(np.int8), name + "_int8"),
                                        numpy_helper.from_array(scale.astype(np.float32), name + "_scale")])
        nodes += [helper.make_node("Gather", [name + "_int8", ids], [out + "_int8"], axis=0),
                  helper.make_node("Cast", [out + "_int8"], [out + "_float"], to=TensorProto.FLOAT),
                  helper.make_node("Gather", [name + "_scale", ids], [out + "_scale"], axis=0),
                  helper.make_node("Mul", [out + "_float", out + "_scale"], [out])]
    del model.graph.node[:]
    model.graph.node.extend(nodes)


class OnnxEngine:
    """Same interface as TransformerEngine, backed by onnxruntime."""

    name = "onnx-int8"

    def __init__(self, folder: Path, meta, threads: Optional[int] = None):
        path = folder / ONNX_DIR / INT8_FILE
        try:
            self.session = quantize.session(str(path), threads)
            self.tokenizer = _tokenizer(folder)
            self.pad_id = _pad_id(json.loads((folder / "config.json").read_text()))
        except Exception as exc:
            raise StanceError(f"cannot load the int8 ONNX model: {exc}", path=str(path),
                              hint="pass --runtime torch, or retrain to rebuild it") from None
        self.max_length = meta.max_length
        self.num_labels = len(meta.labels)
        self.device = "cpu"

    def logits(self, texts: Sequence[str], batch_size: int = 64) -> Tuple[np.ndarray, np.ndarray]:
        ids, truncated = encode(self.tokenizer, texts, self.max_length)
        return self.logits_of_ids(ids, batch_size), truncated

    def logits_of_ids(self, ids: Sequence[Sequence[int]], batch_size: int = 64) -> np.ndarray:
        out = np.empty((len(ids), self.num_labels), dtype=np.float32)
        for idx, input_ids, mask in length_sorted_batches(list(ids), batch_size, self.pad_id):
            out[idx] = self.session.run(["logits"], {"input_ids": input_ids, "attention_mask": mask})[0]
        return out


def validate_int8(folder: Path, meta, texts: Sequence[str], gold: Sequence[str], fp32_logits: np.ndarray) -> Dict:
    """Compare the int8 model against fp32 on labelled posts; decide whether the fast path is enabled.

    Records the CPU the check ran on, and keeps posts for a re-check on other CPUs (`recheck`).
    """
    from .hardware import detect
    from .metrics import compare_with_fp32
    engine = OnnxEngine(folder, meta)
    ids, _ = encode(engine.tokenizer, texts, meta.max_length)
    q_logits = engine.logits_of_ids(ids)
    hw = detect()
    step = max(1, len(ids) // RECHECK_POSTS)        # spread over dev and test
    keep = list(range(0, len(ids), step))[:RECHECK_POSTS]
    probe = {"cpu": hw.signature(), "cpu_name": hw.cpu, "input_ids": [list(map(int, ids[i])) for i in keep],
             "fp32_labels": [int(fp32_logits[i].argmax()) for i in keep],
             "int8_logits": [[round(float(v), 5) for v in q_logits[i]] for i in keep]}
    (folder / ONNX_DIR / CHECK_FILE).write_text(json.dumps(probe), encoding="utf-8")
    return {"file": f"{ONNX_DIR}/{INT8_FILE}", "cpu": hw.signature(), "cpu_name": hw.cpu,
            **compare_with_fp32(q_logits, fp32_logits, gold, meta.labels)}


def recheck(folder: Path, engine: "OnnxEngine", hw) -> Tuple[bool, str]:
    """Re-run the stored check posts on this CPU: passes when >= 99% of labels still equal fp32's."""
    from .metrics import MIN_AGREEMENT
    path = folder / ONNX_DIR / CHECK_FILE
    try:
        probe = json.loads(path.read_text(encoding="utf-8"))
        ids, fp32 = probe["input_ids"], np.asarray(probe["fp32_labels"])
        before = np.asarray(probe["int8_logits"], dtype=np.float32)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return False, f"no usable {ONNX_DIR}/{CHECK_FILE}: {exc}"
    if not len(ids) or len(ids) != len(fp32) or before.shape != (len(ids), engine.num_labels):
        return False, f"{ONNX_DIR}/{CHECK_FILE} is damaged"
    now = engine.logits_of_ids(ids)
    agreement = float(np.mean(now.argmax(1) == fp32))
    drift = float(np.abs(now - before).max())
    detail = f"{agreement:.1%} of {len(ids)} stored posts equal fp32, logits within {drift:.4f} of the training CPU's"
    log.info("int8 re-check on %s: %s", hw.cpu, detail)
    return agreement >= MIN_AGREEMENT, detail
