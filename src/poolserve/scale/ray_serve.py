"""The HTTP server as Ray Serve replicas: ``poolserve serve ... --ray-serve --num-replicas N``.

Promises:

* Every replica serves the very app the plain server runs
  (:func:`poolserve.api.app.create_app`): every route, ``--api-key``, the body and
  admission limits, the error shapes. Each replica loads its own copy of the model as
  Serve starts it, and the app's lifespan starts and stops its engine.
* Serve's HTTP proxy listens on ``--host``/``--port`` and spreads requests over the
  replicas; each answer names its replica in the ``x-poolserve-replica`` header.
* ``--autoscaling-config JSON`` goes to the deployment's ``autoscaling_config`` (then
  ``--num-replicas`` is not used); ``--ray-actor-options JSON`` to its
  ``ray_actor_options``. By default the replicas split the local node's CPUs, so N
  of them always fit on it.
* Without ``--ray-address`` a private local Ray instance is started (its services on
  loopback) and shut down on exit; ``--ray-address auto`` (or an address) joins a
  running cluster and leaves it running. :func:`serve_on_ray` blocks until SIGINT or
  SIGTERM, then deletes the application, shuts Serve and the Ray it started down, and
  returns 0.
* Importing this module does not import ray; without the ``poolserve[ray]`` extra
  every entry point raises a PoolserveError saying ``pip install poolserve[ray]``.
* ``serve run poolserve.scale.ray_serve:app_builder model=... num_replicas=2`` runs the
  same deployment under Ray's own CLI (arguments: the ``poolserve serve`` flags, without
  dashes).

What differs from the plain server (uvicorn-level guards, per-replica limits and
metrics) is in docs/ray.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import math
import os
import re
import signal
import threading
import time
import types
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..config import Config, EngineConfig, ModelConfig, ServerConfig
from ..errors import PoolserveError

log = logging.getLogger("poolserve.ray")

# Response header naming the replica that answered (load sharing is observable).
REPLICA_HEADER = b"x-poolserve-replica"
APP_NAME = "poolserve"
INSTALL_HINT = "Ray is not installed: pip install poolserve[ray]"
# The replica's app answers 429 past --max-queued-requests; Serve must let a few more
# than that through to it (GETs such as /health count against Serve's limit too), or
# Serve would queue them instead and the client would never see the 429.
ONGOING_HEADROOM = 16
# A replica that fails to load its model fails the same way on a retry: give up early.
CONSTRUCTOR_RETRIES = 2


def require_ray() -> types.ModuleType:
    """The ray module, or a PoolserveError telling how to install it."""
    try:
        import ray
    except ImportError as exc:
        raise PoolserveError(INSTALL_HINT) from exc
    return ray


@dataclass(frozen=True)
class RayServeOptions:
    """The ``--ray-serve`` flags of ``poolserve serve``."""

    num_replicas: int = 1
    # None: start a private local Ray; "auto" or "ray://..." / "HOST:PORT": join one.
    address: str | None = None
    # The deployment's autoscaling_config; when given, num_replicas is not used.
    autoscaling_config: dict[str, Any] | None = None
    # The deployment's ray_actor_options (num_cpus, num_gpus, memory, ...).
    ray_actor_options: dict[str, Any] | None = None

    def max_replicas(self) -> int:
        if self.autoscaling_config:
            cfg = self.autoscaling_config
            return int(cfg.get("max_replicas", cfg.get("initial_replicas", 1)) or 1)
        return self.num_replicas


def _absolute_paths(config: Config) -> Config:
    """``config`` with local paths made absolute: a replica may run in another directory."""

    def fix(value: str | None) -> str | None:
        return os.path.abspath(value) if value and os.path.exists(value) else value

    model = dataclasses.replace(
        config.model,
        model=fix(config.model.model),
        tokenizer=fix(config.model.tokenizer),
        chat_template=fix(config.model.chat_template),
    )
    server = dataclasses.replace(
        config.server,
        ssl_keyfile=fix(config.server.ssl_keyfile),
        ssl_certfile=fix(config.server.ssl_certfile),
    )
    return dataclasses.replace(config, model=model, server=server)


def _replica_cores() -> int:
    """The cores this replica may use: its Ray CPU share (at least one)."""
    try:
        import ray

        share = ray.get_runtime_context().get_assigned_resources().get("CPU", 0.0)
    except Exception:  # not in a Ray worker (a unit test): the whole machine
        share = 0.0
    cores = len(os.sched_getaffinity(0))
    return max(1, min(cores, math.floor(share))) if share else cores


def _replica_name() -> str:
    try:
        from ray import serve

        return str(serve.get_replica_context().replica_id.unique_id)
    except Exception:  # outside a replica
        return str(os.getpid())


def replica_context(config: Config) -> Any:
    """The replica's serving context: as :func:`poolserve.runtime.build_context`, but the
    engine's threads sized for the replica's CPU share, not the whole node (replicas on
    one node would otherwise each take every core, as cluster.engine_main avoids too)."""
    from ..runtime import build_context

    return build_context(config, cores=_replica_cores())


# Serve's proxy gives a request without X-Request-Id one of its own, appended as the
# last header: ``str(uuid4)``. The replica tells it from a client's by that (a client
# sending a uuid4 X-Request-Id as its last header is taken for the proxy: its id still
# names the answer, but a body ``request_id`` then wins over it).
_PROXY_ID = re.compile(rb"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")
_PROXY_ID_KEY = "poolserve.proxy_request_id"


class ReplicaEdge:
    """Pure ASGI: what a replica adds around the app, outermost. Keeps the app's answers
    what the plain server's are, behind Serve's proxy:

    - a request id the proxy made up is taken out of the request's headers, so the app
      sees "no X-Request-Id" (a body ``request_id`` names the answer) and
      :class:`ProxyRequestId` makes it the id the gateway would have generated;
    - the proxy always echoes the request's id as X-Request-Id, so the app's own echo
      is dropped (two headers would read "a, a");
    - names the replica in the ``x-poolserve-replica`` response header;
    - ``mount``: Serve routes the application under this prefix; the app sees the
      path without it, as if it were served at ``/`` (tests run several apps on one
      Serve instance this way).
    """

    def __init__(self, app: Any, *, replica: str, mount: str = "") -> None:
        self.app = app
        self.replica = replica.encode("latin-1", "replace")
        self.mount = mount.rstrip("/")

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        scope = dict(scope)
        if self.mount:
            path = scope.get("path", "")
            if path == self.mount or path.startswith(self.mount + "/"):
                scope["path"] = path[len(self.mount) :] or "/"
                raw = scope.get("raw_path")
                if isinstance(raw, bytes) and raw.startswith(self.mount.encode()):
                    scope["raw_path"] = raw[len(self.mount) :] or b"/"
            root = scope.get("root_path", "")
            if root.endswith(self.mount):
                scope["root_path"] = root[: -len(self.mount)]
        headers = list(scope.get("headers", ()))
        ids = [i for i, (k, _) in enumerate(headers) if k.lower() == b"x-request-id"]
        if ids == [len(headers) - 1] and _PROXY_ID.fullmatch(headers[-1][1]):
            scope[_PROXY_ID_KEY] = headers[-1][1].decode("latin-1")
            scope["headers"] = headers[:-1]

        async def edge_send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                kept = [(k, v) for k, v in message.get("headers", ()) if k != b"x-request-id"]
                message = {**message, "headers": [*kept, (REPLICA_HEADER, self.replica)]}
            await send(message)

        await self.app(scope, receive, edge_send)


class ProxyRequestId:
    """Pure ASGI, just inside the app's gateway: a request whose id the proxy made up
    (:class:`ReplicaEdge`) gets that id as the gateway's generated one, so the answer's
    ``id`` matches the X-Request-Id the proxy sends back."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        rid = scope.get(_PROXY_ID_KEY)
        if rid is not None:
            scope.setdefault("state", {})["request_id"] = rid
        await self.app(scope, receive, send)


