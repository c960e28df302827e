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
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import openvino as ov

from ...config import ModelConfig
from ...cpu import has_native_bf16
from ...errors import ModelLoadError
from ...models.activations import numpy_activation
from ...models.base import EMBEDDING, Batch, TokenSeq
from ...models.spec import ModelSpec
from .. import Runnable
from ..cache import cache_key, cache_root, cached
from ..padding import pad_batch
from . import supports

log = logging.getLogger("poolserve.models")

GRAPH_VERSION = 1  # bump when graphs.py changes what an exported model computes
_HINTS = {"float32": "f32", "bfloat16": "bf16", "float16": "f16"}


def resolve_dtype(name: str, flags: frozenset[str] | None = None) -> str:
    """``--dtype`` for a CPU: auto is bfloat16 where the CPU has native bf16, else float32."""
    if name != "auto":
        return name
    return "bfloat16" if has_native_bf16(flags) else "float32"


class OpenVINOBackend:
    """Runs a compiled OpenVINO model; one infer request per calling thread.

    Returns what the torch backend of the same head returns: pooled float32 vectors
    (before normalization) or per-token rows for an embedding model; raw logits for a
    classifier.
    """

    def __init__(
        self,
        model: Any,
        *,
        spec: ModelSpec,
        precision: str,
        dense: list[tuple[np.ndarray, np.ndarray | None, Any]],
    ) -> None:
        self.model = model
        self.spec = spec
        self.precision = precision
        self.embedding = spec.head == EMBEDDING
        self.token_types = spec.rules.uses_token_type_ids
        self.dense = dense  # numpy Dense layers, for per-token "head" rows
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

    def forward(self, batch: Batch) -> np.ndarray | list[np.ndarray]:
        ids, mask, types = pad_batch(
            batch, pad_token_id=self.spec.pad_token_id, token_types=self.token_types
        )
        inputs: dict[str, np.ndarray] = {"input_ids": ids, "attention_mask": mask}
        if self.embedding:
            inputs["prompt_lens"] = np.array(
                [s.prompt_len for s in batch.sequences], dtype=np.int64
            )
        if types is not None:
            inputs["token_type_ids"] = types
        per_token = self.embedding and any(s.per_token for s in batch.sequences)
        request = self._request("full" if per_token else "pooled")
        request.infer(inputs)
        out = np.array(request.get_output_tensor(0).data, dtype=np.float32)
        if not per_token:
            return out
        hidden = request.get_output_tensor(1).data
        rows: list[np.ndarray] = []
        for i, seq in enumerate(batch.sequences):
            if not seq.per_token:
                rows.append(out[i])
                continue
            tokens = np.array(hidden[i][mask[i] == 1], dtype=np.float32)
            if seq.per_token == "head":
                for weight, bias, activation in self.dense:
                    tokens = tokens @ weight.T + (bias if bias is not None else 0.0)
                    tokens = activation(tokens)
            rows.append(tokens)
        return rows

    def warmup(self) -> None:
        self.forward(Batch([TokenSeq(token_ids=(self.spec.pad_token_id,) * 8)]))


def _convert(spec: ModelSpec, folder: Path) -> None:
    """Trace the torch graph of ``spec`` and save float32 IR into ``folder``."""
    import torch

    from ..torch.build import load_module
    from ..torch.graphs import ClassifierGraph, EmbeddingGraph, example_inputs
    from ..torch.pooler import load_dense

    model = load_module(spec, torch.float32, torch.device("cpu"))
    embedding = spec.head == EMBEDDING
    graph: torch.nn.Module
    if embedding:
        graph = EmbeddingGraph(model, spec.pooling_modes, [load_dense(d) for d in spec.dense])
    else:
        graph = ClassifierGraph(model)
    graph.eval()
    # The tracer warns of every shape-dependent Python branch in transformers; _verify
    # checks the result on other shapes instead, so the warnings are only noise here.
    with torch.inference_mode(), warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        converted = ov.convert_model(graph, example_input=example_inputs(spec, embedding))
        _verify(spec, graph, converted, embedding)
    ov.save_model(converted, str(folder / "model.xml"), compress_to_fp16=False)


