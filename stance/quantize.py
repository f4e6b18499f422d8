"""Per-token int8 for an exported encoder: the ONNX graph rewrite behind the fast CPU path.

Each weight matrix product ``X @ W`` becomes an int8 product: ``W`` is stored in
int8 with one scale per output column, and ``X`` is quantised at run time with
one scale per row, that is per token. Per-token scales keep a post's result
independent of the posts batched with it (ONNX Runtime's own dynamic
quantisation uses one scale per batch, so a label could change with its
neighbours), and the int32 accumulation is exact, so results are deterministic.
The product runs on ONNX Runtime's int8 kernels (``MatMulIntegerToFloat``): uint8
activations times int8 weights where that is exact (VNNI x86, ARM), times the same
weights stored as uint8 on x86 CPUs without VNNI (`int8_form`), so one file gives
the same integers on every CPU.

Two more steps keep accuracy and add speed:
- SmoothQuant (Xiao et al., 2023): a few hidden channels of BERT-style encoders
  carry values far larger than the rest, which would dominate every token's
  scale. Dividing channel j of ``X`` by ``s_j`` and multiplying row j of ``W``
  by it moves that range into the weights; ``s`` comes from activation ranges
  measured on training posts, with the strength alpha that best reproduces
  the fp32 logits on those posts.
- Attention fused into ONNX Runtime's MultiHeadAttention, and the last layer
  computed for the first ([CLS]) position only, the one the classifier reads;
  that surgery is checked numerically and dropped if the model reads more.
"""
from __future__ import annotations

import functools
import logging
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

log = logging.getLogger("stance.onnx")
PER_TOKEN_INT8 = "per-token int8"        # recorded as fast_path["method"] for files built here
SMOOTH_ALPHAS = (0.5, 0.6, 0.7)     # SmoothQuant strengths tried per model (0.3 and 0.4 never won)
# ONNX Runtime's CPU SkipLayerNormalization kernel takes 2.8 ms where Add + Add + LayerNormalization take
# 0.5 ms (2,880 tokens x 384, 2 threads), so sessions must not fuse them.
SLOW_FUSIONS = ["SkipLayerNormFusion"]
UNSIGNED_ZERO_POINT = "pt_weight_zero_point"


def fuse_attention(path: str, num_heads: int, hidden_size: int, num_layers: int):
    """ONNX Runtime's BERT fusions with MultiHeadAttention (Q/K/V products kept apart for int8).

    Returns the fused model, or None when not every layer's attention fused
    (e.g. MPNet's relative position bias); the caller then keeps the plain graph.
    """
    from onnxruntime.transformers import optimizer
    from onnxruntime.transformers.fusion_options import FusionOptions

    options = FusionOptions("bert")
    options.use_multi_head_attention = True
    options.enable_embed_layer_norm = False     # keeps the word-embedding Gather, which is stored in int8
    options.enable_skip_layer_norm = False      # slow on CPU: see SLOW_FUSIONS
    options.enable_bias_skip_layer_norm = False
    previous = logging.root.manager.disable
    logging.disable(logging.INFO)         # its modules log every fusion under their own top-level names
    try:
        fused = optimizer.optimize_model(path, model_type="bert", num_heads=num_heads, hidden_size=hidden_size,
                                         optimization_options=options, opt_level=0).model
    finally:
        logging.disable(previous)
    count = sum(n.op_type == "MultiHeadAttention" for n in fused.graph.node)
    if count != num_layers:
        log.info("attention fused in %d of %d layers: keeping the unfused graph", count, num_layers)
        return None
    return fused


def last_layer_cls_only(model) -> bool:
    """Compute the last layer for position 0 only: its queries, attention output and feed-forward (in place).

    Keys and values still see every token. The layer's input feeds the Q, K and V
    products and one residual connection; Q and the residual get its first
    position. Returns False (model untouched) when the graph has another shape.
    """
    from onnx import helper, numpy_helper

    nodes = list(model.graph.node)
    producer = {out: n for n in nodes for out in n.output}
    attention = [n for n in nodes if n.op_type == "MultiHeadAttention"]
    if not attention:
        return False
    projections = [producer.get(name) for name in attention[-1].input[:3]]
    if any(p is None or p.op_type != "MatMul" for p in projections) or len({p.input[0] for p in projections}) != 1:
        return False
    x = projections[0].input[0]
    residual = [n for n in nodes if x in n.input and n not in projections]
    if len(residual) != 1 or residual[0].op_type not in ("Add", "SkipLayerNormalization"):
        return False
    model.graph.initializer.extend([numpy_helper.from_array(np.array([v], np.int64), f"cls_only_{k}")
                                    for k, v in (("start", 0), ("end", 1), ("axis", 1))])
    sliced = x + "_cls_only"
    model.graph.node.insert(nodes.index(projections[0]), helper.make_node(
        "Slice", [x, "cls_only_start", "cls_only_end", "cls_only_axis"], [sliced], name="cls_only_slice"))
    for node in (projections[0], residual[0]):
        node.input[list(node.input).index(x)] = sliced
    return True


