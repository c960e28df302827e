"""poolserve vs sentence-transformers / transformers on tiny random models of every arch.

Every folder is built at test time (tests/fixtures/tiny_models.py); every poolserve
vector goes through a live HTTP server.
"""

from __future__ import annotations

import contextlib
import json
import random
import shutil
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests
import torch

from poolserve.errors import ModelLoadError
from tests.conftest import BACKENDS, make_context, serve_in_thread
from tests.fixtures.tiny_models import ARCHS, POOLING_MODES, WORDS

ST_MAX = 64  # build_st_folder's default max_seq_length
ENCODER_MAX = 128  # build_encoder's default max_pos / tokenizer model_max_length
EXTRA = ["a", "Hello, World! 123", "zebra xylophone QUIZ #tag @user 3.14"]


def make_texts(tokenizer: Any, n: int, limit: int, seed: int = 7) -> list[str]:
    """``n`` texts of mixed length (one exactly ``limit`` tokens long), all within ``limit``."""
    rng = random.Random(seed)

    def count(text: str) -> int:
        return len(tokenizer(text)["input_ids"])

    texts = list(EXTRA)
    while len(texts) < n:
        words = [rng.choice(WORDS) for _ in range(rng.randint(1, limit))]
        if rng.random() < 0.3:
            words[0] = words[0].capitalize()
        while count(" ".join(words)) > limit:
            words.pop()
        texts.append(" ".join(words))
    # One text exactly at the limit: the widest row of a padded batch.
    words = [rng.choice(WORDS) for _ in range(limit)]
    while count(" ".join(words)) > limit:
        words.pop()
    filler = iter(["a", "!", ",", "."] * limit)
    text = " ".join(words)
    while count(text) < limit:
        candidate = text + next(filler)
        text = candidate if count(candidate) <= limit else text + " a"
    assert count(text) == limit
    texts[n // 2] = text
    return texts


def embed(url: str, texts: list[str], **extra: Any) -> np.ndarray:
    resp = requests.post(f"{url}/v1/embeddings", json={"input": texts, **extra}, timeout=60)
    assert resp.status_code == 200, resp.text
    return np.array([d["embedding"] for d in resp.json()["data"]], dtype=np.float32)


def assert_same(got: np.ndarray, expected: np.ndarray) -> None:
    """cosine >= 0.9999 per row, and elementwise close (un-normalized vectors included)."""
    assert got.shape == expected.shape
    cos = np.sum(got * expected, axis=1) / (
        np.linalg.norm(got, axis=1) * np.linalg.norm(expected, axis=1)
    )
    assert cos.min() >= 0.9999, (cos.argmin(), cos.min())
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)


@pytest.fixture(scope="module")
def served() -> Iterator[Callable[..., str]]:
    """``served(path, **overrides) -> url``: one live server per (path, overrides), reused."""
    urls: dict[str, str] = {}
    servers: list[contextlib.AbstractContextManager[str]] = []

    def get(path: Path, **overrides: Any) -> str:
        key = json.dumps([str(path), overrides], sort_keys=True)
        if key not in urls:
            server = serve_in_thread(make_context(path, **overrides))
            urls[key] = server.__enter__()
            servers.append(server)
        return urls[key]

    try:
        yield get
    finally:  # stop them all at once: each takes a few uvicorn ticks to go
        with ThreadPoolExecutor(max(1, len(servers))) as pool:
            for server in servers:
                pool.submit(server.__exit__, None, None, None)


def st_encode(path: Path, texts: list[str], **kwargs: Any) -> np.ndarray:
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(path), device="cpu")
    return np.asarray(model.encode(texts, convert_to_numpy=True, **kwargs), dtype=np.float32)


def st_tokenizer(path: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(path))


# -- every arch ------------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("arch", ARCHS)
def test_st_folder_matches_sentence_transformers(
    arch: str, backend: str, tiny: Callable[..., Path], served: Callable[..., str]
) -> None:
    """On every installed backend. OpenVINO refuses ModernBERT (its converted graph gives
    NaN) with a clear error, and ``auto`` then runs it on torch; ONNX Runtime runs it."""
    path = tiny("st", arch)
    texts = make_texts(st_tokenizer(path), 16, ST_MAX)
    if arch == "modernbert" and backend == "openvino":
        with pytest.raises(ModelLoadError, match=f"--backend {backend}: .*does not match torch"):
            served(path, backend=backend)
        backend = "auto"
    assert_same(embed(served(path, backend=backend), texts), st_encode(path, texts))


