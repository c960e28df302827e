"""How a model RUNS: one sub-package per runtime, each building a Backend from a spec.

:func:`build` is the one entry point: it picks the runtime for ``--backend`` and
returns a :class:`Runnable` — the backend (``forward(Batch) -> arrays``, the narrow
contract in ``poolserve.models.base``) with the device, dtype and thread policy it
runs under. Runtimes are imported only here, on demand, so the layers above never
import one.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass

from ..config import BACKENDS, ModelConfig
from ..errors import ModelLoadError
from ..models.base import Backend
from ..models.spec import ModelSpec

log = logging.getLogger("poolserve.models")


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


def gpu_visible() -> bool:
    """An NVIDIA driver is loaded and CUDA_VISIBLE_DEVICES does not hide every GPU.

    Read from the system, not from torch, so choosing a CPU runtime imports no torch.
    """
    hidden = os.environ.get("CUDA_VISIBLE_DEVICES")
    if hidden is not None and hidden.strip() in ("", "-1"):
        return False
    return os.path.exists("/proc/driver/nvidia/version")


def candidates(spec: ModelSpec, cfg: ModelConfig) -> list[str]:
    """The runtimes to try for ``spec``, best first.

    ``auto``: OpenVINO on a CPU for the model kinds it runs, when it is installed;
    torch for everything else (and as the fallback when a conversion fails). Measured
    on 2-core x86 machines (all-MiniLM-L6-v2, length-sorted batches, same run; README
    "Backends" has the figures): OpenVINO was the fastest runtime on a CPU with native
    bf16 (bf16, ~2.6-4x torch float32) and on one without it at float32; ONNX Runtime
    was slower than OpenVINO on both; torch is the reference and the GPU runtime.
    """
    if cfg.quantization is not None and cfg.backend in ("auto", "openvino"):
        return ["openvino"]  # never a silent fallback to unquantized torch
    if cfg.backend != "auto":
        return [cfg.backend]
    on_cpu = cfg.device == "cpu" or (cfg.device == "auto" and not gpu_visible())
    if on_cpu and importlib.util.find_spec("openvino") is not None:
        from .openvino import precision_problem, supports

        reason = supports(spec) or precision_problem(cfg.dtype)
        if reason is None:
            return ["openvino", "torch"]
        log.info("backend auto: torch (%s)", reason)
    return ["torch"]


def build(spec: ModelSpec, cfg: ModelConfig) -> Runnable:
    """Load ``spec``'s weights on the runtime ``cfg.backend`` names (auto: the best one
    for this machine that can run the model kind). Raises ModelLoadError."""
    if cfg.backend not in BACKENDS:
        raise ModelLoadError(f"--backend {cfg.backend!r}: choose one of {', '.join(BACKENDS)}")
    tried = candidates(spec, cfg)
    for runtime in tried:
        try:
            return _build(runtime, spec, cfg)
        except ModelLoadError as exc:
            if runtime == tried[-1]:
                raise
            log.warning("backend auto: %s failed (%s); trying %s", runtime, exc, tried[-1])
    raise AssertionError("unreachable")


def _build(runtime: str, spec: ModelSpec, cfg: ModelConfig) -> Runnable:
    if runtime == "openvino":
        if importlib.util.find_spec("openvino") is None:
            raise ModelLoadError(
                "--backend openvino: OpenVINO is not installed (pip install openvino)"
            )
        from .openvino.build import build_openvino

        return build_openvino(spec, cfg)
    if runtime == "onnxruntime":
        if importlib.util.find_spec("onnxruntime") is None:
            raise ModelLoadError(
                "--backend onnxruntime: ONNX Runtime is not installed "
                "(pip install 'poolserve[onnxruntime]')"
            )
        from .onnxruntime.build import build_onnxruntime

        return build_onnxruntime(spec, cfg)
    from .torch.build import build_torch

    return build_torch(spec, cfg)
