"""POST /tokenize and POST /detokenize."""

from __future__ import annotations

from typing import Any

from ..errors import InvalidRequest
from ..protocol.tokenize import DetokenizeRequest, TokenizeRequest
from .context import ServingContext


async def tokenize(ctx: ServingContext, req: TokenizeRequest) -> dict[str, Any]:
    """Token ids (and optionally their strings) of a prompt or a chat conversation."""
    ctx.model_name(req.model)
    proc = ctx.processor
    if (req.prompt is None) == (req.messages is None):
        raise InvalidRequest("give exactly one of `prompt` or `messages`", param="prompt")
    if req.messages is not None:
        text = await ctx.tokenizer.call(
            proc.render_chat,
            [m.model_dump(exclude_none=True) for m in req.messages],
            chat_template=req.chat_template,
            chat_template_kwargs=req.chat_template_kwargs,
            add_generation_prompt=req.add_generation_prompt,
        )
        add_special = bool(req.add_special_tokens)
    else:
        text = req.prompt or ""
        add_special = True if req.add_special_tokens is None else req.add_special_tokens
    ids = await ctx.tokenizer.call(
        proc.tokenize,
        text,
        add_special_tokens=add_special,
        max_tokens=ctx.engine.max_request_tokens,
    )
    ctx.engine.check_tokens(len(ids))
    strs = await ctx.tokenizer.call(proc.token_strings, ids) if req.return_token_strs else None
    return {
        "count": len(ids),
        "max_model_len": ctx.info.max_model_len,
        "tokens": ids,
        "token_strs": strs,
    }


async def detokenize(ctx: ServingContext, req: DetokenizeRequest) -> dict[str, Any]:
    """The text of a list of token ids; ids outside the vocabulary are a 400."""
    ctx.model_name(req.model)
    return {"prompt": await ctx.tokenizer.call(ctx.processor.detokenize, req.tokens)}
