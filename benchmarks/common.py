"""Shared pieces of the benchmarks: the seeded workload, a server subprocess, RSS."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import requests

WORDS = (
    "time person year way day thing man world life hand part child eye woman place work week "
    "case point government company number group problem fact be have do say get make go know "
    "take see come think look want give use find tell ask work seem feel try leave call good "
    "new first last long great little own other old right big high different small large next "
    "early young important few public bad same able to of in for on with at by from up about "
    "into over after beneath under above the and a that I it not he as you this but his they "
    "her she or an will my one all would there their what so if when can no just him know "
    "people into year your some could them see other than then now look only come its over "
    "think also back after use two how our work first well way even new want because any "
    "these give day most us search retrieval embedding vector model server batch token query "
    "document ranking latency throughput memory cluster network storage database index cache"
).split()


def workload(n: int = 2000, lo: int = 5, hi: int = 120, seed: int = 0) -> list[str]:
    """``n`` texts of ``lo``..``hi`` words from a seeded generator (the issue's workload)."""
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(lo, hi))) for _ in range(n)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rss_mib(pid: int) -> tuple[float, float]:
    """(current, peak) resident set size of ``pid`` in MiB, from /proc."""
    cur = peak = 0.0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            cur = int(line.split()[1]) / 1024
        elif line.startswith("VmHWM:"):
            peak = int(line.split()[1]) / 1024
    return cur, peak


@contextlib.contextmanager
def poolserve_server(
    args: list[str], timeout: float = 180, env: dict[str, str] | None = None
) -> Iterator[tuple[str, int]]:
    """Start ``poolserve serve ARGS`` on a free loopback port; yield (url, pid).

    ``env`` adds to the environment (e.g. PYTHONPATH to run another checkout's source).
    """
    port = free_port()
    cmd = [
        sys.executable,
        "-m",
        "poolserve",
        "serve",
        *args,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--uvicorn-log-level",
        "warning",
    ]
    proc = subprocess.Popen(cmd, env={**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})})
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"poolserve exited with {proc.returncode}")
            try:
                if requests.get(url + "/health", timeout=1).status_code == 200:
                    break
            except requests.RequestException:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("poolserve did not become healthy")
            time.sleep(0.2)
        yield url, proc.pid
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


def peer(
    python: str, kind: str, model_dir: str, backend: str, inputs: list[Any]
) -> tuple[float, np.ndarray] | str:
    """(seconds, outputs) of a sentence-transformers ``backend`` run by st_peer.py under
    ``python`` (a venv set up as PEERS.md says), or why it could not run."""
    with tempfile.TemporaryDirectory() as tmp:
        inputs_file, out = f"{tmp}/inputs.json", f"{tmp}/out.npy"
        Path(inputs_file).write_text(json.dumps(inputs), encoding="utf-8")
        script = str(Path(__file__).with_name("st_peer.py"))
        run = subprocess.run(
            [python, script, kind, model_dir, backend, inputs_file, out],
            capture_output=True,
            text=True,
            env={**os.environ, "HF_HUB_OFFLINE": "1"},
        )
        if run.returncode != 0:
            return run.stderr.strip().splitlines()[-1] if run.stderr.strip() else "failed"
        return float(json.loads(run.stdout.strip().splitlines()[-1])["seconds"]), np.load(out)


def add_comparison_flags(parser: argparse.ArgumentParser) -> None:
    """``--serve FLAGS`` (repeatable) and ``--peers-python``, as both benchmarks take them."""
    parser.add_argument(
        "--serve",
        action="append",
        default=None,
        metavar="FLAGS",
        help="poolserve flags of one measured server (repeatable); default: the default "
        "flags, '--backend torch', and '--dtype float32'",
    )
    parser.add_argument(
        "--peers-python",
        default=None,
        help="a python whose venv has sentence-transformers[openvino,onnx] (PEERS.md): "
        "measures the peer's backend='onnx' and backend='openvino' in the same run",
    )
