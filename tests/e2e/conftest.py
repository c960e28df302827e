"""`poolserve serve` as a real subprocess on 127.0.0.1 and a free port.

Every process of the e2e suite is spawned at once by the session fixture ``processes``,
so their (slow) imports and model loads overlap; each test waits only for its own.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import requests

from tests.conftest import free_port
from tests.fixtures import cluster

START_TIMEOUT = 90.0  # generous: the children start together on a small, shared machine


@dataclass
class ServerProcess:
    """A ``python -m poolserve serve ...`` child with its output captured in files.

    ``dtype`` is passed as ``--dtype`` so every test states what it checks: float32 by
    default (exact comparisons hold on any CPU); None sends no flag, the server's own
    default (``auto``: bfloat16 on a CPU with native bf16, float32 elsewhere).
    """

    args: list[str]
    log_dir: Path
    dtype: str | None = "float32"
    env: dict[str, str] = field(default_factory=dict)
    module: str = "poolserve"  # tests.e2e.launch: the same with a test backend wrapper
    port: int = 0
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, *, with_port: bool = True) -> ServerProcess:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        argv = [sys.executable, "-m", self.module, "serve", *self.args]
        if not {"--api-server-count", "--data-parallel-size"} & set(self.args):
            argv += cluster.FLAGS  # POOLSERVE_TEST_CLUSTER: every server multi-process
        if self.dtype is not None:
            argv += ["--dtype", self.dtype]
        if with_port:
            self.port = free_port()
            argv += ["--host", "127.0.0.1", "--port", str(self.port)]
        env = {
            **os.environ,
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
            # Several children share a small machine with the test process: one thread each.
            "OMP_NUM_THREADS": "1",
            **self.env,
        }
        out = (self.log_dir / "stdout").open("wb")
        err = (self.log_dir / "stderr").open("wb")
        with out, err:  # the child keeps its own copies of the descriptors
            self.proc = subprocess.Popen(argv, stdout=out, stderr=err, env=env)
        return self

    @property
    def stderr(self) -> str:
        return (self.log_dir / "stderr").read_text(encoding="utf-8", errors="replace")

    def wait_exit(self, timeout: float) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout=timeout)

    def wait_healthy(self, timeout: float = START_TIMEOUT) -> str:
        """Poll GET /health until 200; fail with the child's stderr if it dies or hangs."""
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        port_retries = 3
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                # free_port() only finds a port that was free a moment ago: another
                # process may take it first. Try another port, a few times.
                if port_retries and "address already in use" in self.stderr.lower():
                    port_retries -= 1
                    self.start()
                    continue
                pytest.fail(f"server exited with {self.proc.returncode}:\n{self.stderr[-3000:]}")
            try:
                if requests.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return self.url
            except requests.ConnectionError:
                pass
            time.sleep(0.2)
        pytest.fail(f"server not healthy after {timeout} s:\n{self.stderr[-3000:]}")

    def terminate(self, timeout: float = 10.0) -> int:
        """SIGTERM, then wait; SIGKILL if it does not go (and return its code)."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise


@dataclass
class Processes:
    """The e2e children, started together."""

    tiny: ServerProcess  # a tiny sentence-transformers BERT folder, float32
    tiny_bf16: ServerProcess  # the same folder, --dtype bfloat16 (auto's choice on some CPUs)
    default: ServerProcess  # no argument at all: the packaged all-MiniLM-L6-v2, dtype auto
    missing: ServerProcess  # a Hugging Face id that cannot be had offline
    tiny_path: Path


@pytest.fixture(scope="session")
def processes(
    tiny: Callable[..., Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Processes]:
    logs = tmp_path_factory.mktemp("e2e-logs")
    tiny_path = tiny("st", "bert")
    procs = Processes(
        tiny=ServerProcess([str(tiny_path)], logs / "tiny"),
        tiny_bf16=ServerProcess([str(tiny_path)], logs / "tiny-bf16", dtype="bfloat16"),
        default=ServerProcess([], logs / "default", dtype=None),
        missing=ServerProcess(["some-org/does-not-exist"], logs / "missing"),
        tiny_path=tiny_path,
    )
    started = [procs.tiny, procs.tiny_bf16, procs.default, procs.missing]
    try:
        for p in started:
            p.start()
        yield procs
    finally:
        for p in started:
            if p.proc is not None and p.proc.poll() is None:
                p.proc.send_signal(signal.SIGTERM)
        for p in started:
            if p.proc is not None:
                try:
                    p.proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    p.proc.kill()
                    p.proc.wait()


@pytest.fixture(scope="session")
def tiny_url(processes: Processes) -> str:
    """The live tiny-model server, float32 (shared by the e2e session)."""
    return processes.tiny.wait_healthy()


@pytest.fixture(scope="session")
def tiny_bf16_url(processes: Processes) -> str:
    """The live tiny-model server computing in bfloat16 (shared by the e2e session)."""
    return processes.tiny_bf16.wait_healthy()


@pytest.fixture(params=["float32", "bfloat16"])
def tiny_server(request: pytest.FixtureRequest, processes: Processes) -> tuple[str, str]:
    """(url, dtype) of the tiny-model server in each dtype: one test, both bounds."""
    proc = processes.tiny if request.param == "float32" else processes.tiny_bf16
    return proc.wait_healthy(), str(request.param)
