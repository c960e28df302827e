"""Shared request pieces: base model config, chat messages, usage, errors."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr

# Strict scalars: `true` is not a token id and `1` is not a text.
TokenIds = list[StrictInt]


class Request(BaseModel):
    """Base of every request: unknown fields are accepted and ignored (SDKs send extras)."""

    model_config = ConfigDict(extra="ignore", protected_namespaces=())

    model: StrictStr | None = None
    user: StrictStr | None = None
    request_id: StrictStr | None = None
    priority: StrictInt = 0


class TextPart(BaseModel):
    """One part of a message's content list."""

    model_config = ConfigDict(extra="allow")

    type: StrictStr
    text: StrictStr | None = None


class ChatMessage(BaseModel):
    """An OpenAI chat message; only its role and text content matter for pooling."""

    model_config = ConfigDict(extra="allow")

    role: StrictStr
    content: StrictStr | list[TextPart] | None = None


class ActivationSwitches(BaseModel):
    """Every name vLLM has used for an output activation switch."""

    normalize: StrictBool | None = None
    activation: StrictBool | None = None
    softmax: StrictBool | None = None
    use_activation: StrictBool | None = None


class ChatFields(BaseModel):
    """The chat (``messages``) form shared by embeddings and pooling."""

    messages: list[ChatMessage] | None = None
    chat_template: StrictStr | None = None
    chat_template_kwargs: dict[str, Any] | None = None
    add_generation_prompt: StrictBool = False
    continue_final_message: StrictBool = False


TruncateTokens = Annotated[StrictInt | None, Field(ge=-1)]
# Newest vLLM's truncation_side: with truncation, "right" keeps the first tokens,
# "left" the last (None: right for text, left for token ids, as older vLLM did).
TruncationSide = Literal["left", "right"] | None
PromptInput = StrictStr | list[StrictStr] | TokenIds | list[TokenIds]


class Usage(BaseModel):
    """OpenAI usage block; N counts every token fed to the model."""

    prompt_tokens: int
    total_tokens: int
    completion_tokens: int = 0
    prompt_tokens_details: None = None


class ErrorInfo(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: int


class ErrorResponse(BaseModel):
    """The error shape of every non-2xx answer."""

    error: ErrorInfo


# vLLM's output encodings (vllm/utils/serial_utils.py): "float" is JSON numbers; "base64"
# one string per item; "bytes" the raw concatenated body with a `metadata` header,
# "bytes_only" the same body without it. `embed_dtype` and `endianness` apply to all but
# "float" (which ignores them). docs/compact-outputs.md has the details.
EncodingFormat = Literal["float", "base64", "bytes", "bytes_only"]
EmbedDType = Literal["float32", "float16", "bfloat16", "fp8_e4m3", "fp8_e5m2"]
Endianness = Literal["native", "big", "little"]
