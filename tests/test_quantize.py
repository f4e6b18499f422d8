"""The per-token int8 rewrite (stance/quantize.py) on small hand-built graphs."""
import numpy as np
import pytest

pytest.importorskip("onnxruntime")
import onnx  # noqa: E402
import onnxruntime as ort  # noqa: E402
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from stance import quantize  # noqa: E402

K, N = 64, 48


def linear_model(w: np.ndarray):
    """y = x @ W for x of shape [batch, seq, K]: one weight product, as in an encoder layer."""
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "W"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, None, K])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, None, N])],
                              [numpy_helper.from_array(w, "W")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def run(model, x: np.ndarray) -> np.ndarray:
    """Through the session helper the tool uses: int8 products in the form exact on this CPU."""
    return quantize.session(model).run(None, {"x": x})[0]


@pytest.fixture
def weights():
    return np.random.default_rng(0).normal(size=(K, N)).astype(np.float32)


def test_products_are_int8_and_close_to_fp32(weights):
    model = linear_model(weights)
    assert quantize.quantize_per_token(model) == 1
    assert [n.op_type for n in model.graph.node].count("MatMulIntegerToFloat") == 1
    assert "W" not in {t.name for t in model.graph.initializer}          # the fp32 weight is gone
    x = np.random.default_rng(1).normal(size=(3, 5, K)).astype(np.float32)
    y, ref = run(model, x), x @ weights
    assert y.shape == ref.shape
    assert np.abs(y - ref).max() < 0.02 * np.abs(ref).max()


def test_each_token_is_quantised_on_its_own(weights):
    model = linear_model(weights)
    quantize.quantize_per_token(model)
    x = np.random.default_rng(2).normal(size=(2, 4, K)).astype(np.float32)
    loud = x.copy()
    loud[1] *= 1000            # other posts in the batch with huge activations
    loud[0, 1:] *= 1000        # and other tokens of the same post
    # int32 accumulation is exact, so token (0, 0) gets exactly the same result.
    np.testing.assert_array_equal(run(model, loud)[0, 0], run(model, x)[0, 0])


def test_smoothing_keeps_an_outlier_channel_from_swamping_the_rest(weights):
    rng = np.random.default_rng(3)
    x = rng.normal(size=(4, 8, K)).astype(np.float32)
    x[..., 5] *= 60            # one hidden channel far larger than the others, as in BERT-style encoders
    ref = x @ weights
    errors = {}
    for smooth in (False, True):
        model = linear_model(weights)
        ranges = {"x": np.abs(x).reshape(-1, K).max(axis=0)} if smooth else None
        quantize.quantize_per_token(model, ranges)
        errors[smooth] = np.abs(run(model, x) - ref).mean()
    assert errors[True] < 0.6 * errors[False]


def test_cls_only_needs_fused_attention(weights):
    model = linear_model(weights)
    before = model.SerializeToString()
    assert quantize.last_layer_cls_only(model) is False
    assert model.SerializeToString() == before


def test_backbone_whose_attention_does_not_fuse_still_gets_int8(tiny_backbone, tmp_path):
    """MPNet's relative position bias stops the attention fusion; the plain graph is quantised instead."""
    import shutil

    import torch
    from transformers import MPNetConfig, MPNetForSequenceClassification

    from conftest import POSTS
    from stance.engines import encode, length_sorted_batches
    from stance.onnx_runtime import INT8_FILE, ONNX_DIR, _tokenizer, export_int8

    folder = tmp_path / "mpnet"
    shutil.copytree(tiny_backbone, folder, ignore=shutil.ignore_patterns("config.json", "model.safetensors"))
    torch.manual_seed(0)
    cfg = MPNetConfig(vocab_size=400, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                      intermediate_size=64, num_labels=4, pad_token_id=0)
    model = MPNetForSequenceClassification(cfg).eval()
    model.save_pretrained(str(folder), safe_serialization=True)
    texts = [t for t, _ in POSTS]
    export_int8(folder, texts, max_length=32)
    graph = onnx.load(str(folder / ONNX_DIR / INT8_FILE)).graph
    ops = [n.op_type for n in graph.node]
    assert "MultiHeadAttention" not in ops and ops.count("MatMulIntegerToFloat") == 12
    ids, _ = encode(_tokenizer(folder), texts, 32)
    _, input_ids, mask = next(iter(length_sorted_batches(ids, 64, 0)))
    session = ort.InferenceSession(str(folder / ONNX_DIR / INT8_FILE), providers=["CPUExecutionProvider"])
    got = session.run(["logits"], {"input_ids": input_ids, "attention_mask": mask})[0]
    with torch.inference_mode():
        ref = model(input_ids=torch.from_numpy(input_ids), attention_mask=torch.from_numpy(mask)).logits.numpy()
    assert np.abs(got - ref).max() < 0.05 * np.abs(ref).max()


def test_this_cpu_has_an_exact_int8_form():
    """The probe runs ONNX Runtime's real kernels here; u8 x u8 is exact on every CPU ORT supports."""
    assert quantize._product_is_exact("u8u8")
    assert quantize.int8_form() in ("u8s8", "u8u8")
    if quantize.int8_form() == "u8u8":          # x86 without VNNI: the u8 x s8 kernel really saturates
        assert not quantize._product_is_exact("u8s8")


def test_unsigned_weights_give_the_same_integers(weights):
    """(w + 128) with zero point 128 is the same product: identical outputs, whichever kernel runs."""
    model = linear_model(weights)
    quantize.quantize_per_token(model)
    x = np.random.default_rng(4).normal(size=(2, 7, K)).astype(np.float32)
    x[0, 0] = 50.0                                   # full-range activations: the case that saturates
    unsigned = onnx.ModelProto()
    unsigned.CopyFrom(model)
    assert quantize.to_unsigned_weights(unsigned) == 1
    assert quantize.to_unsigned_weights(unsigned) == 0     # idempotent: already unsigned
    plain = ort.InferenceSession(unsigned.SerializeToString(), providers=["CPUExecutionProvider"])
    np.testing.assert_array_equal(plain.run(None, {"x": x})[0], run(model, x))
    assert np.abs(run(model, x) - x @ weights).max() < 0.02 * np.abs(x @ weights).max()