def _verify(spec: ModelSpec, graph: Any, converted: Any, embedding: bool) -> None:
    """The converted model computes what torch does, at float32, on batches of other
    shapes than the traced one (a trace can freeze a shape-dependent branch: seen with
    ModernBERT, whose converted graph returned NaN). Raises ModelLoadError if not."""
    from ..torch.graphs import example_inputs

    compiled = ov.Core().compile_model(converted, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    texts = [
        "one",
        "a longer probe sentence, with punctuation, to check the converted model",
        "three words here",
    ]
    for rows in (texts, texts[:1], texts * 3):
        inputs = example_inputs(spec, embedding, rows)
        want = graph(**inputs)
        want = (want[0] if embedding else want).numpy()
        got = compiled({k: v.numpy() for k, v in inputs.items()})[0]
        if not np.allclose(got, want, rtol=1e-3, atol=1e-4):
            diff = float(np.nanmax(np.abs(got - want))) if np.isfinite(got).all() else "nan"
            raise ModelLoadError(
                f"the OpenVINO conversion of {spec.root} does not match torch "
                f"(max difference {diff} on a batch of {len(rows)})"
            )


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


def _numpy_dense(spec: ModelSpec) -> list[tuple[np.ndarray, np.ndarray | None, Any]]:
    """The Dense layers as numpy (weight, bias, activation), read from their files."""
    from safetensors.numpy import load_file

    layers = []
    for dense in spec.dense:
        st_file = dense.path / "model.safetensors"
        if not st_file.is_file():
            raise ModelLoadError(
                f"the openvino backend reads Dense weights from model.safetensors; "
                f"{dense.path} has none (use --backend torch)"
            )
        state = {k.removeprefix("linear."): v for k, v in load_file(str(st_file)).items()}
        weight = np.asarray(state["weight"], dtype=np.float32)
        bias = np.asarray(state["bias"], dtype=np.float32) if "bias" in state else None
        layers.append((weight, bias, numpy_activation(dense.activation)))
    return layers


def build_openvino(spec: ModelSpec, cfg: ModelConfig) -> Runnable:
    """Convert (or read from the cache) and compile ``spec``; ModelLoadError if unsupported."""
    reason = supports(spec)
    if reason is not None:
        raise ModelLoadError(f"--backend openvino: {reason}")
    if cfg.device not in ("auto", "cpu"):
        raise ModelLoadError(f"--backend openvino runs on the CPU, not --device {cfg.device}")
    dtype = resolve_dtype(cfg.dtype)
    recipe = {
        "graph_version": GRAPH_VERSION,
        "openvino": ov.__version__,
        "head": spec.head,
        "weights": spec.weights,
        "pooling": spec.pooling_modes,
        "dense": [(d.out_features, d.activation, d.bias) for d in spec.dense],
        "token_types": spec.rules.uses_token_type_ids,
        "config": spec.hf_config.to_json_string(use_diff=True),
        "precision_of_ir": "float32",
    }
    folders = [spec.model_dir, *(d.path for d in spec.dense)]
    key = cache_key(folders, recipe)
    # A conversion that failed is remembered, so each restart does not pay it again.
    failed = cache_root() / "openvino" / f"{key}.failed"
    if failed.is_file():
        raise ModelLoadError(failed.read_text(encoding="utf-8").strip())
    started = time.perf_counter()
    try:
        folder, hit = cached("openvino", key, lambda f: _convert(spec, f))
        model = ov.Core().read_model(str(folder / "model.xml"))
    except Exception as exc:
        if not isinstance(exc, ModelLoadError):
            exc = ModelLoadError(f"--backend openvino could not convert {spec.root}: {exc}")
        failed.parent.mkdir(parents=True, exist_ok=True)
        failed.write_text(f"{exc} (remembered in {failed})\n", encoding="utf-8")
        raise exc from None
    what = "read from the cache" if hit else "converted"
    log.info(
        "openvino: %s %s in %.1f s (%s)", what, spec.root, time.perf_counter() - started, folder
    )
    if cfg.quantization == "int8":
        model = _int8(spec, cfg, key, model, _HINTS[dtype])
    backend = OpenVINOBackend(
        model, spec=spec, precision=_HINTS[dtype], dense=_numpy_dense(spec) if spec.dense else []
    )
    return Runnable(
        backend=backend,
        runtime="openvino",
        device="cpu",
        dtype=dtype,
        set_threads=backend.set_threads,
    )
