"""Late-interaction (ColBERT) models: per-token vectors and MaxSim (docs/colbert.md).

A tiny random BERT + projection is saved in both checkpoint layouts (colbert-ir's
``HF_ColBERT`` and PyLate's sentence-transformers folder) and served. Its per-token
vectors on /pooling and /v1/embeddings equal a reference computed here with
transformers + torch from the same weights (marker after [CLS], queries padded with
[MASK] that the encoder does not attend to, per-token L2 normalization; float32,
1e-4), and /score and /rerank equal MaxSim computed here from those reference vectors
(document punctuation left out). sentence-transformers' MultiVectorEncoder, which
reads both layouts, gives the same query vectors and scores.
"""

from __future__ import annotations

import string
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests

from tests.conftest import make_context, serve_in_thread

QUERIES = ["what is the capital of france?", "cats"]
DOCS = [
    "Paris is the capital of France.",
    "the cat sits on the mat, and the dog sleeps",
    "a",
    # longer than the tiny layout's document length (24): truncated, [SEP] kept
    " ".join(["the quick brown fox jumps over the lazy dog"] * 4),
]
QUERY_LENGTH, DOC_LENGTH = 12, 24
MARKERS = {"colbert-ir": ("[unused0]", "[unused1]"), "pylate": ("[Q] ", "[D] ")}


class Reference:
    """colbert-ai / PyLate encoding from the folder's weights, written out here."""

    def __init__(self, path: Path, layout: str, *, attend: bool = False) -> None:
        import torch
        from safetensors.torch import load_file
        from transformers import AutoTokenizer, BertModel

        self.tok = AutoTokenizer.from_pretrained(path)
        model, loading = BertModel.from_pretrained(path, output_loading_info=True)
        assert not loading["missing_keys"], loading
        self.model = model.float().eval()
        weights = (
            path / "model.safetensors"
            if layout == "colbert-ir"
            else path / "1_Dense" / "model.safetensors"
        )
        self.linear = load_file(str(weights))["linear.weight"].float()
        query, doc = MARKERS[layout]
        self.markers = {
            True: self.tok.convert_tokens_to_ids(query),
            False: self.tok.convert_tokens_to_ids(doc),
        }
        self.skip = {self.tok.convert_tokens_to_ids(p) for p in string.punctuation}
        self.torch = torch
        self.attend = attend

    def ids(self, text: str, *, query: bool) -> tuple[list[int], list[int]]:
        length = QUERY_LENGTH if query else DOC_LENGTH
        # one place is kept for the marker, inserted after [CLS] (PyLate's way; colbert-ai
        # tokenizes ". " + text and overwrites the "." — the same ids)
        ids = self.tok(text, truncation=True, max_length=length - 1)["input_ids"]
        ids = [*ids[:1], self.markers[query], *ids[1:]]
        mask = [1] * len(ids)
        if query:
            pad = length - len(ids)
            ids, mask = ids + [self.tok.mask_token_id] * pad, mask + [int(self.attend)] * pad
        return ids, mask

    def vectors(self, text: str, *, query: bool) -> np.ndarray:
        torch = self.torch
        ids, mask = self.ids(text, query=query)
        with torch.no_grad():
            hidden = self.model(
                input_ids=torch.tensor([ids]),
                attention_mask=torch.tensor([mask]),
                token_type_ids=torch.zeros(1, len(ids), dtype=torch.long),
            ).last_hidden_state[0]
            out = torch.nn.functional.normalize(hidden @ self.linear.T, dim=-1)
        return out.numpy()

    def maxsim(self, query: str, doc: str) -> float:
        q = self.vectors(query, query=True)
        d = self.vectors(doc, query=False)
        ids, _ = self.ids(doc, query=False)
        d = d[[i not in self.skip for i in ids]]
        return float((q @ d.T).max(axis=1).sum())


