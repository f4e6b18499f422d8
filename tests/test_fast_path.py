"""The int8 ONNX fast path: built at training time, checked against fp32, used by default on CPU."""
import dataclasses
import json

import numpy as np
import pytest

from conftest import POSTS, train_model
from stance import StanceClassifier
from stance.hardware import Hardware, detect

pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def fast_model(tiny_backbone, labelled_files, tmp_path_factory):
    out = tmp_path_factory.mktemp("fast") / "tiny_fast"
    train_model(tiny_backbone, labelled_files, out, **{"model.fast_path": "true"})
    return out


def test_fast_path_is_checked_and_recorded(fast_model):
    meta = json.loads((fast_model / "stance.json").read_text())
    fp = meta["fast_path"]
    assert fp["n"] == 2 * len(POSTS) and 0 <= fp["label_agreement"] <= 1
    assert fp["enabled"] == (fp["label_agreement"] >= 0.99 and fp["macro_f1_delta"] >= -0.005)
    assert (fast_model / "onnx/model.int8.onnx").exists() == fp["enabled"]
    assert fp["attention_fused"] is True and fp["cls_only_last_layer"] is True
    assert fp["smoothquant_alpha"] in (0.5, 0.6, 0.7) and fp["method"] == "per-token int8"
    assert "Fast CPU path" in (fast_model / "README.md").read_text()


def test_runtimes_agree(fast_model):
    if not json.loads((fast_model / "stance.json").read_text())["fast_path"]["enabled"]:
        pytest.skip("the tiny random model did not pass the int8 check")
    texts = [t for t, _ in POSTS]
    fast = StanceClassifier.load(fast_model, runtime="onnx")
    slow = StanceClassifier.load(fast_model, runtime="torch")
    assert fast.runtime == "onnx-int8" and slow.runtime == "torch-cpu"
    np.testing.assert_allclose(fast.predict_proba(texts), slow.predict_proba(texts), atol=0.02)


def test_disabled_fast_path_falls_back_to_torch(fast_model, tmp_path):
    import shutil
    copy = tmp_path / "m"
    shutil.copytree(fast_model, copy)
    shutil.rmtree(copy / "onnx", ignore_errors=True)
    meta = json.loads((copy / "stance.json").read_text())
    meta["bf16"] = {"enabled": False}
    (copy / "stance.json").write_text(json.dumps(meta))
    assert StanceClassifier.load(copy).runtime == "torch-cpu"   # file gone, no bf16: clean fallback to fp32


@pytest.fixture(scope="module")
def int8_model(fast_model, tmp_path_factory):
    """The tiny model's int8 graph, built whatever its accuracy check said (a random model may fail it)."""
    import shutil

    from stance.onnx_runtime import export_int8
    folder = tmp_path_factory.mktemp("int8") / "m"
    shutil.copytree(fast_model, folder)
    info = export_int8(folder, [t for t, _ in POSTS], max_length=32)
    return folder, info


def test_int8_graph_is_per_token_with_cls_only_last_layer(int8_model):
    import onnx

    from stance.quantize import PER_TOKEN_INT8, SMOOTH_ALPHAS
    folder, info = int8_model
    assert info["method"] == PER_TOKEN_INT8 and info["smoothquant_alpha"] in SMOOTH_ALPHAS
    assert info["attention_fused"] is True and info["cls_only_last_layer"] is True
    graph = onnx.load(str(folder / "onnx/model.int8.onnx")).graph
    ops = [n.op_type for n in graph.node]
    # 2 layers x (Q, K, V, attention output, two feed-forward products), all int8, none left in fp32.
    assert ops.count("MatMulIntegerToFloat") == 12
    weights = {t.name for t in graph.initializer if len(t.dims) == 2}
    assert not [n for n in graph.node if n.op_type == "MatMul" and n.input[1] in weights]
    assert ops.count("MultiHeadAttention") == 2 and "cls_only_slice" in [n.name for n in graph.node]


