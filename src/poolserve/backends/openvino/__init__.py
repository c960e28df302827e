"""The OpenVINO runtime: encoder models on x86 CPUs (bf16 where the CPU has it).

This module imports no runtime: :func:`supports` lets ``--backend auto`` decide
without loading OpenVINO; ``build.py`` holds everything that does.
"""

from __future__ import annotations

from ...models.activations import numpy_activation
from ...models.base import CLASSIFIER, EMBEDDING
from ...models.spec import ModelSpec


def supports(spec: ModelSpec) -> str | None:
    """None when the OpenVINO backend runs ``spec``; else why not (one line)."""
    if spec.decoder:
        return "decoder (causal LM) models run on the torch backend"
    if spec.head not in (EMBEDDING, CLASSIFIER):
        return "per-token (reward) models run on the torch backend"
    if spec.trust_remote_code:
        return "models with custom code (--trust-remote-code) run on the torch backend"
    for dense in spec.dense:
        if numpy_activation(dense.activation) is None:
            return f"Dense activation {dense.activation} runs on the torch backend"
    return None