@pytest.fixture(scope="module", params=["colbert-ir", "pylate"])
def colbert(
    request: pytest.FixtureRequest, tiny: Callable[..., Path]
) -> Iterator[tuple[str, Path, Reference]]:
    path = tiny("colbert", layout=request.param)
    # --auto-truncate: the server accepts the layout's cut of the long document (DOCS[-1])
    # as colbert-ai and PyLate make it; without it that is a 400 (the test below).
    ctx = make_context(path, dtype="float32", backend="auto", auto_truncate=True)
    with serve_in_thread(ctx) as url:
        yield url, path, Reference(path, request.param)


def test_a_document_past_the_layout_length_is_cut_only_when_asked(
    tiny: Callable[..., Path],
) -> None:
    path = tiny("colbert", layout="colbert-ir")
    ref = Reference(path, "colbert-ir")
    with serve_in_thread(make_context(path, dtype="float32")) as url:
        resp = requests.post(url + "/pooling", json={"input": DOCS[-1]}, timeout=60)
        assert resp.status_code == 400 and "document length, 24" in resp.text, resp.text
        resp = requests.post(
            url + "/score", json={"text_1": QUERIES[0], "text_2": DOCS[-1]}, timeout=60
        )
        assert resp.status_code == 400 and "truncate_prompt_tokens" in resp.text, resp.text
        resp = requests.post(
            url + "/pooling", json={"input": DOCS[-1], "truncate_prompt_tokens": -1}, timeout=60
        )
        np.testing.assert_allclose(
            _rows(resp, "data")[0], ref.vectors(DOCS[-1], query=False), atol=1e-4
        )


def _rows(resp: requests.Response, key: str) -> list[np.ndarray]:
    assert resp.status_code == 200, resp.text
    return [np.array(d[key], dtype=np.float32) for d in resp.json()["data"]]


def test_token_vectors_equal_the_reference(colbert: tuple[str, Path, Reference]) -> None:
    url, _, ref = colbert
    docs = requests.post(url + "/pooling", json={"input": DOCS, "task": "token_embed"}, timeout=60)
    body = docs.json()
    got = _rows(docs, "data")
    assert len(got[-1]) == DOC_LENGTH  # truncated to the layout's document length
    for text, rows in zip(DOCS, got, strict=True):
        np.testing.assert_allclose(rows, ref.vectors(text, query=False), atol=1e-4)
        np.testing.assert_allclose(np.linalg.norm(rows, axis=1), 1.0, atol=1e-5)
    assert body["usage"]["prompt_tokens"] == sum(len(r) for r in got)
    queries = requests.post(
        url + "/pooling", json={"input": QUERIES, "input_type": "query"}, timeout=60
    )
    for text, rows in zip(QUERIES, _rows(queries, "data"), strict=True):
        assert rows.shape == (QUERY_LENGTH, 16)  # [MASK]-augmented to the query length
        np.testing.assert_allclose(rows, ref.vectors(text, query=True), atol=1e-4)
    # /v1/embeddings answers with the same matrices, as vLLM does for token_embed models
    emb = requests.post(url + "/v1/embeddings", json={"input": DOCS[:2]}, timeout=60)
    for a, b in zip(_rows(emb, "embedding"), got[:2], strict=True):
        np.testing.assert_allclose(a, b, atol=1e-6)
    raw = requests.post(url + "/pooling", json={"input": DOCS[0], "normalize": False}, timeout=60)
    assert not np.allclose(np.linalg.norm(_rows(raw, "data")[0], axis=1), 1.0)