@pytest.mark.parametrize("arch", ARCHS)
def test_bare_encoder_is_mean_pooled_and_normalized(
    arch: str, tiny: Callable[..., Path], served: Callable[..., str]
) -> None:
    from transformers import AutoModel

    path = tiny("encoder", arch)
    tok = st_tokenizer(path)
    texts = make_texts(tok, 16, ENCODER_MAX)
    model = AutoModel.from_pretrained(str(path)).eval()
    enc = tok(texts, padding=True, return_tensors="pt")
    with torch.inference_mode():
        hidden = model(**enc).last_hidden_state
    mask = enc["attention_mask"].unsqueeze(-1).float()
    mean = (hidden * mask).sum(1) / mask.sum(1)
    expected = torch.nn.functional.normalize(mean, dim=-1).numpy()
    assert_same(embed(served(path), texts), expected)


@pytest.mark.parametrize("arch", ARCHS)
def test_padding_does_not_change_vectors(
    arch: str, tiny: Callable[..., Path], served: Callable[..., str]
) -> None:
    """Each text alone equals the same text inside one mixed-length request."""
    path = tiny("st", arch, pooling="weightedmean", normalize=False)
    url = served(path)
    texts = make_texts(st_tokenizer(path), 10, ST_MAX, seed=11)
    batched = embed(url, texts)
    alone = np.concatenate([embed(url, [t]) for t in texts])
    np.testing.assert_allclose(batched, alone, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("arch", ["roberta", "xlm-roberta", "mpnet"])
def test_max_model_len_leaves_room_for_position_offset(
    arch: str, tiny: Callable[..., Path]
) -> None:
    """These archs' positions start after the padding index: 130 rows hold 128 tokens."""
    path = tiny("encoder", arch)
    with pytest.raises(ModelLoadError, match="position embeddings"):
        make_context(path, max_model_len=ENCODER_MAX + 2)


# -- every sentence-transformers pipeline option, on BERT ------------------------------

PROMPTS = {"query": "query: ", "passage": "passage: "}
VARIANTS: dict[str, dict[str, Any]] = {
    **{f"pool-{m}": {"pooling": m, "normalize": False} for m in POOLING_MODES},
    "two-modes-classic": {"pooling": {"pooling_mode": ["cls", "mean"]}, "normalize": False},
    "two-modes-compact": {
        "pooling": {"pooling_mode": ["max", "lasttoken"]},
        "compact_pooling": True,
        "normalize": False,
    },
    "compact-normalized": {"pooling": "mean_sqrt_len_tokens", "compact_pooling": True},
    "dense-1": {"dense": [(16, "tanh")], "normalize": False},
    "dense-2": {"dense": [(24, "gelu"), (12, "sigmoid")], "normalize": False},
    "dense-2-normalized": {"pooling": "cls", "dense": [(20, "relu"), (8, "identity")]},
    "native-format": {"pooling": "max", "dense": [(16, "tanh")], "native_format": True},
    "prompt": {"prompts": PROMPTS, "default_prompt_name": "query", "normalize": False},
    "prompt-excluded": {
        "pooling": {"pooling_mode": "mean", "include_prompt": False},
        "prompts": PROMPTS,
        "default_prompt_name": "query",
        "normalize": False,
    },
    "prompt-excluded-weighted": {
        "pooling": {"pooling_mode": ["cls", "weightedmean"], "include_prompt": False},
        "compact_pooling": True,
        "prompts": PROMPTS,
        "default_prompt_name": "passage",
    },
}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_bert_st_variant_matches(
    variant: str, backend: str, tiny: Callable[..., Path], served: Callable[..., str]
) -> None:
    path = tiny("st", "bert", **VARIANTS[variant])
    tok = st_tokenizer(path)
    # A default prompt counts towards max_seq_length: leave it room.
    texts = make_texts(tok, 12, ST_MAX - 4)
    url = served(path, backend=backend)
    got = embed(url, texts)
    expected = st_encode(path, texts)
    assert_same(got, expected)
    if not VARIANTS[variant].get("normalize", True):
        assert not np.allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-3)
    # Padding-free: the batch equals one text at a time.
    alone = np.concatenate([embed(url, [t]) for t in texts[:4]])
    np.testing.assert_allclose(got[:4], alone, rtol=1e-4, atol=1e-5)


def test_compact_pooling_modes_keep_their_listed_order(
    tiny: Callable[..., Path], served: Callable[..., str], tmp_path: Path
) -> None:
    """ST 6 concatenates compact ``pooling_mode`` lists in the order listed."""
    path = tmp_path / "reordered"
    shutil.copytree(tiny("st", "bert", pooling="mean", normalize=False), path)
    config_path = path / "1_Pooling" / "config.json"
    config_path.write_text(
        json.dumps({"embedding_dimension": 32, "pooling_mode": ["mean", "cls"]}),
        encoding="utf-8",
    )
    texts = make_texts(st_tokenizer(path), 6, ST_MAX)
    got = embed(served(path), texts)
    assert got.shape == (len(texts), 64)
    assert_same(got, st_encode(path, texts))


