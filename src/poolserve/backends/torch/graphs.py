"""One traceable torch module per head kind, for exporting to other runtimes.

Each takes plain int64 tensors and returns float32 outputs, with no data-dependent
Python branches, so ``openvino.convert_model`` (or an ONNX export) traces it once for
every batch shape. The maths is the torch backend's own (``pool``, the Dense modules,
the model's classifier), so an exported model computes what the torch backend does.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

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
