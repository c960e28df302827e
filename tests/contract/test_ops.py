"""Operational endpoints: /v1/models, /health, /ping, /version, /metrics, /docs."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

import poolserve
from poolserve.api.app import create_app
from poolserve.models.resolve import resolve_model_dir
from tests.conftest import make_context
from tests.contract.util import (
    DEFAULT_MAX_LEN,
    DEFAULT_NAME,
    TIMEOUT,
    TINY_MAX_LEN,
    TINY_NAMES,
    assert_error,
    ok,
    post,
)
from tests.fixtures.several import one_model

METRICS = (
    "poolserve_requests_total",
    "poolserve_request_duration_seconds",
    "poolserve_queue_time_seconds",
    "poolserve_inference_time_seconds",
    "poolserve_batch_size",
    "poolserve_batch_tokens",
    "poolserve_queue_depth",
    "poolserve_prompt_tokens_total",
)


def get(url: str, path: str, **kwargs: object) -> requests.Response:
    return requests.get(url + path, timeout=TIMEOUT, **kwargs)  # type: ignore[arg-type]


# -- /v1/models -------------------------------------------------------------------------


@one_model
def test_models_one_card_per_served_name(tiny_url: str, tiny_dir: Path) -> None:
    body = ok(get(tiny_url, "/v1/models"))
    assert body["object"] == "list"
    assert [card["id"] for card in body["data"]] == list(TINY_NAMES)
    for card in body["data"]:
        assert card["object"] == "model"
        assert card["owned_by"] == "poolserve"
        assert card["parent"] is None
        assert card["max_model_len"] == TINY_MAX_LEN
        assert Path(card["root"]).resolve() == tiny_dir.resolve()
        assert isinstance(card["created"], int) and card["created"] <= time.time() + 1


@one_model
def test_models_default(default_url: str) -> None:
    [card] = ok(get(default_url, "/v1/models"))["data"]
    assert card["id"] == DEFAULT_NAME
    assert card["max_model_len"] == DEFAULT_MAX_LEN
    assert Path(card["root"]).resolve() == resolve_model_dir(None).resolve()


# -- liveness and version ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path"), [("GET", "/health"), ("GET", "/ping"), ("POST", "/ping")]
)
def test_liveness_is_200_with_an_empty_body(tiny_url: str, method: str, path: str) -> None:
    resp = requests.request(method, tiny_url + path, timeout=TIMEOUT)
    assert resp.status_code == 200
    assert resp.content == b""


def test_version(tiny_url: str) -> None:
    assert ok(get(tiny_url, "/version")) == {"version": poolserve.__version__}


async def test_dead_engine_is_503(tiny: Callable[..., Path]) -> None:
    # The app of a context whose engine never started (no lifespan): a dead engine.
    app = create_app(make_context(tiny("st")))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        for method, path in (("GET", "/health"), ("GET", "/ping"), ("POST", "/ping")):
            resp = await client.request(method, path)
            assert resp.status_code == 503 and resp.content == b""
        resp = await client.post("/v1/embeddings", json={"input": "hi"})
    assert resp.status_code == 503
    err = resp.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert err["code"] == 503 and err["type"] == "Overloaded"


# -- metrics ----------------------------------------------------------------------------


def _samples(url: str) -> list[tuple[str, dict[str, str], float]]:
    resp = get(url, "/metrics")
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("text/plain")
    return [
        (s.name, dict(s.labels), s.value)
        for family in text_string_to_metric_families(resp.text)
        for s in family.samples
    ]


@one_model
def test_metrics_names_labelled_with_the_model(tiny_url: str) -> None:
    ok(post(tiny_url, "/v1/embeddings", {"input": ["metrics one", "metrics two"]}))
    assert_error(post(tiny_url, "/v1/embeddings", {"input": []}), 400)
    samples = _samples(tiny_url)
    for name in METRICS:
        labelled = [labels for n, labels, _ in samples if n == name or n.startswith(name + "_")]
        assert labelled, f"{name} missing"
        assert all(labels.get("model") == TINY_NAMES[0] for labels in labelled), (name, labelled)

    requests_total = {
        (labels["endpoint"], labels["status"]): value
        for name, labels, value in samples
        if name == "poolserve_requests_total"
    }
    assert requests_total.get(("/v1/embeddings", "200"), 0) >= 1, requests_total
    assert requests_total.get(("/v1/embeddings", "400"), 0) >= 1, requests_total
    prompt_tokens = [v for n, _, v in samples if n == "poolserve_prompt_tokens_total"]
    assert prompt_tokens and prompt_tokens[0] >= 8


def test_metrics_count_requests_per_endpoint(tiny_url: str) -> None:
    def count(endpoint: str, status: str) -> float:
        return sum(
            v
            for n, labels, v in _samples(tiny_url)
            if n == "poolserve_requests_total"
            and labels["endpoint"] == endpoint
            and labels["status"] == status
        )

    before = {p: count(p, "200") for p in ("/pooling", "/tokenize", "/embeddings")}
    ok(post(tiny_url, "/pooling", {"input": "hi"}))
    ok(post(tiny_url, "/tokenize", {"prompt": "hi"}))
    ok(post(tiny_url, "/embeddings", {"input": "hi"}))
    for path, value in before.items():
        assert count(path, "200") == value + 1, path


@one_model
def test_metrics_of_the_default_model(default_url: str) -> None:
    ok(post(default_url, "/v1/embeddings", {"input": "hi"}))
    models = {labels.get("model") for _, labels, _ in _samples(default_url)}
    assert models == {DEFAULT_NAME}


# -- docs -------------------------------------------------------------------------------


def test_docs(tiny_url: str) -> None:
    resp = get(tiny_url, "/docs")
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("text/html")


def test_openapi(tiny_url: str) -> None:
    schema = ok(get(tiny_url, "/openapi.json"))
    assert schema["openapi"].startswith("3.")
    paths = schema["paths"]
    for path in ("/v1/embeddings", "/pooling", "/tokenize", "/detokenize"):
        assert "post" in paths[path], path
        ref = paths[path]["post"]["requestBody"]["content"]["application/json"]["schema"]["$ref"]
        name = ref.rsplit("/", 1)[1]
        assert name in schema["components"]["schemas"], ref
    for path in ("/v1/models", "/health", "/version", "/metrics"):
        assert "get" in paths[path], path
    embedding_fields = schema["components"]["schemas"]["EmbeddingRequest"]["properties"]
    for field in ("input", "messages", "encoding_format", "dimensions", "truncate_prompt_tokens"):
        assert field in embedding_fields
