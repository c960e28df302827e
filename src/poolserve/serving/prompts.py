"""Turn a request's ``input`` or ``messages`` into validated sequences (shared by families)."""

from __future__ import annotations

from typing import Any

from ..errors import InvalidRequest
from ..models.base import TokenSeq
from .context import ServingContext

# Token-id inputs up to this many ids are checked on the event loop (~10 us per 1,000).
_INLINE_IDS = 16384


async def sequences_for(ctx: ServingContext, req: Any, purpose: str) -> list[TokenSeq]:
    """Sequences for an embeddings/pooling-shaped request (``input`` xor ``messages``)."""
    if req.messages is not None and req.input is not None:
        raise InvalidRequest("give either `input` or `messages`, not both", param="input")
    if getattr(req, "padding", None) == "max_length":
        # vLLM appends pad tokens as prompt tokens (for SigLIP-like models trained with
        # no attention mask); the text models served here pool under a mask.
        raise InvalidRequest(
            "padding 'max_length' is not supported: the models served here use an "
            "attention mask; send 'do_not_pad' or leave it out",
            param="padding",
        )
    if getattr(req, "late_chunking_params", None) is not None:
        raise InvalidRequest(
            "late_chunking_params (late chunking of token_embed outputs) is not supported",
            param="late_chunking_params",
        )
    proc = ctx.processor
    if req.messages is not None:
        if not req.messages:
            raise InvalidRequest("`messages` must hold at least one message", param="messages")
        messages = [m.model_dump(exclude_none=True) for m in req.messages]
        seq = await ctx.tokenizer.call(
            proc.from_chat,
            messages,
            chat_template=req.chat_template,
            chat_template_kwargs=req.chat_template_kwargs,
            add_generation_prompt=req.add_generation_prompt,
            add_special_tokens=bool(req.add_special_tokens),
            truncate_prompt_tokens=req.truncate_prompt_tokens,
            purpose=purpose,
            truncation_side=req.truncation_side,
        )
        return [seq]
    raw = req.input
    if raw is None:
        raise InvalidRequest("`input` is required", param="input")
    add_special = True if req.add_special_tokens is None else req.add_special_tokens
    if isinstance(raw, str):
        texts: list[str] | None = [raw]
        ids: list[list[int]] | None = None
    elif not raw or raw == [[]]:
        raise InvalidRequest("please provide at least one prompt", param="input")
    elif isinstance(raw[0], str):
        texts, ids = list(raw), None
    elif isinstance(raw[0], int):
        texts, ids = None, [list(raw)]
    else:
        texts, ids = None, [list(x) for x in raw]
    count = len(texts) if texts is not None else len(ids or [])
    ctx.check_count(count)
    if texts is not None:
        return await ctx.tokenizer.texts(
            texts,
            add_special_tokens=add_special,
            truncate_prompt_tokens=req.truncate_prompt_tokens,
            purpose=purpose,
            truncation_side=req.truncation_side,
        )
    assert ids is not None
    if any(not x for x in ids):
        raise InvalidRequest(
            "please provide at least one prompt (an empty token list)", param="input"
        )
    options = {
        "truncate_prompt_tokens": req.truncate_prompt_tokens,
        "purpose": purpose,
        "truncation_side": req.truncation_side,
    }
    if sum(map(len, ids)) <= _INLINE_IDS:
        # Token ids skip the tokenizer: a numpy range check, cheaper than a thread hop.
        return proc.from_token_ids(ids, **options)
    return await ctx.tokenizer.call(proc.from_token_ids, ids, **options)