def weight_products(model) -> List:
    """MatMul nodes whose right operand is a 2-D float weight (the model's linear layers)."""
    from onnx import TensorProto
    weights = {t.name for t in model.graph.initializer if len(t.dims) == 2 and t.data_type == TensorProto.FLOAT}
    return [n for n in model.graph.node if n.op_type == "MatMul" and n.input[1] in weights]


def activation_ranges(model, batches: Sequence[Tuple[np.ndarray, np.ndarray]]
                      ) -> Tuple[Dict[str, np.ndarray], List[np.ndarray]]:
    """Per-channel max |x| of every linear layer's input over real (not padding) tokens, and the logits."""
    names = sorted({n.input[0] for n in weight_products(model)})
    probe = session(model, extra_outputs=names)
    ranges: Dict[str, np.ndarray] = {}
    logits = []
    for input_ids, mask in batches:
        outputs = probe.run(["logits", *names], {"input_ids": input_ids, "attention_mask": mask})
        logits.append(outputs[0])
        for name, value in zip(names, outputs[1:]):
            tokens = value.ndim == 3 and value.shape[:2] == mask.shape
            rows = value[mask > 0] if tokens else value.reshape(-1, value.shape[-1])
            peak = np.abs(rows).max(axis=0)
            ranges[name] = np.maximum(ranges[name], peak) if name in ranges else peak
    return ranges, logits


def smooth_and_quantize(model, batches: Sequence[Tuple[np.ndarray, np.ndarray]],
                        alphas: Sequence[float] = SMOOTH_ALPHAS):
    """Per-token int8 with the SmoothQuant strength that best reproduces fp32 logits on `batches`.

    SmoothQuant's paper finds the best strength differs by model; each candidate is scored on the
    calibration posts themselves, which needs no labels (choices and their effect: docs/performance.md).
    Returns (quantised model, alpha, mean squared logit error).
    """
    import onnx

    ranges, reference = activation_ranges(model, batches)
    best = None
    for alpha in alphas:
        candidate = onnx.ModelProto()
        candidate.CopyFrom(model)
        quantize_per_token(candidate, ranges, alpha)
        run = session(candidate).run
        error = float(np.mean([np.mean((run(["logits"], {"input_ids": ids, "attention_mask": mask})[0]
                                        - ref) ** 2) for (ids, mask), ref in zip(batches, reference)]))
        log.info("SmoothQuant alpha %.1f: mean squared logit error %.5f on %d calibration batches",
                 alpha, error, len(batches))
        if best is None or error < best[2]:
            best = (candidate, alpha, error)
    return best


def session(model, threads: Optional[int] = None, extra_outputs: Sequence[str] = ()):
    """An ONNX Runtime CPU session on a file or an in-memory model, optionally exposing inner tensors.

    Int8 products run in the form that is exact on this CPU (see `int8_form`).
    """
    import os

    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper

    form = int8_form()
    if extra_outputs or (form == "u8u8" and _has_int8_products(model)):
        copy = onnx.ModelProto()
        copy.CopyFrom(onnx.load(model) if isinstance(model, str) else model)
        copy.graph.output.extend(helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in extra_outputs)
        if form == "u8u8":
            to_unsigned_weights(copy)
        model = copy
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads or os.cpu_count() or 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    source = model if isinstance(model, str) else model.SerializeToString()
    return ort.InferenceSession(source, opts, providers=["CPUExecutionProvider"], disabled_optimizers=SLOW_FUSIONS)


def _has_int8_products(model) -> bool:
    if not isinstance(model, str):
        return any(n.op_type == "MatMulIntegerToFloat" for n in model.graph.node)
    return True     # a file: only int8 files are opened from disk


