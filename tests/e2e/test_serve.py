"""`poolserve serve` end to end: start, answer, name its models, stop cleanly, fail clearly."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests

from poolserve.cli import _config_from, build_parser, main
from poolserve.runtime import build_context
from tests.conftest import serve_in_thread
from tests.e2e.conftest import Processes, ServerProcess

DEFAULT_NAME = "sentence-transformers/all-MiniLM-L6-v2"


def post_embeddings(url: str, body: dict[str, Any]) -> requests.Response:
    return requests.post(f"{url}/v1/embeddings", json=body, timeout=30)


def model_cards(url: str) -> list[dict[str, Any]]:
    resp = requests.get(f"{url}/v1/models", timeout=10)
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["object"] == "list"
    return list(body["data"])


def assert_stops_cleanly(server: ServerProcess) -> None:
    """SIGTERM -> exit status 0 within a few seconds."""
    started = time.monotonic()
    assert server.terminate(timeout=10) == 0, server.stderr[-3000:]
    assert time.monotonic() - started < 10
    assert "Traceback" not in server.stderr


def test_tiny_model_dir(processes: Processes, tiny_url: str) -> None:
    name = str(processes.tiny_path)
    cards = model_cards(tiny_url)
    assert [c["id"] for c in cards] == [name]
    assert cards[0]["max_model_len"] == 64 and cards[0]["owned_by"] == "poolserve"

    resp = post_embeddings(tiny_url, {"input": ["hello world", "the cat"], "model": name})
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["model"] == name and body["object"] == "list"
    assert body["id"].startswith("embd-")
    vectors = np.array([d["embedding"] for d in body["data"]])
    assert vectors.shape == (2, 32)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert body["usage"]["prompt_tokens"] == 8  # [CLS] hello world [SEP] + [CLS] the cat [SEP]

    assert requests.get(f"{tiny_url}/health", timeout=5).text == ""
    resp = post_embeddings(tiny_url, {"input": "x", "model": "nope"})
    assert resp.status_code == 404
    assert resp.json()["error"]["message"] == "The model `nope` does not exist."


@pytest.mark.slow
def test_default_model_without_argument(processes: Processes) -> None:
    server = processes.default
    url = server.wait_healthy()
    cards = model_cards(url)
    assert [c["id"] for c in cards] == [DEFAULT_NAME]
    assert cards[0]["max_model_len"] == 256
    resp = post_embeddings(url, {"input": "A man is eating food.", "model": DEFAULT_NAME})
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["model"] == DEFAULT_NAME
    vector = np.array(body["data"][0]["embedding"])
    assert vector.shape == (384,)
    assert abs(np.linalg.norm(vector) - 1.0) < 1e-5
    # Without `model` the first served name is echoed.
    assert post_embeddings(url, {"input": "hi"}).json()["model"] == DEFAULT_NAME
    assert_stops_cleanly(server)


def test_served_model_names_and_max_model_len(tiny: Callable[..., Path]) -> None:
    """The flags as parsed by the CLI, served in-process (one subprocess fewer)."""
    path = tiny("encoder", "bert", max_pos=1024)
    argv = ["serve", str(path), "--served-model-name", "a", "b", "--max-model-len", "1k"]
    config = _config_from(build_parser().parse_args(argv))
    with serve_in_thread(build_context(config), config.server) as url:
        cards = model_cards(url)
        assert [c["id"] for c in cards] == ["a", "b"]
        assert {c["max_model_len"] for c in cards} == {1000}  # 1k = 1000, as vLLM
        assert {c["root"] for c in cards} == {str(path)}

        for name, echoed in (("a", "a"), ("b", "b"), (None, "a")):
            resp = post_embeddings(url, {"input": "hello", "model": name})
            assert resp.status_code == 200, resp.text
            assert resp.json()["model"] == echoed
        # The path is not a served name once --served-model-name is given.
        resp = post_embeddings(url, {"input": "hello", "model": str(path)})
        assert resp.status_code == 404

        # 1000 tokens fit (the positions go to 1024); 1001 are a 400.
        ids = [7] * 1000
        resp = post_embeddings(url, {"input": ids})
        assert resp.status_code == 200, resp.text
        assert resp.json()["usage"]["prompt_tokens"] == 1000
        resp = post_embeddings(url, {"input": [*ids, 7]})
        assert resp.status_code == 400
        assert "maximum context length is 1000 tokens" in resp.json()["error"]["message"]


def test_unknown_hub_id_offline_is_one_line_error(processes: Processes) -> None:
    server = processes.missing
    code = server.wait_exit(timeout=60)
    assert code != 0
    stderr = server.stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    assert lines[0].startswith("poolserve: error:")
    assert "some-org/does-not-exist" in lines[0]
    assert "Traceback" not in stderr


@pytest.mark.parametrize(
    ("text", "expected"),
    [("512", 512), ("1k", 1000), ("25.6k", 25600), ("1K", 1024), ("2K", 2048)],
)
def test_max_model_len_forms(text: str, expected: int) -> None:
    """vLLM's human_readable_int: lower-case units decimal, upper-case binary."""
    args = build_parser().parse_args(["serve", "m", "--max-model-len", text])
    assert _config_from(args).model.max_model_len == expected


@pytest.mark.parametrize("text", ["1.5K", "abc", "-3", "1kk"])
def test_bad_max_model_len_is_a_usage_error(text: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(["serve", "m", "--max-model-len", text])
    assert exc.value.code == 2
    assert "--max-model-len" in capsys.readouterr().err


def test_max_model_len_past_position_embeddings_is_one_line_error(
    tiny: Callable[..., Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """1k on a model with 128 positions cannot work: the CLI refuses it in one line."""
    path = tiny("st", "bert")
    code = main(["serve", str(path), "--max-model-len", "1k", "--port", "1"])
    assert code == 1
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0] == (
        "poolserve: error: --max-model-len 1000 exceeds the model's position embeddings (128)"
    )


def test_max_model_len_may_pass_the_st_limit_up_to_the_positions(
    tiny: Callable[..., Path],
) -> None:
    """Current policy (more lenient than vLLM, which refuses past max_seq_length unless
    VLLM_ALLOW_LONG_MAX_MODEL_LEN is set): any length the position table holds."""
    path = tiny("st", "bert")  # max_seq_length 64, 128 positions
    config = _config_from(build_parser().parse_args(["serve", str(path), "--max-model-len", "100"]))
    with serve_in_thread(build_context(config), config.server) as url:
        assert model_cards(url)[0]["max_model_len"] == 100
        resp = post_embeddings(url, {"input": [7] * 100})
        assert resp.status_code == 200, resp.text
        assert resp.json()["usage"]["prompt_tokens"] == 100
        assert post_embeddings(url, {"input": [7] * 101}).status_code == 400
