"""The tokenizer wrapper: text, token ids and chat messages -> validated sequences.

Promises:
- nothing is truncated unless the request (``truncate_prompt_tokens``) or the
  server (``--auto-truncate``) asks; an over-long input is a 400 naming its length;
- ``truncate_prompt_tokens=k`` keeps the first k tokens of text (special tokens
  included in k) and the last k of token-id input; -1 means the max length;
- token ids are checked against the vocabulary;
- tokenization work and memory stay bounded whatever a request holds (the
  tokenizer's output costs ~300 bytes a token): a text much longer than the limit
  is first measured on small whitespace-cut chunks, so one far over it is refused
  (or, when truncating, cut to a prefix with the same first tokens) after a small
  tokenization; a batch is encoded in slices of bounded size, and the first
  over-long input ends it.

The Hugging Face fast tokenizer mutates its truncation state per call, so calls
are serialized with a lock; callers run these methods off the event loop.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np

from ..errors import InvalidRequest, RequestTooLarge
from ..models.base import InputRules, TokenSeq

# A text longer than this many characters per allowed token is measured by chunks
# before it is tokenized whole (no tokenizer has more than a few characters a token
# on average, so such a text is almost surely over the limit).
_PROBE_CHARS_PER_TOKEN = 8
# Tokens a chunk cut may add or lose next to the cut (0 at a space for tokenizers
# that split on whitespace; a few where a word is cut): counted against each chunk.
_PROBE_MARGIN = 16
# Texts up to this many characters are always tokenized whole, so an over-long one
# is refused with its exact token count (as vLLM does); longer ones may be refused
# with a lower bound ("more than N tokens").
_EXACT_CHARS = 1 << 14
# /tokenize measures texts over this many characters against --max-request-tokens.
_TOKENIZE_PROBE_CHARS = 1 << 16
# A batch is encoded in slices of at most this many characters (or one text).
_SLICE_CHARS = 1 << 16


def context_error(max_len: int, n: int, purpose: str, *, at_least: bool = False) -> InvalidRequest:
    """vLLM's over-length message, word for word (``at_least``: N is a lower bound)."""
    requested = f"more than {n}" if at_least else str(n)
    return InvalidRequest(
        f"This model's maximum context length is {max_len} tokens. However, you requested "
        f"{requested} tokens in the input for {purpose}. Please reduce the length of the input.",
        param="input",
    )


def _side(truncation_side: str | None) -> str:
    """``truncation_side`` checked: "left", or "right" (also when None)."""
    if truncation_side not in (None, "left", "right"):
        raise InvalidRequest(
            "`truncation_side` must be either 'left' or 'right'.", param="truncation_side"
        )
    return truncation_side or "right"


def _slices(texts: list[str]) -> list[list[str]]:
    """Consecutive runs of ``texts`` of at most _SLICE_CHARS characters (or one text)."""
    out: list[list[str]] = []
    size = _SLICE_CHARS + 1
    for text in texts:
        if size + len(text) > _SLICE_CHARS:
            out.append([])
            size = 0
        out[-1].append(text)
        size += len(text)
    return out