def _add_edges(app: Any, replica: str, mount: str) -> None:
    """Install ReplicaEdge outermost and ProxyRequestId just inside the gateway."""
    from starlette.middleware import Middleware

    from ..api.middleware import GatewayMiddleware

    app.add_middleware(ReplicaEdge, replica=replica, mount=mount)
    stack = app.user_middleware  # outermost first
    gateway = next((i for i, m in enumerate(stack) if m.cls is GatewayMiddleware), None)
    if gateway is None:
        raise RuntimeError("the app has no GatewayMiddleware")
    stack.insert(gateway + 1, Middleware(ProxyRequestId))


def _replica_logging(server: ServerConfig) -> None:
    """poolserve's logs in a replica as ``poolserve serve`` sets them up: Serve configures
    only its own loggers, so without a handler only warnings would reach Ray's worker
    log (and the driver's console)."""
    logger = logging.getLogger("poolserve")
    level = server.uvicorn_log_level.upper()
    logger.setLevel(level if level != "TRACE" else "DEBUG")
    if not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        logger.addHandler(handler)
        logger.propagate = False  # not twice, should Ray give the root logger a handler
    if server.disable_log_requests:
        logging.getLogger("poolserve.access").setLevel(logging.WARNING)


class PoolserveReplica:
    """One Serve replica: its own serving context (the model, loaded here) and the app.

    Made a Serve ingress deployment by :func:`deployment`; Serve calls
    ``__serve_build_asgi_app__`` (which loads the model) after the constructor, then
    runs the app's lifespan (which starts the engine), before the replica takes traffic.
    """

    def __init__(self, config: Config, mount: str = "") -> None:
        _replica_logging(config.server)
        self._config = config
        self._mount = mount
        self._ctx: Any = None

    async def __serve_build_asgi_app__(self) -> Any:
        import asyncio

        from ..api.app import create_app

        # Off the replica's event loop: loading takes seconds, and Serve talks to the
        # replica meanwhile.
        self._ctx = await asyncio.to_thread(replica_context, self._config)
        app = create_app(self._ctx, self._config.server)
        _add_edges(app, _replica_name(), self._mount)
        return app

    def check_health(self) -> None:
        """Serve's periodic health check: a replica whose engine died once started (the
        app's lifespan starts it) is unhealthy, and Serve replaces it."""
        engine = self._ctx.engine if self._ctx is not None else None
        if engine is None:
            return
        if engine.alive:
            self._started = True
        elif getattr(self, "_started", False):
            raise RuntimeError("the replica's engine stopped")


