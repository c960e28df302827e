"""Sequence-classification heads: the cross-encoder score activation and label facts.

The score activation is resolved exactly as sentence-transformers 6.x ``CrossEncoder``
resolves it, so scores equal ``CrossEncoder.predict`` on the same weights:

1. ``activation_fn`` of ``config_sentence_transformers.json`` (read only for a folder
   saved by ``CrossEncoder.save``, i.e. with a modules.json);
2. else config.json ``sentence_transformers.activation_fn``, or (only when that key is
   absent) the pre-4.0 ``sbert_ce_default_activation_function``;
3. else ``Sigmoid`` for one label, ``Identity`` for more.

A path outside ``torch.*`` is used only with --trust-remote-code; otherwise it is
skipped with a warning, as sentence-transformers does.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch
from torch import nn

from .pooler import activation_module

log = logging.getLogger("poolserve.models")

_MULTI_LABEL = "multi_label_classification"


class TorchActivation:
    """A torch activation module applied to float32 logits ``[n, k]`` given as numpy.

    Applied to the 2-D logits, before any squeezing, as sentence-transformers does
    (it matters for activations such as ``Softmax``). Returns float32 ``[n, k]``.
    """

    def __init__(self, module: nn.Module, name: str) -> None:
        self.module = module.eval()
        self.name = name

    def __call__(self, logits: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(np.ascontiguousarray(logits, dtype=np.float32))
        with torch.inference_mode():
            return np.asarray(self.module(x).float().numpy(), dtype=np.float32)

    def __repr__(self) -> str:
        return f"TorchActivation({self.name})"


def _try(path: Any, trusted: bool) -> TorchActivation | None:
    if not isinstance(path, str) or not path:
        return None
    if not trusted and not path.startswith("torch."):
        log.warning(
            "cross-encoder activation %r is not a torch.* class; using the default "
            "activation (pass --trust-remote-code to load it)",
            path,
        )
        return None
    module = activation_module(path, "cross-encoder activation", trusted=trusted)
    return TorchActivation(module, path.rsplit(".", 1)[-1])


def resolve_score_activation(
    hf_config: Any, st_config: dict[str, Any] | None, *, trust_remote_code: bool = False
) -> TorchActivation:
    """The activation ``CrossEncoder.predict`` applies to this model's logits.

    ``st_config`` is the folder's config_sentence_transformers.json when it was saved
    by ``CrossEncoder.save`` (modules.json present), else None.
    """
    if st_config is not None:
        found = _try(st_config.get("activation_fn"), trust_remote_code)
        if found is not None:
            return found
    st_block = getattr(hf_config, "sentence_transformers", None)
    path: Any = None
    if isinstance(st_block, dict) and "activation_fn" in st_block:
        path = st_block["activation_fn"]
    elif getattr(hf_config, "sbert_ce_default_activation_function", None) is not None:
        path = hf_config.sbert_ce_default_activation_function
    found = _try(path, trust_remote_code)
    if found is not None:
        return found
    if num_labels(hf_config) == 1:
        return TorchActivation(nn.Sigmoid(), "Sigmoid")
    return TorchActivation(nn.Identity(), "Identity")


def num_labels(hf_config: Any) -> int:
    """The classifier's output width."""
    return int(getattr(hf_config, "num_labels", 0) or len(getattr(hf_config, "id2label", {}) or {}))


def label_names(hf_config: Any) -> tuple[str | None, ...]:
    """``id2label`` in index order (None where the config names no label)."""
    raw = getattr(hf_config, "id2label", None) or {}
    by_index = {int(k): str(v) for k, v in raw.items()}
    return tuple(by_index.get(i) for i in range(num_labels(hf_config)))


def is_multi_label(hf_config: Any) -> bool:
    """True when config ``problem_type`` asks for an independent sigmoid per label."""
    return getattr(hf_config, "problem_type", None) == _MULTI_LABEL
