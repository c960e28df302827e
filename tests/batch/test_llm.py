"""``poolserve.LLM`` (vLLM's offline API): outputs equal the server's for the same inputs,
in vLLM's shapes, with vLLM's prompt forms and errors."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from poolserve import LLM, PoolingParams
from poolserve.outputs import (
    ClassificationRequestOutput,
    EmbeddingRequestOutput,
    PoolingRequestOutput,
    ScoringRequestOutput,
)
from tests.conftest import make_context, serve_in_thread
from tests.contract.util import ok, post, scores, vectors

TEXTS = ["A woman is playing the violin.", "Dogs and cats are popular pets.", "hi"]
IDS = [2, 50, 60, 70, 3]


@pytest.fixture(scope="module")
def st_dir(tiny: Callable[..., Path]) -> Path:
    return tiny("st")


@pytest.fixture(scope="module")
def st_llm(st_dir: Path) -> Iterator[LLM]:
    with LLM(str(st_dir), dtype="float32", gpu_memory_utilization=0.5) as llm:
        yield llm


@pytest.fixture(scope="module")
def st_url(st_dir: Path) -> Iterator[str]:
    with serve_in_thread(make_context(st_dir)) as url:
        yield url


def test_embed_equals_the_server(st_llm: LLM, st_url: str) -> None:
    outs = st_llm.embed(TEXTS, use_tqdm=False)
    assert all(isinstance(o, EmbeddingRequestOutput) and o.finished for o in outs)
    got = np.array([o.outputs.embedding for o in outs], dtype=np.float32)
    want = vectors(ok(post(st_url, "/v1/embeddings", {"input": TEXTS})))
    np.testing.assert_allclose(got, want, atol=1e-6)
    tok = st_llm.get_tokenizer()
    assert [o.prompt_token_ids for o in outs] == [tok(t)["input_ids"] for t in TEXTS]
    # request ids count up per instance, as vLLM's do
    ids = [int(o.request_id) for o in outs]
    assert ids == list(range(ids[0], ids[0] + len(TEXTS)))


def test_prompt_forms(st_llm: LLM, st_url: str) -> None:
    """str, {"prompt"}, {"prompt_token_ids"} mixed in one call; one list of ints is one prompt."""
    mixed = st_llm.embed(
        [TEXTS[0], {"prompt_token_ids": IDS}, {"prompt": TEXTS[1]}], use_tqdm=False
    )
    want_text = vectors(ok(post(st_url, "/v1/embeddings", {"input": [TEXTS[0], TEXTS[1]]})))
    want_ids = vectors(ok(post(st_url, "/v1/embeddings", {"input": [IDS]})))
    got = np.array([o.outputs.embedding for o in mixed], dtype=np.float32)
    np.testing.assert_allclose(got, [want_text[0], want_ids[0], want_text[1]], atol=1e-6)
    assert mixed[1].prompt_token_ids == IDS
    single = st_llm.embed(IDS, use_tqdm=False)
    assert len(single) == 1 and single[0].prompt_token_ids == IDS
    assert len(st_llm.embed(TEXTS[0], use_tqdm=False)) == 1


def test_params_truncation_and_many_chunks(st_llm: LLM, st_url: str) -> None:
    long_ids = list(range(10, 80))
    params = PoolingParams(normalize=False)
    outs = st_llm.embed(
        [{"prompt_token_ids": long_ids}], truncate_prompt_tokens=6, pooling_params=params
    )
    want = ok(
        post(
            st_url,
            "/v1/embeddings",
            {"input": [long_ids], "truncate_prompt_tokens": 6, "normalize": False},
        )
    )
    np.testing.assert_allclose(outs[0].outputs.embedding, vectors(want)[0], atol=1e-6)
    assert outs[0].prompt_token_ids == long_ids[-6:]
    # vLLM >= 0.11 spelling of truncation
    again = st_llm.embed(
        [{"prompt_token_ids": long_ids}],
        tokenization_kwargs={"truncate_prompt_tokens": 6},
        pooling_params={"normalize": False},
        use_tqdm=False,
    )
    assert again[0].outputs.embedding == outs[0].outputs.embedding
    # Newest vLLM's truncation_side (token ids: the first k with "right").
    right = st_llm.embed(
        [{"prompt_token_ids": long_ids}],
        tokenization_kwargs={"truncate_prompt_tokens": 6, "truncation_side": "right"},
        use_tqdm=False,
    )
    assert right[0].prompt_token_ids == long_ids[:6]
    # Over one chunk of prompts, with a progress bar callable; order kept.
    many = [f"text number {i}" for i in range(700)]
    bars: list[Bar] = []

    def bar(**kwargs: Any) -> Bar:
        bars.append(Bar(kwargs["total"]))
        return bars[-1]

    got = np.array([o.outputs.embedding for o in st_llm.embed(many, use_tqdm=bar)])
    want_many = vectors(ok(post(st_url, "/v1/embeddings", {"input": many})))
    np.testing.assert_allclose(got, want_many, atol=1e-6)
    assert bars and (bars[0].total, bars[0].n, bars[0].closed) == (700, 700, True)
    # Per-prompt params: one each.
    per = st_llm.embed(
        TEXTS[:2],
        pooling_params=[PoolingParams(normalize=False), PoolingParams()],
        use_tqdm=False,
    )
    raw = vectors(ok(post(st_url, "/v1/embeddings", {"input": TEXTS[:1], "normalize": False})))
    np.testing.assert_allclose(per[0].outputs.embedding, raw[0], atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(per[1].outputs.embedding), 1.0, atol=1e-5)


class Bar:
    """A progress bar that counts (what use_tqdm=callable gets)."""

    def __init__(self, total: int) -> None:
        self.total, self.n, self.closed = total, 0, False

    def update(self, k: int) -> None:
        self.n += k

    def close(self) -> None:
        self.closed = True


def test_encode_and_score_equal_the_server(st_llm: LLM, st_url: str) -> None:
    enc = st_llm.encode(TEXTS, pooling_task="embed", use_tqdm=False)
    assert all(isinstance(o, PoolingRequestOutput) for o in enc)
    want = vectors(ok(post(st_url, "/pooling", {"input": TEXTS})), "data")
    np.testing.assert_allclose(np.stack([o.outputs.data.numpy() for o in enc]), want, atol=1e-6)
    sc = st_llm.score(TEXTS[0], TEXTS, use_tqdm=False)
    assert all(isinstance(o, ScoringRequestOutput) for o in sc)
    want_scores = scores(ok(post(st_url, "/score", {"text_1": TEXTS[0], "text_2": TEXTS})))
    np.testing.assert_allclose([o.outputs.score for o in sc], want_scores, atol=1e-6)


def test_errors_are_value_errors(st_llm: LLM) -> None:
    with pytest.raises(ValueError, match="at least one prompt"):
        st_llm.embed([])
    with pytest.raises(ValueError, match="Classification API"):
        st_llm.classify("x")
    with pytest.raises(ValueError, match=r"maximum context length|longer than"):
        st_llm.embed([{"prompt_token_ids": list(range(10, 200))}], use_tqdm=False)
    with pytest.raises(ValueError, match="prompt 1"):
        st_llm.embed(["ok", 3.5], use_tqdm=False)
    with pytest.raises(ValueError, match="LoRA"):
        st_llm.embed("x", lora_request=object())
    with pytest.raises(TypeError):
        LLM("anything", no_such_flag=1)
    # The engine keeps serving after errors.
    assert len(st_llm.embed("still fine", use_tqdm=False)[0].outputs.embedding) > 0


def test_cross_encoder_classify_score_equal_the_server(tiny: Callable[..., Path]) -> None:
    cls_dir = tiny("cross", "bert", num_labels=2)
    cross_dir = tiny("cross", "bert")
    with LLM(str(cls_dir), dtype="float32") as llm, serve_in_thread(make_context(cls_dir)) as url:
        outs = llm.classify(TEXTS, use_tqdm=False)
        assert all(isinstance(o, ClassificationRequestOutput) for o in outs)
        body = ok(post(url, "/classify", {"input": TEXTS}))
        want = np.array([d["probs"] for d in body["data"]])
        np.testing.assert_allclose([o.outputs.probs for o in outs], want, atol=1e-6)
        raw = llm.classify(TEXTS, pooling_params=PoolingParams(activation=False), use_tqdm=False)
        body = ok(post(url, "/classify", {"input": TEXTS, "activation": False}))
        np.testing.assert_allclose(
            [o.outputs.probs for o in raw], [d["probs"] for d in body["data"]], atol=1e-6
        )
    with (
        LLM(str(cross_dir), dtype="float32") as llm,
        serve_in_thread(make_context(cross_dir)) as url,
    ):
        sc = llm.score("a query", TEXTS, use_tqdm=False)
        want_scores = scores(ok(post(url, "/score", {"text_1": "a query", "text_2": TEXTS})))
        np.testing.assert_allclose([o.outputs.score for o in sc], want_scores, atol=1e-6)
        pair_ids = llm.get_tokenizer()("a query", TEXTS[0])["input_ids"]
        assert sc[0].prompt_token_ids == pair_ids
        nn = llm.score(TEXTS, TEXTS[::-1], use_tqdm=False)
        body = ok(post(url, "/score", {"text_1": TEXTS, "text_2": TEXTS[::-1]}))
        np.testing.assert_allclose([o.outputs.score for o in nn], scores(body), atol=1e-6)


def test_reward_equals_pooling(tiny: Callable[..., Path]) -> None:
    path = tiny("decoder", "qwen2", "seq-cls", 2)
    with (
        LLM(str(path), task="reward", dtype="float32") as llm,
        serve_in_thread(make_context(path, task="reward")) as url,
    ):
        outs = llm.reward(TEXTS, use_tqdm=False)
        body = ok(post(url, "/pooling", {"input": TEXTS}))
        for o, item in zip(outs, body["data"], strict=True):
            assert o.outputs.data.shape == (len(o.prompt_token_ids), 2)
            np.testing.assert_allclose(o.outputs.data.numpy(), item["data"], atol=1e-6)