_DEPLOYMENT: Any = None


def deployment() -> Any:
    """The Serve deployment of :class:`PoolserveReplica` (built once, on first use)."""
    global _DEPLOYMENT
    if _DEPLOYMENT is None:
        require_ray()
        from ray import serve

        _DEPLOYMENT = serve.deployment(name="poolserve")(serve.ingress()(PoolserveReplica))
    return _DEPLOYMENT


def default_actor_options(
    config: Config, options: RayServeOptions, node_cpus: int | None
) -> dict[str, Any]:
    """Replica resources, ``--ray-actor-options`` over these defaults: on a node of
    ``node_cpus`` CPUs (a Ray this process started) the CPUs split between the (largest
    number of) replicas, so they all fit on it; on a joined cluster one CPU each, as
    Serve's own default; and one GPU each when the model runs on a GPU."""
    from ..backends import gpu_visible

    share = 1.0
    if node_cpus:
        share = max(0.01, math.floor(100 * node_cpus / options.max_replicas()) / 100)
    wanted: dict[str, Any] = {"num_cpus": share}
    if config.model.device != "cpu" and gpu_visible():
        wanted["num_gpus"] = 1
    return {**wanted, **(options.ray_actor_options or {})}


def build_app(
    config: Config,
    options: RayServeOptions,
    *,
    node_cpus: int | None = None,
    mount: str = "",
) -> Any:
    """The Serve application (``Deployment.bind(...)``) serving ``config``."""
    deploy = deployment()
    config = _absolute_paths(config)
    kwargs: dict[str, Any] = {
        "ray_actor_options": default_actor_options(config, options, node_cpus),
        "max_ongoing_requests": config.engine.max_queued_requests + ONGOING_HEADROOM,
        "graceful_shutdown_timeout_s": max(config.server.shutdown_grace, 1.0),
        "max_constructor_retry_count": CONSTRUCTOR_RETRIES,
    }
    if options.autoscaling_config:
        kwargs["autoscaling_config"] = options.autoscaling_config
    else:
        kwargs["num_replicas"] = options.num_replicas
    return deploy.options(**kwargs).bind(config, mount)