@functools.lru_cache(maxsize=None)
def int8_form() -> Optional[str]:
    """How this CPU computes int8 products exactly: "u8s8", "u8u8", or None where neither is exact.

    Graphs are built with uint8 activations times int8 weights (VNNI's native form). x86 CPUs
    without VNNI add pairs of u8 x s8 products into int16, which saturates (2 x 255 x 127 > 32767);
    their u8 x u8 kernels widen to 16 bits first and accumulate in int32, which is exact. The
    answer comes from running both forms on this machine's kernels, not from CPU flags, so it
    holds on any CPU and operating system ONNX Runtime supports.
    """
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return None
    for form in ("u8s8", "u8u8"):
        try:
            if _product_is_exact(form):
                return form
        except Exception as exc:      # a kernel missing on this CPU: try the next form
            log.info("int8 form %s does not run here (%s)", form, exc)
    return None


def _product_is_exact(form: str) -> bool:
    """Run one worst-case int8 product (full-range activations and weights) and compare with integer math."""
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    m, k, n = 48, 256, 64
    a = rng.integers(-127, 128, size=(m, k))
    a[:8] = 127                                 # rows of maximal activations: the pairs that saturate
    w = rng.integers(-127, 128, size=(k, n))
    w[:, :8] = 127
    inputs = [numpy_helper.from_array(w.astype(np.int8), "w"),
              numpy_helper.from_array(np.array(1.0, np.float32), "one"),
              numpy_helper.from_array(np.ones(n, np.float32), "w_scale"),
              numpy_helper.from_array(np.array(128, np.uint8), "a_zero")]
    graph = helper.make_graph(
        [helper.make_node("MatMulIntegerToFloat", ["a", "w", "one", "w_scale", "a_zero"], ["y"],
                          domain="com.microsoft")], "probe",
        [helper.make_tensor_value_info("a", TensorProto.UINT8, [None, k])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, n])], inputs)
    probe = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])
    if form == "u8u8":        # the same rewrite `session` applies to real graphs
        to_unsigned_weights(probe)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    got = ort.InferenceSession(probe.SerializeToString(), opts, providers=["CPUExecutionProvider"]).run(
        None, {"a": (a + 128).astype(np.uint8)})[0]
    return bool(np.array_equal(got, (a @ w).astype(np.float32)))


def to_unsigned_weights(model) -> int:
    """Store every int8 weight of the per-token products as uint8 with zero point 128 (in place).

    (w + 128) - 128 = w, so results are the same integers; only the kernel differs. Returns how
    many products were changed.
    """
    from onnx import numpy_helper

    inits = {t.name: t for t in model.graph.initializer}
    changed = 0
    for node in model.graph.node:
        if node.op_type != "MatMulIntegerToFloat" or len(node.input) > 5:
            continue
        w = inits.get(node.input[1])
        if w is None or numpy_helper.to_array(w).dtype != np.int8:
            continue
        unsigned = (numpy_helper.to_array(w).astype(np.int16) + 128).astype(np.uint8)
        w.CopyFrom(numpy_helper.from_array(unsigned, w.name))
        node.input.append(UNSIGNED_ZERO_POINT)
        changed += 1
    if changed and UNSIGNED_ZERO_POINT not in inits:
        model.graph.initializer.append(numpy_helper.from_array(np.array(128, np.uint8), UNSIGNED_ZERO_POINT))
    return changed


