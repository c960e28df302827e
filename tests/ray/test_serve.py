"""Ray Serve replicas: two replicas share the load; ``poolserve serve --ray-serve`` as a
process serves the API behind its key and exits 0 on SIGTERM, leaving no process."""

from __future__ import annotations

import concurrent.futures
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest
import requests

pytest.importorskip("ray")
pytest.importorskip("ray.serve")

from poolserve.config import Config, ModelConfig, ServerConfig
from poolserve.scale.ray_serve import REPLICA_HEADER
from tests.conftest import free_port
from tests.ray import ray_local

HEADER = REPLICA_HEADER.decode()


def _replicas_seen(url: str, headers: dict[str, str] | None = None, n: int = 40) -> Counter[str]:
    """The replica of each of ``n`` concurrent embedding requests (all must succeed)."""

    def one(i: int) -> str:
        resp = requests.post(
            url + "/v1/embeddings", json={"input": f"text {i}"}, headers=headers, timeout=60
        )
        assert resp.status_code == 200, resp.text
        assert len(resp.json()["data"]) == 1
        return resp.headers[HEADER]

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        return Counter(pool.map(one, range(n)))


@pytest.mark.slow
def test_two_replicas_share_the_load(ray_cluster: str, tiny: Callable[..., Path]) -> None:
    config = Config(
        model=ModelConfig(model=str(tiny("st")), dtype="float32", backend="torch"),
        server=ServerConfig(api_key=("k",)),
    )
    with ray_local.serve_app(config, replicas=2) as url:
        seen = _replicas_seen(url, {"Authorization": "Bearer k"})
        assert len(seen) == 2, seen
        assert min(seen.values()) >= 3, seen  # both take a real share, not one stray
        # The same app: its auth answer and error shape, from whichever replica.
        resp = requests.post(url + "/v1/embeddings", json={"input": "x"}, timeout=30)
        assert resp.status_code == 401
        assert resp.json()["error"]["code"] == 401
        assert resp.headers[HEADER] in seen


def _session_pids(sid: int) -> list[str]:
    out = subprocess.run(["ps", "-eo", "pid=,sid=,stat=,args="], capture_output=True, text=True)
    rows = [line.split(None, 3) for line in out.stdout.splitlines()]
    return [" ".join(r) for r in rows if len(r) >= 3 and r[1] == str(sid) and "Z" not in r[2]]


@pytest.mark.slow
def test_cli_serves_with_key_and_stops_on_sigterm(
    tiny: Callable[..., Path], tmp_path: Path
) -> None:
    """A private Ray of its own (not the session's): started, then stopped with it."""
    port = free_port()
    log = tmp_path / "serve.log"
    argv = [sys.executable, "-m", "poolserve", "serve", str(tiny("st")), "--ray-serve"]
    argv += ["--num-replicas", "2", "--host", "127.0.0.1", "--port", str(port)]
    argv += ["--api-key", "secret", "--dtype", "float32", "--backend", "torch"]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    with open(log, "wb") as out:
        # Its own session, so SIGTERM reaches the server alone (as from a supervisor),
        # and whatever it started can be found afterwards.
        proc = subprocess.Popen(
            argv, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 240
        while "Ray Serve replica(s)" not in log.read_text(errors="replace"):
            assert proc.poll() is None, log.read_text(errors="replace")[-3000:]
            assert time.monotonic() < deadline, "the server did not get ready"
            time.sleep(0.5)
        assert f"on http://127.0.0.1:{port} with 2 Ray Serve replica(s)" in log.read_text()
        seen = _replicas_seen(url, {"Authorization": "Bearer secret"}, n=24)
        assert len(seen) == 2, seen
        assert (
            requests.post(url + "/v1/embeddings", json={"input": "x"}, timeout=30).status_code
            == 401
        )
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=120) == 0, log.read_text(errors="replace")[-3000:]
        deadline = time.monotonic() + 30
        while (left := _session_pids(proc.pid)) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert not left, left
        with pytest.raises(requests.ConnectionError):
            requests.get(url + "/health", timeout=5)
    finally:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def test_app_builder_for_serve_run(ray_cluster: str, tiny: Callable[..., Path]) -> None:
    """``serve run poolserve.scale.ray_serve:app_builder model=... num_replicas=1 ...``."""
    from ray import serve

    from poolserve.scale.ray_serve import app_builder

    args = {
        "model": str(tiny("st")),
        "num_replicas": "1",
        "dtype": "float32",
        "backend": "torch",
        "api_key": "k",
        "auto_truncate": "true",
        "ray_actor_options": '{"num_cpus": 0.5}',
    }
    port = ray_local.serve_port()
    serve.run(app_builder(args), name="built", route_prefix="/")
    try:
        url = f"http://127.0.0.1:{port}"
        long_text = "word " * 500  # truncated, not refused: auto_truncate=true reached it
        resp = requests.post(
            url + "/v1/embeddings",
            json={"input": long_text},
            headers={"Authorization": "Bearer k"},
            timeout=60,
        )
        assert resp.status_code == 200, resp.text
        assert requests.get(url + "/v1/models", timeout=30).status_code == 401
    finally:
        serve.delete("built")
    with pytest.raises(Exception, match="unknown argument 'nope'"):
        app_builder({"nope": "1"})
