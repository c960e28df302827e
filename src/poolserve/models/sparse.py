"""Sparse (SPLADE) models: what a sentence-transformers ``SparseEncoder`` folder says.

A SPLADE model is a masked-LM (``*ForMaskedLM``) whose vocabulary logits become one
weight per vocabulary entry: ``log(1 + relu(logit))`` (``log1p_relu``: that log once
more), pooled over the tokens by max (SPLADE v2 and later) or sum (the original), as
sentence-transformers' ``SpladePooling`` computes it — over every real token, [CLS] and
[SEP] included (vLLM's pooler may leave them out, below; poolserve matches
sentence-transformers for these folders).
The output is a vector of ``vocab_size`` floats, mostly zeros.

vLLM's own SPLADE launch line, a plain ``BertForMaskedLM`` folder with
``--hf-overrides '{"architectures": ["BertSpladeSparseEmbeddingModel"]}'``, is served as
vLLM 0.33 computes it (:func:`sparse_folder`): max pooling of ``log1p(relu)``, the
first token left out when it is the config's ``cls_token_id`` and the last when it is
its ``sep_token_id`` (BERT configs seldom name them; then no token is left out and the
weights equal sentence-transformers'). A SparseEncoder folder keeps its own pooling.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..config import ModelConfig
from ..errors import ModelLoadError
from .st_config import _read_json, _read_modules, is_sentence_transformers_folder, st_model_type

SPARSE_POOLING = ("max", "sum")
SPARSE_ACTIVATIONS = ("relu", "log1p_relu")
VLLM_SPLADE = "BertSpladeSparseEmbeddingModel"  # vLLM's registry name


@dataclass(frozen=True)
class SparseFolder:
    """A folder written by sentence-transformers' ``SparseEncoder.save`` (SPLADE)."""

    transformer_path: Path
    pooling: str  # max | sum
    activation: str  # relu | log1p_relu
    # vLLM's pooler: leave out a first token equal to the config's cls_token_id and a
    # last one equal to its sep_token_id
    drop_ends: bool = False


def read_sparse_folder(root: Path) -> SparseFolder:
    """Read ``root`` (model_type SparseEncoder): an MLMTransformer then a SpladePooling.

    Raises ModelLoadError naming what is not supported (other module stacks, such as
    sparse static embeddings or sparse auto-encoders)."""
    modules = _read_modules(root)
    kinds = [str(m.get("type", "")).rsplit(".", 1)[-1] for m in modules]
    if kinds != ["MLMTransformer", "SpladePooling"]:
        raise ModelLoadError(
            f"{root}: sparse models are served as MLMTransformer + SpladePooling (SPLADE); "
            f"this folder has {kinds}"
        )
    transformer = root / str(modules[0].get("path") or "")
    pooling_dir = root / str(modules[1].get("path") or "")
    config = (
        _read_json(pooling_dir / "config.json") if (pooling_dir / "config.json").is_file() else {}
    )
    pooling = str(config.get("pooling_strategy", "max"))
    activation = str(config.get("activation_function", "relu"))
    if pooling not in SPARSE_POOLING or activation not in SPARSE_ACTIVATIONS:
        raise ModelLoadError(
            f"{pooling_dir}: SpladePooling {pooling!r} / {activation!r} is not supported "
            f"(pooling {SPARSE_POOLING}, activation {SPARSE_ACTIVATIONS})"
        )
    return SparseFolder(transformer, pooling, activation)


def sparse_folder(root: Path, cfg: ModelConfig) -> SparseFolder | None:
    """What makes ``root`` a SPLADE model: a SparseEncoder folder (its own pooling,
    :func:`read_sparse_folder`, whatever the launch line), else vLLM's launch line
    (--hf-overrides architectures ``BertSpladeSparseEmbeddingModel``) on a BERT
    masked-LM folder; None for other models.

    Raises ModelLoadError for a folder of either kind that cannot be served."""
    if is_sentence_transformers_folder(root) and st_model_type(root) == "SparseEncoder":
        return read_sparse_folder(root)
    archs = (cfg.hf_overrides or {}).get("architectures") or []
    if VLLM_SPLADE not in archs:
        return None
    config = _read_json(root / "config.json") if (root / "config.json").is_file() else {}
    if config.get("model_type") != "bert":
        raise ModelLoadError(
            f"{VLLM_SPLADE} is a BERT masked LM (BertForMaskedLM); {root} has model_type "
            f"{config.get('model_type')!r}"
        )
    return SparseFolder(root, "max", "relu", drop_ends=True)
