"""The torch backends: pad a batch, run the model, return one float32 row per sequence.

- :class:`TorchEmbeddingBackend`: a base encoder, then pooling and Dense layers;
- :class:`TorchClassifierBackend`: a ``*ForSequenceClassification`` model, whose rows
  are the raw logits (activations are per request, see :mod:`poolserve.models.post`);
- :class:`TorchTokenBackend`: per-token rows (reward models: ALL and STEP pooling).

A decoder's sequence classifier runs as an embedding backend (LAST pooling, then its
head as the post-pooling module): the last real token comes from the attention mask.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from ...models.base import Batch, TokenSeq
from ..padding import pad_batch
from .pooler import pool


class TorchBackend:
    """What the torch backends share: batch padding and the warm-up.

    Rows are padded on ``padding_side`` (right by default; the result does not depend on
    it). With ``position_ids`` (decoders) positions are counted over real tokens only,
    so a left-padded row sees the positions of its unpadded self.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        pad_token_id: int = 0,
        uses_token_type_ids: bool = False,
        device: torch.device,
        padding_side: str = "right",
        position_ids: bool = False,
    ) -> None:
        if padding_side not in ("left", "right"):
            raise ValueError(f"padding_side must be 'left' or 'right', not {padding_side!r}")
        self.model = model
        self.pad_token_id = pad_token_id
        self.uses_token_type_ids = uses_token_type_ids
        self.device = device
        self.padding_side = padding_side
        self.position_ids = position_ids
        self.pad_multiple = 16 if device.type == "cuda" else 1
        if device.type == "cuda":
            # SDPA's cuDNN path builds a new cuDNN graph for every (rows, width) shape,
            # ~7 ms per layer (measured on H100, torch 2.11): a server sees endless
            # shapes. The flash / memory-efficient kernels have no such cost.
            torch.backends.cuda.enable_cudnn_sdp(False)

    def _tensors(self, batch: Batch) -> dict[str, torch.Tensor]:
        # On a GPU, round the width up so few distinct shapes reach the kernels: each
        # new shape pays kernel selection and allocator growth (measured: a cold run
        # at ~1/4 of the warm speed), and multiples of 16 suit tensor cores.
        ids, mask, types = pad_batch(
            batch,
            pad_token_id=self.pad_token_id,
            token_types=self.uses_token_type_ids,
            left=self.padding_side == "left",
            multiple=self.pad_multiple,
        )
        out = {
            "input_ids": torch.from_numpy(ids),
            "attention_mask": torch.from_numpy(mask),
        }
        if types is not None:
            out["token_type_ids"] = torch.from_numpy(types)
        if self.position_ids:
            out["position_ids"] = torch.from_numpy(np.maximum(mask.cumsum(axis=1) - 1, 0))
        return {k: v.to(self.device, non_blocking=True) for k, v in out.items()}

    def forward(self, batch: Batch) -> np.ndarray | list[np.ndarray]:
        """One float32 row (or per-token array) per sequence of ``batch``."""
        raise NotImplementedError

    def warmup(self) -> None:
        """One small forward, so kernels and allocator pools exist before traffic."""
        self.forward(Batch([TokenSeq(token_ids=np.full(8, self.pad_token_id, dtype=np.int32))]))


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
        token_head: nn.Module | None = None,
        colbert_head: nn.Module | None = None,
        pad_token_id: int = 0,
        uses_token_type_ids: bool = False,
        device: torch.device,
        padding_side: str = "right",
        position_ids: bool = False,
    ) -> None:
        super().__init__(
            model,
            pad_token_id=pad_token_id,
            uses_token_type_ids=uses_token_type_ids,
            device=device,
            padding_side=padding_side,
            position_ids=position_ids,
        )
        self.pooling_modes = pooling_modes
        self.dense = nn.Sequential(*dense).to(device).float().eval() if dense else None
        # bge-m3's sparse_linear: run in float32 on every token's hidden state, as the
        # Dense layers are (a float16 model's weights would round the lexical weights).
        self.token_head = token_head.to(device).float().eval() if token_head else None
        # bge-m3's colbert_linear: float32 too (its rows are normalized per request).
        self.colbert_head = colbert_head.to(device).float().eval() if colbert_head else None

    @torch.inference_mode()
    def forward(self, batch: Batch) -> np.ndarray | list[np.ndarray]:
        """Pooled vectors [len(batch), dim] as float32 numpy (rows are the outputs).

        A sequence with ``per_token`` gets its per-token rows ``[num_tokens, width]``
        instead (``hidden``: the hidden states; ``head``: ``token_head`` when there is
        one, else the post-pooling modules, on every token; ``colbert``:
        ``colbert_head`` on every token), and the batch's outputs are then a list. One
        forward serves a batch mixing these (dense, lexical and colbert requests).
        """
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
        out = pooled.float().cpu().numpy()
        if not any(s.per_token for s in batch.sequences):
            return out
        keep = inputs["attention_mask"].bool()
        rows: list[np.ndarray] = []
        for i, seq in enumerate(batch.sequences):
            if not seq.per_token:
                rows.append(out[i])
                continue
            tokens = hidden[i, keep[i]].float()
            head = self.token_head if self.token_head is not None else self.dense
            if seq.per_token == "head" and head is not None:
                tokens = head(tokens)
            elif seq.per_token == "colbert":
                if self.colbert_head is None:  # serving asks only models that have one
                    raise ValueError("this model has no colbert head (colbert_linear.pt)")
                tokens = self.colbert_head(tokens)
            rows.append(tokens.cpu().numpy())
        return rows


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


