"""Choose the compute device and dtype."""

from __future__ import annotations

import torch

from ...cpu import has_native_bf16
from ...errors import ModelLoadError

_NAMES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_device(name: str) -> torch.device:
    """``auto`` is cuda when a GPU is visible, else cpu."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError(f"--device {name}: no CUDA device is available")
    return device


def resolve_dtype(
    name: str, device: torch.device, cpu_flags: frozenset[str] | None = None
) -> torch.dtype:
    """Map the ``--dtype`` flag to a torch dtype for ``device``.

    ``auto``: bfloat16 on a GPU that supports it (else float16); on a CPU, bfloat16
    exactly where ``cpu_flags`` (default: this CPU's) show native bf16, else float32.
    """
    if name != "auto":
        return _NAMES[name]
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if has_native_bf16(cpu_flags) else torch.float32
