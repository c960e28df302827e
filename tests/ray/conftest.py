"""The Ray tests' local cluster: one per session (tests/ray/ray_local.py), shut down at
its end. Test modules that need ray skip themselves when it is not installed
(``pytest.importorskip``), so this directory runs clean without the extra."""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator

import pytest

from tests.ray import ray_local

HAVE_RAY = importlib.util.find_spec("ray") is not None


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[str]:
    """The session's local Ray (16 logical CPUs, services on loopback); its address."""
    if not HAVE_RAY:
        pytest.skip("ray is not installed (pip install poolserve[ray])")
    address = ray_local.ray_address()
    yield address
    ray_local.shutdown()
