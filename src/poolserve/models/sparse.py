"""Sparse (SPLADE) models: what a sentence-transformers ``SparseEncoder`` folder says.

A SPLADE model is a masked-LM (``*ForMaskedLM``) whose vocabulary logits become one
weight per vocabulary entry: ``log(1 + relu(logit))`` (``log1p_relu``: that log once
more), pooled over the tokens by max (SPLADE v2 and later) or sum (the original), as
sentence-transformers' ``SpladePooling`` computes it — over every real token, [CLS] and
[SEP] included (vLLM's SPLADE pooler drops them; poolserve matches sentence-transformers).
The output is a vector of ``vocab_size`` floats, mostly zeros.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..errors import ModelLoadError
from .st_config import _read_json, _read_modules

SPARSE_POOLING = ("max", "sum")
SPARSE_ACTIVATIONS = ("relu", "log1p_relu")


@dataclass(frozen=True)
class SparseFolder:
    """A folder written by sentence-transformers' ``SparseEncoder.save`` (SPLADE)."""

    transformer_path: Path
    pooling: str  # max | sum
    activation: str  # relu | log1p_relu


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
