"""Choose the compute device and dtype."""

from __future__ import annotations

from pathlib import Path

import torch

from ..errors import ModelLoadError

_NAMES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def cpu_has_native_bf16() -> bool:
    """True when this CPU computes bfloat16 natively (AVX512-BF16 or AMX-BF16).

    Without those instructions oneDNN emulates bf16 and runs slower than float32
    (measured: ~3x slower on an AVX-512 CPU lacking avx512_bf16), so ``auto``
    must not pick it there.
    """
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    flags = next((line for line in text.splitlines() if line.startswith("flags")), "")
    tokens = set(flags.split())
    return bool({"avx512_bf16", "amx_bf16"} & tokens)


def resolve_device(name: str) -> torch.device:
    """``auto`` is cuda when a GPU is visible, else cpu."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError(f"--device {name}: no CUDA device is available")
    return device


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """Map the ``--dtype`` flag to a torch dtype for ``device``."""
    if name != "auto":
        return _NAMES[name]
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if cpu_has_native_bf16() else torch.float32
