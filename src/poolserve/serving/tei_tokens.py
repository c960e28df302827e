"""TEI's POST /tokenize (token objects with spans) and POST /decode.

Promises:
- /tokenize gives, per input, every token as ``{id, text, special, start, stop}``:
  a special token's ``text`` is its vocabulary string and its span null; any other
  token's ``text`` is the piece of the input it covers and ``start``/``stop`` are that
  piece's UTF-8 *byte* offsets (TEI's), in the input with its prompt prepended;
- inputs are never truncated; one over TEI's character limit (250 a token of the max
  length) is refused, so the work stays bounded;
- /decode turns each id list back into text, without special tokens unless asked,
  and without cleaning up spaces (TEI decodes with the Rust tokenizer as is).
"""

from __future__ import annotations

from typing import Any

from ..protocol.tei import TeiDecodeRequest, TeiTokenizeRequest
from .context import ServingContext, dump_json
from .tei_inputs import TeiError, check_batch, empty_error, max_input_length

# TEI refuses an input over this many characters per token of the max length.
_CHARS_PER_TOKEN = 250


def _byte_offsets(text: str) -> list[int] | None:
    """UTF-8 byte offset of each character index of ``text`` (len + 1 entries); None
    for ASCII text, where they are the character indexes themselves."""
    if text.isascii():
        return None
    out = [0]
    for ch in text:
        out.append(out[-1] + len(ch.encode("utf-8", "surrogatepass")))
    return out


def token_objects(
    tokenizer: Any, texts: list[str], add_special_tokens: bool
) -> list[list[dict[str, Any]]]:
    """TEI's token objects of each text (see the module's promises).

    Runs on the tokenizer thread, which is the only user of the tokenizer then.
    """
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise TeiError(
            "this model has no fast tokenizer, which /tokenize needs for token offsets",
            "Tokenizer",
        )
    # Truncation and padding are state of the Rust tokenizer: off, nothing is cut.
    backend.no_truncation()
    backend.no_padding()
    # The Python binding reports character offsets; TEI's are bytes (converted below).
    encodings = backend.encode_batch(texts, add_special_tokens=add_special_tokens)
    out = []
    for text, enc in zip(texts, encodings, strict=True):
        where = _byte_offsets(text)
        tokens = []
        for tid, (start, stop), special, piece in zip(
            enc.ids, enc.offsets, enc.special_tokens_mask, enc.tokens, strict=True
        ):
            if special:
                tokens.append(
                    {"id": tid, "text": piece, "special": True, "start": None, "stop": None}
                )
                continue
            a, b = (start, stop) if where is None else (where[start], where[stop])
            tokens.append(
                {"id": tid, "text": text[start:stop], "special": False, "start": a, "stop": b}
            )
        out.append(tokens)
    return out


async def tokenize(ctx: ServingContext, req: TeiTokenizeRequest) -> bytes:
    """TEI's POST /tokenize: ``[[token, ...] per input]`` (a single input too)."""
    texts = [req.inputs] if isinstance(req.inputs, str) else list(req.inputs)
    if not isinstance(req.inputs, str):
        check_batch(ctx, len(texts))
    limit = max_input_length(ctx) * _CHARS_PER_TOKEN
    for text in texts:
        if not text:
            raise empty_error()
        if len(text) > limit:
            raise TeiError(
                f"Input validation error: `inputs` must have less than {limit} characters. "
                f"Given: {len(text)}"
            )
    # The named prompt, else the model's default one, as /embed prepends it.
    prompt = ctx.processor.prompt_text(req.prompt_name)
    if prompt:
        texts = [prompt + t for t in texts]
    tokens = await ctx.tokenizer.call(
        token_objects, ctx.processor.tokenizer, texts, req.add_special_tokens
    )
    return await dump_json(tokens)


async def decode(ctx: ServingContext, req: TeiDecodeRequest) -> bytes:
    """POST /decode: ``[text, ...]``, one per id list (a single list too)."""
    batch, lists = req.batch()
    if batch:
        check_batch(ctx, len(lists), "ids")
    if any(not ids for ids in lists):
        raise empty_error("input_ids")
    proc = ctx.processor
    skip = req.skip_special_tokens
    texts = await ctx.tokenizer.call(
        lambda: [proc.detokenize(ids, skip_special_tokens=skip, raw=True) for ids in lists]
    )
    return await dump_json(texts)
