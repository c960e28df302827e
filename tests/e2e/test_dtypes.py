"""Each dtype a server can run in, checked against its own bound on any CPU.

bfloat16 runs everywhere (emulated, slower, where the CPU lacks it), so the path that
``--dtype auto`` takes on a CPU with native bf16 is tested on every machine.
"""

from __future__ import annotations

import random

import numpy as np
import requests
import torch

from poolserve.backends.torch.device import resolve_dtype
from poolserve.cpu import describe
from tests.e2e.conftest import Processes
from tests.fixtures.precision import BF16_MIN_COSINE, cosines
from tests.fixtures.tiny_models import WORDS


def embed(url: str, texts: list[str]) -> np.ndarray:
    resp = requests.post(f"{url}/v1/embeddings", json={"input": texts}, timeout=60)
    assert resp.status_code == 200, resp.text
    return np.array([d["embedding"] for d in resp.json()["data"]], dtype=np.float32)


def test_bf16_server_agrees_with_float32(
    processes: Processes, tiny_url: str, tiny_bf16_url: str
) -> None:
    rng = random.Random(7)
    texts = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 60))) for _ in range(48)]
    f32, bf16 = embed(tiny_url, texts), embed(tiny_bf16_url, texts)
    cos = cosines(bf16, f32)
    assert cos.min() >= BF16_MIN_COSINE, (int(cos.argmin()), float(cos.min()))
    # bf16 really ran: its vectors are not float32's bits.
    assert np.abs(bf16 - f32).max() > 1e-5
    np.testing.assert_allclose(np.linalg.norm(bf16, axis=1), 1.0, atol=1e-5)
    # A vector of another text would fail the bound (it is not vacuous here).
    shifted = cosines(bf16, np.roll(f32, 1, axis=0))
    assert shifted.max() < BF16_MIN_COSINE
    assert "dtype=bfloat16" in processes.tiny_bf16.stderr
    assert "dtype=float32" in processes.tiny.stderr


def test_default_server_logs_the_cpu_and_autos_dtype(processes: Processes) -> None:
    if processes.default.proc is not None and processes.default.proc.poll() is None:
        processes.default.wait_healthy()  # (test_serve stops it once done)
    expected = str(resolve_dtype("auto", torch.device("cpu"))).removeprefix("torch.")
    log = processes.default.stderr
    assert f"dtype={expected}" in log, log[-2000:]
    assert describe() in log, log[-2000:]
