"""bge-m3 (BAAI/bge-m3): an XLM-RoBERTa encoder with a lexical (sparse) head.

What a bge-m3 folder is: XLM-R weights with sentence-transformers files (CLS pooling,
Normalize: the dense embedding, served as any such folder), plus ``sparse_linear.pt``
(a ``Linear(hidden, 1)`` state dict: one lexical weight per token after relu) and
``colbert_linear.pt`` (per-token multi-vector head: not read here, so a folder with it
loads as one without it; ColBERT outputs are separate work).

How it is recognised (:func:`find_lexical_head`):

- vLLM's launch line, ``--hf-overrides '{"architectures": ["BgeM3EmbeddingModel"]}'``
  (vLLM 0.33 needs it: the checkpoint's config names ``XLMRobertaModel``, which vLLM
  serves as a plain embedding model). ``sparse_linear.pt`` must then be present;
- the files alone: a bare XLM-R / RoBERTa encoder (no ``*For*`` architecture) with
  ``sparse_linear.pt`` beside its weights. The dense output is the same either way;
  the lexical weights are extra outputs, so detecting them without the override
  changes no existing answer.

Promises (serving reads :class:`~poolserve.models.base.LexicalWeights`):

- /pooling ``task: "token_classify"`` gives vLLM's shape: one weight per token,
  relu(sparse_linear(hidden)) (relu off with ``use_activation: false``), the first
  token dropped when it is the config's BOS id and the last when it is its EOS id;
- TEI /embed_sparse gives FlagEmbedding's lexical weights: the tokenizer's CLS, EOS,
  PAD and UNK ids dropped, zero weights dropped, the largest weight kept per token id;
- ``--pooler-config '{"task": "token_classify"}'`` (vLLM's way to serve that task)
  makes it /pooling's default; /v1/embeddings keeps the dense vector.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ModelLoadError
from .base import LexicalWeights, ModelInfo
from .pooler_config import TASKS, PoolerSettings

ARCHITECTURE = "BgeM3EmbeddingModel"  # vLLM's registry name (model_executor/models)
SPARSE_LINEAR = "sparse_linear.pt"
# vLLM's BgeM3EmbeddingModel extends its RoBERTa embedding model.
_MODEL_TYPES = ("xlm-roberta", "roberta")
_TOKEN_CLASSIFY = "token_classify"


@dataclass(frozen=True)
class LexicalHead:
    """A recognised bge-m3 folder: where its sparse head is, and what --pooler-config
    asked of the lexical task."""

    sparse_linear: Path
    pooling_task: str | None = None  # "token_classify": /pooling's default
    use_activation: bool | None = None  # the relu switch's default (None: on)


def find_lexical_head(dirs: Sequence[Path], hf_config: Any) -> Path | None:
    """``sparse_linear.pt`` of a bge-m3 folder (the first of ``dirs`` holding it), or
    None for any other model.

    Raises ModelLoadError when ``BgeM3EmbeddingModel`` is named (--hf-overrides) but the
    file is missing or the encoder is not XLM-R / RoBERTa."""
    archs = list(getattr(hf_config, "architectures", None) or [])
    named = ARCHITECTURE in archs
    found = next((d / SPARSE_LINEAR for d in dirs if (d / SPARSE_LINEAR).is_file()), None)
    model_type = getattr(hf_config, "model_type", "")
    if named and model_type not in _MODEL_TYPES:
        raise ModelLoadError(
            f"architecture {ARCHITECTURE} is an XLM-RoBERTa encoder; this config's "
            f"model_type is {model_type!r}"
        )
    if named and found is None:
        where = ", ".join(str(d) for d in dict.fromkeys(dirs))
        raise ModelLoadError(
            f"architecture {ARCHITECTURE} needs bge-m3's {SPARSE_LINEAR} (the lexical "
            f"head); none in {where}"
        )
    # From the files alone only a bare encoder (XLMRobertaModel, as bge-m3's config
    # says): a *ForSequenceClassification / *ForMaskedLM checkpoint is something else.
    if found is None or model_type not in _MODEL_TYPES or any("For" in a for a in archs):
        return None
    return found


def lexical_pooler(
    pooler: PoolerSettings, dirs: Sequence[Path], hf_config: Any
) -> tuple[PoolerSettings, LexicalHead | None]:
    """The bge-m3 head in ``dirs`` (:func:`find_lexical_head`; None: not bge-m3, and
    ``pooler`` unchanged), and --pooler-config split between the dense embedding and
    the lexical task.

    ``task: "token_classify"`` (read as poolserve's "reward") is vLLM's way to serve
    bge-m3's lexical weights: here it makes them /pooling's default and its
    ``use_activation`` the relu switch's default, while the model stays an embedding
    model (its dense vector on /v1/embeddings)."""
    path = find_lexical_head(dirs, hf_config)
    if path is None or pooler.task != TASKS[_TOKEN_CLASSIFY]:
        return pooler, LexicalHead(path) if path is not None else None
    dense = dataclasses.replace(pooler, task="embed", use_activation=None)
    return dense, LexicalHead(path, _TOKEN_CLASSIFY, pooler.use_activation)


def with_lexical(info: ModelInfo, head: LexicalHead, tokenizer: Any, hf_config: Any) -> ModelInfo:
    """``info`` of the dense model, with the lexical task and its special ids."""
    unused = (
        getattr(tokenizer, name, None)
        for name in ("cls_token_id", "eos_token_id", "pad_token_id", "unk_token_id")
    )
    weights = LexicalWeights(
        bos_token_id=getattr(hf_config, "bos_token_id", None),
        eos_token_id=getattr(hf_config, "eos_token_id", None),
        unused_token_ids=tuple(sorted({int(i) for i in unused if i is not None})),
    )
    tasks = tuple(dict.fromkeys((*info.token_tasks, "token_embed", _TOKEN_CLASSIFY)))
    return dataclasses.replace(
        info,
        token_tasks=tasks,
        pooling_task=head.pooling_task,
        activation=head.use_activation is not False,
        lexical=weights,
    )
