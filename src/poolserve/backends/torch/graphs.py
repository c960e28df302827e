"""One traceable torch module per head kind, for exporting to other runtimes.

Each takes plain int64 tensors and returns float32 outputs, with no data-dependent
Python branches, so ``openvino.convert_model`` (or an ONNX export) traces it once for
every batch shape. The maths is the torch backend's own (``pool``, the Dense modules,
the model's classifier), so an exported model computes what the torch backend does.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Iterator, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from ...errors import ModelLoadError
from ...models.spec import ModelSpec
from .pooler import exclude_prompt, pool_masked


class EmbeddingGraph(nn.Module):
    """(input_ids, attention_mask, prompt_lens[, token_type_ids]) ->
    (pooled and Dense-projected vectors [B, dim], last hidden states [B, T, H]), float32.

    ``prompt_lens`` (int64 [B]) excludes leading prompt tokens from pooling; zeros
    exclude nothing, so the graph always applies it (no branch on the data).
    """

    def __init__(self, model: nn.Module, modes: tuple[str, ...], dense: Sequence[nn.Module]):
        super().__init__()
        self.model = model
        self.modes = modes
        self.dense = nn.Sequential(*dense) if dense else None

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor,
        prompt_lens: Tensor,
        token_type_ids: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        kwargs = {"token_type_ids": token_type_ids} if token_type_ids is not None else {}
        hidden = self.model(
            input_ids=input_ids, attention_mask=attention_mask, **kwargs
        ).last_hidden_state
        mask = exclude_prompt(attention_mask, prompt_lens)
        pooled = pool_masked(hidden, attention_mask, mask, self.modes)
        if self.dense is not None:
            pooled = self.dense(pooled.to(next(self.dense.parameters()).dtype))
        return pooled.float(), hidden.float()


class ClassifierGraph(nn.Module):
    """(input_ids, attention_mask[, token_type_ids]) -> logits [B, num_labels], float32."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(
        self, input_ids: Tensor, attention_mask: Tensor, token_type_ids: Tensor | None = None
    ) -> Tensor:
        kwargs = {"token_type_ids": token_type_ids} if token_type_ids is not None else {}
        logits = self.model(input_ids=input_ids, attention_mask=attention_mask, **kwargs).logits
        return logits.float()


def example_inputs(
    spec: ModelSpec, embedding: bool, texts: list[str] | None = None
) -> dict[str, Tensor]:
    """A small padded batch in the graph's input order (for tracing and checks)."""
    texts = texts or ["a short probe", "a somewhat longer probe sentence to trace the model with"]
    enc = spec.tokenizer(
        texts,
        padding=True,
        return_tensors="pt",
        return_token_type_ids=spec.rules.uses_token_type_ids,
    )
    out = {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}
    if embedding:
        out["prompt_lens"] = torch.zeros(enc["input_ids"].shape[0], dtype=torch.int64)
    if spec.rules.uses_token_type_ids:
        out["token_type_ids"] = enc["token_type_ids"]
    return out


def export_graph(spec: ModelSpec) -> tuple[nn.Module, bool]:
    """(the float32 CPU graph of ``spec``'s head, whether it is an embedding graph)."""
    from ...models.base import EMBEDDING
    from .build import load_module
    from .pooler import load_dense

    model = load_module(spec, torch.float32, torch.device("cpu"))
    embedding = spec.head == EMBEDDING
    graph: nn.Module
    if embedding:
        graph = EmbeddingGraph(model, spec.pooling_modes, [load_dense(d) for d in spec.dense])
    else:
        graph = ClassifierGraph(model)
    return graph.eval(), embedding


@contextlib.contextmanager
def quiet_tracing() -> Iterator[None]:
    """Inference mode, without the tracer's warnings: it warns of every shape-dependent
    Python branch in transformers, and :func:`check_export` tests other shapes instead."""
    with torch.inference_mode(), warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        yield


def check_export(
    spec: ModelSpec,
    graph: nn.Module,
    embedding: bool,
    run: Callable[[dict[str, np.ndarray]], np.ndarray],
    runtime: str,
) -> None:
    """``run`` (an exported graph's first output, float32) equals ``graph`` on batches of
    other shapes than the traced one: a trace can freeze a shape-dependent branch (seen:
    ModernBERT's converted graph returned NaN). Raises ModelLoadError naming ``runtime``.
    """
    texts = [
        "one",
        "a longer probe sentence, with punctuation, to check the converted model",
        "three words here",
    ]
    with torch.inference_mode():
        for rows in (texts, texts[:1], texts * 3):
            inputs = example_inputs(spec, embedding, rows)
            want = graph(**inputs)
            want = (want[0] if embedding else want).numpy()
            got = run({k: v.numpy() for k, v in inputs.items()})
            if not np.allclose(got, want, rtol=1e-3, atol=1e-4):
                finite = np.isfinite(got).all()
                diff = f"{float(np.abs(got - want).max()):.2e}" if finite else "nan"
                raise ModelLoadError(
                    f"--backend {runtime}: the conversion of {spec.root} does not match "
                    f"torch (max difference {diff} on a batch of {len(rows)})"
                )
