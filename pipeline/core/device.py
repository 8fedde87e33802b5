"""Where torch work runs and at which precision: the GPU when there is one, else the CPU; bfloat16 where
the hardware computes it natively."""

from __future__ import annotations

import platform
from functools import lru_cache
from pathlib import Path
from typing import get_args

from pipeline.core.config import Precision

PRECISIONS = get_args(Precision)
"""The values of a precision setting: ``auto`` is bfloat16 where the device computes it natively
(:func:`native_bfloat16`), float32 elsewhere."""
NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")
"""x86 CPU flags of native bfloat16 matrix work (AVX-512 BF16, Intel AMX), as Linux lists them."""


def torch_device():
    import torch

    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@lru_cache(maxsize=None)
def cpu_info() -> tuple[str, frozenset[str]]:
    """The CPU's model name and feature flags (from /proc/cpuinfo on Linux; the platform's name and no
    flags elsewhere)."""
    model, flags = platform.processor() or platform.machine(), frozenset()
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return model, flags
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name" and value.strip():
            model = value.strip()
        elif key.strip() in ("flags", "Features") and not flags:
            flags = frozenset(value.split())
    return model, flags


def native_bfloat16(device) -> bool:
    """Whether ``device`` computes bfloat16 matrix products in hardware: a CUDA GPU that supports bf16, or
    a CPU with AVX-512 BF16 or AMX (read at run time, never assumed)."""
    import torch

    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return device.type == "cpu" and bool(set(NATIVE_BF16_FLAGS) & cpu_info()[1])


def resolve_precision(setting: str, device) -> str:
    """``float32`` or ``bfloat16``: what a precision setting (:data:`PRECISIONS`) means on ``device``."""
    if setting not in PRECISIONS:
        raise ValueError(f"precision {setting!r} is not one of {list(PRECISIONS)}")
    if setting == "auto":
        return "bfloat16" if native_bfloat16(device) else "float32"
    return setting


def compiler_available(device) -> bool:
    """Whether ``torch.compile`` can build kernels for ``device``: always on a GPU; on the CPU, when a C++
    compiler is on the PATH (``$CXX``, g++, c++ or clang++)."""
    import os
    import shutil

    if device.type != "cpu":
        return True
    return any(shutil.which(name) for name in (os.environ.get("CXX"), "g++", "c++", "clang++") if name)


def compile_if_possible(requested: bool, device, what: str) -> bool:
    """Whether to ``torch.compile``: as ``requested``, unless no compiler can build the kernels; then
    ``what`` runs eagerly (the same results, slower) and this says so."""
    if requested and not compiler_available(device):
        print(f"{what}: compile is on but no C++ compiler was found (g++, c++, clang++ or $CXX): running without "
              "torch.compile (the same results, slower)", flush=True)
        return False
    return requested


def describe_cpu() -> str:
    """One line naming the CPU and its bfloat16 support, for benchmarks and logs."""
    model, flags = cpu_info()
    native = [f for f in NATIVE_BF16_FLAGS if f in flags]
    return f"{model}; native bfloat16: {', '.join(native) if native else 'no'}"
