"""Launch lines copied from newest vLLM's docs (0.33) start poolserve unchanged.

Each line's flags are kept byte for byte; only the model (a hub name, not reachable
here) is replaced by a local checkpoint of the same kind, and ``--host 0.0.0.0`` by
loopback (tests listen on 127.0.0.1 only). Most lines are parsed by poolserve's own
command line and served in-process; the long-text example runs as a real
``poolserve serve`` subprocess.
"""

from __future__ import annotations

import os
import shlex
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import requests

from poolserve import cli
from poolserve.models.resolve import resolve_model_dir
from poolserve.runtime import build_context
from tests.conftest import serve_in_thread

DEFAULT = "default"  # the packaged MiniLM stands in for the docs' encoder models

# (source in vLLM 0.33, model kind, the flags after the model, a request that must work)
LINES: list[tuple[str, str, str, tuple[str, dict[str, Any]]]] = [
    (
        "docs/models/pooling_models/token_embed.md",
        DEFAULT,
        "--runner pooling --pooler-config.task token_embed --max-model-len 512",
        ("/pooling", {"input": "hello", "task": "token_embed"}),
    ),
    (
        "docs/models/pooling_models/embed.md (matryoshka)",
        DEFAULT,
        """--hf-overrides '{"matryoshka_dimensions":[256]}'""",
        ("/v1/embeddings", {"input": "hello", "dimensions": 256}),
    ),
    (
        "issue 13: --runner pooling --convert embed --pooler-config",
        "decoder",
        """--runner pooling --convert embed --pooler-config '{"pooling_type": "MEAN", """
        """"use_activation": true}'""",
        ("/v1/embeddings", {"input": "hello"}),
    ),
    (
        "docs/models/pooling_models/scoring.md (Qwen3-Reranker)",
        "qwen3",
        """--hf_overrides '{"architectures": ["Qwen3ForSequenceClassification"],"""
        """"classifier_from_token": ["no", "yes"],"is_original_qwen3_reranker": true}'""",
        ("/rerank", {"query": "q", "documents": ["a", "b"]}),
    ),
    (
        "docs/models/pooling_models/classify.md (score calibration)",
        "classifier",
        """--pooler-config '{"use_activation": true, "logit_mean": 4.5, "logit_sigma": 1.0}'""",
        ("/classify", {"input": "hello"}),
    ),
    (
        "docs/models/pooling_models/reward.md (STEP; ids within the tiny vocabulary)",
        "decoder",
        """--pooler-config '{"pooling_type": "STEP", "step_tag_id": 123, """
        """"returned_token_ids": [456, 489]}'""",
        ("/pooling", {"input": "hello"}),
    ),
]


def _model(kind: str, tiny: Callable[..., Path]) -> str:
    if kind == DEFAULT:
        return str(resolve_model_dir(None))
    if kind == "decoder":
        return str(tiny("decoder", "qwen2", "causal"))
    if kind == "qwen3":
        return str(tiny("decoder", "qwen3", "causal"))
    return str(tiny("encoder", "bert", num_labels=2))


@pytest.mark.parametrize(("source", "kind", "flags", "probe"), LINES, ids=[x[0] for x in LINES])
def test_launch_line_starts_unchanged(
    tiny: Callable[..., Path],
    source: str,
    kind: str,
    flags: str,
    probe: tuple[str, dict[str, Any]],
) -> None:
    args = cli.parse_args(["serve", _model(kind, tiny), *shlex.split(flags)])
    config = cli.config_from(args)
    ctx = build_context(config)
    path, body = probe
    with serve_in_thread(ctx, config.server) as url:
        resp = requests.post(url + path, json=body, timeout=60)
    assert resp.status_code == 200, resp.text


def test_vllm_only_flags_are_accepted_or_refused_by_name() -> None:
    ok = cli.parse_args(["serve", "m", "--enforce-eager", "-tp", "1", "--gpu_memory_utilization",
                         "0.9", "--disable-log-stats", "--hf_overrides", "{}"])  # fmt: skip
    cli.check_vllm_engine_flags(ok)
    assert ok.vllm_enforce_eager and ok.vllm_gpu_memory_utilization == "0.9"
    from poolserve.errors import PoolserveError

    with pytest.raises(PoolserveError, match="--tensor-parallel-size 2"):
        cli.check_vllm_engine_flags(cli.parse_args(["serve", "m", "--tensor-parallel-size", "2"]))
    dotted = cli.parse_args(["serve", "m", "--pooler_config.pooling_type", "CLS"])
    assert cli.config_from(dotted).model.override_pooler_config == {"pooling_type": "CLS"}
    # vLLM's other value names, and flags that have no effect here.
    for argv, dtype, task in (
        (["--dtype", "half"], "float16", "auto"),
        (["--dtype=float"], "float32", "auto"),
        (["--task", "embedding"], "auto", "embed"),
    ):
        model = cli.config_from(cli.parse_args(["serve", "m", *argv])).model
        assert (model.dtype, model.task) == (dtype, task)
    quiet = ["--model-impl", "transformers", "--load-format", "auto", "--generation-config",
             "vllm", "--enable-chunked-prefill", "--max-logprobs", "0",
             "--disable-uvicorn-access-log", "--tokenizer-mode", "hf"]  # fmt: skip
    cli.check_vllm_engine_flags(cli.parse_args(["serve", "m", *quiet]))
    with pytest.raises(PoolserveError, match="--tokenizer-mode mistral"):
        cli.check_vllm_engine_flags(cli.parse_args(["serve", "m", "--tokenizer-mode", "mistral"]))


def test_download_dir_and_hf_token_set_the_hub_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    args = cli.parse_args(["serve", "m", "--download-dir", str(tmp_path), "--hf-token", "hf_x"])
    cli.check_vllm_engine_flags(args)
    assert os.environ["HF_HUB_CACHE"] == str(tmp_path)
    assert os.environ["HF_TOKEN"] == "hf_x"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_long_text_example_service_line_as_a_subprocess() -> None:
    # examples/pooling/embed/openai_embedding_long_text/service.sh with its defaults
    # (POOLING_TYPE=auto, GPU_COUNT=1, MAX_EMBED_LEN=3072000).
    port = _free_port()
    pooler = (
        '{"pooling_type": "auto", "use_activation": true, "enable_chunked_processing": true, '
        '"max_embed_len": 3072000}'
    )
    argv = [
        sys.executable, "-m", "poolserve", "serve", str(resolve_model_dir(None)),
        "--tensor-parallel-size", "1", "--enforce-eager", "--pooler-config", pooler,
        "--served-model-name", "multilingual-e5-large", "--api-key", "EMPTY",
        "--trust-remote-code", "--port", str(port), "--host", "127.0.0.1",
    ]  # fmt: skip
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=os.environ)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            assert proc.poll() is None, proc.stdout.read().decode() if proc.stdout else ""
            try:
                if requests.get(url + "/health", timeout=2).status_code == 200:
                    break
            except requests.ConnectionError:
                time.sleep(0.3)
        text = " ".join(["retrieval over long documents needs every passage"] * 150)
        resp = requests.post(
            url + "/v1/embeddings",
            json={"model": "multilingual-e5-large", "input": text},
            headers={"Authorization": "Bearer EMPTY"},
            timeout=120,
        )
        assert resp.status_code == 200, resp.text
        assert resp.json()["usage"]["prompt_tokens"] > 1000  # over the 256-token window
    finally:
        proc.terminate()
        proc.wait(timeout=30)