class TorchTokenBackend(TorchBackend):
    """Per-token outputs of a base model and an optional head (reward models).

    Returns, per sequence, float32 rows ``[num_tokens, width]``: ``head(hidden)`` of every
    real token (``width`` = the head's outputs, or the hidden size without a head). With
    ``step_tag_id`` (STEP pooling) only the rows at positions holding that token; with
    ``returned_token_ids`` only those columns. Activations are per request.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        head: nn.Module | None = None,
        step_tag_id: int | None = None,
        returned_token_ids: Sequence[int] | None = None,
        pad_token_id: int = 0,
        device: torch.device,
        padding_side: str = "right",
        position_ids: bool = True,
    ) -> None:
        super().__init__(
            model,
            pad_token_id=pad_token_id,
            device=device,
            padding_side=padding_side,
            position_ids=position_ids,
        )
        self.head = head
        self.step_tag_id = step_tag_id
        self.returned = list(returned_token_ids) if returned_token_ids is not None else None

    @torch.inference_mode()
    def forward(self, batch: Batch) -> list[np.ndarray]:
        """One float32 ``[rows, width]`` array per sequence."""
        inputs = self._tensors(batch)
        hidden = self.model(**inputs).last_hidden_state
        out = self.head(hidden) if self.head is not None else hidden
        if self.returned is not None:
            out = out[..., self.returned]
        out = out.float()
        keep = inputs["attention_mask"].bool()
        if self.step_tag_id is not None:
            keep &= inputs["input_ids"] == self.step_tag_id
        return [out[row, keep[row]].cpu().numpy() for row in range(out.size(0))]


class TorchSparseBackend(TorchBackend):
    """A SPLADE model (``*ForMaskedLM``): one weight per vocabulary entry per sequence.

    ``log(1 + relu(logit))`` (``log1p_relu``: log1p once more) of every real token's
    vocabulary logits, pooled over the tokens by max or sum (models/sparse.py), as
    sentence-transformers' SpladePooling. With ``drop_ends`` (cls id, sep id: vLLM's
    SPLADE launch line) a first token equal to the cls id and a last real token equal
    to the sep id are left out of the pooling (a row left with no token is all zeros).
    The vocabulary logits are the big tensor (rows x tokens x vocabulary), so the batch
    runs in slices of about ``logit_budget`` floats.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        pooling: str,
        activation: str,
        drop_ends: tuple[int | None, int | None] | None = None,
        logit_budget: int = 1 << 25,
        **kwargs: Any,
    ) -> None:
        super().__init__(model, **kwargs)
        self.pooling = pooling
        self.activation = activation
        self.drop_ends = drop_ends
        self.logit_budget = logit_budget
        self.vocab = int(getattr(model.config, "vocab_size"))  # noqa: B009 (a Module attr)

    @torch.inference_mode()
    def forward(self, batch: Batch) -> np.ndarray:
        """float32 ``[len(batch), vocab_size]``, rows in batch order."""
        seqs = list(batch.sequences)
        width = max(len(s) for s in seqs)
        step = max(1, self.logit_budget // max(1, width * self.vocab))
        rows = [self._pooled(Batch(seqs[i : i + step])) for i in range(0, len(seqs), step)]
        return np.concatenate(rows)

    def _pooled(self, batch: Batch) -> np.ndarray:
        inputs = self._tensors(batch)
        weights = torch.log1p(torch.relu(self.model(**inputs).logits.float()))
        if self.activation == "log1p_relu":
            weights = torch.log1p(weights)
        mask = inputs["attention_mask"]
        if self.drop_ends is not None:
            mask = self._without_ends(inputs["input_ids"], mask)
        weights = weights * mask.unsqueeze(-1).to(weights.dtype)
        pooled = weights.amax(dim=1) if self.pooling == "max" else weights.sum(dim=1)
        return pooled.cpu().numpy()

    def _without_ends(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``mask`` with a leading cls id and a trailing sep id cleared (rows padded on
        the right, as this backend pads them)."""
        assert self.drop_ends is not None
        cls_id, sep_id = self.drop_ends
        rows = torch.arange(ids.size(0), device=ids.device)
        last = mask.sum(dim=1) - 1  # the last real token of each row
        out = mask.clone()
        if cls_id is not None:
            out[:, 0] *= (ids[:, 0] != cls_id).to(out.dtype)
        if sep_id is not None:
            out[rows, last] *= (ids[rows, last] != sep_id).to(out.dtype)
        return out
