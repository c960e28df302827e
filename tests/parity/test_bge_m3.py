"""bge-m3: dense embeddings and lexical (sparse) weights equal a reference computed
here with transformers + torch on the same weights (float32, 1e-4, same token ids).

A tiny random XLM-R saved as bge-m3 ships (sentence-transformers files with CLS
pooling and Normalize, ``sparse_linear.pt``, ``colbert_linear.pt``) is served:

- /v1/embeddings, /pooling (no task) and TEI /embed: the normalized CLS vector;
- /pooling ``task: "token_classify"``: vLLM 0.33's BgeM3EmbeddingModel output, one
  relu(sparse_linear(h)) per token, BOS and EOS rows dropped;
- TEI /embed_sparse: FlagEmbedding's lexical weights (CLS, EOS, PAD, UNK ids and zeros
  dropped, the max per token id) as ``{"index", "value"}`` pairs;
- /pooling ``task: "token_embed"``: the colbert vectors, normalize(colbert_linear(h))
  of every token but the BOS (EOS kept), as vLLM 0.33 and FlagEmbedding; TEI
  /embed_all stays the raw hidden states; /score stays cosine of the dense vectors;
- vLLM's launch line (--hf-overrides architectures BgeM3EmbeddingModel, --pooler-config
  task token_classify) serves the same; with task token_embed, /pooling's default and
  /v1/embeddings are the colbert vectors and /score, /rerank their MaxSim (summed over
  query vectors, not divided: vLLM's score).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests
import torch

from poolserve.errors import ModelLoadError
from tests.conftest import make_context, serve_in_thread

# Repeated words (the max per id), unknown characters (UNK ids), a one-letter input.
TEXTS = ["the cat sits on the mat", "dogs dogs dogs ☃ 東京", "a"]
OVERRIDE = {"architectures": ["BgeM3EmbeddingModel"]}


class Reference:
    """The tiny bge-m3 run by transformers, one input at a time (no padding)."""

    def __init__(self, path: Path) -> None:
        from transformers import AutoModel, AutoTokenizer

        self.tok = AutoTokenizer.from_pretrained(str(path))
        self.model = AutoModel.from_pretrained(str(path), dtype=torch.float32).eval()
        self.sparse = torch.nn.Linear(self.model.config.hidden_size, 1)
        self.sparse.load_state_dict(torch.load(path / "sparse_linear.pt", weights_only=True))
        colbert = torch.load(path / "colbert_linear.pt", weights_only=True)
        self.colbert = torch.nn.Linear(*reversed(colbert["weight"].shape))
        self.colbert.load_state_dict(colbert)

    @torch.inference_mode()
    def run(self, text: str) -> tuple[list[int], np.ndarray, np.ndarray]:
        """(token ids, normalized CLS vector, relu(sparse_linear) per token)."""
        ids = self.tok(text)["input_ids"]
        hidden = self.model(input_ids=torch.tensor([ids])).last_hidden_state[0]
        dense = torch.nn.functional.normalize(hidden[0], dim=-1)
        weights = torch.relu(self.sparse(hidden)).squeeze(-1)
        return ids, dense.numpy(), weights.numpy()

    @torch.inference_mode()
    def hidden(self, text: str) -> np.ndarray:
        """The last hidden state of every token, raw."""
        ids = self.tok(text)["input_ids"]
        return self.model(input_ids=torch.tensor([ids])).last_hidden_state[0].numpy()

    @torch.inference_mode()
    def colbert_vecs(self, text: str, normalize: bool = True) -> np.ndarray:
        """FlagEmbedding's colbert vectors: colbert_linear over every token but the first
        (the BOS / CLS), L2-normalized per token."""
        vecs = self.colbert(torch.from_numpy(self.hidden(text))[1:])
        return (torch.nn.functional.normalize(vecs, dim=-1) if normalize else vecs).numpy()

    def maxsim(self, query: str, doc: str) -> float:
        """Sum over the query's vectors of the best dot product with a document vector."""
        sims = self.colbert_vecs(query) @ self.colbert_vecs(doc).T
        return float(sims.max(axis=1).sum())

    def lexical(self, text: str) -> dict[int, float]:
        """FlagEmbedding's lexical weights, computed here: special ids and zeros out,
        the largest weight per id."""
        ids, _, weights = self.run(text)
        t = self.tok
        unused = {t.cls_token_id, t.eos_token_id, t.pad_token_id, t.unk_token_id}
        out: dict[int, float] = {}
        for i, w in zip(ids, weights.tolist(), strict=True):
            if i not in unused and w > 0 and w > out.get(i, 0.0):
                out[i] = w
        return out


@pytest.fixture(scope="module")
def m3_dir(tiny: Callable[..., Path]) -> Path:
    return tiny("bge-m3")


@pytest.fixture(scope="module")
def ref(m3_dir: Path) -> Reference:
    return Reference(m3_dir)


@pytest.fixture(scope="module")
def m3(m3_dir: Path) -> Iterator[str]:
    """Served from the files alone (auto backend: torch, the lexical head needs it)."""
    with serve_in_thread(make_context(m3_dir, backend="auto")) as url:
        yield url