def message_text(content: Any) -> str:
    """Flatten OpenAI message content (a string or text parts) to one string."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    texts = []
    for part in content:
        if part.get("type") != "text":
            raise InvalidRequest(
                f"unsupported message content part type {part.get('type')!r}; only 'text'",
                param="messages",
            )
        texts.append(str(part.get("text", "")))
    return "\n".join(texts)


class InputProcessor:
    """Tokenizes and validates request inputs for one model."""

    def __init__(self, tokenizer: Any, rules: InputRules) -> None:
        self.tokenizer = tokenizer
        self.rules = rules
        self._lock = threading.Lock()
        # A single text's token type ids are all 0 for every tokenizer we know (BERT's
        # template gives sequence A type 0): then none are built (None means zeros to the
        # backends), which saves a Python int per token. Checked once, here.
        self._single_types_zero = self._probe_single_types()
        self._prompts = dict(rules.prompts)
        # (with special tokens, without) lengths of each prompt, for include_prompt=false
        self._prompt_lens: dict[str, tuple[int, int]] = {}

    def _probe_single_types(self) -> bool:
        backend = getattr(self.tokenizer, "backend_tokenizer", None)
        if backend is None:
            return False
        try:
            probes = backend.encode_batch(["hello world", "a"], add_special_tokens=True)
            plain = backend.encode_batch(["hello world"], add_special_tokens=False)
        except Exception:  # an odd tokenizer: keep its type ids as they come
            return False
        return all(t == 0 for e in [*probes, *plain] for t in e.type_ids)

    def _prompt_len(self, prompt: str, add_special_tokens: bool) -> int:
        """Tokens of ``prompt`` left out of pooling (include_prompt=false), else 0."""
        if not self.rules.exclude_prompt_from_pooling:
            return 0
        lens = self._prompt_lens.get(prompt)
        if lens is None:
            with self._lock:
                ids = self.tokenizer(prompt, add_special_tokens=True)["input_ids"]
                plain = self.tokenizer(prompt, add_special_tokens=False)["input_ids"]
            # As sentence-transformers: the tokenized prompt minus its trailing special token.
            special = bool(ids) and ids[-1] in set(self.tokenizer.all_special_ids)
            lens = (len(ids) - 1 if special else len(ids), len(plain))
            self._prompt_lens[prompt] = lens
        return lens[0] if add_special_tokens else lens[1]

    def prompt_text(self, prompt_name: str | None, use_prompt: bool = True) -> str | None:
        """The prompt to prepend: the named one (400 when the model has no such prompt),
        else the model's default prompt when ``use_prompt``."""
        if prompt_name is None:
            return self.rules.default_prompt if use_prompt else None
        prompt = self._prompts.get(prompt_name)
        if prompt is None:
            known = sorted(self._prompts)
            raise InvalidRequest(
                f"prompt_name {prompt_name!r} is not one of this model's prompts "
                f"({known if known else 'it has none'})",
                param="prompt_name",
            )
        return prompt

    def truncation_length(
        self, truncate_prompt_tokens: int | None, auto_truncate: bool | None = None
    ) -> int | None:
        """The k to truncate to, or None for no truncation; validates k.

        The limit is max_model_len, or with chunked processing max_embed_len (none when
        unset: -1 and --auto-truncate then cut nothing). ``auto_truncate``: what no
        ``truncate_prompt_tokens`` means — None: the server's --auto-truncate; False: no
        truncation (a client that asked for none, as Cohere's truncate=NONE)."""
        limit = self.rules.max_input_len
        if truncate_prompt_tokens is None:
            auto = self.rules.auto_truncate if auto_truncate is None else auto_truncate
            return limit if auto else None
        if truncate_prompt_tokens == -1:
            return limit
        if truncate_prompt_tokens < 1:
            raise InvalidRequest(
                "truncate_prompt_tokens must be -1 or a positive number of tokens",
                param="truncate_prompt_tokens",
            )
        if limit is not None and truncate_prompt_tokens > limit:
            name = "max_embed_len" if self.rules.chunked else "max_model_len"
            raise InvalidRequest(
                f"truncate_prompt_tokens value ({truncate_prompt_tokens}) is greater than "
                f"{name} ({limit}). Please select a smaller truncation size.",
                param="truncate_prompt_tokens",
            )
        return truncate_prompt_tokens

    def _check_length(self, n: int, purpose: str) -> None:
        limit = self.rules.max_input_len
        if limit is not None and n > limit:
            raise context_error(limit, n, purpose)
        if n == 0:
            raise InvalidRequest("an input has no tokens", param="input")

    def from_texts(
        self,
        texts: Sequence[str],
        *,
        add_special_tokens: bool = True,
        truncate_prompt_tokens: int | None = None,
        purpose: str = "embedding generation",
        use_prompt: bool = True,
        prompt_name: str | None = None,
        truncation_side: str | None = None,
        auto_truncate: bool | None = None,
    ) -> list[TokenSeq]:
        """Tokenize plain texts with a prompt prepended: the one named ``prompt_name``,
        else the model's default prompt (when ``use_prompt``).

        ``truncation_side``: when truncating, "right" (the default) keeps the first
        tokens, "left" the last; special tokens stay either way, as the tokenizer's own
        truncation keeps them.
        """
        side = _side(truncation_side)
        k = self.truncation_length(truncate_prompt_tokens, auto_truncate)
        prompt = self.prompt_text(prompt_name, use_prompt)
        batch = [prompt + t if prompt else t for t in texts]
        if self.rules.do_lower_case:
            batch = [t.lower() for t in batch]
        batch = [self._bounded(t, k, purpose, side) for t in batch]
        prompt_len = self._prompt_len(prompt, add_special_tokens) if prompt else 0
        out: list[TokenSeq] = []
        for part in _slices(batch):
            enc = self._encode(part, add_special_tokens, k, side)
            lens: list[int] | int = prompt_len
            if prompt_len and side == "left" and k is not None:
                # Cutting the start cuts the prompt: only an uncut text keeps it to exclude.
                whole = self._encode(part, add_special_tokens, None, side)["input_ids"]
                lens = [prompt_len if len(ids) <= k else 0 for ids in whole]
            out.extend(self._sequences(enc, k, purpose, lens, side))
        return out

    def from_texts_many(
        self, jobs: Sequence[tuple[Sequence[str], dict[str, Any]]]
    ) -> list[list[TokenSeq] | Exception]:
        """:meth:`from_texts` for several requests at once: ``jobs`` are (texts, keyword
        arguments); the answer per job is its sequences or the error it alone raised.

        Jobs with the same arguments are tokenized in one call (one Rust batch, one
        lock); when that call fails, each of them is tokenized alone so only the
        faulty request gets the error.
        """
        out: list[list[TokenSeq] | Exception] = [[] for _ in jobs]
        groups: dict[tuple[Any, ...], list[int]] = {}
        for i, (_, kwargs) in enumerate(jobs):
            groups.setdefault(tuple(sorted(kwargs.items())), []).append(i)
        for members in groups.values():
            texts = [t for i in members for t in jobs[i][0]]
            try:
                seqs = self.from_texts(texts, **jobs[members[0]][1]) if len(members) > 1 else None
            except Exception:
                seqs = None
            if seqs is None:
                for i in members:
                    try:
                        out[i] = self.from_texts(jobs[i][0], **jobs[i][1])
                    except Exception as exc:  # answered to that request alone
                        out[i] = exc
                continue
            start = 0
            for i in members:
                n = len(jobs[i][0])
                out[i] = seqs[start : start + n]
                start += n
        return out

    def _bounded(self, text: str, k: int | None, purpose: str, side: str = "right") -> str:
        """``text``, or (truncating to ``k``) a part of it with the same first k tokens
        (the same last k for ``side`` "left").

        A text too long to be tokenized whole cheaply is measured by chunks first:
        over the max length it is a 400 (without truncation), or it is cut (with).
        """
        limit = k if k is not None else self.rules.max_input_len
        if limit is None:  # chunked processing with no max_embed_len: nothing to bound
            return text
        chunk = (limit + _PROBE_MARGIN) * _PROBE_CHARS_PER_TOKEN
        if len(text) <= max(2 * chunk, _EXACT_CHARS):
            return text
        found = self._proven_part(text, limit, chunk, from_end=k is not None and side == "left")
        if found is None:  # few tokens in many characters: tokenize it whole
            return text
        cut, at_least = found
        if k is None:
            raise context_error(limit, at_least, purpose, at_least=True)
        return text[cut:] if side == "left" else text[:cut]

    def _proven_part(
        self, text: str, need: int, chunk: int, from_end: bool = False
    ) -> tuple[int, int] | None:
        """``(cut, n)``: ``text[:cut]`` (``text[cut:]`` when ``from_end``) surely has
        ``n`` > ``need`` tokens (specials aside), its first (last) ``need`` tokens those
        of the whole text; None if ``text`` has no such part (it is not longer than
        ``need`` tokens by a clear margin).

        Tokenizes whitespace-cut chunks of about ``chunk`` characters, from the start (or
        the end), until the count less a margin per cut passes ``need``: work and memory
        stay those of the part.
        """
        total = cuts = 0
        n = len(text)
        start, end = (n, n) if from_end else (0, 0)
        while (start > 0) if from_end else (end < n):
            if from_end:
                start = max(0, end - chunk)
                if start > 0:
                    space = text.find(" ", start, end - chunk // 2)
                    start = space if space > start else start
            else:
                end = min(n, start + chunk)
                if end < n:
                    space = text.rfind(" ", start + chunk // 2, end)
                    end = space if space > start else end
            with self._lock:
                ids = self.tokenizer(text[start:end], add_special_tokens=False)["input_ids"]
            total += len(ids)
            cuts += 1
            if from_end:
                end = start
            else:
                start = end
            if total - cuts * _PROBE_MARGIN > need:
                return (start if from_end else end), total - cuts * _PROBE_MARGIN
        return None

    def _encode(
        self, batch: list[str], add_special_tokens: bool, k: int | None, side: str = "right"
    ) -> dict[str, Any]:
        """Token ids (and type ids) of ``batch``, truncated to ``k`` tokens when given
        (from ``side``)."""
        backend = getattr(self.tokenizer, "backend_tokenizer", None)
        with self._lock:
            if backend is not None and k is None:
                # The Rust tokenizer directly: transformers' per-text conversion back to
                # Python costs ~0.15 ms a text. Its file-level truncation and padding
                # must be off: nothing is cut silently.
                backend.no_truncation()
                backend.no_padding()
                encodings = backend.encode_batch(batch, add_special_tokens=add_special_tokens)
                out: dict[str, Any] = {"input_ids": [e.ids for e in encodings]}
                if self.rules.uses_token_type_ids and not self._single_types_zero:
                    out["token_type_ids"] = [e.type_ids for e in encodings]
                return out
            with self._truncating_from(side):
                return dict(
                    self.tokenizer(
                        batch,
                        add_special_tokens=add_special_tokens,
                        truncation=k is not None,
                        max_length=k,
                        padding=False,
                        return_attention_mask=False,
                        return_token_type_ids=self.rules.uses_token_type_ids,
                    )
                )

    @contextmanager
    def _truncating_from(self, side: str) -> Iterator[None]:
        """The tokenizer's truncation side set to ``side`` for one call (lock held)."""
        before = getattr(self.tokenizer, "truncation_side", "right")
        self.tokenizer.truncation_side = side
        try:
            yield
        finally:
            self.tokenizer.truncation_side = before

    def _sequences(
        self,
        enc: Any,
        k: int | None,
        purpose: str,
        prompt_len: int | list[int] = 0,
        side: str = "right",
    ) -> list[TokenSeq]:
        """TokenSeqs from a tokenizer's batch output: cut to ``k``, length-checked.
        ``prompt_len``: the prompt tokens to leave out of pooling, one for all or each."""
        ids_list = enc["input_ids"]
        types_list = enc.get("token_type_ids") if self.rules.uses_token_type_ids else None
        out = []
        for i, ids in enumerate(ids_list):
            types = types_list[i] if types_list is not None else None
            if k is not None and len(ids) > k:
                # The tokenizer will not cut into its special tokens (k below their
                # count); k counts every token the model sees, so keep k of them.
                cut = slice(-k, None) if side == "left" else slice(0, k)
                ids = ids[cut]
                types = types[cut] if types is not None else None
            self._check_length(len(ids), purpose)
            out.append(
                TokenSeq(
                    np.array(ids, dtype=np.int32),
                    np.array(types, dtype=np.int32) if types is not None else None,
                    prompt_len if isinstance(prompt_len, int) else prompt_len[i],
                )
            )
        return out

    def clip_texts(self, texts: Sequence[str], max_tokens: int, param: str) -> list[str]:
        """Each text cut, at a token boundary, to its first ``max_tokens`` tokens (special
        tokens aside): newest vLLM's ``max_tokens_per_query`` / ``max_tokens_per_doc``.
        0 leaves them whole; a value below 0 or not below max_model_len is a 400."""
        if max_tokens == 0:
            return list(texts)
        limit = self.rules.max_model_len
        if max_tokens < 0:
            raise InvalidRequest(f"{param} must be a non-negative integer", param=param)
        if max_tokens >= limit:
            raise InvalidRequest(
                f"{param} ({max_tokens}) must be less than max_model_len ({limit}).",
                param=param,
            )
        out = []
        for text in texts:
            text = self._bounded(text, max_tokens, "score")
            with self._lock:
                enc = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
            offsets = enc["offset_mapping"]
            out.append(text if len(offsets) <= max_tokens else text[: offsets[max_tokens - 1][1]])
        return out

    def from_pairs(
        self,
        firsts: Sequence[str],
        seconds: Sequence[str],
        *,
        truncate_prompt_tokens: int | None = None,
        purpose: str = "score",
        truncation_side: str | None = None,
        auto_truncate: bool | None = None,
    ) -> list[TokenSeq]:
        """Tokenize text pairs as one sequence each (``[CLS] a [SEP] b [SEP]`` for BERT,
        ``<s> a </s></s> b </s>`` for XLM-R), with token_type_ids where the model uses them.

        ``truncate_prompt_tokens=k`` truncates each pair to k tokens, longest text first
        (as sentence-transformers' CrossEncoder truncates at its max length); a k below
        the special tokens a pair needs is a 400. No default prompt is added.
        ``truncation_side`` "left" cuts the start of the texts instead of their end.
        """
        if len(firsts) != len(seconds):
            raise ValueError("firsts and seconds must have the same length")
        side = _side(truncation_side)
        k = self.truncation_length(truncate_prompt_tokens, auto_truncate)
        if k is not None:
            specials = self.tokenizer.num_special_tokens_to_add(pair=True)
            if k < specials:
                raise InvalidRequest(
                    f"truncate_prompt_tokens ({k}) is less than the {specials} special tokens "
                    "this model adds to a text pair",
                    param="truncate_prompt_tokens",
                )
        a, b = list(firsts), list(seconds)
        if self.rules.do_lower_case:
            a, b = [t.lower() for t in a], [t.lower() for t in b]
        # A text far over the limit on its own is refused (or, truncating, cut) after a
        # small tokenization; longest-first truncation of the pair keeps the same tokens.
        a = [self._bounded(t, k, purpose, side) for t in a]
        b = [self._bounded(t, k, purpose, side) for t in b]
        if not a:
            return []
        with self._lock, self._truncating_from(side):
            enc = self.tokenizer(
                a,
                b,
                add_special_tokens=True,
                truncation="longest_first" if k is not None else False,
                max_length=k,
                padding=False,
                return_attention_mask=False,
                return_token_type_ids=self.rules.uses_token_type_ids,
            )
        return self._sequences(enc, k, purpose, side=side)

    def from_token_ids(
        self,
        ids_lists: Sequence[Sequence[int]],
        *,
        truncate_prompt_tokens: int | None = None,
        purpose: str = "embedding generation",
        truncation_side: str | None = None,
        auto_truncate: bool | None = None,
    ) -> list[TokenSeq]:
        """Validate pre-tokenized inputs (no tokenizer involved: numpy range checks);
        truncation keeps the *last* k ids (as vLLM always did for ids), or the first k
        with ``truncation_side`` "right"."""
        keep_first = _side(truncation_side or "left") == "right"
        k = self.truncation_length(truncate_prompt_tokens, auto_truncate)
        vocab = self.rules.vocab_size
        out = []
        for ids in ids_lists:
            try:
                arr = np.array(ids, dtype=np.int64)
                valid = bool(((arr >= 0) & (arr < vocab)).all())
            except OverflowError:  # past 64 bits: surely out of the vocabulary
                valid = False
            if not valid:
                bad = next(t for t in ids if t < 0 or t >= vocab)
                raise InvalidRequest(
                    f"token id {bad} is out of the vocabulary (valid ids are 0..{vocab - 1})",
                    param="input",
                )
            if k is not None and len(arr) > k:
                arr = arr[:k] if keep_first else arr[-k:]
            seq = arr
            self._check_length(len(seq), purpose)
            out.append(TokenSeq(seq.astype(np.int32)))
        return out

    def render_chat(
        self,
        messages: Sequence[dict[str, Any]],
        *,
        chat_template: str | None = None,
        chat_template_kwargs: dict[str, Any] | None = None,
        add_generation_prompt: bool = False,
    ) -> str:
        """Render OpenAI-style messages with the request's, server's or tokenizer's template."""
        template = chat_template or self.rules.chat_template
        if template is None and not getattr(self.tokenizer, "chat_template", None):
            raise InvalidRequest(
                "this model has no chat template; send `input` instead of `messages`, or "
                "pass `chat_template`",
                param="messages",
            )
        conversation = [{**m, "content": message_text(m.get("content"))} for m in messages]
        try:
            with self._lock:
                text = self.tokenizer.apply_chat_template(
                    conversation,
                    chat_template=template,
                    tokenize=False,
                    add_generation_prompt=add_generation_prompt,
                    **(chat_template_kwargs or {}),
                )
        except Exception as exc:  # jinja raises many kinds; all are the request's fault
            raise InvalidRequest(
                f"could not render the chat template: {exc}", param="messages"
            ) from exc
        return str(text)

    def from_chat(
        self,
        messages: Sequence[dict[str, Any]],
        *,
        chat_template: str | None = None,
        chat_template_kwargs: dict[str, Any] | None = None,
        add_generation_prompt: bool = False,
        add_special_tokens: bool = False,
        truncate_prompt_tokens: int | None = None,
        purpose: str = "embedding generation",
        truncation_side: str | None = None,
    ) -> TokenSeq:
        """Render messages as ONE prompt, then tokenize it (no default prompt added)."""
        text = self.render_chat(
            messages,
            chat_template=chat_template,
            chat_template_kwargs=chat_template_kwargs,
            add_generation_prompt=add_generation_prompt,
        )
        return self.from_texts(
            [text],
            add_special_tokens=add_special_tokens,
            truncate_prompt_tokens=truncate_prompt_tokens,
            purpose=purpose,
            use_prompt=False,
            truncation_side=truncation_side,
        )[0]

    def tokenize(
        self, text: str, *, add_special_tokens: bool = True, max_tokens: int | None = None
    ) -> list[int]:
        """Token ids of ``text``, never truncated (for /tokenize).

        Raises RequestTooLarge, after tokenizing only a prefix, when ``text`` surely
        has more than ``max_tokens`` tokens (the caller checks the exact count).
        """
        if max_tokens is not None and len(text) > _TOKENIZE_PROBE_CHARS:
            found = self._proven_part(text, max_tokens, _TOKENIZE_PROBE_CHARS)
            if found is not None:
                raise RequestTooLarge(
                    f"the prompt has more than {found[1]} tokens, over the limit of "
                    f"{max_tokens} tokens in one request (--max-request-tokens)",
                    param="prompt",
                )
        with self._lock:
            enc = self.tokenizer(text, add_special_tokens=add_special_tokens, truncation=False)
        return list(enc["input_ids"])

    def token_strings(self, ids: Sequence[int]) -> list[str]:
        """The vocabulary strings of ``ids``."""
        with self._lock:
            return [str(t) for t in self.tokenizer.convert_ids_to_tokens(list(ids))]

    def detokenize(
        self, ids: Sequence[int], *, skip_special_tokens: bool = False, raw: bool = False
    ) -> str:
        """Decode ids (checked against the tokenizer's vocabulary) to text; ``raw``: as
        the Rust tokenizer decodes them, without transformers' space clean-up (TEI's)."""
        size = len(self.tokenizer)
        bad = next((t for t in ids if t < 0 or t >= size), None)
        if bad is not None:
            raise InvalidRequest(
                f"token id {bad} is out of the vocabulary (valid ids are 0..{size - 1})",
                param="tokens",
            )
        backend = getattr(self.tokenizer, "backend_tokenizer", None)
        with self._lock:
            if raw and backend is not None:
                return str(backend.decode(list(ids), skip_special_tokens=skip_special_tokens))
            return str(self.tokenizer.decode(list(ids), skip_special_tokens=skip_special_tokens))
