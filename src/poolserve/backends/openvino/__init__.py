"""The OpenVINO runtime: encoder models on x86 CPUs (bf16 where the CPU has it).

This module imports no runtime: :func:`supports` lets ``--backend auto`` decide
without loading OpenVINO; ``build.py`` holds everything that does.
"""

from __future__ import annotations

from ...cpu import cpu_flags, has_native_bf16
from ...models.spec import ModelSpec
from ..exported import exportable


def supports(spec: ModelSpec) -> str | None:
    """None when the OpenVINO backend runs ``spec``; else why not (one line)."""
    return exportable(spec, "openvino")


# Flags of CPUs on which OpenVINO computes float16 (elsewhere its f16 hint runs f32).
_NATIVE_FP16_FLAGS = frozenset({"avx512_fp16", "amx_fp16"})


def precision_problem(dtype: str, flags: frozenset[str] | None = None) -> str | None:
    """Why OpenVINO would not compute in ``dtype`` on this CPU, or None when it does.

    Its CPU plugin takes a bf16 / f16 hint it cannot honour and runs f32: a server
    saying bfloat16 would compute float32 (seen on a 2-core AVX2 EPYC, outputs equal
    to float32's bit for bit), so such a dtype goes to torch or is refused instead.
    """
    flags = cpu_flags() if flags is None else flags
    if dtype == "bfloat16" and not has_native_bf16(flags):
        return "OpenVINO computes bfloat16 only on a CPU with native bf16 (AVX512-BF16/AMX)"
    if dtype == "float16" and not _NATIVE_FP16_FLAGS & flags:
        return "OpenVINO computes float16 only on a CPU with AVX512-FP16/AMX-FP16"
    return None