def _check(config: Config, options: RayServeOptions) -> None:
    if config.engine.data_parallel_size > 1 or (config.server.api_server_count or 1) > 1:
        raise PoolserveError(
            "--ray-serve replaces --data-parallel-size and --api-server-count: "
            "use --num-replicas (or --autoscaling-config)"
        )
    if options.num_replicas < 1:
        raise PoolserveError("--num-replicas must be at least 1")


def http_options(server: ServerConfig) -> dict[str, Any]:
    """Serve's proxy options from the server flags it can honour."""
    out: dict[str, Any] = {
        "host": server.host,
        "port": server.port,
        "keep_alive_timeout_s": max(1, math.ceil(server.keep_alive_timeout)),
    }
    if server.ssl_keyfile and server.ssl_certfile:
        out["ssl_keyfile"] = server.ssl_keyfile
        out["ssl_certfile"] = server.ssl_certfile
    return out


def start_ray(address: str | None, **init: Any) -> bool:
    """Connect to Ray at ``address``, or start a private local instance (None).

    Returns True when this call started (and so must shut down) Ray.
    """
    if address is None:
        # A private instance: its services on loopback. Ray binds them to the machine's
        # address otherwise, to accept other nodes, which a private instance never has.
        # Read when ray is first imported, so set before.
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    ray = require_ray()
    if ray.is_initialized():
        return False
    if address is None:
        init.setdefault("include_dashboard", False)
    # "local": a new instance even when RAY_ADDRESS or a `ray start` cluster is around.
    ray.init(address=address or "local", **init)
    return address is None


def _local_ray_alive() -> bool:
    """False once a Ray service this process started (GCS, raylet) has exited; True when
    it cannot tell (a joined cluster)."""
    try:
        import ray

        node: Any = ray._private.worker._global_node  # private, hence the guard
        procs = [
            info.process
            for key in ("gcs_server", "raylet")
            for info in node.all_processes.get(key, [])
        ]
        return all(p.poll() is None for p in procs)
    except Exception:
        return True


def _within(seconds: float, what: str, fn: Any, *args: Any) -> None:
    """Run ``fn(*args)``, giving up after ``seconds`` or as soon as the local Ray died:
    Serve's calls wait forever when the cluster is going away (a SIGTERM sent to the
    whole process group, as systemd does, stops Ray's own processes too)."""
    done = threading.Event()
    failed: list[BaseException] = []

    def run() -> None:
        try:
            fn(*args)
        except BaseException as exc:  # reported below, never lost in the thread
            failed.append(exc)
        finally:
            done.set()

    threading.Thread(target=run, daemon=True, name=f"poolserve-{what}").start()
    deadline = time.monotonic() + seconds
    while not done.wait(0.5):
        if time.monotonic() > deadline or not _local_ray_alive():
            log.warning("%s did not finish (Ray stopped or %.0f s passed)", what, seconds)
            return
    if failed:
        log.warning("%s failed: %s", what, failed[0])


