"""POST /classify requests."""

from __future__ import annotations

from pydantic import StrictBool

from .common import (
    ActivationSwitches,
    ChatFields,
    PromptInput,
    Request,
    TruncateTokens,
    TruncationSide,
)


class ClassifyRequest(Request, ActivationSwitches, ChatFields):
    """``input`` (texts or token ids), or chat ``messages`` rendered as one prompt."""

    input: PromptInput | None = None
    truncate_prompt_tokens: TruncateTokens = None
    truncation_side: TruncationSide = None
    add_special_tokens: StrictBool | None = None
