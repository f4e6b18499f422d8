"""The runtime choice as a table: folder facts x hardware facts x request -> engine (and why)."""
from dataclasses import replace

import pytest

from stance.hardware import Hardware, cpu_flags, cpu_name, has_native_bf16
from stance.runtime import FolderFacts, choose_runtime

AVX2 = Hardware(machine="x86_64", flags=("avx2", "fma"), int8_form="u8u8")            # e.g. AMD EPYC (Zen 3)
VNNI = Hardware(machine="x86_64", flags=("avx2", "avx512f", "avx512_vnni"), int8_form="u8s8")
SAPPHIRE = Hardware(machine="x86_64", flags=("avx512f", "avx512_vnni", "amx_bf16", "amx_int8"), bf16=True,
                    int8_form="u8s8")
ARM = Hardware(machine="aarch64", flags=("asimd", "asimddp"), int8_form="u8s8")
NO_INT8 = Hardware(machine="x86_64", flags=("avx2",), int8_form=None)
GPU = Hardware(machine="x86_64", flags=("avx2",), cuda=True, int8_form="u8u8")

INT8 = dict(int8_enabled=True, int8_file=True, int8_method="per-token int8", int8_agreement=0.993,
            int8_cpu=VNNI.signature())
BOTH = dict(INT8, bf16_enabled=True)
LEGACY = dict(BOTH, int8_method=None)
FAILED = dict(INT8, int8_enabled=False)
MISSING = dict(INT8, int8_file=False)

CASES = [
    # folder, hardware, request, device, onnx installed -> runtime, words in the reason
    (INT8, VNNI, "auto", "auto", True, "onnx-int8", "checked on this kind of CPU"),
    (INT8, AVX2, "auto", "auto", True, "onnx-int8", "re-checking here"),
    (INT8, ARM, "auto", "auto", True, "onnx-int8", "re-checking here"),
    (INT8, NO_INT8, "auto", "auto", True, "torch-cpu", "no int8 product exactly"),
    (INT8, VNNI, "auto", "auto", False, "torch-cpu", "onnxruntime is not installed"),
    (BOTH, SAPPHIRE, "auto", "auto", True, "onnx-int8", "int8 ONNX"),
    (BOTH, replace(SAPPHIRE, int8_form=None), "auto", "auto", True, "torch-cpu-bf16", "no int8"),
    (LEGACY, SAPPHIRE, "auto", "auto", True, "torch-cpu-bf16", "older 8-bit file"),
    (LEGACY, VNNI, "auto", "auto", True, "onnx-int8", "int8 ONNX"),
    (FAILED, VNNI, "auto", "auto", True, "torch-cpu", "no int8 file that passed"),
    (MISSING, VNNI, "auto", "auto", True, "torch-cpu", "missing from the model folder"),
    (dict(FAILED, bf16_enabled=True), AVX2, "auto", "auto", True, "torch-cpu", "no native bfloat16"),
    (INT8, GPU, "auto", "auto", True, "torch-cuda", "GPU"),
    (INT8, GPU, "auto", "cpu", True, "onnx-int8", "int8 ONNX"),
    (INT8, VNNI, "torch", "auto", True, "torch-cpu", "requested"),
    (INT8, GPU, "torch", "auto", True, "torch-cuda", "requested"),
    (FAILED, NO_INT8, "onnx", "auto", True, "onnx-int8", "requested"),
    (INT8, AVX2, "bf16", "auto", True, "torch-cpu-bf16", "requested"),
    (dict(engine="tfidf"), GPU, "auto", "auto", True, "tfidf", "TF-IDF"),
]


@pytest.mark.parametrize("folder, hw, asked, device, onnx, runtime, reason", CASES)
def test_runtime_table(folder, hw, asked, device, onnx, runtime, reason):
    choice = choose_runtime(FolderFacts(**folder), hw, asked, device, onnx)
    assert choice.runtime == runtime
    assert reason in choice.reason


def test_recheck_only_when_the_check_ran_on_another_cpu_kind():
    assert choose_runtime(FolderFacts(**INT8), VNNI).recheck is False
    assert choose_runtime(FolderFacts(**INT8), AVX2).recheck is True
    assert choose_runtime(FolderFacts(**dict(INT8, int8_cpu=None)), AVX2).recheck is False   # nothing to compare
    failed = choose_runtime(FolderFacts(**INT8), AVX2, recheck_failed="95.0% of 256 stored posts equal fp32")
    assert failed.runtime == "torch-cpu" and "re-check on this CPU failed (95.0%" in failed.reason


def test_cpu_facts_are_read_from_cpuinfo():
    x86 = "processor\t: 0\nmodel name\t: AMD EPYC 7B13\nflags\t\t: fpu sse avx2 fma avx512f avx512_vnni\n"
    arm = "processor\t: 0\nFeatures\t: fp asimd asimddp i8mm bf16\nCPU part\t: 0xd40\n"
    assert cpu_name(x86) == "AMD EPYC 7B13"
    assert cpu_flags(x86) == ("avx2", "fma", "avx512f", "avx512_vnni")
    assert cpu_flags(arm) == ("asimd", "asimddp", "i8mm", "bf16")
    assert not has_native_bf16(cpu_flags(x86)) and has_native_bf16(("amx_bf16",))