def quantize_per_token(model, ranges: Optional[Dict[str, np.ndarray]] = None, alpha: float = 0.5) -> int:
    """Rewrite every weight MatMul into per-token int8 (in place); returns how many were rewritten.

    Products sharing an input (Q, K and V) share one quantised copy of it and one smoothing factor.
    """
    from onnx import helper, numpy_helper

    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    by_input: Dict[str, List] = {}
    for node in weight_products(model):
        by_input.setdefault(node.input[0], []).append(node)
    if not by_input:
        return 0
    def const(name: str, value) -> None:
        graph.initializer.append(numpy_helper.from_array(np.asarray(value), name))

    const("pt_first", np.array([0], np.int64))
    const("pt_last", np.array([-1], np.int64))
    const("pt_one", np.array(1.0, np.float32))
    const("pt_zero_point", np.array(128, np.uint8))
    const("pt_zero_points", np.array([128], np.uint8))
    const("pt_floor", np.array(1e-8, np.float32))
    const("pt_inv127", np.array(1 / 127, np.float32))

    new_nodes, emitted, count = [], {}, 0
    for node in graph.node:
        group = by_input.get(node.input[0]) if node.op_type == "MatMul" else None
        if group is None or node not in group:
            new_nodes.append(node)
            continue
        x = node.input[0]
        if x not in emitted:
            weights = [numpy_helper.to_array(inits[n.input[1]]) for n in group]
            smooth = _smoothing(ranges.get(x) if ranges else None, weights, alpha)
            emitted[x] = (f"pt{len(emitted)}_", smooth)
            new_nodes += _quantize_rows(x, emitted[x][0], smooth, weights[0].shape[0], const)
        prefix, smooth = emitted[x]
        new_nodes += _int8_product(node, prefix, numpy_helper.to_array(inits[node.input[1]]), smooth, const)
        count += 1
    del graph.node[:]
    graph.node.extend(new_nodes)
    used = {name for n in graph.node for name in n.input}
    for name in {n.input[1] for nodes in by_input.values() for n in nodes} - used:   # the fp32 weights
        graph.initializer.remove(inits[name])
    if not any(o.domain == "com.microsoft" for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    return count


def _smoothing(x_range: Optional[np.ndarray], weights: List[np.ndarray], alpha: float) -> Optional[np.ndarray]:
    if x_range is None or alpha <= 0:
        return None
    w_range = np.concatenate([np.abs(w) for w in weights], axis=1).max(axis=1)
    s = np.maximum(x_range, 1e-5) ** alpha / np.maximum(w_range, 1e-5) ** (1 - alpha)
    return np.clip(s, 1e-2, 1e2).astype(np.float32)


def _quantize_rows(x: str, p: str, smooth: Optional[np.ndarray], k: int, const) -> List:
    """x [..., K] -> uint8 [M, K] (zero point 128) and its row scales [M, 1]."""
    from onnx import helper
    const(p + "rows", np.array([-1, k], np.int64))
    nodes = [helper.make_node("Shape", [x], [p + "shape"]),
             helper.make_node("Slice", [p + "shape", "pt_first", "pt_last"], [p + "lead"]),
             helper.make_node("Reshape", [x, p + "rows"], [p + "x"])]
    src = p + "x"
    if smooth is not None:
        const(p + "unsmooth", (1 / smooth).astype(np.float32))
        nodes.append(helper.make_node("Mul", [src, p + "unsmooth"], [p + "xs"]))
        src = p + "xs"
    return nodes + [
        helper.make_node("Abs", [src], [p + "abs"]),
        helper.make_node("ReduceMax", [p + "abs"], [p + "max"], axes=[1], keepdims=1),   # opset 17 form
        helper.make_node("Max", [p + "max", "pt_floor"], [p + "max1"]),
        helper.make_node("Mul", [p + "max1", "pt_inv127"], [p + "scale"]),             # [M, 1]
        helper.make_node("Reshape", [p + "scale", "pt_last"], [p + "scale1"]),         # [M]
        helper.make_node("Shape", [p + "scale1"], [p + "m"]),
        helper.make_node("Expand", ["pt_zero_points", p + "m"], [p + "zp"]),
        helper.make_node("QuantizeLinear", [src, p + "scale1", p + "zp"], [p + "q"], axis=0),
    ]


def _int8_product(node, p: str, w: np.ndarray, smooth: Optional[np.ndarray], const) -> List:
    from onnx import helper
    w = w.astype(np.float32) * (smooth[:, None] if smooth is not None else 1)
    col_scale = np.maximum(np.abs(w).max(axis=0), 1e-12) / 127
    name = node.output[0] + "_int8"
    const(name + "_w", np.clip(np.round(w / col_scale), -127, 127).astype(np.int8))
    const(name + "_wscale", col_scale.astype(np.float32))
    const(name + "_n", np.array([w.shape[1]], np.int64))
    return [
        helper.make_node("MatMulIntegerToFloat", [p + "q", name + "_w", "pt_one", name + "_wscale", "pt_zero_point"],
                         [name + "_y"], domain="com.microsoft"),
        helper.make_node("Mul", [name + "_y", p + "scale"], [name + "_ys"]),
        helper.make_node("Concat", [p + "lead", name + "_n"], [name + "_shape"], axis=0),
        helper.make_node("Reshape", [name + "_ys", name + "_shape"], [node.output[0]]),
    ]
