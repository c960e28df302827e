"""Activations named by their torch class path, computed in numpy (no torch).

sentence-transformers names a cross-encoder's score activation and a Dense module's
activation by dotted ``torch.nn`` class path. The ones models actually use are
computed here in float32, so serving needs no torch; a class not listed (custom code
under --trust-remote-code) is run by the backend that can run it.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from .base import Activation
from .post import sigmoid, softmax

_erf = np.vectorize(math.erf, otypes=[np.float64])


def _gelu(x: np.ndarray) -> np.ndarray:
    # torch.nn.GELU's default (approximate="none"): x * Phi(x), with the exact erf.
    x64 = np.asarray(x, dtype=np.float64)
    return np.asarray(0.5 * x64 * (1.0 + _erf(x64 / math.sqrt(2.0))), dtype=np.float32)


def _f32(fn: Callable[[np.ndarray], np.ndarray]) -> Activation:
    def run(x: np.ndarray) -> np.ndarray:
        return np.asarray(fn(np.asarray(x, dtype=np.float32)), dtype=np.float32)

    return run


_BY_CLASS: dict[str, Activation] = {
    "Identity": _f32(lambda x: x),
    "Sigmoid": sigmoid,
    "Tanh": _f32(np.tanh),
    "ReLU": _f32(lambda x: np.maximum(x, 0)),
    "GELU": _gelu,
    "Softmax": softmax,  # dim=None on 2-D input is the last axis, as torch warns
    "SiLU": _f32(lambda x: x * sigmoid(x)),
    "LogSigmoid": _f32(lambda x: -np.logaddexp(0, -x)),
    "Softplus": _f32(lambda x: np.logaddexp(0, x)),
}

# Where the classes live in torch, by module: a name outside these modules is not
# one of ours even when its last component matches.
_TORCH_MODULES = ("torch.nn.modules.activation.", "torch.nn.modules.linear.", "torch.nn.")


def class_name(path: str) -> str | None:
    """The class of a torch.nn activation path that numpy computes here, else None."""
    for prefix in _TORCH_MODULES:
        if path.startswith(prefix):
            name = path.removeprefix(prefix)
            return name if name in _BY_CLASS else None
    return None


def numpy_activation(path: str) -> Activation | None:
    """The float32 numpy function of the activation class ``path``, or None if unknown."""
    name = class_name(path)
    return _BY_CLASS[name] if name is not None else None
