"""POST /tokenize and POST /detokenize."""

from __future__ import annotations

from pydantic import StrictBool, StrictStr

from .common import ChatFields, Request, TokenIds


class TokenizeRequest(Request, ChatFields):
    """``prompt`` (completion form) or ``messages`` (chat form)."""

    prompt: StrictStr | None = None
    add_special_tokens: StrictBool | None = None
    return_token_strs: StrictBool = False
    add_generation_prompt: StrictBool = True


class DetokenizeRequest(Request):
    tokens: TokenIds
