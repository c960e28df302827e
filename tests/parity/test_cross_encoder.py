"""poolserve /score and /rerank vs sentence-transformers ``CrossEncoder.predict``.

Tiny random cross-encoders (BERT with token_type_ids, XLM-R, DeBERTa-v2) are built at
test time; scores must agree within 1e-4 at float32, for every payload shape, with
the activation resolved from the model's config the way sentence-transformers 6.x
does, and with the activation switched off.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests
import torch

from tests.conftest import BACKENDS, make_context, serve_in_thread
from tests.fixtures.tiny_models import WORDS, build_cross_encoder

ATOL = 1e-4


def _texts(n: int, lo: int, hi: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(lo, hi))) for _ in range(n)]


QUERIES = _texts(12, 1, 12, seed=1)
DOCS = _texts(12, 1, 40, seed=2)


def _post(url: str, path: str, body: dict[str, Any]) -> dict[str, Any]:
    resp = requests.post(url + path, json=body, timeout=60)
    assert resp.status_code == 200, resp.text
    result: dict[str, Any] = resp.json()
    return result


def _scores(url: str, text_1: Any, text_2: Any, **extra: Any) -> np.ndarray:
    body = _post(url, "/score", {"text_1": text_1, "text_2": text_2, **extra})
    assert [d["index"] for d in body["data"]] == list(range(len(body["data"])))
    return np.asarray([d["score"] for d in body["data"]], dtype=np.float64)


def _predict(model: Any, pairs: list[tuple[str, str]], **kwargs: Any) -> np.ndarray:
    return np.asarray(model.predict(pairs, batch_size=5, **kwargs), dtype=np.float64)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[[Path], str]]:
    """``served(path[, backend]) -> url``: one live server per folder and backend, reused."""
    urls: dict[tuple[Path, str | None], str] = {}
    stack: list[Any] = []

    def serve(path: Path, backend: str | None = None) -> str:
        if (path, backend) not in urls:
            extra = {"backend": backend} if backend else {}
            cm = serve_in_thread(make_context(path, **extra))
            urls[path, backend] = cm.__enter__()
            stack.append(cm)
        return urls[path, backend]

    yield serve
    for cm in reversed(stack):
        cm.__exit__(None, None, None)


def _reference(path: Path) -> Any:
    from sentence_transformers import CrossEncoder

    return CrossEncoder(str(path), device="cpu")


@pytest.fixture(
    scope="module",
    params=[(arch, b) for arch in ("bert", "xlm-roberta", "deberta-v2") for b in BACKENDS],
    ids=lambda p: "-".join(p),
)
def arch_model(
    request: pytest.FixtureRequest, tiny: Callable[..., Path], served: Callable[..., str]
) -> tuple[str, Any]:
    """(url, CrossEncoder) of a tiny cross-encoder of each arch, on each backend."""
    arch, backend = request.param
    path = tiny("cross", arch)
    return served(path, backend), _reference(path)


def test_str_str(arch_model: tuple[str, Any]) -> None:
    url, model = arch_model
    got = _scores(url, QUERIES[0], DOCS[0])
    np.testing.assert_allclose(got, _predict(model, [(QUERIES[0], DOCS[0])]), atol=ATOL)


def test_str_list(arch_model: tuple[str, Any]) -> None:
    url, model = arch_model
    got = _scores(url, QUERIES[1], DOCS)
    np.testing.assert_allclose(got, _predict(model, [(QUERIES[1], d) for d in DOCS]), atol=ATOL)


def test_list_list(arch_model: tuple[str, Any]) -> None:
    url, model = arch_model
    got = _scores(url, QUERIES, DOCS)
    np.testing.assert_allclose(
        got, _predict(model, list(zip(QUERIES, DOCS, strict=True))), atol=ATOL
    )


def test_rerank_top_n(arch_model: tuple[str, Any]) -> None:
    url, model = arch_model
    body = _post(url, "/rerank", {"query": QUERIES[2], "documents": DOCS, "top_n": 4})
    ranked = model.rank(QUERIES[2], DOCS, top_k=4)
    assert [r["index"] for r in body["results"]] == [r["corpus_id"] for r in ranked]
    np.testing.assert_allclose(
        [r["relevance_score"] for r in body["results"]],
        [float(r["score"]) for r in ranked],
        atol=ATOL,
    )


def test_activation_false_is_the_logit(arch_model: tuple[str, Any]) -> None:
    url, model = arch_model
    pairs = list(zip(QUERIES, DOCS, strict=True))
    raw = _predict(model, pairs, activation_fn=torch.nn.Identity())
    np.testing.assert_allclose(_scores(url, QUERIES, DOCS, activation=False), raw, atol=ATOL)
    assert not np.allclose(raw, _predict(model, pairs))  # the default really is sigmoid


# -- activation resolution, as sentence-transformers 6.x --------------------------------


def _edit_config(path: Path, **changes: Any) -> None:
    config = json.loads((path / "config.json").read_text())
    config.update(changes)
    (path / "config.json").write_text(json.dumps(config, indent=2))


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """Cross-encoder folders whose config names an activation in each known way."""
    from sentence_transformers import CrossEncoder

    def build(kind: str) -> Path:
        out = tmp_path_factory.mktemp(kind)
        if kind == "identity":  # config.json "sentence_transformers" (ST 4.x/5.x)
            return build_cross_encoder(out, "bert", activation_fn="identity", seed=3)
        if kind == "legacy-tanh":  # config.json "sbert_ce_default_activation_function" (<4.0)
            path = build_cross_encoder(out, "xlm-roberta", seed=4)
            _edit_config(
                path, sbert_ce_default_activation_function="torch.nn.modules.activation.Tanh"
            )
            return path
        if kind == "both":  # "sentence_transformers" wins over the legacy key
            path = build_cross_encoder(out, "bert", activation_fn="identity", seed=5)
            _edit_config(
                path, sbert_ce_default_activation_function="torch.nn.modules.activation.Tanh"
            )
            return path
        if kind == "untrusted":  # not torch.*: ignored without trust_remote_code -> sigmoid
            path = build_cross_encoder(out, "bert", seed=6)
            _edit_config(path, sentence_transformers={"activation_fn": "mypkg.Act"})
            return path
        if kind == "st6-saved":  # CrossEncoder.save: config_sentence_transformers.json wins
            source = build_cross_encoder(out / "source", "deberta-v2", seed=7)
            CrossEncoder(str(source), device="cpu", activation_fn=torch.nn.Tanh()).save(
                str(out / "saved")
            )
            saved = out / "saved"
            _edit_config(
                saved, sentence_transformers={"activation_fn": "torch.nn.modules.linear.Identity"}
            )
            return saved
        raise ValueError(kind)

    return build


@pytest.mark.parametrize(
    ("kind", "activation"),
    [
        ("identity", torch.nn.Identity),
        ("legacy-tanh", torch.nn.Tanh),
        ("both", torch.nn.Identity),
        ("untrusted", torch.nn.Sigmoid),
        ("st6-saved", torch.nn.Tanh),
    ],
)
def test_configured_activation(
    kind: str,
    activation: type[torch.nn.Module],
    folders: Callable[[str], Path],
    served: Callable[[Path], str],
) -> None:
    path = folders(kind)
    model = _reference(path)
    assert type(model.activation_fn) is activation
    url = served(path)
    pairs = list(zip(QUERIES, DOCS, strict=True))
    np.testing.assert_allclose(_scores(url, QUERIES, DOCS), _predict(model, pairs), atol=ATOL)
    raw = _predict(model, pairs, activation_fn=torch.nn.Identity())
    np.testing.assert_allclose(_scores(url, QUERIES, DOCS, activation=False), raw, atol=ATOL)
    body = _post(url, "/rerank", {"query": QUERIES[0], "documents": DOCS, "top_n": 3})
    ranked = model.rank(QUERIES[0], DOCS, top_k=3)
    assert [r["index"] for r in body["results"]] == [r["corpus_id"] for r in ranked]


def test_two_label_classify_matches_softmax(
    tiny: Callable[..., Path], served: Callable[[Path], str]
) -> None:
    """A 2-label cross-encoder: /classify of a text = CrossEncoder softmax on the same ids."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    path = tiny("cross", "xlm-roberta", num_labels=2)
    url = served(path)
    body = _post(url, "/classify", {"input": DOCS})
    probs = np.asarray([d["probs"] for d in body["data"]], dtype=np.float64)
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForSequenceClassification.from_pretrained(path).eval()
    with torch.inference_mode():
        logits = model(**tok(DOCS, padding=True, return_tensors="pt")).logits
    np.testing.assert_allclose(probs, torch.softmax(logits, -1).numpy(), atol=ATOL)
