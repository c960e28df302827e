"""Several processes, one server: ``--api-server-count 2 --data-parallel-size 2``.

- requests are served by both front ends and balanced over both engines, with the same
  answers as one process;
- a child that dies (SIGKILL) stops the whole server with one log line naming it, exit
  1, and no process is left behind;
- SIGTERM stops every child and exits 0; SIGKILL of the parent takes its children too.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import requests

from tests.e2e.conftest import ServerProcess
from tests.fixtures.hardening import descendants, metric

FLAGS = ["--api-server-count", "2", "--data-parallel-size", "2"]


def cmdline(pid: int) -> str:
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    return ""


def alive(pids: list[int]) -> list[int]:
    out = []
    for pid in pids:
        with contextlib.suppress(OSError):
            if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
                out.append(pid)
    return out


def wait_gone(pids: list[int], timeout: float) -> list[int]:
    deadline = time.monotonic() + timeout
    while alive(pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    return alive(pids)


def start(tiny: Callable[..., Path], tmp: Path) -> tuple[ServerProcess, list[int]]:
    server = ServerProcess([str(tiny("st")), *FLAGS], tmp).start()
    server.wait_healthy()
    assert server.proc is not None
    deadline = time.monotonic() + 60  # healthy once one front end serves; wait for all
    while "serving on http" not in server.stderr and time.monotonic() < deadline:
        time.sleep(0.1)
    kids = descendants(server.proc.pid)
    roles = [cmdline(p) for p in kids]
    # Two engines and two front ends (plus multiprocessing's resource tracker).
    assert sum("spawn_main" in r for r in roles) >= 4, roles
    return server, kids


def test_two_front_ends_two_engines_answer_as_one(
    tiny: Callable[..., Path], tmp_path: Path
) -> None:
    server, kids = start(tiny, tmp_path / "server")
    single = ServerProcess([str(tiny("st"))], tmp_path / "single").start()
    try:
        single.wait_healthy()
        texts = [f"text number {i} " + "word " * (i % 9) for i in range(64)]

        def embed(url: str, i: int) -> list[list[float]]:
            body = {"input": texts[i : i + 4]}
            resp = requests.post(f"{url}/v1/embeddings", json=body, timeout=60)
            assert resp.status_code == 200, resp.text
            return [d["embedding"] for d in resp.json()["data"]]

        with ThreadPoolExecutor(8) as pool:
            got = list(pool.map(lambda i: embed(server.url, i), range(0, 64, 4)))
        want = [embed(single.url, i) for i in range(0, 64, 4)]
        np.testing.assert_allclose(np.array(got), np.array(want), rtol=1e-4, atol=1e-5)
        # /metrics on any front end counts what every process did.
        assert metric(server.url, "poolserve_requests_total") >= 16
        assert metric(server.url, "poolserve_computed_sequences_total") >= 64
    finally:
        single.terminate()
        assert server.terminate(timeout=60) == 0
        assert wait_gone(kids, 10) == []


@pytest.mark.parametrize("victim", ["engine", "front end"])
def test_a_dead_child_stops_the_server(
    tiny: Callable[..., Path], tmp_path: Path, victim: str
) -> None:
    server, kids = start(tiny, tmp_path)
    started = dict(re.findall(r"started (engine \d|front end \d) \(pid (\d+)\)", server.stderr))
    assert len(started) == 4, server.stderr[-2000:]
    name = "engine 1" if victim == "engine" else "front end 0"
    os.kill(int(started[name]), signal.SIGKILL)
    assert server.wait_exit(timeout=30) == 1
    line = f"{name} (pid {started[name]}) exited with code -9; stopping the server"
    assert line in server.stderr, server.stderr[-2000:]
    assert wait_gone(kids, 10) == []


def test_killing_the_parent_takes_the_children(tiny: Callable[..., Path], tmp_path: Path) -> None:
    server, kids = start(tiny, tmp_path)
    assert server.proc is not None
    server.proc.kill()
    server.proc.wait(timeout=10)
    assert wait_gone(kids, 15) == []
