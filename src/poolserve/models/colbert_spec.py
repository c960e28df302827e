"""The :class:`~poolserve.models.spec.ModelSpec` of a ColBERT folder (models/colbert.py).

A ColBERT model serves the embed task with per-token outputs only: /pooling
``token_embed`` (and /v1/embeddings, as vLLM answers a token_embed model there) gives
each token's projected, L2-normalized vector; /score and /rerank give MaxSim. It runs
on the torch backend: the encoder's base model (``AutoModel``; colbert-ir weights carry
the ``bert.`` prefix, which the base model's loading strips) and the projection as a
separate linear layer (``ModelSpec.dense``).
"""

from __future__ import annotations

from pathlib import Path

from ..config import ModelConfig
from ..errors import ModelLoadError
from .base import COLBERT, InputRules, ModelInfo
from .colbert import ColbertLayout, resolve_rules
from .pooler_config import KEYS as POOLER_KEYS
from .pooler_config import PoolerSettings, refuse_keys
from .spec import BASE, ModelSpec, _read_config, _read_tokenizer, _uses_token_types, max_model_len


def describe_colbert(
    cfg: ModelConfig, root: Path, layout: ColbertLayout, pooler: PoolerSettings
) -> ModelSpec:
    """The spec of a ColBERT folder; ModelLoadError for a task or setting it cannot serve."""
    if cfg.task not in ("auto", "embed") or pooler.task not in (None, "embed"):
        raise ModelLoadError(
            f"{root} is a late-interaction (ColBERT) model: it serves token_embed "
            "(per-token vectors) and MaxSim scores only"
        )
    # The per-token outputs are normalized per request (normalize / use_activation).
    refuse_keys(
        pooler,
        tuple(k for k in POOLER_KEYS if k not in ("task", "normalize", "use_activation")),
        "late-interaction (ColBERT) models",
    )
    hf_config = _read_config(layout.transformer_path, cfg)
    hidden = int(getattr(hf_config, "hidden_size", 0) or 0)
    if hidden and layout.projection.in_features != hidden:
        raise ModelLoadError(
            f"{root}: the ColBERT projection reads {layout.projection.in_features} features "
            f"but the encoder's hidden size is {hidden}"
        )
    tokenizer = _read_tokenizer(cfg.tokenizer or str(layout.transformer_path), cfg, root)
    # The encoder's window, not sentence_bert_config's max_seq_length: PyLate writes the
    # document length less the marker there, and the layout's lengths apply after marking.
    max_len = max_model_len(hf_config, tokenizer, None, cfg.max_model_len)
    rules = InputRules(
        max_model_len=max_len,
        vocab_size=int(getattr(hf_config, "vocab_size", len(tokenizer))),
        uses_token_type_ids=_uses_token_types(hf_config, tokenizer),
        chat_template=cfg.chat_template,
        auto_truncate=cfg.auto_truncate,
    )
    info = ModelInfo(
        path=str(root),
        task="embed",
        max_model_len=max_len,
        dimension=layout.projection.out_features,
        normalize=pooler.use_activation is not False,
        head=COLBERT,
        pooling=("colbert",),
        token_tasks=("token_embed",),
        colbert=resolve_rules(layout, tokenizer, max_len, root),
    )
    return ModelSpec(
        root=root,
        model_dir=layout.transformer_path,
        hf_config=hf_config,
        tokenizer=tokenizer,
        info=info,
        rules=rules,
        decoder=False,
        weights=BASE,
        pooling_modes=("colbert",),
        dense=(layout.projection,),
        pad_token_id=int(getattr(tokenizer, "pad_token_id", None) or 0),
        trust_remote_code=cfg.trust_remote_code,
    )