def serve_on_ray(config: Config, options: RayServeOptions) -> int:
    """``poolserve serve --ray-serve``: run the replicas until SIGINT/SIGTERM; 0 then."""
    from ..models.spec import describe
    from ..runtime import served_names

    _check(config, options)
    if options.address is None:
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # see start_ray
    ray = require_ray()
    from ray import serve

    # Fail fast, before any Ray process starts, on a model that cannot load (reads the
    # config and tokenizer; the weights load in the replicas).
    describe(config.model)
    stop = threading.Event()

    def on_signal(signum: int, frame: types.FrameType | None) -> None:
        stop.set()

    started = start_ray(options.address)

    try:
        node_cpus = int(ray.cluster_resources().get("CPU", 0)) if started else None
        serve.start(http_options=http_options(config.server))
        app = build_app(config, options, node_cpus=node_cpus)
        serve.run(
            app,
            name=APP_NAME,
            route_prefix="/",
            logging_config={"enable_access_log": False},
        )
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                signal.signal(sig, on_signal)
        scheme = "https" if config.server.ssl_certfile else "http"
        replicas = (
            f"autoscaling {options.autoscaling_config}"
            if options.autoscaling_config
            else f"{options.num_replicas}"
        )
        log.info(
            "serving %s on %s://%s:%d with %s Ray Serve replica(s)",
            served_names(config)[0],
            scheme,
            config.server.host,
            config.server.port,
            replicas,
        )
        stop.wait()
        log.info("stopping the Ray Serve replicas")
        # The replicas finish their requests (up to --shutdown-grace), then stop.
        grace = config.server.shutdown_grace + 30.0
        _within(grace, "deleting the Serve application", serve.delete, APP_NAME)
        if started:
            _within(30.0, "shutting Serve down", serve.shutdown)
    finally:
        if started:
            ray.shutdown()
    return 0


# -- `serve run poolserve.scale.ray_serve:app_builder key=value ...` ------------------


def _serve_flags() -> argparse.ArgumentParser:
    from ..flags import add_dataclass_flags

    parser = argparse.ArgumentParser(prog="poolserve.scale.ray_serve:app_builder")
    add_dataclass_flags(parser, ModelConfig, "model")
    add_dataclass_flags(parser, EngineConfig, "engine")
    add_dataclass_flags(parser, ServerConfig, "server")
    for flag, kind in (
        ("--num-replicas", int),
        ("--autoscaling-config", str),
        ("--ray-actor-options", str),
    ):
        parser.add_argument(flag, type=kind, default=None)
    return parser


def app_builder(args: Mapping[str, str]) -> Any:
    """For ``serve run``: the ``poolserve serve`` flags as ``key=value`` arguments
    (``model=/path num_replicas=2 api_key=k dtype=float32``; ``true``/``false`` for
    switches). The proxy's host and port are ``serve run``'s own."""
    import json

    from ..flags import config_from

    parser = _serve_flags()
    switches = {a.dest: a for a in parser._actions if a.nargs == 0}
    argv: list[str] = []
    for key, value in args.items():
        flag = "--" + key.replace("_", "-")
        action = next(
            (a for a in parser._actions if flag in a.option_strings or a.dest == f"model.{key}"),
            None,
        )
        if action is None:
            raise PoolserveError(f"app_builder: unknown argument {key!r}")
        if action.dest in switches:
            if str(value).lower() in ("1", "true", "yes"):
                argv.append(flag)
        elif not action.option_strings:
            argv.insert(0, str(value))  # the positional model
        else:
            argv += [flag, str(value)]
    parsed = parser.parse_args(argv)
    config = config_from(parsed)
    options = RayServeOptions(
        num_replicas=parsed.num_replicas or 1,
        autoscaling_config=json.loads(parsed.autoscaling_config)
        if parsed.autoscaling_config
        else None,
        ray_actor_options=json.loads(parsed.ray_actor_options)
        if parsed.ray_actor_options
        else None,
    )
    _check(config, options)
    return build_app(config, options)
