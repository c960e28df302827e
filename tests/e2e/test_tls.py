"""TLS: ``--ssl-keyfile``/``--ssl-certfile`` with a self-signed certificate made at test time."""

from __future__ import annotations

import gc
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import requests

from tests.e2e.conftest import START_TIMEOUT, ServerProcess


def self_signed(out: Path) -> tuple[Path, Path]:
    """A key and a one-day certificate for 127.0.0.1, made with the openssl command."""
    key, cert = out / "key.pem", out / "cert.pem"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes",
            "-keyout", str(key), "-out", str(cert), "-days", "1",
            "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )  # fmt: skip
    return key, cert


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")
def test_serves_https_and_refuses_plain_http(tiny: Callable[..., Path], tmp_path: Path) -> None:
    key, cert = self_signed(tmp_path)
    server = ServerProcess(
        [
            str(tiny("st")),
            "--ssl-keyfile",
            str(key),
            "--ssl-certfile",
            str(cert),
            "--shutdown-grace",
            "10",
        ],
        tmp_path / "tls",
    ).start()
    try:
        base = f"https://127.0.0.1:{server.port}"
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            assert server.proc is not None and server.proc.poll() is None, server.stderr[-3000:]
            try:
                if requests.get(base + "/health", verify=str(cert), timeout=2).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            assert time.monotonic() < deadline, server.stderr[-3000:]
            time.sleep(0.2)
        resp = requests.post(
            base + "/v1/embeddings", json={"input": "over tls"}, verify=str(cert), timeout=30
        )
        assert resp.status_code == 200, resp.text
        assert len(resp.json()["data"][0]["embedding"]) == 32
        # Unverified clients are refused by the client side; plain HTTP by the server.
        with pytest.raises(requests.exceptions.SSLError):
            requests.get(base + "/health", timeout=5)
        with pytest.raises(requests.ConnectionError):
            requests.get(f"http://127.0.0.1:{server.port}/health", timeout=5)
        # A response object keeps its TLS connection open; the server's graceful
        # shutdown would wait for it (up to --shutdown-grace).
        del resp
        gc.collect()
    finally:
        assert server.terminate(timeout=30) == 0
