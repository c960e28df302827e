"""Decoder (causal LM) checkpoints served as pooling models, as vLLM serves them.

Promises (which checkpoints are decoders: ``poolserve.models.spec.is_decoder``):
- a decoder's classifier head is applied to the hidden state of the LAST real token, found from
  the attention mask (never from ``pad_token_id``), so left or right padding and a
  missing pad id give the single-sequence result;
- ``classifier_from_token`` (``--hf-overrides``) turns a ``*ForCausalLM`` into a
  classifier from rows of its LM head: ``method: from_2_way_softmax`` builds ONE label
  ``w = lm_head[tokens[1]] - lm_head[tokens[0]]`` (so sigmoid(score) equals the 2-way
  softmax probability of ``tokens[1]``, as Qwen3-Reranker and mxbai-rerank-v2 are
  used); any other method (``no_post_processing``) keeps the rows of the tokens as is.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ...errors import ModelLoadError
from ...models.spec import FROM_2_WAY_SOFTMAX, from_token_labels


def head_from_tokens(lm_head: nn.Module, tokenizer: Any, hf_config: Any) -> nn.Linear:
    """A classifier built from LM-head rows of ``classifier_from_token`` (see module doc).

    Raises ModelLoadError when a token is not one vocabulary entry, or when
    from_2_way_softmax is not given exactly two tokens.
    """
    tokens = from_token_labels(hf_config)
    assert tokens is not None
    method = getattr(hf_config, "method", None)
    weight = getattr(lm_head, "weight", None)
    if not isinstance(weight, torch.Tensor):
        raise ModelLoadError("classifier_from_token needs a checkpoint with an LM head")
    ids = []
    unk = getattr(tokenizer, "unk_token_id", None)
    for token in tokens:
        tid = tokenizer.convert_tokens_to_ids(token)
        if not isinstance(tid, int) or tid < 0 or tid >= weight.shape[0] or tid == unk:
            raise ModelLoadError(
                f"classifier_from_token: {token!r} is not one token of the vocabulary"
            )
        ids.append(tid)
    rows = weight.detach()[ids]
    if method == FROM_2_WAY_SOFTMAX:
        if len(ids) != 2:
            raise ModelLoadError("method from_2_way_softmax needs exactly two tokens (false, true)")
        rows = (rows[1] - rows[0]).unsqueeze(0)
    head = nn.Linear(rows.shape[1], rows.shape[0], bias=False, device=rows.device, dtype=rows.dtype)
    with torch.no_grad():
        head.weight.copy_(rows)
    return head.eval()


def split_model(model: nn.Module) -> tuple[nn.Module, nn.Module | None]:
    """(base model returning ``last_hidden_state``, its head or None) of a transformers model.

    ``*ForSequenceClassification``: the ``score`` Linear; ``*ForCausalLM``: the LM head
    (tied weights included); a bare ``*Model``: no head.
    """
    prefix = getattr(model, "base_model_prefix", "model")
    base = getattr(model, prefix, None)
    if base is None or base is model:
        return model, None
    head = getattr(model, "score", None)
    get_lm_head = getattr(model, "get_output_embeddings", None)
    if head is None and callable(get_lm_head):
        head = get_lm_head()
    return base, head if isinstance(head, nn.Module) else None
