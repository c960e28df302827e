"""The torch backend of a late-interaction (ColBERT) model: projected per-token vectors.

An encoder (``AutoModel``) and the model's linear projection: every token the sequence
holds gives one row, ``projection(hidden)``, float32 and *not* normalized (the serving
layer normalizes per request, as vLLM's ``normalize`` / ``use_activation`` switch
does). A query sequence (``per_token == "query"``) ends in a run of expansion tokens
([MASK]); unless the layout attends to them they are masked out of attention — each
still gives its row, the ColBERT query augmentation.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from ...errors import ModelLoadError
from ...models.base import Batch
from ...models.late_interaction import QUERY
from ...models.st_config import DenseSpec
from .backend import TorchBackend
from .pooler import activation_module

_KEYS = ("linear.weight", "linear.bias", "weight", "bias")


def _projection_state(path: Any) -> dict[str, torch.Tensor]:
    """The projection's tensors from the weights file in ``path``: only the ``linear.*``
    (or bare) keys are read, so a colbert-ir checkpoint's encoder is not loaded twice."""
    st_file = path / "model.safetensors"
    bin_file = path / "pytorch_model.bin"
    if st_file.is_file():
        from safetensors import safe_open

        with safe_open(str(st_file), framework="pt") as f:
            state = {k: f.get_tensor(k) for k in f.keys() if k in _KEYS}  # noqa: SIM118
    elif bin_file.is_file():
        loaded = torch.load(str(bin_file), map_location="cpu", weights_only=True)
        state = {k: v for k, v in loaded.items() if k in _KEYS}
    else:
        raise ModelLoadError(f"{path} has no model.safetensors or pytorch_model.bin")
    return {k.removeprefix("linear."): v for k, v in state.items()}


def load_projection(spec: DenseSpec) -> nn.Module:
    """The ColBERT projection (Linear, then its activation: Identity in both layouts)."""
    linear = nn.Linear(spec.in_features, spec.out_features, bias=spec.bias)
    try:
        linear.load_state_dict(_projection_state(spec.path))
    except RuntimeError as exc:
        raise ModelLoadError(f"the ColBERT projection in {spec.path}: {exc}") from exc
    return nn.Sequential(linear, activation_module(spec.activation))


class TorchColbertBackend(TorchBackend):
    """Per-token ColBERT vectors ``[num_tokens, dim]`` per sequence, in batch order."""

    def __init__(
        self,
        model: nn.Module,
        *,
        projection: nn.Module,
        expansion_id: int | None,
        attend_expansion: bool,
        **kwargs: Any,
    ) -> None:
        super().__init__(model, **kwargs)
        self.projection = projection.to(self.device).float().eval()
        self.expansion_id = expansion_id
        self.attend_expansion = attend_expansion

    def _expansion_runs(self, batch: Batch) -> list[int]:
        """Per sequence, how many trailing tokens are query augmentation not attended to."""
        runs = [0] * len(batch.sequences)
        if self.attend_expansion or self.expansion_id is None:
            return runs
        for i, seq in enumerate(batch.sequences):
            if seq.per_token != QUERY:
                continue
            ids = seq.token_ids
            real = np.flatnonzero(ids != self.expansion_id)
            runs[i] = len(ids) - (int(real[-1]) + 1 if len(real) else 0)
        return runs

    @torch.inference_mode()
    def forward(self, batch: Batch) -> list[np.ndarray]:
        """One float32 ``[len(sequence), dim]`` array per sequence."""
        inputs = self._tensors(batch)
        keep = inputs["attention_mask"].bool()
        runs = self._expansion_runs(batch)
        if any(runs):
            attend = inputs["attention_mask"].clone()
            for i, (seq, run) in enumerate(zip(batch.sequences, runs, strict=True)):
                if run:
                    attend[i, len(seq) - run : len(seq)] = 0
            inputs = {**inputs, "attention_mask": attend}
        hidden = self.model(**inputs).last_hidden_state
        out = self.projection(hidden.float())
        return [out[row, keep[row]].cpu().numpy() for row in range(out.size(0))]
