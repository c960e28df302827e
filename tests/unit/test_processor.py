"""poolserve.inputs.processor.InputProcessor with a tiny offline WordPiece tokenizer."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from transformers import AutoTokenizer

from poolserve.errors import InvalidRequest
from poolserve.inputs.processor import InputProcessor, context_error, message_text
from poolserve.models.base import InputRules
from tests.fixtures.tiny_models import build_tokenizer

MAX_LEN = 16
LONG = " ".join(["the quick brown fox jumps over the lazy dog"] * 4)  # 36 words + 2 specials
TEMPLATE = (
    "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<assistant>{% endif %}"
)


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wordpiece")
    build_tokenizer(out, "wordpiece", max_length=512)
    return out


@pytest.fixture(scope="module")
def tokenizer(tok_dir: Path) -> Any:
    return AutoTokenizer.from_pretrained(tok_dir)


@pytest.fixture(scope="module")
def cls_sep(tokenizer: Any) -> tuple[int, int]:
    return tokenizer.cls_token_id, tokenizer.sep_token_id


def make(tokenizer: Any, **rules: Any) -> InputProcessor:
    rules.setdefault("max_model_len", MAX_LEN)
    rules.setdefault("vocab_size", len(tokenizer))
    return InputProcessor(tokenizer, InputRules(**rules))


def ids_of(tokenizer: Any, text: str, special: bool = True) -> list[int]:
    return list(tokenizer(text, add_special_tokens=special)["input_ids"])


# -- plain texts -------------------------------------------------------------------


def test_texts_are_tokenized_with_special_tokens(tokenizer: Any, cls_sep) -> None:
    proc = make(tokenizer)
    (seq,) = proc.from_texts(["The quick brown fox"])
    assert list(seq.token_ids) == ids_of(tokenizer, "The quick brown fox")
    assert seq.token_ids[0] == cls_sep[0] and seq.token_ids[-1] == cls_sep[1]
    assert seq.token_type_ids is None and seq.prompt_len == 0


def test_without_special_tokens(tokenizer: Any) -> None:
    (seq,) = make(tokenizer).from_texts(["hello world"], add_special_tokens=False)
    assert list(seq.token_ids) == ids_of(tokenizer, "hello world", special=False)


def test_token_type_ids_when_the_model_uses_them(tokenizer: Any) -> None:
    (seq,) = make(tokenizer, uses_token_type_ids=True).from_texts(["hello world"])
    # A single text's type ids are all 0: sent as None (zeros to every backend).
    assert seq.token_type_ids is None
    (pair,) = make(tokenizer, uses_token_type_ids=True).from_pairs(["hello"], ["world"])
    assert pair.token_type_ids is not None and set(pair.token_type_ids.tolist()) == {0, 1}


def test_several_texts_keep_their_order(tokenizer: Any) -> None:
    texts = ["a", "the cat sits on the mat", "hello"]
    seqs = make(tokenizer).from_texts(texts)
    assert [list(s.token_ids) for s in seqs] == [ids_of(tokenizer, t) for t in texts]


def test_over_length_text_is_vllms_400(tokenizer: Any) -> None:
    n = len(ids_of(tokenizer, LONG))
    with pytest.raises(InvalidRequest) as info:
        make(tokenizer).from_texts([LONG])
    err = info.value
    assert err.status == 400 and err.param == "input"
    assert err.message == (
        f"This model's maximum context length is {MAX_LEN} tokens. However, you requested "
        f"{n} tokens in the input for embedding generation. Please reduce the length of "
        "the input."
    )


@pytest.mark.parametrize("purpose", ["score", "classification"])
def test_over_length_message_names_the_purpose(tokenizer: Any, purpose: str) -> None:
    with pytest.raises(InvalidRequest, match=f"in the input for {purpose}\\. Please"):
        make(tokenizer).from_texts([LONG], purpose=purpose)


def test_exactly_max_len_is_accepted(tokenizer: Any) -> None:
    text = " ".join(["dog"] * (MAX_LEN - 2))
    (seq,) = make(tokenizer).from_texts([text])
    assert len(seq) == MAX_LEN
    with pytest.raises(InvalidRequest, match="requested 17 tokens"):
        make(tokenizer).from_texts([text + " dog"])


def test_empty_input_without_special_tokens(tokenizer: Any) -> None:
    with pytest.raises(InvalidRequest, match="no tokens"):
        make(tokenizer).from_texts([""], add_special_tokens=False)


def test_context_error_helper() -> None:
    err = context_error(8, 9, "score")
    assert err.message.startswith("This model's maximum context length is 8 tokens.")
    assert "you requested 9 tokens in the input for score." in err.message


# -- truncate_prompt_tokens ----------------------------------------------------------


@pytest.mark.parametrize("k", [3, 5, 10, MAX_LEN])
def test_truncate_text_keeps_first_k_tokens_specials_included(
    tokenizer: Any, cls_sep, k: int
) -> None:
    full = ids_of(tokenizer, LONG)
    (seq,) = make(tokenizer).from_texts([LONG], truncate_prompt_tokens=k)
    assert len(seq) == k
    assert list(seq.token_ids) == [*full[: k - 1], cls_sep[1]]


@pytest.mark.parametrize("k", [1, 2])
def test_truncate_text_below_the_special_tokens(tokenizer: Any, k: int) -> None:
    # However the tokenizer treats a k under its special-token count, k is never exceeded.
    try:
        (seq,) = make(tokenizer).from_texts([LONG], truncate_prompt_tokens=k)
    except InvalidRequest as exc:
        assert exc.param == "truncate_prompt_tokens"
    else:
        assert 1 <= len(seq) <= k


def test_truncate_short_text_is_a_no_op(tokenizer: Any) -> None:
    (seq,) = make(tokenizer).from_texts(["hello"], truncate_prompt_tokens=10)
    assert list(seq.token_ids) == ids_of(tokenizer, "hello")


def test_truncate_minus_one_means_max_len(tokenizer: Any, cls_sep) -> None:
    full = ids_of(tokenizer, LONG)
    (seq,) = make(tokenizer).from_texts([LONG], truncate_prompt_tokens=-1)
    assert list(seq.token_ids) == [*full[: MAX_LEN - 1], cls_sep[1]]


def test_truncate_token_ids_keeps_last_k(tokenizer: Any) -> None:
    ids = list(range(10, 40))
    (seq,) = make(tokenizer).from_token_ids([ids], truncate_prompt_tokens=5)
    assert list(seq.token_ids) == ids[-5:]
    (seq,) = make(tokenizer).from_token_ids([ids], truncate_prompt_tokens=-1)
    assert list(seq.token_ids) == ids[-MAX_LEN:]
    (seq,) = make(tokenizer).from_token_ids([ids[:3]], truncate_prompt_tokens=5)
    assert list(seq.token_ids) == ids[:3]


def test_truncate_larger_than_max_len_is_an_error(tokenizer: Any) -> None:
    proc = make(tokenizer)
    for call in (
        lambda: proc.from_texts(["hi"], truncate_prompt_tokens=MAX_LEN + 1),
        lambda: proc.from_token_ids([[5, 6]], truncate_prompt_tokens=MAX_LEN + 1),
    ):
        with pytest.raises(InvalidRequest) as info:
            call()
        assert info.value.param == "truncate_prompt_tokens"
        assert f"({MAX_LEN + 1}) is greater than max_model_len ({MAX_LEN})" in info.value.message


@pytest.mark.parametrize("k", [0, -2, -100])
def test_truncate_zero_or_below_minus_one_is_an_error(tokenizer: Any, k: int) -> None:
    with pytest.raises(InvalidRequest) as info:
        make(tokenizer).from_texts(["hi"], truncate_prompt_tokens=k)
    assert info.value.param == "truncate_prompt_tokens"
    with pytest.raises(InvalidRequest):
        make(tokenizer).from_token_ids([[5]], truncate_prompt_tokens=k)


def test_truncation_length_values(tokenizer: Any) -> None:
    proc = make(tokenizer)
    assert proc.truncation_length(None) is None
    assert proc.truncation_length(-1) == MAX_LEN
    assert proc.truncation_length(7) == 7
    assert make(tokenizer, auto_truncate=True).truncation_length(None) == MAX_LEN


def test_over_length_token_ids_is_an_error(tokenizer: Any) -> None:
    with pytest.raises(InvalidRequest, match=f"requested {MAX_LEN + 4} tokens"):
        make(tokenizer).from_token_ids([list(range(5, 5 + MAX_LEN + 4))])


def test_auto_truncate(tokenizer: Any, cls_sep) -> None:
    proc = make(tokenizer, auto_truncate=True)
    full = ids_of(tokenizer, LONG)
    (seq,) = proc.from_texts([LONG])
    assert list(seq.token_ids) == [*full[: MAX_LEN - 1], cls_sep[1]]
    ids = list(range(5, 50))
    (seq,) = proc.from_token_ids([ids])
    assert list(seq.token_ids) == ids[-MAX_LEN:]
    # An explicit k still wins.
    (seq,) = proc.from_texts([LONG], truncate_prompt_tokens=4)
    assert len(seq) == 4


# -- token ids -----------------------------------------------------------------------


def test_token_ids_pass_through(tokenizer: Any) -> None:
    seqs = make(tokenizer).from_token_ids([[5, 6, 7], [0]])
    assert [list(s.token_ids) for s in seqs] == [[5, 6, 7], [0]]
    assert all(s.token_type_ids is None and s.prompt_len == 0 for s in seqs)


@pytest.mark.parametrize("bad", [-1, 343, 10_000])
def test_token_id_out_of_range(tokenizer: Any, bad: int) -> None:
    proc = make(tokenizer, vocab_size=343)
    with pytest.raises(InvalidRequest) as info:
        proc.from_token_ids([[5, 6], [7, bad, 8]])
    assert info.value.param == "input"
    assert f"token id {bad} is out of the vocabulary" in info.value.message
    assert "0..342" in info.value.message


def test_last_vocabulary_id_is_valid(tokenizer: Any) -> None:
    (seq,) = make(tokenizer, vocab_size=343).from_token_ids([[0, 342]])
    assert list(seq.token_ids) == [0, 342]


def test_empty_token_id_list(tokenizer: Any) -> None:
    with pytest.raises(InvalidRequest, match="no tokens"):
        make(tokenizer).from_token_ids([[]])


# -- prompts and lower-casing ----------------------------------------------------


def test_default_prompt_is_prepended(tokenizer: Any) -> None:
    proc = make(tokenizer, default_prompt="query: ")
    (seq,) = proc.from_texts(["the cat"])
    assert list(seq.token_ids) == ids_of(tokenizer, "query: the cat")
    assert seq.prompt_len == 0  # pooled with the prompt unless the model excludes it
    (plain,) = proc.from_texts(["the cat"], use_prompt=False)
    assert list(plain.token_ids) == ids_of(tokenizer, "the cat")


def test_excluded_prompt_length_is_measured(tokenizer: Any) -> None:
    proc = make(tokenizer, default_prompt="query: ", exclude_prompt_from_pooling=True)
    (seq,) = proc.from_texts(["the cat"])
    # [CLS] query : — the prompt's tokens without its trailing [SEP], as sentence-transformers.
    assert seq.prompt_len == len(ids_of(tokenizer, "query: ")) - 1 == 3
    assert list(seq.token_ids[: seq.prompt_len]) == ids_of(tokenizer, "query: ")[:-1]
    (plain,) = proc.from_texts(["the cat"], use_prompt=False)
    assert plain.prompt_len == 0


def test_default_prompt_counts_toward_the_length(tokenizer: Any) -> None:
    text = " ".join(["dog"] * (MAX_LEN - 2))
    proc = make(tokenizer, default_prompt="query: ")
    with pytest.raises(InvalidRequest, match="requested 18 tokens"):
        proc.from_texts([text])


def test_do_lower_case(tmp_path: Path) -> None:
    # A case-sensitive tokenizer, so lower-casing is visible in the ids.
    tok = build_tokenizer(tmp_path, "xlm-roberta")
    assert ids_of(tok, "Hello World") != ids_of(tok, "hello world")
    (seq,) = make(tok, do_lower_case=True).from_texts(["Hello World"])
    assert list(seq.token_ids) == ids_of(tok, "hello world")
    (seq,) = make(tok).from_texts(["Hello World"])
    assert list(seq.token_ids) == ids_of(tok, "Hello World")
    # The default prompt is lower-cased with the text.
    (seq,) = make(tok, do_lower_case=True, default_prompt="Query: ").from_texts(["The Cat"])
    assert list(seq.token_ids) == ids_of(tok, "query: the cat")


# -- the tokenizer's own truncation must not apply -------------------------------------


@pytest.fixture(scope="module")
def truncating_tokenizer(tok_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Any:
    out = tmp_path_factory.mktemp("truncating")
    for f in tok_dir.iterdir():
        (out / f.name).write_bytes(f.read_bytes())
    data = json.loads((out / "tokenizer.json").read_text())
    data["truncation"] = {
        "direction": "Right",
        "max_length": 8,
        "strategy": "LongestFirst",
        "stride": 0,
    }
    (out / "tokenizer.json").write_text(json.dumps(data))
    tok = AutoTokenizer.from_pretrained(out)
    assert tok.backend_tokenizer.truncation is not None  # the trap is armed
    return tok


def test_builtin_truncation_is_ignored(truncating_tokenizer: Any, tokenizer: Any) -> None:
    proc = make(truncating_tokenizer, max_model_len=512)
    text = "the quick brown fox jumps over the lazy dog"
    (seq,) = proc.from_texts([text])
    assert list(seq.token_ids) == ids_of(tokenizer, text)
    assert len(seq) == 11
    assert proc.tokenize(text) == ids_of(tokenizer, text)


def test_builtin_truncation_does_not_hide_over_length(truncating_tokenizer: Any) -> None:
    with pytest.raises(InvalidRequest, match="requested 38 tokens"):
        make(truncating_tokenizer).from_texts([LONG])


# -- chat ----------------------------------------------------------------------------


MESSAGES = [
    {"role": "system", "content": "be brief"},
    {
        "role": "user",
        "content": [{"type": "text", "text": "hello"}, {"type": "text", "text": "world"}],
    },
]


def test_render_chat_with_request_template(tokenizer: Any) -> None:
    text = make(tokenizer).render_chat(MESSAGES, chat_template=TEMPLATE)
    assert text == "<system>be brief\n<user>hello\nworld\n"
    with_prompt = make(tokenizer).render_chat(
        MESSAGES, chat_template=TEMPLATE, add_generation_prompt=True
    )
    assert with_prompt.endswith("<assistant>")


def test_render_chat_server_template_and_kwargs(tokenizer: Any) -> None:
    template = "{{ greeting }}{% for m in messages %} {{ m['content'] }}{% endfor %}"
    proc = make(tokenizer, chat_template=template)
    text = proc.render_chat(MESSAGES[:1], chat_template_kwargs={"greeting": "hi"})
    assert text == "hi be brief"
    # The request's template beats the server's.
    assert proc.render_chat(MESSAGES[:1], chat_template=TEMPLATE) == "<system>be brief\n"


def test_from_chat_tokenizes_one_prompt_without_specials(tokenizer: Any) -> None:
    proc = make(tokenizer, max_model_len=64, default_prompt="query: ")
    seq = proc.from_chat(MESSAGES, chat_template=TEMPLATE)
    rendered = "<system>be brief\n<user>hello\nworld\n"
    assert list(seq.token_ids) == ids_of(tokenizer, rendered, special=False)  # no default prompt
    seq = proc.from_chat(MESSAGES, chat_template=TEMPLATE, add_special_tokens=True)
    assert list(seq.token_ids) == ids_of(tokenizer, rendered)


def test_from_chat_length_checks(tokenizer: Any) -> None:
    proc = make(tokenizer)
    long_messages = [{"role": "user", "content": LONG}]
    with pytest.raises(InvalidRequest, match="maximum context length"):
        proc.from_chat(long_messages, chat_template=TEMPLATE)
    seq = proc.from_chat(long_messages, chat_template=TEMPLATE, truncate_prompt_tokens=6)
    assert len(seq) == 6


def test_chat_without_any_template(tokenizer: Any) -> None:
    assert not getattr(tokenizer, "chat_template", None)
    with pytest.raises(InvalidRequest, match="no chat template") as info:
        make(tokenizer).from_chat(MESSAGES)
    assert info.value.param == "messages"


def test_broken_template_is_a_400(tokenizer: Any) -> None:
    with pytest.raises(InvalidRequest, match="could not render the chat template"):
        make(tokenizer).render_chat(MESSAGES, chat_template="{% for %}")
    with pytest.raises(InvalidRequest, match="could not render"):
        make(tokenizer).render_chat(MESSAGES, chat_template="{{ raise_exception('nope') }}")


def test_message_text() -> None:
    assert message_text(None) == ""
    assert message_text("plain") == "plain"
    assert message_text([{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]) == "a\nb"
    with pytest.raises(InvalidRequest, match="image_url") as info:
        message_text([{"type": "image_url", "image_url": {"url": "x"}}])
    assert info.value.param == "messages"


# -- tokenize / detokenize ---------------------------------------------------------


def test_tokenize_never_truncates(tokenizer: Any) -> None:
    proc = make(tokenizer, auto_truncate=True)
    assert proc.tokenize(LONG) == ids_of(tokenizer, LONG)
    assert len(proc.tokenize(LONG)) > MAX_LEN
    assert proc.tokenize("hello", add_special_tokens=False) == ids_of(tokenizer, "hello", False)


def test_token_strings(tokenizer: Any) -> None:
    ids = ids_of(tokenizer, "hello world")
    assert make(tokenizer).token_strings(ids) == ["[CLS]", "hello", "world", "[SEP]"]


def test_detokenize(tokenizer: Any) -> None:
    ids = ids_of(tokenizer, "hello world", special=False)
    assert make(tokenizer).detokenize(ids) == "hello world"
    assert make(tokenizer).detokenize([]) == ""


@pytest.mark.parametrize("bad", [-1, 343, 99_999])
def test_detokenize_range_check(tokenizer: Any, bad: int) -> None:
    assert len(tokenizer) == 343
    with pytest.raises(InvalidRequest) as info:
        make(tokenizer).detokenize([5, bad])
    assert info.value.param == "tokens"
    assert re.search(rf"token id {bad} is out of the vocabulary", info.value.message)


# -- text pairs (cross-encoders) --------------------------------------------------------


def test_pairs_are_one_sequence_with_token_types(tokenizer: Any, cls_sep) -> None:
    proc = make(tokenizer, uses_token_type_ids=True, max_model_len=64)
    seqs = proc.from_pairs(["what is it", "a"], ["the cat", "b c"])
    for seq, (a, b) in zip(seqs, [("what is it", "the cat"), ("a", "b c")], strict=True):
        enc = tokenizer(a, b)
        assert list(seq.token_ids) == enc["input_ids"]
        assert seq.token_type_ids is not None
        assert list(seq.token_type_ids) == enc["token_type_ids"]
        assert list(seq.token_ids).count(cls_sep[1]) == 2
        assert seq.prompt_len == 0


def test_pairs_without_token_types(tokenizer: Any) -> None:
    (seq,) = make(tokenizer, max_model_len=64).from_pairs(["a"], ["b"])
    assert seq.token_type_ids is None


def test_pair_truncation_is_longest_first(tokenizer: Any) -> None:
    proc = make(tokenizer, uses_token_type_ids=True, max_model_len=64)
    (seq,) = proc.from_pairs(["short query"], [LONG], truncate_prompt_tokens=12)
    enc = tokenizer("short query", LONG, truncation="longest_first", max_length=12)
    assert list(seq.token_ids) == enc["input_ids"]
    assert len(seq) == 12
    assert seq.token_type_ids is not None
    assert list(seq.token_type_ids) == enc["token_type_ids"]


def test_pair_truncation_below_special_tokens_is_400(tokenizer: Any) -> None:
    proc = make(tokenizer, max_model_len=64)
    with pytest.raises(InvalidRequest, match="special tokens"):
        proc.from_pairs(["a"], ["b"], truncate_prompt_tokens=2)
    (seq,) = proc.from_pairs(["a b"], ["c d"], truncate_prompt_tokens=3)
    assert len(seq) == 3  # just the specials


def test_over_length_pair_names_score(tokenizer: Any) -> None:
    proc = make(tokenizer)
    with pytest.raises(InvalidRequest) as info:
        proc.from_pairs(["a"], [LONG])
    n = len(tokenizer("a", LONG)["input_ids"])
    assert info.value.message == context_error(MAX_LEN, n, "score").message


def test_pairs_of_unequal_lengths_are_a_bug(tokenizer: Any) -> None:
    with pytest.raises(ValueError):
        make(tokenizer).from_pairs(["a", "b"], ["c"])
    assert make(tokenizer).from_pairs([], []) == []
