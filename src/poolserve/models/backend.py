"""The torch backends: pad a batch, run the model, return one float32 row per sequence.

- :class:`TorchEmbeddingBackend`: a base encoder, then pooling and Dense layers;
- :class:`TorchClassifierBackend`: a ``*ForSequenceClassification`` model, whose rows
  are the raw logits (activations are per request, see :mod:`poolserve.models.post`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from .base import Batch, TokenSeq
from .pooler import pool


class TorchBackend:
    """What the torch backends share: batch padding (right side) and the warm-up."""

    def __init__(
        self,
        model: nn.Module,
        *,
        pad_token_id: int = 0,
        uses_token_type_ids: bool = False,
        device: torch.device,
    ) -> None:
        self.model = model
        self.pad_token_id = pad_token_id
        self.uses_token_type_ids = uses_token_type_ids
        self.device = device
        self.pad_multiple = 16 if device.type == "cuda" else 1
        if device.type == "cuda":
            # SDPA's cuDNN path builds a new cuDNN graph for every (rows, width) shape,
            # ~7 ms per layer (measured on H100, torch 2.11): a server sees endless
            # shapes. The flash / memory-efficient kernels have no such cost.
            torch.backends.cuda.enable_cudnn_sdp(False)

    def _tensors(self, batch: Batch) -> dict[str, torch.Tensor]:
        seqs = batch.sequences
        width = max(len(s) for s in seqs)
        # On a GPU, round the width up so few distinct shapes reach the kernels: each
        # new shape pays kernel selection and allocator growth (measured: a cold run
        # at ~1/4 of the warm speed), and multiples of 16 suit tensor cores.
        width += -width % self.pad_multiple
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

    def forward(self, batch: Batch) -> np.ndarray:
        """One float32 row per sequence of ``batch``."""
        raise NotImplementedError

    def warmup(self) -> None:
        """One small forward, so kernels and allocator pools exist before traffic."""
        self.forward(Batch([TokenSeq(token_ids=(self.pad_token_id,) * 8)]))


class TorchEmbeddingBackend(TorchBackend):
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
        super().__init__(
            model,
            pad_token_id=pad_token_id,
            uses_token_type_ids=uses_token_type_ids,
            device=device,
        )
        self.pooling_modes = pooling_modes
        self.dense = nn.Sequential(*dense).to(device).float().eval() if dense else None

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


class TorchClassifierBackend(TorchBackend):
    """Runs a ``*ForSequenceClassification`` model (cross-encoders and classifiers).

    Returns, per sequence (a text or a tokenized text pair), the raw float32 logits
    ``[num_labels]``: activations are chosen per request by the serving layer.
    """

    @torch.inference_mode()
    def forward(self, batch: Batch) -> np.ndarray:
        """Logits [len(batch), num_labels] as float32 numpy."""
        logits = self.model(**self._tensors(batch)).logits
        return logits.float().cpu().numpy()
