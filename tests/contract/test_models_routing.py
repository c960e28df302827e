"""Several models in one server (serving/router.py): routing by ``model``.

One app serves a tiny embedder, a tiny cross-encoder and a tiny two-label classifier
(two names). Each answer must equal the one-model server's answer for the same model,
a model that lacks an endpoint answers 400 by name, an unknown name 404, and a request
naming no model reaches the first model serving its endpoint.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import requests

from poolserve.errors import PoolserveError
from poolserve.serving.router import ServedModels
from tests.conftest import make_context, serve_in_thread
from tests.contract.util import TIMEOUT, assert_error, ok, post
from tests.fixtures import cluster

pytestmark = pytest.mark.skipif(
    bool(cluster.MODE), reason="a several-model app is served in this process only"
)

TEXTS = ["the cat sits on the mat", "what is the capital of France?"]


@pytest.fixture(scope="module")
def several(
    tiny: Callable[..., Path], cross_dir: Path, classifier_dir: Path
) -> Iterator[tuple[str, ServedModels]]:
    embedder = make_context(tiny("st"), served_model_name=("embedder",))
    models = ServedModels(
        [
            embedder,
            make_context(cross_dir, served_model_name=("reranker",)),
            make_context(classifier_dir, served_model_name=("classifier", "clf-2")),
        ]
    )
    with serve_in_thread(models) as url:
        yield url, models


def test_models_lists_every_name_in_order(several: tuple[str, ServedModels]) -> None:
    url, _ = several
    body = requests.get(f"{url}/v1/models", timeout=TIMEOUT).json()
    assert [c["id"] for c in body["data"]] == ["embedder", "reranker", "classifier", "clf-2"]


def test_one_model_per_entry_however_many_names(several: tuple[str, ServedModels]) -> None:
    _, models = several
    assert len(models) == 3
    assert models.pick("classifier") is models.pick("clf-2")


def test_each_answer_equals_its_one_model_server(
    several: tuple[str, ServedModels], cross_url: str, classifier_url: str
) -> None:
    url, _ = several
    pairs = {"text_1": "what is a cat?", "text_2": TEXTS}
    mine = ok(post(url, "/score", {"model": "reranker", **pairs}))
    alone = ok(post(cross_url, "/score", pairs))
    assert mine["model"] == "reranker"
    np.testing.assert_allclose(
        [d["score"] for d in mine["data"]], [d["score"] for d in alone["data"]], atol=1e-6
    )
    for name in ("classifier", "clf-2"):
        mine = ok(post(url, "/classify", {"model": name, "input": TEXTS}))
        alone = ok(post(classifier_url, "/classify", {"input": TEXTS}))
        assert mine["model"] == name
        np.testing.assert_allclose(
            [d["probs"] for d in mine["data"]], [d["probs"] for d in alone["data"]], atol=1e-6
        )
    emb = ok(post(url, "/v1/embeddings", {"model": "embedder", "input": TEXTS}))
    assert emb["model"] == "embedder" and len(emb["data"]) == 2


@pytest.mark.parametrize(
    ("path", "body", "expected"),
    [
        ("/v1/embeddings", {"input": "x"}, "embedder"),
        ("/score", {"text_1": "a", "text_2": "b"}, "embedder"),  # cosine: the first
        ("/classify", {"input": "x"}, "reranker"),  # one label: a cross-encoder classifies
        ("/tokenize", {"prompt": "x"}, None),
    ],
)
def test_unnamed_request_goes_to_first_model_serving_it(
    several: tuple[str, ServedModels], path: str, body: dict[str, object], expected: str | None
) -> None:
    url, _ = several
    answer = ok(post(url, path, body))
    if expected is not None:
        assert answer["model"] == expected


@pytest.mark.parametrize(
    ("path", "body", "api"),
    [
        ("/v1/embeddings", {"model": "classifier", "input": "x"}, "Embeddings API"),
        ("/rerank", {"model": "clf-2", "query": "q", "documents": ["d"]}, "Rerank API"),
        ("/score", {"model": "classifier", "text_1": "a", "text_2": "b"}, "Score API"),
        ("/classify", {"model": "embedder", "input": "x"}, "Classification API"),
        ("/v1/embeddings", {"model": "reranker", "input": "x"}, "Embeddings API"),
    ],
)
def test_named_model_lacking_the_endpoint_is_400(
    several: tuple[str, ServedModels], path: str, body: dict[str, object], api: str
) -> None:
    url, _ = several
    assert_error(post(url, path, body), 400, contains=api)


@pytest.mark.parametrize("path", ["/v1/embeddings", "/classify", "/pooling", "/invocations"])
def test_unknown_model_is_404(several: tuple[str, ServedModels], path: str) -> None:
    url, _ = several
    assert_error(post(url, path, {"model": "nope", "input": "x"}), 404, param="model")


def test_invocations_route_by_model(several: tuple[str, ServedModels]) -> None:
    url, _ = several
    answer = ok(post(url, "/invocations", {"model": "classifier", "input": TEXTS}))
    assert answer["model"] == "classifier" and "probs" in answer["data"][0]
    answer = ok(post(url, "/invocations", {"input": TEXTS}))
    assert answer["model"] == "embedder" and "embedding" in answer["data"][0]


def test_metrics_label_each_model(several: tuple[str, ServedModels]) -> None:
    url, _ = several
    ok(post(url, "/classify", {"model": "clf-2", "input": "x"}))
    ok(post(url, "/v1/embeddings", {"model": "embedder", "input": "x"}))
    text = requests.get(f"{url}/metrics", timeout=TIMEOUT).text
    for model, endpoint in (("classifier", "/classify"), ("embedder", "/v1/embeddings")):
        assert any(
            line.startswith("poolserve_requests_total{")
            and f'model="{model}"' in line
            and f'endpoint="{endpoint}"' in line
            for line in text.splitlines()
        ), (model, endpoint)
    batches = [line for line in text.splitlines() if line.startswith("poolserve_batch_size_count")]
    assert {m for m in ("embedder", "classifier") if any(m in line for line in batches)} == {
        "embedder",
        "classifier",
    }


def test_a_name_given_to_two_models_is_refused(tiny: Callable[..., Path]) -> None:
    a = make_context(tiny("st"), served_model_name=("same",))
    b = make_context(tiny("st"), served_model_name=("other", "same"))
    with pytest.raises(PoolserveError, match="`same` is given to two models"):
        ServedModels([a, b])
    for ctx in (a, b):
        ctx.tokenizer.close()