@pytest.mark.parametrize("native", [False, True], ids=["classic", "native"])
def test_max_seq_length_is_honoured(
    native: bool, tiny: Callable[..., Path], served: Callable[..., str]
) -> None:
    """ST truncates to max_seq_length; poolserve answers 400 past it (API.md) and
    truncates only when asked."""
    path = tiny("st", "bert", max_seq_length=32, native_format=native)
    url = served(path)
    models = requests.get(f"{url}/v1/models", timeout=10).json()
    assert models["data"][0]["max_model_len"] == 32
    tok = st_tokenizer(path)
    at_limit = make_texts(tok, 4, 32)
    over = at_limit[2] + " the end"
    n_over = len(tok(over)["input_ids"])
    assert n_over > 32

    assert_same(embed(url, at_limit), st_encode(path, at_limit))
    resp = requests.post(f"{url}/v1/embeddings", json={"input": [over]}, timeout=30)
    assert resp.status_code == 400, resp.text
    error = resp.json()["error"]
    assert error["type"] == "BadRequestError"
    assert error["message"].startswith(
        f"This model's maximum context length is 32 tokens. However, you requested "
        f"{n_over} tokens in the input for embedding generation."
    )
    # truncate_prompt_tokens=-1 cuts to the max length, exactly as ST does.
    assert_same(embed(url, [over], truncate_prompt_tokens=-1), st_encode(path, [over]))


def test_prompt_counts_towards_max_length(
    tiny: Callable[..., Path], served: Callable[..., str]
) -> None:
    variant = VARIANTS["prompt-excluded"]
    path = tiny("st", "bert", **variant)
    url = served(path)
    tok = st_tokenizer(path)
    prompt_tokens = len(tok(PROMPTS["query"])["input_ids"]) - 2  # without [CLS] [SEP]
    fits = make_texts(tok, 4, ST_MAX - prompt_tokens)[2]
    resp = requests.post(f"{url}/v1/embeddings", json={"input": fits}, timeout=30)
    assert resp.status_code == 200, resp.text
    assert resp.json()["usage"]["prompt_tokens"] == ST_MAX
    resp = requests.post(f"{url}/v1/embeddings", json={"input": fits + " a"}, timeout=30)
    assert resp.status_code == 400, resp.text


def test_excluded_prompt_without_special_tokens(
    tiny: Callable[..., Path], served: Callable[..., str]
) -> None:
    """add_special_tokens=false: the prompt has no [CLS] before it, so exactly its own
    tokens are left out of pooling (and not the first token of the text)."""
    from transformers import AutoModel

    path = tiny("st", "bert", **VARIANTS["prompt-excluded"])
    tok = st_tokenizer(path)
    text = "the cat sits on the mat"
    enc = tok(PROMPTS["query"] + text, add_special_tokens=False, return_tensors="pt")
    n_prompt = len(tok(PROMPTS["query"], add_special_tokens=False)["input_ids"])
    with torch.inference_mode():
        hidden = AutoModel.from_pretrained(str(path)).eval()(**enc).last_hidden_state[0]
    expected = hidden[n_prompt:].mean(0).numpy()[None]
    assert_same(embed(served(path), [text], add_special_tokens=False), expected)


def test_legacy_layout_with_transformer_subfolder(
    tiny: Callable[..., Path], served: Callable[..., str], tmp_path: Path
) -> None:
    """Old ST folders keep the encoder (and sentence_bert_config.json) in 0_Transformer/."""
    path = tmp_path / "legacy"
    shutil.copytree(tiny("st", "bert", dense=[(16, "tanh")]), path)
    sub = path / "0_Transformer"
    sub.mkdir()
    keep = {"modules.json", "config_sentence_transformers.json", "README.md"}
    for f in list(path.iterdir()):
        if f.is_file() and f.name not in keep:
            shutil.move(str(f), str(sub / f.name))
    modules = json.loads((path / "modules.json").read_text(encoding="utf-8"))
    modules[0]["path"] = "0_Transformer"
    (path / "modules.json").write_text(json.dumps(modules), encoding="utf-8")
    texts = make_texts(st_tokenizer(sub), 6, ST_MAX)
    assert_same(embed(served(path), texts), st_encode(path, texts))


def test_do_lower_case(
    tiny: Callable[..., Path], served: Callable[..., str], tmp_path: Path
) -> None:
    """sentence_bert_config do_lower_case lowercases input for a cased tokenizer."""
    path = tmp_path / "lower"
    shutil.copytree(tiny("st", "roberta"), path)
    config_path = path / "sentence_bert_config.json"
    config = json.loads(config_path.read_text(encoding="utf-8"))
    config_path.write_text(json.dumps({**config, "do_lower_case": True}), encoding="utf-8")
    texts = ["Hello World", "THE CAT SITS ON THE MAT", "hello world"]
    got = embed(served(path), texts)
    assert_same(got, st_encode(path, texts))
    np.testing.assert_allclose(got[0], got[2], rtol=1e-5, atol=1e-6)
