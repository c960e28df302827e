"""POST /v1/embeddings and POST /pooling requests."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import StrictBool, StrictInt, StrictStr

from .common import (
    ActivationSwitches,
    ChatFields,
    EmbedDType,
    EncodingFormat,
    Endianness,
    PromptInput,
    Request,
    TruncateTokens,
    TruncationSide,
)


class EmbeddingRequest(Request, ActivationSwitches, ChatFields):
    """Completion form (``input``) or chat form (``messages``); exactly one of them."""

    input: PromptInput | None = None
    encoding_format: EncodingFormat = "float"
    embed_dtype: EmbedDType = "float32"
    endianness: Endianness = "native"
    dimensions: StrictInt | None = None
    truncate_prompt_tokens: TruncateTokens = None
    truncation_side: TruncationSide = None
    add_special_tokens: StrictBool | None = None
    # poolserve: late-interaction (ColBERT) models mark inputs as "query" or "document"
    # (the default); other models refuse it (serving/late_interaction.py).
    input_type: StrictStr | None = None
    # Newest vLLM's fields poolserve refuses rather than ignores (serving/prompts.py).
    padding: Literal["max_length", "do_not_pad"] | None = None
    late_chunking_params: dict[str, Any] | None = None


class PoolingRequest(EmbeddingRequest):
    """As embeddings, plus the newer ``task`` field."""

    task: StrictStr | None = None
