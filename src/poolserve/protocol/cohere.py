"""POST /v2/embed (and /v1/embed) requests: Cohere's embed API, as vLLM serves it.

Field names and defaults follow Cohere's API reference and vLLM's ``CohereEmbedRequest``
(vllm/entrypoints/pooling/embed/protocol.py); docs/cohere.md says where poolserve
differs. ``images`` and ``inputs`` are parsed only to be refused with a clear 400 (the
served models take text).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import StrictInt, StrictStr

from .common import Request

# Cohere's embedding types (vLLM 0.33 takes all but int8 / uint8; see docs/cohere.md).
CohereEmbeddingType = Literal["float", "int8", "uint8", "binary", "ubinary", "base64"]
CohereTruncate = Literal["NONE", "START", "END"]
# Cohere's documented input types; a model's own prompt names are accepted as well.
COHERE_INPUT_TYPES = ("search_query", "search_document", "classification", "clustering", "image")


class CohereEmbedRequest(Request):
    """Cohere embed: ``texts`` (``images`` / ``inputs`` are refused), with ``input_type``
    choosing the model's prompt, ``embedding_types`` the output encodings, ``truncate``
    / ``max_tokens`` the truncation and ``output_dimension`` a matryoshka width.

    ``null`` for ``truncate`` or ``embedding_types`` means the default (END, float).
    """

    input_type: StrictStr | None = None
    texts: list[StrictStr] | None = None
    images: list[Any] | None = None
    inputs: list[Any] | None = None
    embedding_types: list[CohereEmbeddingType] | None = None
    truncate: CohereTruncate | None = None
    max_tokens: StrictInt | None = None
    output_dimension: StrictInt | None = None
