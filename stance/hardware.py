"""What this machine can do, as plain facts: CPU kind, native bfloat16, a usable GPU, exact int8 products.

The runtime choice (runtime.py) is a pure function of these facts, so tests can
describe any machine; the facts themselves are read once per process.
"""
from __future__ import annotations

import functools
import glob
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Optional, Tuple

# Instruction-set flags that change which kernels run: recorded with every numeric check.
RELEVANT_FLAGS = ("avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16",
                  "amx_int8", "asimd", "asimddp", "i8mm", "bf16", "sve")


@dataclass(frozen=True)
class Hardware:
    """One machine's facts. ``int8_form`` is how int8 products run exactly here (None: not at all)."""

    machine: str = "x86_64"
    cpu: str = "unknown CPU"
    flags: Tuple[str, ...] = ()
    bf16: bool = False
    cuda: bool = False
    int8_form: Optional[str] = "u8s8"

    def signature(self) -> Dict:
        """What a numeric check made on this machine depends on; two machines with equal signatures
        run the same kernels."""
        return {"machine": self.machine, "flags": sorted(self.flags), "int8_form": self.int8_form}

    def describe(self) -> str:
        flags = ", ".join(f for f in RELEVANT_FLAGS if f in self.flags) or "no flags read"
        return f"{self.cpu} ({self.machine}; {flags})"


def _cpuinfo() -> str:
    try:
        return Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""


def cpu_flags(cpuinfo: Optional[str] = None) -> Tuple[str, ...]:
    """The relevant flags of the first CPU in /proc/cpuinfo ('flags' on x86, 'Features' on ARM)."""
    text = _cpuinfo() if cpuinfo is None else cpuinfo
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            present = set(value.split())
            return tuple(f for f in RELEVANT_FLAGS if f in present)
    return ()


def cpu_name(cpuinfo: Optional[str] = None) -> str:
    text = _cpuinfo() if cpuinfo is None else cpuinfo
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name" and value.strip():
            return value.strip()
    return platform.processor() or platform.machine() or "unknown CPU"


def has_native_bf16(flags: Tuple[str, ...]) -> bool:
    """AVX-512 BF16 or AMX: bfloat16 products in hardware (emulated bf16 is slower than fp32)."""
    return "avx512_bf16" in flags or "amx_bf16" in flags


def cuda_available() -> bool:
    if not glob.glob("/dev/nvidia[0-9]*"):
        return False        # no NVIDIA device: skip importing torch just to ask (CPU scoring never needs it)
    import torch
    return bool(torch.cuda.is_available())


@functools.lru_cache(maxsize=None)
def detect() -> Hardware:
    """This machine's facts (int8 exactness is measured by running ONNX Runtime's kernels, see quantize)."""
    from .quantize import int8_form
    flags = cpu_flags()
    return Hardware(machine=platform.machine().lower(), cpu=cpu_name(), flags=flags, bf16=has_native_bf16(flags),
                    cuda=cuda_available(), int8_form=int8_form())


def pick_device(requested: str = "auto") -> str:
    """'cuda' when asked or when a GPU is usable, else 'cpu'."""
    if requested != "auto":
        return requested
    return "cuda" if cuda_available() else "cpu"
