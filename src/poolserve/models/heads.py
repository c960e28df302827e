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

log = logging.getLogger("poolserve.models")

_MULTI_LABEL = "multi_label_classification"
SIGMOID = "torch.nn.modules.activation.Sigmoid"
IDENTITY = "torch.nn.modules.linear.Identity"


def _usable(path: Any, trusted: bool) -> str | None:
    if not isinstance(path, str) or not path:
        return None
    if not trusted and not path.startswith("torch."):
        log.warning(
            "cross-encoder activation %r is not a torch.* class; using the default "
            "activation (pass --trust-remote-code to load it)",
            path,
        )
        return None
    return path


def resolve_score_activation(
    hf_config: Any, st_config: dict[str, Any] | None, *, trust_remote_code: bool = False
) -> str:
    """The activation ``CrossEncoder.predict`` applies to this model's logits, as the
    dotted path of its class (built by :func:`poolserve.runtime.score_activation`).

    ``st_config`` is the folder's config_sentence_transformers.json when it was saved
    by ``CrossEncoder.save`` (modules.json present), else None.
    """
    if st_config is not None:
        found = _usable(st_config.get("activation_fn"), trust_remote_code)
        if found is not None:
            return found
    st_block = getattr(hf_config, "sentence_transformers", None)
    path: Any = None
    if isinstance(st_block, dict) and "activation_fn" in st_block:
        path = st_block["activation_fn"]
    elif getattr(hf_config, "sbert_ce_default_activation_function", None) is not None:
        path = hf_config.sbert_ce_default_activation_function
    found = _usable(path, trust_remote_code)
    if found is not None:
        return found
    return SIGMOID if num_labels(hf_config) == 1 else IDENTITY


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
