"""Build the OpenVINO backend of a spec: convert once (cached on disk), compile, run.

Conversion traces the torch backend's own graph (``backends/torch/graphs.py``) with
``openvino.convert_model`` and saves float32 IR in the conversion cache; a restart
with the same model files, OpenVINO version and recipe reads the IR without torch.
Precision is chosen at compile time: ``INFERENCE_PRECISION_HINT`` bf16 where the
resolved dtype is bfloat16 (``--dtype auto`` on a CPU with native bf16), f32 otherwise.

Runs: encoder embedding models (any pooling, Dense, Normalize, prompts) and encoder
sequence classifiers (cross-encoders, classifiers). Decoders and per-token reward
models raise ModelLoadError naming the kind (``--backend auto`` then uses torch).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import openvino as ov

from ...config import ModelConfig
from ...cpu import has_native_bf16
from ...errors import ModelLoadError
from ...models.base import EMBEDDING
from ...models.spec import ModelSpec
from .. import Runnable
from ..cache import cached, export_cached
from ..exported import ExportedBackend
from . import precision_problem, supports

log = logging.getLogger("poolserve.models")

GRAPH_VERSION = 1  # bump when graphs.py changes what an exported model computes
_HINTS = {"float32": "f32", "bfloat16": "bf16", "float16": "f16"}


def resolve_dtype(name: str, flags: frozenset[str] | None = None) -> str:
    """``--dtype`` for a CPU: auto is bfloat16 where the CPU has native bf16, else float32."""
    if name != "auto":
        return name
    return "bfloat16" if has_native_bf16(flags) else "float32"


class OpenVINOBackend(ExportedBackend):
    """Runs a compiled OpenVINO model; one infer request per calling thread."""

    def __init__(self, model: Any, *, spec: ModelSpec, precision: str) -> None:
        super().__init__(spec)
        self.model = model
        self.precision = precision
        self.cores = len(os.sched_getaffinity(0))
        # Most batches want only the pooled rows: a model without the hidden-states
        # output skips materializing [B, T, H] floats (measured ~5% on MiniLM). The
        # full model is compiled the first time a batch asks for per-token rows.
        self.pooled = (
            ov.Model([model.outputs[0]], model.get_parameters(), "pooled")
            if self.embedding
            else model
        )
        self._compiled: dict[str, Any] = {}
        self._lock = threading.Lock()
        self._local = threading.local()
        self.streams = 2 if self.cores <= 8 else self.cores // 4

    def _compile(self, which: str) -> Any:
        """The compiled ``pooled`` or ``full`` model for the current stream count."""
        with self._lock:
            compiled = self._compiled.get(which)
            if compiled is None:
                config = {
                    "INFERENCE_PRECISION_HINT": self.precision,
                    "NUM_STREAMS": str(self.streams),
                    "INFERENCE_NUM_THREADS": str(self.cores),
                }
                source = self.pooled if which == "pooled" else self.model
                compiled = ov.Core().compile_model(source, "CPU", config)
                self._compiled[which] = compiled
            return compiled

    def set_threads(self, threads: int) -> None:
        """``threads`` per forward: as many streams as fit in the cores (recompiles)."""
        streams = max(1, self.cores // max(1, threads))
        with self._lock:
            if streams != self.streams:
                self.streams = streams
                self._compiled.clear()

    def _request(self, which: str) -> Any:
        compiled = self._compile(which)
        requests = getattr(self._local, "requests", None)
        if requests is None:
            requests = self._local.requests = {}
        request, owner = requests.get(which, (None, None))
        if owner is not compiled:
            request = compiled.create_infer_request()
            requests[which] = (request, compiled)
        return request

    def run(self, inputs: dict[str, np.ndarray], hidden: bool) -> tuple[np.ndarray, Any]:
        request = self._request("full" if hidden else "pooled")
        request.infer(inputs)
        out = np.array(request.get_output_tensor(0).data, dtype=np.float32)
        return out, request.get_output_tensor(1).data if hidden else None


def _convert(spec: ModelSpec, folder: Path) -> None:
    """Trace the torch graph of ``spec``, check it, and save float32 IR into ``folder``."""
    from ..torch.graphs import check_export, example_inputs, export_graph, quiet_tracing

    graph, embedding = export_graph(spec)
    with quiet_tracing():
        converted = ov.convert_model(graph, example_input=example_inputs(spec, embedding))
    compiled = ov.Core().compile_model(converted, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    check_export(spec, graph, embedding, lambda feed: compiled(feed)[0], "openvino")
    ov.save_model(converted, str(folder / "model.xml"), compress_to_fp16=False)


def _int8(spec: ModelSpec, cfg: ModelConfig, key: str, model: Any, hint: str) -> Any:
    """The int8 model of ``spec`` (quantized once, cached), after its accuracy gate."""
    from . import quantize

    if spec.head != EMBEDDING:
        raise ModelLoadError(
            "--quantization int8 supports embedding models; this model is a "
            f"{spec.info.task} model (serve it without --quantization)"
        )
    started = time.perf_counter()
    int8_key = f"{key}-int8-{quantize.recipe_key()}"
    folder, hit = cached("openvino", int8_key, lambda f: quantize.quantize(spec, model, f))
    quantized = ov.Core().read_model(str(folder / "model.xml"))
    what = "read from the cache" if hit else "quantized"
    log.info("int8: %s in %.1f s (%s)", what, time.perf_counter() - started, folder)
    config = {"INFERENCE_PRECISION_HINT": hint}
    reference = ov.Core().compile_model(model, "CPU", config)
    worst = quantize.min_cosine(spec, reference, ov.Core().compile_model(quantized, "CPU", config))
    log.info("int8: minimum cosine to the %s model on the check set: %.5f", hint, worst)
    if worst < cfg.min_quantized_cosine:
        raise ModelLoadError(
            f"--quantization int8: minimum cosine to the unquantized model is {worst:.4f}, "
            f"below --min-quantized-cosine {cfg.min_quantized_cosine}; serve this model "
            "without --quantization (or lower the bound knowingly)"
        )
    return quantized


def build_openvino(spec: ModelSpec, cfg: ModelConfig) -> Runnable:
    """Convert (or read from the cache) and compile ``spec``; ModelLoadError if unsupported."""
    reason = supports(spec)
    if reason is not None:
        raise ModelLoadError(f"--backend openvino: {reason}")
    if cfg.device not in ("auto", "cpu"):
        raise ModelLoadError(f"--backend openvino runs on the CPU, not --device {cfg.device}")
    dtype = resolve_dtype(cfg.dtype)
    problem = precision_problem(dtype)
    if problem is not None:
        raise ModelLoadError(
            f"--backend openvino --dtype {dtype}: {problem}; this CPU has none. Use "
            "--dtype float32, or --backend torch (which emulates it, slowly)"
        )
    recipe = {"openvino": ov.__version__, "graph_version": GRAPH_VERSION}
    folder, key = export_cached("openvino", spec, recipe, lambda f: _convert(spec, f))
    model = ov.Core().read_model(str(folder / "model.xml"))
    if cfg.quantization == "int8":
        model = _int8(spec, cfg, key, model, _HINTS[dtype])
    backend = OpenVINOBackend(model, spec=spec, precision=_HINTS[dtype])
    return Runnable(
        backend=backend,
        runtime="openvino",
        device="cpu",
        dtype=dtype,
        set_threads=backend.set_threads,
    )