def test_int8_labels_do_not_depend_on_batch_neighbours(int8_model):
    fast = StanceClassifier.load(int8_model[0], runtime="onnx")
    texts = [t for t, _ in POSTS]
    batched = fast.predict_proba(texts + ["!!!!! " * 40] * 3, batch_size=64)[:len(texts)]
    alone = np.concatenate([fast.predict_proba([t]) for t in texts])
    # Per-token scales: only float summation order can differ (per-batch scales moved these by ~1e-3).
    np.testing.assert_allclose(batched, alone, atol=1e-5)


def _enable_int8(folder, **fast_path):
    """Mark the folder's int8 file as checked, with the given check facts."""
    meta = json.loads((folder / "stance.json").read_text())
    meta["fast_path"] = {"enabled": True, "file": "onnx/model.int8.onnx", "method": "per-token int8", **fast_path}
    (folder / "stance.json").write_text(json.dumps(meta))


def test_load_follows_the_hardware_it_is_given(int8_model):
    """Hardware facts fully described, not read from this machine: the loader obeys the runtime table."""
    folder = int8_model[0]
    here = detect()
    _enable_int8(folder, cpu=here.signature())
    exact = Hardware(machine=here.machine, flags=here.flags, int8_form=here.int8_form, bf16=False)
    clf = StanceClassifier.load(folder, hardware=exact)
    assert clf.runtime == "onnx-int8" and "checked on this kind of CPU" in clf.runtime_reason
    inexact = Hardware(machine=here.machine, flags=here.flags, int8_form=None, bf16=False)
    clf = StanceClassifier.load(folder, hardware=inexact)
    assert clf.runtime == "torch-cpu" and "no int8 product exactly" in clf.runtime_reason
    assert StanceClassifier.load(folder, hardware=inexact, runtime="onnx").runtime == "onnx-int8"  # forcing works


def test_int8_check_is_redone_on_another_kind_of_cpu(int8_model):
    """The training CPU's check is trusted only after the stored posts pass again on this CPU."""
    from stance.folder import ModelMeta
    from stance.onnx_runtime import CHECK_FILE, OnnxEngine, validate_int8

    folder = int8_model[0]
    meta = ModelMeta.read(folder)
    texts = [t for t, _ in POSTS]
    # The tiny random model's own int8 logits stand in for fp32, so its check passes by construction.
    reference, _ = OnnxEngine(folder, meta).logits(texts)
    check = validate_int8(folder, meta, texts, [l for _, l in POSTS], reference)
    # bf16 off: the fallback under test is fp32 on every CPU kind (a native-bf16 CPU would pick bf16).
    here = dataclasses.replace(detect(), bf16=False)
    assert check["cpu"] == here.signature() and check["label_agreement"] == 1.0
    assert (folder / "onnx" / CHECK_FILE).exists()
    other_cpu = {"machine": "x86_64", "flags": ["avx2", "avx512_vnni", "avx512f"], "int8_form": "u8s8"}
    _enable_int8(folder, cpu=other_cpu, label_agreement=check["label_agreement"])
    clf = StanceClassifier.load(folder, hardware=here)
    assert clf.runtime == "onnx-int8" and "re-checking here" in clf.runtime_reason
    assert f"100.0% of {len(POSTS)} stored posts equal fp32" in clf.runtime_reason
    # Stored fp32 labels the int8 file no longer reproduces: the re-check fails and fp32 takes over.
    probe = json.loads((folder / "onnx" / CHECK_FILE).read_text())
    probe["fp32_labels"] = [(label + 1) % 4 for label in probe["fp32_labels"]]
    (folder / "onnx" / CHECK_FILE).write_text(json.dumps(probe))
    clf = StanceClassifier.load(folder, hardware=here)
    assert clf.runtime == "torch-cpu" and "re-check on this CPU failed" in clf.runtime_reason
    (folder / "onnx" / CHECK_FILE).unlink()
    clf = StanceClassifier.load(folder, hardware=here)
    assert clf.runtime == "torch-cpu" and "no usable onnx/check.json" in clf.runtime_reason


