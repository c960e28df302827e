"""What the backends that run an exported graph share (OpenVINO, ONNX Runtime).

They run the traced graphs of ``backends/torch/graphs.py`` (inputs ``input_ids``,
``attention_mask``, ``prompt_lens`` for embedding models, ``token_type_ids`` where the
model uses them; outputs pooled vectors and hidden states, or logits). This class turns
a :class:`Batch` into those inputs and the outputs into what the torch backend of the
same head returns; a runtime supplies only :meth:`ExportedBackend.run`. No runtime here.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import numpy as np

from ..errors import ModelLoadError
from ..models.activations import numpy_activation
from ..models.base import CLASSIFIER, COLBERT, EMBEDDING, SPARSE, Batch, TokenSeq
from ..models.spec import ModelSpec
from .padding import pad_batch

DenseLayers = list[tuple[np.ndarray, np.ndarray | None, Any]]


def exportable(spec: ModelSpec, runtime: str) -> str | None:
    """None when an exported graph can run ``spec``; else why not (one line)."""
    if spec.decoder:
        return f"{runtime} runs encoders; decoder (causal LM) models run on the torch backend"
    if spec.head not in (EMBEDDING, CLASSIFIER):
        kinds = {SPARSE: "sparse (SPLADE)", COLBERT: "late-interaction (ColBERT)"}
        kind = kinds.get(spec.head, "per-token (reward)")
        return f"{runtime} runs encoders; {kind} models run on the torch backend"
    if spec.bge_m3 is not None:
        return (
            f"{runtime} runs encoders without bge-m3's lexical and colbert heads; they run on torch"
        )
    if spec.trust_remote_code:
        return f"{runtime}: models with custom code (--trust-remote-code) run on torch"
    for dense in spec.dense:
        if numpy_activation(dense.activation) is None:
            return f"{runtime}: Dense activation {dense.activation} runs on the torch backend"
    return None


class ExportedBackend(ABC):
    """Pooled float32 vectors (before normalization) or per-token rows for an embedding
    model; raw logits for a classifier — as the torch backend returns them."""

    def __init__(self, spec: ModelSpec) -> None:
        self.spec = spec
        self.embedding = spec.head == EMBEDDING
        # per-token "head" rows (token_classify on an embedding model) apply the Dense
        # layers to every token, in numpy
        self.dense = numpy_dense(spec) if self.embedding and spec.dense else []

    @abstractmethod
    def run(self, inputs: dict[str, np.ndarray], hidden: bool) -> tuple[np.ndarray, Any]:
        """(first output as float32, the hidden states when ``hidden`` else None)."""

    def forward(self, batch: Batch) -> np.ndarray | list[np.ndarray]:
        inputs = graph_inputs(self.spec, batch)
        mask = inputs["attention_mask"]
        per_token = self.embedding and any(s.per_token for s in batch.sequences)
        out, hidden = self.run(inputs, per_token)
        if not per_token:
            return out
        rows: list[np.ndarray] = []
        for i, seq in enumerate(batch.sequences):
            if not seq.per_token:
                rows.append(out[i])
                continue
            tokens = np.array(hidden[i][mask[i] == 1], dtype=np.float32)
            if seq.per_token == "head":
                for weight, bias, activation in self.dense:
                    tokens = activation(tokens @ weight.T + (0.0 if bias is None else bias))
            rows.append(tokens)
        return rows

    def warmup(self) -> None:
        pad = np.full(8, self.spec.pad_token_id, dtype=np.int32)
        self.forward(Batch([TokenSeq(token_ids=pad)]))


def graph_inputs(spec: ModelSpec, batch: Batch) -> dict[str, np.ndarray]:
    """The exported graph's inputs for ``batch``, by name (right-padded int64)."""
    ids, mask, types = pad_batch(
        batch, pad_token_id=spec.pad_token_id, token_types=spec.rules.uses_token_type_ids
    )
    inputs = {"input_ids": ids, "attention_mask": mask}
    if spec.head == EMBEDDING:
        inputs["prompt_lens"] = np.array([s.prompt_len for s in batch.sequences], dtype=np.int64)
    if types is not None:
        inputs["token_type_ids"] = types
    return inputs


def numpy_dense(spec: ModelSpec) -> DenseLayers:
    """The Dense layers as numpy (weight, bias, activation), read from their files."""
    from safetensors.numpy import load_file

    layers = []
    for dense in spec.dense:
        st_file = dense.path / "model.safetensors"
        if not st_file.is_file():
            raise ModelLoadError(
                f"exported backends read Dense weights from model.safetensors; "
                f"{dense.path} has none (use --backend torch)"
            )
        state = {k.removeprefix("linear."): v for k, v in load_file(str(st_file)).items()}
        weight = np.asarray(state["weight"], dtype=np.float32)
        bias = np.asarray(state["bias"], dtype=np.float32) if "bias" in state else None
        layers.append((weight, bias, numpy_activation(dense.activation)))
    return layers
