"""TEI's input rules on top of poolserve's input processor: its errors, limits, truncation.

Promises (docs/tei.md has TEI's side of each):
- a :class:`TeiError` carries TEI's ``error_type`` and status; every other poolserve
  error is mapped by the TEI routes (api/routes/tei.py);
- an empty input is TEI's ``Empty`` error; an input over the model's max length is
  TEI's ``Validation`` error with TEI's message, unless ``truncate`` (default: the
  server's --auto-truncate) cuts it: on the right unless ``truncation_direction`` is
  Left, special tokens kept either way;
- text and token-id inputs may mix in one batch; their sequences come back in order.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from ..errors import InvalidRequest
from ..models.base import TokenSeq
from .context import ServingContext

# TEI's error types (router/src/lib.rs ErrorType) and the status each maps to.
TEI_STATUS = {
    "Unhealthy": 503,
    "Backend": 424,
    "Overloaded": 429,
    "Validation": 422,
    "Tokenizer": 422,
    "Empty": 400,
}

# What TEI prefixes to a core validation error (core/src/lib.rs).
_VALIDATION = "Input validation error: "

# The input processor's over-length message (vLLM's words), to restate it as TEI does.
_TOO_LONG = re.compile(
    r"maximum context length is (\d+) tokens\. However, you requested (?:more than )?(\d+) tokens"
)


class TeiError(InvalidRequest):
    """An error a TEI route answers with TEI's ``error_type`` and status.

    Still an :class:`InvalidRequest` (400 in the OpenAI shape) should it ever reach the
    app's global handlers.
    """

    def __init__(
        self, message: str, error_type: str = "Validation", *, param: str | None = None
    ) -> None:
        super().__init__(message, param=param)
        self.tei_type = error_type
        self.tei_status = TEI_STATUS[error_type]


def empty_error(what: str = "inputs") -> TeiError:
    """TEI's answer to an empty input reaching its tokenizer."""
    return TeiError(f"{_VALIDATION}`{what}` cannot be empty", "Empty")


def not_served(kind: str) -> TeiError:
    """TEI's answer when the model is of the wrong kind for the route (424)."""
    return TeiError(f"Backend error: {kind}", "Backend")


def check_batch(ctx: ServingContext, n: int, what: str = "inputs") -> None:
    """TEI's checks of a batch's size: empty (400) or over --max-client-batch-size (422)."""
    if n == 0:
        raise TeiError(f"`{what}` cannot be empty", "Empty")
    if n > ctx.max_client_batch_size:
        raise TeiError(f"batch size {n} > maximum allowed batch size {ctx.max_client_batch_size}")


def max_input_length(ctx: ServingContext) -> int:
    """The most tokens one input may have (TEI's ``max_input_length``)."""
    limit = ctx.processor.rules.max_input_len
    return limit if limit is not None else ctx.info.max_model_len


def wants_truncation(ctx: ServingContext, truncate: bool | None) -> bool:
    """TEI: ``truncate`` when sent, else the server's default (--auto-truncate)."""
    return ctx.processor.rules.auto_truncate if truncate is None else truncate


@contextmanager
def tei_lengths() -> Iterator[None]:
    """Restate the input processor's over-length error as TEI's (422 Validation)."""
    try:
        yield
    except TeiError:
        raise
    except InvalidRequest as exc:
        found = _TOO_LONG.search(exc.message)
        if found is None:
            raise
        limit, given = found.groups()
        raise TeiError(
            f"{_VALIDATION}`inputs` must have less than {limit} tokens. Given: {given}"
        ) from exc


def split_inputs(inputs: Any) -> tuple[bool, list[str | list[int]]]:
    """TEI's ``Input``: (is a batch, the inputs). A string or a list of ids is one
    input; ``[]`` is one empty list of ids, as TEI's untagged enum reads it."""
    if isinstance(inputs, str):
        return False, [inputs]
    if not inputs or isinstance(inputs[0], int):
        return False, [list(inputs)]
    return True, list(inputs)


async def sequences(
    ctx: ServingContext,
    inputs: list[str | list[int]],
    *,
    truncate: bool | None,
    side: str = "right",
    prompt_name: str | None = None,
    purpose: str = "embedding generation",
) -> list[TokenSeq]:
    """One sequence per input, in order: texts through the model's tokenizer (with the
    named or default prompt), token ids as given (TEI: no special tokens added).

    With ``prompt_name``, token ids are decoded to text first and prompted, as TEI does.
    """
    if any(len(x) == 0 for x in inputs):
        raise empty_error()
    cut = wants_truncation(ctx, truncate)
    limit = max_input_length(ctx)
    if prompt_name is not None:
        for i, item in enumerate(inputs):
            if not isinstance(item, str):
                inputs[i] = await ctx.tokenizer.call(
                    ctx.processor.detokenize, item, skip_special_tokens=True, raw=True
                )
    text_at = [i for i, x in enumerate(inputs) if isinstance(x, str)]
    ids_at = [i for i, x in enumerate(inputs) if not isinstance(x, str)]
    out: list[TokenSeq | None] = [None] * len(inputs)
    with tei_lengths():
        if text_at:
            seqs = await ctx.tokenizer.texts(
                [x for x in inputs if isinstance(x, str)],
                truncate_prompt_tokens=-1 if cut else None,
                purpose=purpose,
                prompt_name=prompt_name,
                truncation_side=side,
                auto_truncate=cut,
            )
            for i, seq in zip(text_at, seqs, strict=True):
                out[i] = seq
        if ids_at:
            lists: list[list[int]] = []
            for i in ids_at:
                ids = inputs[i]
                assert not isinstance(ids, str)
                if cut and len(ids) > limit:
                    ids = ids[-limit:] if side == "left" else ids[:limit]
                lists.append(ids)
            seqs = await ctx.tokenizer.call(
                ctx.processor.from_token_ids, lists, purpose=purpose, auto_truncate=False
            )
            for i, seq in zip(ids_at, seqs, strict=True):
                out[i] = seq
    return [s for s in out if s is not None]


async def pair_sequences(
    ctx: ServingContext,
    pairs: list[tuple[str, str | None]],
    *,
    truncate: bool | None,
    side: str = "right",
    purpose: str = "classification",
) -> list[TokenSeq]:
    """One sequence per (text, text_pair or None), in order: single texts as
    :func:`sequences` tokenizes them, pairs as one tokenized pair each (cut longest
    text first, on ``side``)."""
    for a, b in pairs:
        if not a and not b:
            raise empty_error()
    cut = wants_truncation(ctx, truncate)
    single_at = [i for i, (_, b) in enumerate(pairs) if b is None]
    pair_at = [i for i, (_, b) in enumerate(pairs) if b is not None]
    out: list[TokenSeq | None] = [None] * len(pairs)
    if single_at:
        texts: list[str | list[int]] = [pairs[i][0] for i in single_at]
        seqs = await sequences(ctx, texts, truncate=truncate, side=side, purpose=purpose)
        for i, seq in zip(single_at, seqs, strict=True):
            out[i] = seq
    if pair_at:
        with tei_lengths():
            seqs = await ctx.tokenizer.call(
                ctx.processor.from_pairs,
                [pairs[i][0] for i in pair_at],
                [pairs[i][1] for i in pair_at],
                truncate_prompt_tokens=-1 if cut else None,
                purpose=purpose,
                truncation_side=side,
                auto_truncate=cut,
            )
        for i, seq in zip(pair_at, seqs, strict=True):
            out[i] = seq
    return [s for s in out if s is not None]
