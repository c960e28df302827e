"""Build the ONNX Runtime backend of a spec: export once (cached on disk), then run.

The export is the torch backend's own graph (``backends/torch/graphs.py``) through
``torch.onnx.export`` (the TorchScript exporter: measured 5x faster to export than the
dynamo one for the same speed), checked against torch on other batch shapes before it
is cached. Runs float32: ONNX Runtime's CPU kernels have no bf16 path, so ``--dtype
auto`` is float32 here and bfloat16/float16 are refused. Its dynamic int8 was measured
at cosine 0.87 to float32 on MiniLM, so ``--quantization`` is OpenVINO's only.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from ...config import ModelConfig
from ...errors import ModelLoadError
from ...models.spec import ModelSpec
from .. import Runnable
from ..cache import export_cached
from ..exported import ExportedBackend, exportable

GRAPH_VERSION = 1  # bump when graphs.py changes what an exported model computes


class OnnxRuntimeBackend(ExportedBackend):
    """Runs an exported ONNX graph; one session shared by the calling threads."""

    def __init__(self, path: Path, *, spec: ModelSpec, providers: list[str]) -> None:
        super().__init__(spec)
        self.path = path
        self.providers = providers
        self.threads = max(1, len(os.sched_getaffinity(0)) // 2)
        self._session: Any = None
        self.outputs = ["pooled", "hidden"] if self.embedding else ["logits"]

    def set_threads(self, threads: int) -> None:
        """Intra-op threads per forward (a new session on the next forward)."""
        if threads != self.threads:
            self.threads, self._session = threads, None

    def _get_session(self) -> Any:
        session = self._session
        if session is None:
            options = ort.SessionOptions()
            options.intra_op_num_threads = self.threads
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            session = ort.InferenceSession(str(self.path), options, providers=self.providers)
            self._session = session
        return session

    def run(self, inputs: dict[str, np.ndarray], hidden: bool) -> tuple[np.ndarray, Any]:
        # ONNX Runtime's run() is thread-safe, and computes only what the named outputs need
        names = self.outputs if hidden else self.outputs[:1]
        results = self._get_session().run(names, inputs)
        return np.asarray(results[0], dtype=np.float32), results[1] if hidden else None


def _export(spec: ModelSpec, folder: Path) -> None:
    """Export the torch graph of ``spec`` to ONNX in ``folder``, checked against torch."""
    import torch

    from ..torch.graphs import check_export, example_inputs, export_graph, quiet_tracing

    graph, embedding = export_graph(spec)
    example = example_inputs(spec, embedding)
    names = list(example)
    outputs = ["pooled", "hidden"] if embedding else ["logits"]
    axes: dict[str, dict[int, str]] = {n: {0: "batch", 1: "tokens"} for n in names}
    if embedding:
        axes["prompt_lens"] = {0: "batch"}
        axes["pooled"] = {0: "batch"}
        axes["hidden"] = {0: "batch", 1: "tokens"}
    else:
        axes["logits"] = {0: "batch"}
    path = folder / "model.onnx"
    with quiet_tracing():
        torch.onnx.export(
            graph,
            tuple(example.values()),
            str(path),
            dynamo=False,
            input_names=names,
            output_names=outputs,
            dynamic_axes=axes,
            opset_version=17,
        )
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    check_export(
        spec, graph, embedding, lambda feed: session.run(outputs[:1], feed)[0], "onnxruntime"
    )


def build_onnxruntime(spec: ModelSpec, cfg: ModelConfig) -> Runnable:
    """Export (or read from the cache) and load ``spec``; ModelLoadError if unsupported."""
    reason = exportable(spec, "onnxruntime")
    if reason is not None:
        raise ModelLoadError(f"--backend onnxruntime: {reason}")
    if cfg.dtype not in ("auto", "float32"):
        raise ModelLoadError(
            f"--backend onnxruntime: runs float32; --dtype {cfg.dtype} needs --backend "
            "openvino (CPU) or torch"
        )
    if cfg.quantization is not None:
        raise ModelLoadError("--quantization int8 runs on the openvino backend")
    on_gpu = cfg.device.startswith("cuda")
    available = ort.get_available_providers()
    if on_gpu and "CUDAExecutionProvider" not in available:
        raise ModelLoadError(
            f"--backend onnxruntime --device {cfg.device}: this onnxruntime has no CUDA "
            "provider (install onnxruntime-gpu)"
        )
    providers = (
        ["CUDAExecutionProvider", "CPUExecutionProvider"] if on_gpu else ["CPUExecutionProvider"]
    )
    recipe = {"onnxruntime": ort.__version__, "graph_version": GRAPH_VERSION}
    folder, _ = export_cached("onnxruntime", spec, recipe, lambda f: _export(spec, f))
    backend = OnnxRuntimeBackend(folder / "model.onnx", spec=spec, providers=providers)
    return Runnable(
        backend=backend,
        runtime="onnxruntime",
        device="cuda" if on_gpu else "cpu",
        dtype="float32",
        set_threads=backend.set_threads,
    )