def _post(url: str, path: str, body: dict[str, Any]) -> Any:
    resp = requests.post(url + path, json=body, timeout=60)
    assert resp.status_code == 200, resp.text
    return resp.json()


def test_dense_is_the_normalized_cls_vector(m3: str, ref: Reference) -> None:
    want = np.stack([ref.run(t)[1] for t in TEXTS])
    got = [d["embedding"] for d in _post(m3, "/v1/embeddings", {"input": TEXTS})["data"]]
    np.testing.assert_allclose(got, want, atol=1e-4)
    pooled = _post(m3, "/pooling", {"input": TEXTS})["data"]
    np.testing.assert_allclose([d["data"] for d in pooled], want, atol=1e-4)
    np.testing.assert_allclose(_post(m3, "/embed", {"inputs": TEXTS}), want, atol=1e-4)


def test_token_classify_is_vllms_per_token_weights(m3: str, ref: Reference) -> None:
    body = _post(m3, "/pooling", {"input": TEXTS, "task": "token_classify"})
    for text, item in zip(TEXTS, body["data"], strict=True):
        ids, _, weights = ref.run(text)
        assert ids[0] == ref.tok.bos_token_id and ids[-1] == ref.tok.eos_token_id
        np.testing.assert_allclose(item["data"], weights[1:-1], atol=1e-4)
    assert body["usage"]["prompt_tokens"] == sum(len(ref.run(t)[0]) for t in TEXTS)
    raw = _post(
        m3, "/pooling", {"input": TEXTS[0], "task": "token_classify", "use_activation": False}
    )
    assert min(raw["data"][0]["data"]) < 0  # the relu is the switch's


def test_embed_sparse_is_flagembeddings_lexical_weights(m3: str, ref: Reference) -> None:
    body = _post(m3, "/embed_sparse", {"inputs": TEXTS})
    for text, pairs in zip(TEXTS, body, strict=True):
        want = ref.lexical(text)
        assert [p["index"] for p in pairs] == sorted(want)
        np.testing.assert_allclose(
            [p["value"] for p in pairs], [want[i] for i in sorted(want)], atol=1e-4
        )
    unk = ref.tok.unk_token_id
    assert unk in ref.run(TEXTS[1])[0] and unk not in {p["index"] for p in body[1]}
    info = requests.get(m3 + "/info", timeout=10).json()
    assert info["model_type"] == {"embedding": {"pooling": "cls"}}


def test_vllm_launch_line(m3_dir: Path, ref: Reference) -> None:
    """--hf-overrides names the architecture; --pooler-config task token_classify makes
    the lexical weights /pooling's default, the dense vector stays on /v1/embeddings."""
    ctx = make_context(
        m3_dir, hf_overrides=OVERRIDE, override_pooler_config={"task": "token_classify"}
    )
    assert ctx.info.lexical is not None and ctx.info.pooling_task == "token_classify"
    with serve_in_thread(ctx) as url:
        got = _post(url, "/pooling", {"input": TEXTS[0]})["data"][0]["data"]
        np.testing.assert_allclose(got, ref.run(TEXTS[0])[2][1:-1], atol=1e-4)
        dense = _post(url, "/v1/embeddings", {"input": TEXTS[0]})["data"][0]["embedding"]
        np.testing.assert_allclose(dense, ref.run(TEXTS[0])[1], atol=1e-4)


def test_the_architecture_needs_its_sparse_head(tiny: Callable[..., Path]) -> None:
    with pytest.raises(ModelLoadError, match=r"sparse_linear\.pt"):
        make_context(tiny("st", "xlm-roberta", pooling="cls"), hf_overrides=OVERRIDE)
    with pytest.raises(ModelLoadError, match="XLM-RoBERTa"):
        make_context(tiny("st"), hf_overrides=OVERRIDE)


def test_token_embed_is_the_colbert_vectors(m3: str, ref: Reference) -> None:
    body = _post(m3, "/pooling", {"input": TEXTS, "task": "token_embed"})
    for text, item in zip(TEXTS, body["data"], strict=True):
        ids = ref.tok(text)["input_ids"]
        assert ids[0] == ref.tok.bos_token_id and ids[-1] == ref.tok.eos_token_id
        assert len(item["data"]) == len(ids) - 1  # BOS out, EOS kept
        np.testing.assert_allclose(item["data"], ref.colbert_vecs(text), atol=1e-4)
    assert body["usage"]["prompt_tokens"] == sum(len(ref.tok(t)["input_ids"]) for t in TEXTS)
    raw = _post(m3, "/pooling", {"input": TEXTS[0], "task": "token_embed", "normalize": False})
    np.testing.assert_allclose(raw["data"][0]["data"], ref.colbert_vecs(TEXTS[0], False), atol=1e-4)
    # TEI's /embed_all stays what TEI gives for an XLM-R: every token's raw hidden state.
    hidden = requests.post(m3 + "/embed_all", json={"inputs": TEXTS[0]}, timeout=60).json()
    np.testing.assert_allclose(hidden[0], ref.hidden(TEXTS[0]), atol=1e-4)
    # Without --pooler-config task token_embed, /score is cosine of the dense vectors.
    score = _post(m3, "/score", {"text_1": TEXTS[0], "text_2": TEXTS[1]})["data"][0]["score"]
    assert score == pytest.approx(float(ref.run(TEXTS[0])[1] @ ref.run(TEXTS[1])[1]), abs=1e-4)


