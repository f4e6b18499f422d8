"""Which engine scores a model on this machine, and why: a pure function of facts.

On CPU the order is: the int8 ONNX file (where it passed its check against fp32
and int8 products are exact here), then bfloat16 PyTorch (where the CPU has
native bf16 and the model passed its bf16 check), then fp32 PyTorch. A GPU is
used through PyTorch. The int8 check was made on the training machine's CPU;
on a CPU with other kernels it must be re-checked (`Choice.recheck`) before it
is trusted, and a failed re-check is fed back as a fact.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from .folder import ModelMeta
from .hardware import Hardware
from .quantize import PER_TOKEN_INT8

RUNTIMES = ("auto", "torch", "onnx", "bf16")
ONNX_INT8, TORCH_BF16, TORCH_CPU, TORCH_CUDA, TFIDF = "onnx-int8", "torch-cpu-bf16", "torch-cpu", "torch-cuda", "tfidf"


@dataclass(frozen=True)
class FolderFacts:
    """What the model folder offers beside its fp32 weights."""

    engine: str = "transformer"
    int8_enabled: bool = False          # the int8 file passed its check at training time
    int8_file: bool = False             # ... and is present
    int8_method: Optional[str] = None   # how it was built (PER_TOKEN_INT8 for current builds)
    int8_agreement: Optional[float] = None
    int8_cpu: Optional[dict] = None     # Hardware.signature() of the CPU the check ran on
    bf16_enabled: bool = False

    @classmethod
    def of(cls, meta: ModelMeta, int8_file_present: bool) -> "FolderFacts":
        fp = meta.fast_path or {}
        return cls(engine=meta.engine, int8_enabled=bool(fp.get("enabled")), int8_file=int8_file_present,
                   int8_method=fp.get("method"), int8_agreement=fp.get("label_agreement"),
                   int8_cpu=fp.get("cpu"), bf16_enabled=bool((meta.bf16 or {}).get("enabled")))


@dataclass(frozen=True)
class Choice:
    runtime: str            # onnx-int8 | torch-cpu-bf16 | torch-cpu | torch-cuda | tfidf
    reason: str
    recheck: bool = False   # int8 chosen, but its check ran on another kind of CPU: re-check before use


def choose_runtime(folder: FolderFacts, hw: Hardware, request: str = "auto", device: str = "auto",
                   onnx_installed: bool = True, recheck_failed: Optional[str] = None) -> Choice:
    """The runtime for `request` (auto, torch, onnx, bf16) on `device` (auto, cpu, cuda)."""
    if folder.engine == "tfidf":
        return Choice(TFIDF, "TF-IDF model")
    gpu = device == "cuda" or (device == "auto" and hw.cuda)
    if request == "torch":
        return Choice(TORCH_CUDA if gpu else TORCH_CPU, "fp32 PyTorch, as requested")
    if request == "bf16":
        return Choice(TORCH_BF16, "bfloat16 PyTorch, as requested")
    if request == "onnx":
        return Choice(ONNX_INT8, "int8 ONNX, as requested")
    if gpu:
        return Choice(TORCH_CUDA, "a GPU is present")

    why_not_int8 = _why_not_int8(folder, hw, onnx_installed, recheck_failed)
    bf16 = folder.bf16_enabled and hw.bf16
    legacy = folder.int8_method != PER_TOKEN_INT8
    if why_not_int8 is None and not (bf16 and legacy):
        recheck = folder.int8_cpu != hw.signature()
        agreement = f"{folder.int8_agreement:.1%} of fp32 labels" if folder.int8_agreement is not None else "checked"
        where = ("checked on another kind of CPU: re-checking here" if recheck and folder.int8_cpu
                 else "checked on this kind of CPU" if not recheck else "not re-checked (no CPU recorded)")
        return Choice(ONNX_INT8, f"int8 ONNX ({agreement} at training, {where}; int8 products exact here as "
                                 f"{hw.int8_form})", recheck=recheck and bool(folder.int8_cpu))
    if bf16:
        return Choice(TORCH_BF16, "bfloat16 PyTorch (native bf16 CPU, passed its check)"
                      + (f"; no int8: {why_not_int8}" if why_not_int8 else "; preferred to the older 8-bit file"))
    why_not_bf16 = ("the CPU has no native bfloat16" if not hw.bf16 else "the model's bf16 check failed or was not run")
    return Choice(TORCH_CPU, f"fp32 PyTorch (no int8: {why_not_int8 or 'older 8-bit file'}; no bf16: {why_not_bf16})")


def _why_not_int8(folder: FolderFacts, hw: Hardware, onnx_installed: bool, recheck_failed: Optional[str]) -> Optional[str]:
    if not folder.int8_enabled:
        return "the model has no int8 file that passed its check"
    if not folder.int8_file:
        return "the int8 file is missing from the model folder"
    if not onnx_installed:
        return "onnxruntime is not installed (pip install 'stance[onnx]')"
    if hw.int8_form is None:
        return "this CPU computes no int8 product exactly in ONNX Runtime"
    if recheck_failed:
        return f"the re-check on this CPU failed ({recheck_failed})"
    return None
