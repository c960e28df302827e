"""How a model RUNS: one sub-package per runtime, each building a Backend from a spec.

:func:`build` is the one entry point: it picks the runtime for ``--backend`` and
returns a :class:`Runnable` — the backend (``forward(Batch) -> arrays``, the narrow
contract in ``poolserve.models.base``) with the device, dtype and thread policy it
runs under. Runtimes are imported only here, on demand, so the layers above never
import one.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

from ..config import BACKENDS, ModelConfig
from ..errors import ModelLoadError
from ..models.base import Backend
from ..models.spec import ModelSpec


@dataclass
class Runnable:
    """A built backend and the facts of how it runs."""

    backend: Backend
    runtime: str  # "torch", ...
    device: str  # "cpu", "cuda:0", ...
    dtype: str  # "float32", "bfloat16", "float16"
    set_threads: Callable[[int], None]  # the runtime's intra-op threads per forward

    @property
    def on_cpu(self) -> bool:
        return self.device.startswith("cpu")

    def default_workers(self, cores: int | None = None) -> int:
        """Concurrent forwards: 1 on a GPU; on a CPU, 2 up to 8 cores, then one per 4.

        Measured on 2 cores: two 1-thread forwards are robust to the server's other
        work (HTTP, tokenization), while one 2-thread forward stalls whenever a core
        is taken.
        """
        if not self.on_cpu:
            return 1
        cores = cores or len(os.sched_getaffinity(0))
        return 2 if cores <= 8 else cores // 4

    def configure_threads(self, workers: int, cores: int | None = None) -> int:
        """Give each of ``workers`` concurrent forwards an equal share of the cores.

        Returns the threads per forward.
        """
        cores = cores or len(os.sched_getaffinity(0))
        threads = max(1, cores // max(1, workers))
        self.set_threads(threads)
        return threads


def build(spec: ModelSpec, cfg: ModelConfig) -> Runnable:
    """Load ``spec``'s weights on the runtime ``cfg.backend`` names (auto: the best one
    for this machine that can run the model kind). Raises ModelLoadError."""
    choice = cfg.backend
    if choice not in BACKENDS:
        raise ModelLoadError(f"--backend {choice!r}: choose one of {', '.join(BACKENDS)}")
    from .torch.build import build_torch

    return build_torch(spec, cfg)
