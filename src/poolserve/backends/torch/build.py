"""Build the torch backend of a :class:`~poolserve.models.spec.ModelSpec`.

The spec has decided everything about the model; this loads its weights with the
transformers Auto class it names, in the chosen dtype and device, and wraps the module
in the backend of its head kind.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from ...config import ModelConfig
from ...errors import ModelLoadError
from ...models.base import CLASSIFIER, COLBERT, SPARSE, TOKENS
from ...models.spec import ModelSpec
from .. import Runnable
from .backend import (
    TorchBackend,
    TorchClassifierBackend,
    TorchEmbeddingBackend,
    TorchSparseBackend,
    TorchTokenBackend,
)
from .colbert import TorchColbertBackend, load_projection
from .decoder import head_from_tokens, split_model
from .device import resolve_device, resolve_dtype
from .onednn import accelerate_cpu_fp32
from .pooler import load_dense

log = logging.getLogger("poolserve.models")


def _probe(tokenizer: Any, uses_types: bool) -> dict[str, torch.Tensor]:
    """A small padded batch to check a model rewrite against the stock model."""
    enc = tokenizer(
        ["a short probe", "a somewhat longer probe sentence to check the model with"],
        padding=True,
        return_tensors="pt",
        return_token_type_ids=uses_types,
    )
    return {k: v for k, v in enc.items() if k in ("input_ids", "attention_mask", "token_type_ids")}


def load_module(spec: ModelSpec, dtype: torch.dtype, device: torch.device) -> torch.nn.Module:
    """The transformers model holding ``spec``'s weights, in ``dtype`` on ``device``, eval."""
    import transformers

    auto = getattr(transformers, spec.weights)
    kwargs: dict[str, Any] = {"dtype": dtype, "trust_remote_code": spec.trust_remote_code}
    try:
        try:
            model = auto.from_pretrained(
                spec.model_dir, config=spec.hf_config, attn_implementation="sdpa", **kwargs
            )
        except (ValueError, ImportError):  # this architecture has no SDPA path
            model = auto.from_pretrained(spec.model_dir, config=spec.hf_config, **kwargs)
    except Exception as exc:
        raise ModelLoadError(f"cannot load the model weights in {spec.model_dir}: {exc}") from exc
    return model.to(device).eval()


def load_linear_head(path: Path, hf_config: Any) -> torch.nn.Linear:
    """One of bge-m3's heads (``sparse_linear.pt``, ``colbert_linear.pt``): a
    ``Linear(hidden, k)`` state dict (``weight`` ``[k, hidden]``, optional ``bias``),
    read without unpickling code (``weights_only``)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        weight = state["weight"]
        linear = torch.nn.Linear(weight.shape[1], weight.shape[0], bias="bias" in state)
        linear.load_state_dict(state)
    except Exception as exc:
        raise ModelLoadError(f"cannot load {path} as a Linear layer: {exc}") from exc
    hidden = int(getattr(hf_config, "hidden_size", 0) or 0)
    if hidden and linear.in_features != hidden:
        raise ModelLoadError(
            f"{path}: {linear.in_features} inputs, the model's hidden size is {hidden}"
        )
    return linear


def build_torch(spec: ModelSpec, cfg: ModelConfig) -> Runnable:
    """Load ``spec``'s weights and return the torch backend for its head kind."""
    if cfg.quantization is not None:
        raise ModelLoadError(
            f"--quantization {cfg.quantization} runs on the openvino backend, not torch"
        )
    device = resolve_device(cfg.device)
    dtype = resolve_dtype(cfg.dtype, device)
    return Runnable(
        backend=_backend(spec, cfg, device, dtype),
        runtime="torch",
        device=str(device),
        dtype=str(dtype).removeprefix("torch."),
        set_threads=torch.set_num_threads,  # process-wide in torch
    )


def _backend(
    spec: ModelSpec, cfg: ModelConfig, device: torch.device, dtype: torch.dtype
) -> TorchBackend:
    model = load_module(spec, dtype, device)
    head: torch.nn.Module | None = None
    if spec.decoder:  # run the base model; heads are applied to the pooled token(s)
        model, head = split_model(model)
        if spec.from_tokens is not None:
            assert head is not None
            head = head_from_tokens(head, spec.tokenizer, spec.hf_config)
        if not spec.decoder_head:
            head = None
    elif cfg.onednn_linear and device.type == "cpu" and dtype == torch.float32:
        model = accelerate_cpu_fp32(model, _probe(spec.tokenizer, spec.rules.uses_token_type_ids))
    pad_id = spec.pad_token_id
    if spec.head == SPARSE:
        assert spec.sparse_activation is not None
        ends = None
        if spec.sparse_drop_ends:  # vLLM reads the ids from the model config
            hf = spec.hf_config
            ends = (getattr(hf, "cls_token_id", None), getattr(hf, "sep_token_id", None))
        return TorchSparseBackend(
            model,
            pooling=spec.pooling_modes[0],
            activation=spec.sparse_activation,
            drop_ends=ends,
            pad_token_id=pad_id,
            uses_token_type_ids=spec.rules.uses_token_type_ids,
            device=device,
        )
    if spec.head == COLBERT:
        rules = spec.info.colbert
        assert rules is not None and len(spec.dense) == 1
        return TorchColbertBackend(
            model,
            projection=load_projection(spec.dense[0]),
            expansion_id=rules.expansion_id,
            attend_expansion=rules.attend_expansion,
            pad_token_id=pad_id,
            uses_token_type_ids=spec.rules.uses_token_type_ids,
            device=device,
        )
    if spec.head == TOKENS:
        return TorchTokenBackend(
            model,
            head=head,
            step_tag_id=spec.step_tag_id,
            returned_token_ids=spec.returned_token_ids,
            pad_token_id=pad_id,
            device=device,
        )
    if spec.head == CLASSIFIER and spec.decoder:
        # The head on the LAST real token (from the mask, not pad_token_id), as vLLM.
        assert head is not None
        return TorchEmbeddingBackend(
            model,
            pooling_modes=spec.pooling_modes,
            dense=[head],
            pad_token_id=pad_id,
            device=device,
            position_ids=True,
        )
    if spec.head == CLASSIFIER:
        return TorchClassifierBackend(
            model,
            pad_token_id=pad_id,
            uses_token_type_ids=spec.rules.uses_token_type_ids,
            device=device,
        )
    m3 = spec.bge_m3
    colbert = m3.colbert_linear if m3 is not None else None
    return TorchEmbeddingBackend(
        model,
        pooling_modes=spec.pooling_modes,
        dense=[load_dense(d) for d in spec.dense],
        token_head=load_linear_head(m3.sparse_linear, spec.hf_config) if m3 else None,
        colbert_head=load_linear_head(colbert, spec.hf_config) if colbert else None,
        pad_token_id=pad_id,
        uses_token_type_ids=spec.rules.uses_token_type_ids,
        device=device,
        position_ids=spec.decoder,
    )
