"""The narrow contract between the engine and a model backend. No torch here.

A backend receives a :class:`Batch` of already tokenized, already validated
sequences and returns one float32 array per sequence. Everything HTTP- or
request-shaped stays above this line; everything tensor-shaped stays below it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import numpy as np

if TYPE_CHECKING:
    from .colbert import ColbertRules


@dataclass(frozen=True, slots=True)
class TokenSeq:
    """One tokenized input, ready for the model.

    ``prompt_len`` counts the leading instruction-prompt tokens that pooling must
    skip (sentence-transformers' ``include_prompt=False``); 0 otherwise.
    ``per_token`` asks for per-token rows instead of the pooled output: ``hidden``
    (the last hidden states: /pooling ``token_embed``) or ``head`` (the classifier head
    on every token: ``token_classify``) or ``query`` (a ColBERT query: its trailing
    [MASK] augmentation is not attended to, see models/late_interaction.py) or
    ``colbert`` (bge-m3's ``colbert_linear`` on every token, see :class:`MultiVectors`);
    empty for the pooled output.
    """

    token_ids: np.ndarray  # int32 [n]; any int sequence given is converted
    token_type_ids: np.ndarray | None = None  # int32 [n]; None: all 0 where types are used
    prompt_len: int = 0
    per_token: str = ""

    def __post_init__(self) -> None:
        # int32 arrays, not tuples of Python ints (~36 bytes a token once ids pass 256):
        # 4 bytes a token while queued, and one buffer copy to pad or to send.
        if not isinstance(self.token_ids, np.ndarray) or self.token_ids.dtype != np.int32:
            object.__setattr__(self, "token_ids", np.asarray(self.token_ids, dtype=np.int32))
        types = self.token_type_ids
        if types is not None and (not isinstance(types, np.ndarray) or types.dtype != np.int32):
            object.__setattr__(self, "token_type_ids", np.asarray(types, dtype=np.int32))

    def __len__(self) -> int:
        return len(self.token_ids)


@dataclass(frozen=True, slots=True)
class Batch:
    """Sequences one forward pass runs together (the packer chose them)."""

    sequences: Sequence[TokenSeq]

    @property
    def padded_tokens(self) -> int:
        """Rows x longest row: the work a padded forward does."""
        return len(self.sequences) * max((len(s) for s in self.sequences), default=0)


class Backend(Protocol):
    """What the engine needs from a model."""

    def forward(self, batch: Batch) -> np.ndarray | Sequence[np.ndarray]:
        """Run one batch; return one float32 array per sequence (or rows of one array).

        Raises on a fault; the engine fails only this batch's requests.
        """
        ...

    def warmup(self) -> None:
        """Run a tiny forward so the first request does not pay one-off costs."""
        ...


# Maps float32 logits [n, k] to float32 scores [n, k] (numpy in, numpy out).
Activation = Callable[[np.ndarray], np.ndarray]

EMBEDDING = "embedding"  # the backend returns pooled vectors
CLASSIFIER = "classifier"  # the backend returns *ForSequenceClassification logits
TOKENS = "tokens"  # the backend returns per-token rows [num_tokens, dimension] (reward)
SPARSE = "sparse"  # the backend returns SPLADE weights, one per vocabulary entry
# the backend returns every token's projected (not yet normalized) ColBERT vector
COLBERT = "colbert"


@dataclass(frozen=True)
class LexicalWeights:
    """bge-m3's lexical (sparse) head as the serving layer needs it (models/bge_m3.py).

    The backend gives ``sparse_linear(hidden)`` per token (per_token ``head``, one
    column); serving applies relu and then either vLLM's ``token_classify`` shape (one
    weight per token, the first row dropped when it is ``bos_token_id`` and the last when
    it is ``eos_token_id``) or FlagEmbedding's lexical weights (``unused_token_ids``
    dropped, zeros dropped, the largest weight per token id).
    """

    bos_token_id: int | None
    eos_token_id: int | None
    unused_token_ids: tuple[int, ...]


@dataclass(frozen=True)
class MultiVectors:
    """bge-m3's ColBERT head (``colbert_linear.pt``) as the serving layer needs it.

    The backend gives ``colbert_linear(hidden)`` of every real token (per_token
    ``colbert``, not normalized); serving drops the first row when it is
    ``bos_token_id`` (vLLM 0.33 and FlagEmbedding both leave the CLS / BOS vector out
    and keep the EOS one) and L2-normalizes each row unless the request's switch (default
    ``normalize``) is off. MaxSim over these rows needs no markers or skiplist.
    """

    bos_token_id: int | None
    normalize: bool = True  # the normalize / use_activation default (--pooler-config)


@dataclass(frozen=True)
class ModelInfo:
    """Facts about the served model that the serving layer needs (no tensors).

    ``head`` says what the backend returns per sequence: ``embedding`` (a pooled
    vector of ``dimension`` floats), ``classifier`` (``num_labels`` raw logits) or
    ``tokens`` (per-token rows of ``dimension`` floats). ``activation`` is the default of
    the request switch for classifiers (activation) and per-token rows (softmax).
    """

    path: str
    task: str  # embed | classify | score | reward
    max_model_len: int
    dimension: int
    normalize: bool = True
    matryoshka: bool = False
    matryoshka_dimensions: tuple[int, ...] | None = None
    dtype: str = "float32"
    device: str = "cpu"
    head: str = EMBEDDING
    labels: tuple[str | None, ...] = ()  # classifier: id2label by index
    multi_label: bool = False  # classifier: problem_type multi_label_classification
    # classifier: what /score applies to the logits (sentence-transformers' choice)
    score_activation: Activation | None = None
    activation: bool = True
    # the pooling modes (sentence-transformers' names: mean, cls, lasttoken, max, ...)
    pooling: tuple[str, ...] = ("mean",)
    # --pooler-config dimensions: the output size when a request sends no ``dimensions``
    default_dimensions: int | None = None
    # --pooler-config logit_mean / logit_sigma: a classifier's logits become
    # (logit - mean) / sigma before any activation (vLLM's Platt-scaling calibration)
    logit_mean: float | None = None
    logit_sigma: float | None = None
    # /pooling ``task`` values beyond the served one: token_embed, token_classify
    token_tasks: tuple[str, ...] = ()
    # The /pooling task of a request that names none (None: the served task's output);
    # --pooler-config task "token_classify" on bge-m3 sets it, as vLLM serves that task.
    pooling_task: str | None = None
    # bge-m3's lexical weights (token_classify, TEI /embed_sparse); None: no such head
    lexical: LexicalWeights | None = None
    # bge-m3's colbert vectors (token_embed); None: no colbert_linear.pt. With
    # ``pooling_task == "token_embed"`` /v1/embeddings answers them and /score MaxSim.
    multi_vectors: MultiVectors | None = None
    # a late-interaction (ColBERT) model's markers, lengths and skiplist; else None
    colbert: ColbertRules | None = None

    def dimensions_problem(self, d: int, model: str) -> str | None:
        """Why ``d`` matryoshka dimensions cannot be served (vLLM's words), or None.
        The one rule for a request's ``dimensions`` and --pooler-config's."""
        if not self.matryoshka:
            return (
                f'Model "{model}" does not support matryoshka representation, changing '
                "output dimensions will lead to poor results."
            )
        if d < 1:
            return f"dimensions must be at least 1, got {d}"
        if self.matryoshka_dimensions and d not in self.matryoshka_dimensions:
            return (
                f'Model "{model}" only supports {list(self.matryoshka_dimensions)} for '
                f"matryoshka representation, got {d}"
            )
        if d > self.dimension:
            return f"dimensions ({d}) is larger than the model's embedding size ({self.dimension})"
        return None

    @property
    def num_labels(self) -> int:
        """Width of a classifier's logits (0 for an embedding model)."""
        return len(self.labels)

    @property
    def is_cross_encoder(self) -> bool:
        """A sequence classifier with one label: it scores text pairs."""
        return self.head == CLASSIFIER and self.num_labels == 1

    def sparse_problem(self) -> str | None:
        """Why this model gives no sparse weights, naming what it lacks; None when it
        gives them (a SPLADE model, or bge-m3's lexical head). The one rule for TEI's
        /embed_sparse and /pooling's ``token_classify`` on an embedding model."""
        if self.head == SPARSE or self.lexical is not None:
            return None
        # TEI's words first (its clients may match them), then what is missing.
        return (
            "Model is not an embedding model with SPLADE pooling, nor bge-m3 with lexical "
            "weights: it has no sparse head (a SparseEncoder folder's SpladePooling, or "
            "bge-m3's sparse_linear.pt)"
        )


@dataclass(frozen=True)
class InputRules:
    """How request inputs become sequences for this model (read by ``inputs/``)."""

    max_model_len: int
    vocab_size: int
    uses_token_type_ids: bool = False
    default_prompt: str | None = None
    exclude_prompt_from_pooling: bool = False
    do_lower_case: bool = False
    chat_template: str | None = None
    auto_truncate: bool = False
    # The sentence-transformers prompts by name (``prompt_name``, Cohere's input_type).
    prompts: tuple[tuple[str, str], ...] = ()
    # --pooler-config enable_chunked_processing: inputs longer than max_model_len are
    # accepted up to max_embed_len (None: no limit) and embedded window by window.
    chunked: bool = False
    max_embed_len: int | None = None

    @property
    def max_input_len(self) -> int | None:
        """The most tokens one input may have (None: no limit, chunked without a cap)."""
        if self.chunked:
            return self.max_embed_len
        return min(self.max_model_len, self.max_embed_len or self.max_model_len)
