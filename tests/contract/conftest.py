"""Live servers shared by the contract tests (session scope: each model loads once).

Servers (uvicorn in a thread, one serving context each — an engine belongs to one
event loop, so contexts are never shared between servers):

- ``default_url`` (root conftest): the packaged all-MiniLM-L6-v2, no chat template,
  no matryoshka, max length 256;
- ``tiny_url``: a tiny BERT sentence-transformers folder whose tokenizer has a chat
  template and whose config.json says ``is_matryoshka: true``; served as
  ``tiny-a`` and ``tiny-b``; max length 64;
- ``flags_url``: a tiny folder (its tokenizer has no chat template) started with
  ``--hf-overrides '{"matryoshka_dimensions": [8, 16]}'`` and ``--chat-template``;
- ``auth_url``: a tiny folder behind ``--api-key k``;
- ``cross_url``: a tiny BERT cross-encoder (one label, token_type_ids, max length 128)
  served as ``BAAI/bge-reranker-v2-m3``, so vLLM's example clients run unmodified;
- ``classifier_url``: a tiny BERT ``*ForSequenceClassification`` with two labels
  (``--task auto`` -> classify).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from poolserve.config import ServerConfig
from poolserve.serving.context import ServingContext
from tests.conftest import make_context, serve_in_thread
from tests.contract.util import (
    API_KEY,
    CHAT_TEMPLATE,
    CROSS_NAME,
    MRL_LIST,
    SERVER_TEMPLATE,
    TINY_NAMES,
)


@pytest.fixture(scope="session")
def tiny_dir(tiny: Callable[..., Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the tiny ST folder with a chat template and ``is_matryoshka: true``."""
    out = tmp_path_factory.mktemp("tiny-chat") / "model"
    shutil.copytree(tiny("st"), out)
    tok = AutoTokenizer.from_pretrained(out)
    tok.chat_template = CHAT_TEMPLATE
    tok.save_pretrained(str(out))
    config = json.loads((out / "config.json").read_text())
    config["is_matryoshka"] = True
    (out / "config.json").write_text(json.dumps(config, indent=2))
    return out


@pytest.fixture(scope="session")
def tiny_tok(tiny_dir: Path) -> PreTrainedTokenizerBase:
    """The tiny model's tokenizer, to compute expected token ids."""
    return AutoTokenizer.from_pretrained(tiny_dir)


@pytest.fixture(scope="session")
def default_tok(default_url: str) -> PreTrainedTokenizerBase:
    """The default model's tokenizer."""
    from poolserve.models.resolve import resolve_model_dir

    return AutoTokenizer.from_pretrained(resolve_model_dir(None))


@pytest.fixture(scope="session")
def tiny_url(tiny_dir: Path) -> Iterator[str]:
    ctx = make_context(tiny_dir, served_model_name=TINY_NAMES)
    with serve_in_thread(ctx) as url:
        yield url


@pytest.fixture(scope="session")
def flags_url(tiny: Callable[..., Path]) -> Iterator[str]:
    ctx = make_context(
        tiny("st"),
        hf_overrides={"matryoshka_dimensions": list(MRL_LIST)},
        chat_template=SERVER_TEMPLATE,
    )
    with serve_in_thread(ctx) as url:
        yield url


@pytest.fixture(scope="session")
def auth_url(tiny: Callable[..., Path]) -> Iterator[str]:
    ctx = make_context(tiny("st"), served_model_name=("guarded",))
    with serve_in_thread(ctx, ServerConfig(api_key=(API_KEY,))) as url:
        yield url


@pytest.fixture(scope="session")
def tiny_embed(tiny_url: str) -> Callable[..., Any]:
    """``tiny_embed(input, **fields) -> np.ndarray [n, dim]`` from the tiny server."""
    from tests.contract.util import embed

    def call(inp: Any, **fields: Any) -> Any:
        return embed(tiny_url, inp, **fields)

    return call


@pytest.fixture(scope="session")
def cross_dir(tiny: Callable[..., Path]) -> Path:
    """A tiny random BERT cross-encoder (one label, no activation in its config)."""
    return tiny("cross", "bert")


@pytest.fixture(scope="session")
def cross_ctx(cross_dir: Path) -> ServingContext:
    return make_context(cross_dir, served_model_name=(CROSS_NAME,))


@pytest.fixture(scope="session")
def cross_url(cross_ctx: ServingContext) -> Iterator[str]:
    with serve_in_thread(cross_ctx) as url:
        yield url


@pytest.fixture(scope="session")
def cross_model(cross_dir: Path) -> Any:
    """sentence-transformers' CrossEncoder on the same weights (the reference)."""
    from sentence_transformers import CrossEncoder

    return CrossEncoder(str(cross_dir), device="cpu")


@pytest.fixture(scope="session")
def cross_tok(cross_dir: Path) -> PreTrainedTokenizerBase:
    return AutoTokenizer.from_pretrained(cross_dir)


@pytest.fixture(scope="session")
def classifier_dir(tiny: Callable[..., Path]) -> Path:
    """A tiny random BERT sequence classifier with two labels."""
    return tiny("cross", "bert", num_labels=2)


@pytest.fixture(scope="session")
def classifier_url(classifier_dir: Path) -> Iterator[str]:
    with serve_in_thread(make_context(classifier_dir)) as url:
        yield url
