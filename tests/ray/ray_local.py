"""One local Ray instance (and one Serve instance on it) per test process.

Shared by tests/ray/ and the ``POOLSERVE_TEST_CLUSTER=rayserve2`` contract servers
(tests/fixtures/cluster.py): starting Ray takes seconds, and Serve has one HTTP proxy
per cluster, so every test server is a Serve *application* on it, under its own route
prefix (``/s<N>``), that its replicas strip again (``ReplicaEdge``'s mount): the app
sees the paths a plain server sees.

Ray's services bind to loopback; everything started here is shut down when the test
process exits (:func:`shutdown`, also registered with atexit).
"""

from __future__ import annotations

import atexit
import contextlib
import itertools
import os
import socket
from collections.abc import Iterator
from typing import Any

# Ray reads this when first imported: its services then bind to loopback, not to the
# machine's address. Set before anything imports ray.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
# Replicas and actors inherit the test run's model cache (set by tests/conftest.py).

# Logical CPUs of the test instance: more than the 2 real cores, so every contract
# server's 2 replicas (REPLICA_CPUS each) and the Ray Data actors fit at once.
NUM_CPUS = 16
REPLICA_CPUS = 0.5
OBJECT_STORE_BYTES = 1 << 30

_STATE: dict[str, Any] = {}
_APPS = itertools.count()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def ray_address() -> str:
    """Start the local Ray instance (once); its GCS address, for ``ray.init(address=)``
    and ``--ray ADDRESS`` from other processes."""
    import ray

    if "address" not in _STATE:
        if not ray.is_initialized():
            ray.init(
                num_cpus=NUM_CPUS,
                include_dashboard=False,
                object_store_memory=OBJECT_STORE_BYTES,
                log_to_driver=False,
                configure_logging=False,
            )
            _STATE["started"] = True
            atexit.register(shutdown)
        _STATE["address"] = ray.get_runtime_context().gcs_address
    return str(_STATE["address"])


def serve_port() -> int:
    """Start Serve's HTTP proxy on a free loopback port (once); the port."""
    from ray import serve

    ray_address()
    if "port" not in _STATE:
        port = _free_port()
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        _STATE["port"] = port
    return int(_STATE["port"])


@contextlib.contextmanager
def serve_app(config: Any, replicas: int = 2, **options: Any) -> Iterator[str]:
    """``config`` served by ``replicas`` Serve replicas of poolserve's deployment, as an
    application of its own; yield its base URL (``http://127.0.0.1:PORT/s<N>``)."""
    from ray import serve

    from poolserve.scale.ray_serve import RayServeOptions, build_app

    port = serve_port()
    name = f"s{next(_APPS)}"
    opts = RayServeOptions(
        num_replicas=replicas, ray_actor_options={"num_cpus": REPLICA_CPUS}, **options
    )
    app = build_app(config, opts, mount=f"/{name}")
    serve.run(app, name=name, route_prefix=f"/{name}", logging_config={"log_level": "WARNING"})
    try:
        yield f"http://127.0.0.1:{port}/{name}"
    finally:
        with contextlib.suppress(Exception):
            serve.delete(name)


def shutdown() -> None:
    """Shut Serve and Ray down, if this module started them."""
    if not _STATE.pop("started", False):
        return
    import ray
    from ray import serve

    if _STATE.pop("port", None) is not None:
        with contextlib.suppress(Exception):
            serve.shutdown()
    _STATE.pop("address", None)
    ray.shutdown()
