"""bge-m3 (BAAI/bge-m3): an XLM-RoBERTa encoder with a lexical and a multi-vector head.

What a bge-m3 folder is: XLM-R weights with sentence-transformers files (CLS pooling,
Normalize: the dense embedding, served as any such folder), plus ``sparse_linear.pt``
(a ``Linear(hidden, 1)`` state dict: one lexical weight per token after relu) and
``colbert_linear.pt`` (a ``Linear(hidden, dim)`` state dict, ``dim`` = hidden in
BAAI's release: one ColBERT vector per token).

How it is recognised (:func:`find_lexical_head`):

- vLLM's launch line, ``--hf-overrides '{"architectures": ["BgeM3EmbeddingModel"]}'``
  (vLLM 0.33 needs it: the checkpoint's config names ``XLMRobertaModel``, which vLLM
  serves as a plain embedding model). ``sparse_linear.pt`` and ``colbert_linear.pt``
  must then both be present (vLLM loads both and finds no weights without either);
- the files alone: a bare XLM-R / RoBERTa encoder (no ``*For*`` architecture) with
  ``sparse_linear.pt`` beside its weights (``colbert_linear.pt`` optional). The dense
  output is the same either way; the heads are extra outputs, so detecting them
  without the override changes no existing answer.

Promises (serving reads :class:`~poolserve.models.base.LexicalWeights` and
:class:`~poolserve.models.base.MultiVectors`):

- /pooling ``task: "token_classify"`` gives vLLM's shape: one weight per token,
  relu(sparse_linear(hidden)) (relu off with ``use_activation: false``), the first
  token dropped when it is the config's BOS id and the last when it is its EOS id;
- TEI /embed_sparse gives FlagEmbedding's lexical weights: the tokenizer's CLS, EOS,
  PAD and UNK ids dropped, zero weights dropped, the largest weight kept per token id;
- /pooling ``task: "token_embed"`` gives the colbert vectors: colbert_linear(hidden)
  per token, the first token dropped when it is the config's BOS id (EOS kept, as vLLM
  and FlagEmbedding do), L2-normalized per token (off with ``normalize: false``);
- ``--pooler-config '{"task": "token_classify"}'`` (vLLM's way to serve that task)
  makes it /pooling's default; /v1/embeddings keeps the dense vector;
- ``--pooler-config '{"task": "token_embed"}'`` makes the colbert vectors /pooling's and
  /v1/embeddings' answer and /score and /rerank MaxSim over them, as vLLM serves a
  token_embed model; it needs ``colbert_linear.pt``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ModelLoadError
from .base import LexicalWeights, ModelInfo, MultiVectors
from .pooler_config import PoolerSettings

ARCHITECTURE = "BgeM3EmbeddingModel"  # vLLM's registry name (model_executor/models)
SPARSE_LINEAR = "sparse_linear.pt"
COLBERT_LINEAR = "colbert_linear.pt"
# vLLM's BgeM3EmbeddingModel extends its RoBERTa embedding model.
_MODEL_TYPES = ("xlm-roberta", "roberta")
_TOKEN_CLASSIFY = "token_classify"
_TOKEN_EMBED = "token_embed"


@dataclass(frozen=True)
class M3Heads:
    """A recognised bge-m3 folder: where its heads are, and which of their tasks
    --pooler-config asked to serve."""

    sparse_linear: Path
    colbert_linear: Path | None = None  # None: the folder has no colbert_linear.pt
    pooling_task: str | None = None  # token_classify | token_embed: /pooling's default
    use_activation: bool | None = None  # that task's switch default (None: on)


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
    if named and found is not None and colbert_head(found) is None:
        raise ModelLoadError(
            f"architecture {ARCHITECTURE} needs bge-m3's {COLBERT_LINEAR} (the colbert "
            f"head) beside {found}"
        )
    # From the files alone only a bare encoder (XLMRobertaModel, as bge-m3's config
    # says): a *ForSequenceClassification / *ForMaskedLM checkpoint is something else.
    if found is None or model_type not in _MODEL_TYPES or any("For" in a for a in archs):
        return None
    return found


def colbert_head(sparse_linear: Path) -> Path | None:
    """``colbert_linear.pt`` beside ``sparse_linear`` (vLLM and FlagEmbedding read both
    heads from the model folder), or None."""
    path = sparse_linear.parent / COLBERT_LINEAR
    return path if path.is_file() else None


def lexical_pooler(
    pooler: PoolerSettings, dirs: Sequence[Path], hf_config: Any
) -> tuple[PoolerSettings, M3Heads | None]:
    """The bge-m3 heads in ``dirs`` (:func:`find_lexical_head`; None: not bge-m3, and
    ``pooler`` unchanged), and --pooler-config split between the dense embedding and
    the per-token task it names.

    ``task: "token_classify"`` (read as poolserve's "reward") serves the lexical weights
    and ``task: "token_embed"`` (read as "embed") the colbert vectors, as vLLM's
    BgeM3EmbeddingModel does: here the task becomes /pooling's default and its
    ``use_activation`` that task's switch default (relu; normalization), while the
    model stays an embedding model. ModelLoadError: token_embed without
    ``colbert_linear.pt``."""
    path = find_lexical_head(dirs, hf_config)
    if path is None:
        return pooler, None
    colbert = colbert_head(path)
    task = pooler.vllm_task if pooler.vllm_task in (_TOKEN_CLASSIFY, _TOKEN_EMBED) else None
    if task is None:
        return pooler, M3Heads(path, colbert)
    if task == _TOKEN_EMBED and colbert is None:
        raise ModelLoadError(
            f"--pooler-config task token_embed serves bge-m3's colbert vectors; "
            f"{path.parent} has no {COLBERT_LINEAR}"
        )
    dense = dataclasses.replace(pooler, task="embed", vllm_task=None, use_activation=None)
    return dense, M3Heads(path, colbert, task, pooler.use_activation)


def with_lexical(info: ModelInfo, head: M3Heads, tokenizer: Any, hf_config: Any) -> ModelInfo:
    """``info`` of the dense model, with the per-token tasks of its heads."""
    unused = (
        getattr(tokenizer, name, None)
        for name in ("cls_token_id", "eos_token_id", "pad_token_id", "unk_token_id")
    )
    weights = LexicalWeights(
        bos_token_id=getattr(hf_config, "bos_token_id", None),
        eos_token_id=getattr(hf_config, "eos_token_id", None),
        unused_token_ids=tuple(sorted({int(i) for i in unused if i is not None})),
    )
    vectors = None
    if head.colbert_linear is not None:
        normalize = head.pooling_task != _TOKEN_EMBED or head.use_activation is not False
        vectors = MultiVectors(getattr(hf_config, "bos_token_id", None), normalize)
    tasks = tuple(dict.fromkeys((*info.token_tasks, _TOKEN_EMBED, _TOKEN_CLASSIFY)))
    return dataclasses.replace(
        info,
        token_tasks=tasks,
        pooling_task=head.pooling_task,
        activation=head.pooling_task != _TOKEN_CLASSIFY or head.use_activation is not False,
        lexical=weights,
        multi_vectors=vectors,
    )