def test_bf16_is_checked_recorded_and_used_without_int8(fast_model, tmp_path):
    check = json.loads((fast_model / "stance.json").read_text())["bf16"]
    card = (fast_model / "README.md").read_text()
    assert "bfloat16 CPU scoring" in card
    if not detect().bf16:
        assert check["enabled"] is False and "reason" in check
        pytest.skip("this CPU has no native bfloat16")
    assert check["n"] == 2 * len(POSTS)
    assert check["enabled"] == (check["label_agreement"] >= 0.99 and check["macro_f1_delta"] >= -0.005)
    texts = [t for t, _ in POSTS]
    bf16 = StanceClassifier.load(fast_model, runtime="bf16")
    fp32 = StanceClassifier.load(fast_model, runtime="torch")
    assert bf16.runtime == "torch-cpu-bf16" and fp32.runtime == "torch-cpu"
    assert next(bf16.engine.model.parameters()).dtype.is_floating_point
    assert str(next(bf16.engine.model.parameters()).dtype) == "torch.bfloat16"
    np.testing.assert_allclose(bf16.predict_proba(texts), fp32.predict_proba(texts), atol=0.02)
    int8 = json.loads((fast_model / "stance.json").read_text())["fast_path"]["enabled"]
    expected = "onnx-int8" if int8 else "torch-cpu-bf16" if check["enabled"] else "torch-cpu"
    assert StanceClassifier.load(fast_model).runtime == expected
    import shutil
    copy = tmp_path / "m"
    shutil.copytree(fast_model, copy)
    shutil.rmtree(copy / "onnx", ignore_errors=True)       # no int8 file: bf16 next, where it passed
    assert StanceClassifier.load(copy).runtime == ("torch-cpu-bf16" if check["enabled"] else "torch-cpu")


def test_embedding_table_int8_per_row_matches_fp32(tmp_path):
    """The graph rewrite behind the int8 fast path's small files: Gather(W) -> Gather(W_int8) * scale."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    from stance.onnx_runtime import _quantize_embedding_tables
    rng = np.random.default_rng(0)
    table = (rng.normal(size=(5000, 16)) * rng.uniform(0.01, 3, size=(5000, 1))).astype(np.float32)
    graph = helper.make_graph([helper.make_node("Gather", ["table", "ids"], ["emb"], axis=0)], "g",
                              [helper.make_tensor_value_info("ids", TensorProto.INT64, [None, None])],
                              [helper.make_tensor_value_info("emb", TensorProto.FLOAT, [None, None, 16])],
                              [numpy_helper.from_array(table, "table")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    _quantize_embedding_tables(model)
    assert {t.name for t in model.graph.initializer} == {"table_int8", "table_scale"}
    onnx.save(model, str(tmp_path / "m.onnx"))
    ids = rng.integers(0, 5000, size=(3, 7))
    out = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"]).run(None, {"ids": ids})[0]
    ref = table[ids]
    # Per-row symmetric int8: error at most half a step, i.e. max|row| / 254.
    assert np.all(np.abs(out - ref) <= np.abs(table[ids]).max(axis=-1, keepdims=True) / 254 + 1e-6)


def test_failed_fast_paths_keep_the_trained_model(tiny_backbone, labelled_files, tmp_path, monkeypatch):
    from stance import fast_paths, onnx_runtime

    def broken(*args):
        raise RuntimeError("exporter exploded")
    monkeypatch.setattr(onnx_runtime, "export_int8", broken)
    monkeypatch.setattr(fast_paths, "detect", broken)
    out = tmp_path / "m"
    train_model(tiny_backbone, labelled_files, out, **{"model.fast_path": "true"})
    meta = json.loads((out / "stance.json").read_text())
    assert meta["fast_path"] == {"enabled": False, "reason": "failed: exporter exploded"}
    assert meta["bf16"] == {"enabled": False, "reason": "failed: exporter exploded"}
    assert not (out / "onnx").exists()
    assert StanceClassifier.load(out).runtime == "torch-cpu"
