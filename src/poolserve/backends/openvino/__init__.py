"""The OpenVINO runtime: encoder models on x86 CPUs (bf16 where the CPU has it).

This module imports no runtime: :func:`supports` lets ``--backend auto`` decide
without loading OpenVINO; ``build.py`` holds everything that does.
"""

from __future__ import annotations

from ...models.spec import ModelSpec
from ..exported import exportable


def supports(spec: ModelSpec) -> str | None:
    """None when the OpenVINO backend runs ``spec``; else why not (one line)."""
    return exportable(spec, "openvino")