def test_served_as_token_embed_scores_by_maxsim(m3_dir: Path, ref: Reference) -> None:
    """vLLM's launch line for bge-m3's colbert vectors: --pooler-config task
    token_embed. /score and /rerank give MaxSim, not divided by the query's length."""
    ctx = make_context(
        m3_dir, hf_overrides=OVERRIDE, override_pooler_config={"task": "token_embed"}
    )
    assert ctx.info.multi_vectors is not None and ctx.info.pooling_task == "token_embed"
    docs = [*TEXTS, "the mat"]
    with serve_in_thread(ctx) as url:
        got = _post(url, "/pooling", {"input": TEXTS[0]})["data"][0]["data"]
        np.testing.assert_allclose(got, ref.colbert_vecs(TEXTS[0]), atol=1e-4)
        emb = _post(url, "/v1/embeddings", {"input": TEXTS[1]})["data"][0]["embedding"]
        np.testing.assert_allclose(emb, ref.colbert_vecs(TEXTS[1]), atol=1e-4)
        body = _post(url, "/score", {"text_1": TEXTS[0], "text_2": docs})
        want = [ref.maxsim(TEXTS[0], d) for d in docs]
        np.testing.assert_allclose([d["score"] for d in body["data"]], want, atol=1e-4)
        assert max(want) > 1.5  # a sum over query vectors, not their mean
        lens = [len(ref.tok(t)["input_ids"]) for t in docs]
        assert body["usage"]["prompt_tokens"] == sum(lens) + len(docs) * lens[0]
        pairs = _post(url, "/score", {"text_1": docs[:2], "text_2": docs[2:]})["data"]
        want_nn = [ref.maxsim(docs[0], docs[2]), ref.maxsim(docs[1], docs[3])]
        np.testing.assert_allclose([d["score"] for d in pairs], want_nn, atol=1e-4)
        ranked = _post(url, "/rerank", {"query": TEXTS[0], "documents": docs})["results"]
        assert [r["index"] for r in ranked] == sorted(range(len(docs)), key=lambda i: -want[i])
        np.testing.assert_allclose(
            [r["relevance_score"] for r in ranked], sorted(want, reverse=True), atol=1e-4
        )


def test_colbert_vectors_need_colbert_linear(tiny: Callable[..., Path]) -> None:
    """A bge-m3 folder without colbert_linear.pt: token_embed is a 400 naming the file;
    serving that task (or vLLM's architecture, which loads both heads) does not load."""
    bare = tiny("bge-m3", colbert=False)
    with pytest.raises(ModelLoadError, match=r"colbert_linear\.pt"):
        make_context(bare, override_pooler_config={"task": "token_embed"})
    with pytest.raises(ModelLoadError, match=r"colbert_linear\.pt"):
        make_context(bare, hf_overrides=OVERRIDE)
    with serve_in_thread(make_context(bare, backend="auto")) as url:
        resp = requests.post(
            url + "/pooling", json={"input": "a", "task": "token_embed"}, timeout=60
        )
        assert resp.status_code == 400 and "colbert_linear.pt" in resp.text, resp.text
        assert _post(url, "/pooling", {"input": "a", "task": "token_classify"})["data"]


def test_one_forward_gives_dense_lexical_and_colbert_rows(m3_dir: Path, ref: Reference) -> None:
    """The torch backend answers a batch mixing the three outputs in one forward."""
    from poolserve.backends.torch.build import build_torch
    from poolserve.config import ModelConfig
    from poolserve.models.base import Batch, TokenSeq
    from poolserve.models.spec import describe

    cfg = ModelConfig(model=str(m3_dir), dtype="float32", backend="torch")
    backend = build_torch(describe(cfg), cfg).backend
    ids = [ref.tok(t)["input_ids"] for t in TEXTS]
    modes = ["", "head", "colbert"]
    seqs = [TokenSeq(i, per_token=m) for i, m in zip(ids, modes, strict=True)]
    out = backend.forward(Batch(seqs))
    np.testing.assert_allclose(out[0], ref.hidden(TEXTS[0])[0], atol=1e-4)  # CLS, raw
    with torch.inference_mode():  # the lexical logits: serving applies the relu
        logits = ref.sparse(torch.from_numpy(ref.hidden(TEXTS[1]))).numpy()
    np.testing.assert_allclose(out[1], logits, atol=1e-4)
    raw = ref.colbert_vecs(TEXTS[2], normalize=False)
    np.testing.assert_allclose(out[2][1:], raw, atol=1e-4)  # serving drops the BOS row
