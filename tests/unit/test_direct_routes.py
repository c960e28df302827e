"""The model routes skip FastAPI's router (api/fast.py) and answer exactly as before."""

from __future__ import annotations

from poolserve.api.fast import direct_routes
from poolserve.api.routes import classify, embeddings, invocations, ops, score, tei, tokenize


def test_the_model_routes_are_direct_and_the_others_are_not() -> None:
    routers = (embeddings, score, classify, tokenize, tei, invocations, ops)
    table = direct_routes(r for m in routers for r in m.router.routes)
    for path in ("/v1/embeddings", "/embeddings", "/pooling", "/score", "/v1/score"):
        assert path in table
    for path in ("/rerank", "/v1/rerank", "/v2/rerank", "/classify", "/invocations"):
        assert path in table
    for path in ("/tokenize", "/embed", "/embed_all", "/predict", "/similarity", "/decode", "/"):
        assert path in table
    # FastAPI serializes these answers (dicts) or serves them on GET: left to it.
    for path in ("/detokenize", "/health", "/metrics", "/v1/models", "/info"):
        assert path not in table