def test_score_and_rerank_are_maxsim(colbert: tuple[str, Path, Reference]) -> None:
    url, _, ref = colbert
    want = np.array([ref.maxsim(QUERIES[0], d) for d in DOCS])
    resp = requests.post(url + "/score", json={"text_1": QUERIES[0], "text_2": DOCS}, timeout=60)
    assert resp.status_code == 200, resp.text
    body = resp.json()
    np.testing.assert_allclose([d["score"] for d in body["data"]], want, atol=1e-4)
    q_len = QUERY_LENGTH
    doc_lens = [len(ref.ids(d, query=False)[0]) for d in DOCS]
    assert body["usage"]["prompt_tokens"] == sum(q_len + n for n in doc_lens)
    pairs = requests.post(url + "/score", json={"text_1": QUERIES, "text_2": DOCS[:2]}, timeout=60)
    np.testing.assert_allclose(
        [d["score"] for d in pairs.json()["data"]],
        [ref.maxsim(q, d) for q, d in zip(QUERIES, DOCS[:2], strict=True)],
        atol=1e-4,
    )
    rerank = requests.post(
        url + "/rerank", json={"query": QUERIES[0], "documents": DOCS, "top_n": 3}, timeout=60
    )
    assert rerank.status_code == 200, rerank.text
    results = rerank.json()["results"]
    assert [r["index"] for r in results] == list(np.argsort(-want, kind="stable")[:3])
    np.testing.assert_allclose(
        [r["relevance_score"] for r in results], np.sort(want)[::-1][:3], atol=1e-4
    )


def _multi_vector_encoder(path: Path) -> Any:
    from sentence_transformers.multi_vector_encoder import MultiVectorEncoder

    return MultiVectorEncoder(str(path), device="cpu")


def test_sentence_transformers_multi_vector_encoder_agrees(
    colbert: tuple[str, Path, Reference],
) -> None:
    url, path, _ = colbert
    model = _multi_vector_encoder(path)
    want_q = [
        np.asarray(v, dtype=np.float32) for v in model.encode_query(QUERIES, convert_to_numpy=True)
    ]
    got_q = _rows(
        requests.post(url + "/pooling", json={"input": QUERIES, "input_type": "query"}, timeout=60),
        "data",
    )
    for a, b in zip(got_q, want_q, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-4)
    docs = model.encode_document(DOCS)
    queries = model.encode_query(QUERIES[:1])
    want = np.asarray(model.similarity(queries, docs)[0], dtype=np.float32)
    resp = requests.post(url + "/score", json={"text_1": QUERIES[0], "text_2": DOCS}, timeout=60)
    np.testing.assert_allclose([d["score"] for d in resp.json()["data"]], want, atol=1e-4)


def test_a_layout_that_attends_to_the_augmentation(tiny: Callable[..., Path]) -> None:
    path = tiny("colbert", layout="colbert-ir", attend_expansion=True)
    ref = Reference(path, "colbert-ir", attend=True)
    with serve_in_thread(make_context(path, dtype="float32")) as url:
        resp = requests.post(
            url + "/pooling", json={"input": QUERIES, "input_type": "query"}, timeout=60
        )
        for text, rows in zip(QUERIES, _rows(resp, "data"), strict=True):
            np.testing.assert_allclose(rows, ref.vectors(text, query=True), atol=1e-4)
        # the [MASK] rows differ from the unattended ones: the switch reached the encoder
        plain = Reference(path, "colbert-ir").vectors(QUERIES[1], query=True)
        assert not np.allclose(_rows(resp, "data")[1], plain, atol=1e-3)


def test_the_offline_api_scores_and_encodes_alike(tiny: Callable[..., Path]) -> None:
    from poolserve.llm import LLM

    path = tiny("colbert", layout="colbert-ir")
    ref = Reference(path, "colbert-ir")
    with LLM(model=str(path), dtype="float32") as llm:
        scored = llm.score(QUERIES[0], DOCS[:2], use_tqdm=False)
        want = [ref.maxsim(QUERIES[0], d) for d in DOCS[:2]]
        np.testing.assert_allclose([s.outputs.score for s in scored], want, atol=1e-4)
        out = llm.encode(DOCS[:1], pooling_task="token_embed", use_tqdm=False)
        np.testing.assert_allclose(
            out[0].outputs.data.numpy(), ref.vectors(DOCS[0], query=False), atol=1e-4
        )
