"""The torch backend: pads a batch, runs the encoder, pools, applies Dense layers."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from .base import Batch
from .pooler import pool


class TorchEmbeddingBackend:
    """Runs a transformers base model and the sentence-transformers pooling stack.

    Returns, per sequence, the pooled (and Dense-projected) float32 vector *before*
    normalization: normalization and matryoshka slicing are per request
    (see :mod:`poolserve.models.post`).
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        pooling_modes: tuple[str, ...],
        dense: Sequence[nn.Module] = (),
        pad_token_id: int = 0,
        uses_token_type_ids: bool = False,
        device: torch.device,
    ) -> None:
        self.model = model
        self.pooling_modes = pooling_modes
        self.dense = nn.Sequential(*dense).to(device).float().eval() if dense else None
        self.pad_token_id = pad_token_id
        self.uses_token_type_ids = uses_token_type_ids
        self.device = device

    def _tensors(self, batch: Batch) -> dict[str, torch.Tensor]:
        seqs = batch.sequences
        width = max(len(s) for s in seqs)
        ids = np.full((len(seqs), width), self.pad_token_id, dtype=np.int64)
        mask = np.zeros((len(seqs), width), dtype=np.int64)
        types = np.zeros((len(seqs), width), dtype=np.int64) if self.uses_token_type_ids else None
        for row, seq in enumerate(seqs):
            n = len(seq)
            ids[row, :n] = seq.token_ids
            mask[row, :n] = 1
            if types is not None and seq.token_type_ids is not None:
                types[row, :n] = seq.token_type_ids
        out = {
            "input_ids": torch.from_numpy(ids),
            "attention_mask": torch.from_numpy(mask),
        }
        if types is not None:
            out["token_type_ids"] = torch.from_numpy(types)
        return {k: v.to(self.device, non_blocking=True) for k, v in out.items()}

    @torch.inference_mode()
    def forward(self, batch: Batch) -> np.ndarray:
        """Pooled vectors [len(batch), dim] as float32 numpy (rows are the outputs)."""
        inputs = self._tensors(batch)
        hidden = self.model(**inputs).last_hidden_state
        prompt_lens = None
        if any(s.prompt_len for s in batch.sequences):
            prompt_lens = torch.tensor(
                [s.prompt_len for s in batch.sequences], device=hidden.device
            )
        pooled = pool(hidden, inputs["attention_mask"], self.pooling_modes, prompt_lens)
        if self.dense is not None:
            pooled = self.dense(pooled)
        return pooled.float().cpu().numpy()

    def warmup(self) -> None:
        """One small forward, so kernels and allocator pools exist before traffic."""
        from .base import TokenSeq

        self.forward(Batch([TokenSeq(token_ids=(self.pad_token_id,) * 8)]))
