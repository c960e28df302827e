"""``--api-server-count N`` and ``--data-parallel-size M``: one server, several processes.

The parent binds the port, starts M engine processes (each loads the model and serves
its :class:`~poolserve.engine.Engine` on a Unix socket, see ``engine/remote.py``), then
N front-end processes that share the listening socket: each parses, tokenizes and
answers HTTP, sending token arrays to the engine with the fewest tokens in flight. The
admission counts (``--max-queued-requests``, ``--max-inflight-bytes``) live in shared
memory, so limits hold for the whole server.

Lifetime: SIGTERM/SIGINT to the parent stops the front ends first (they finish what
they admitted, up to ``--shutdown-grace``), then the engines; exit 0. A child that
dies unasked stops the whole server with one log line naming it (exit 1). Children
die with the parent (PR_SET_PDEATHSIG) and sit in their own process group, so a
terminal's Ctrl-C reaches the parent alone and the order above holds.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import dataclasses
import logging
import math
import multiprocessing
import multiprocessing.connection
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from typing import Any

from .config import Config
from .metrics import MULTIPROC_DIR

log = logging.getLogger("poolserve")

_START_TIMEOUT = 600.0  # seconds an engine may take to load its model
# Several models: the engines yield the CPU to the front end, which routes every model's
# requests; so one model's busy engine delays the front end's work for another model
# less (measured: see docs/models.md).
_ENGINE_NICENESS = 5

# (role and index, process) of every child a server started.
Children = list[tuple[str, multiprocessing.process.BaseProcess]]


def cluster_sizes(config: Config, gpu: bool) -> tuple[int, int]:
    """(front ends, engines) for ``config``: the flags, else 1 front end on a CPU (the
    model needs the cores) and min(4, cores // 4) with a GPU."""
    engines = max(1, config.engine.data_parallel_size)
    fronts = config.server.api_server_count
    if fronts is None:
        cores = len(os.sched_getaffinity(0))
        fronts = max(1, min(4, cores // 4)) if gpu else 1
    return max(1, fronts), engines


def _die_with_parent() -> None:
    """Linux: this process gets SIGTERM when its parent dies (no orphans)."""
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _child_setup(level: str) -> None:
    os.setpgrp()  # Ctrl-C in a terminal reaches the parent only
    _die_with_parent()
    logging.basicConfig(
        level=getattr(logging, level.upper() if level != "trace" else "DEBUG"),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


def _engine_device(config: Config, index: int, gpus: int) -> Config:
    """Engine ``index``'s config: its own GPU when there are enough for one each."""
    device = config.model.device
    if gpus >= 2 and device in ("auto", "cuda"):
        model = dataclasses.replace(config.model, device=f"cuda:{index % gpus}")
        return dataclasses.replace(config, model=model)
    return config


def engine_main(
    config: Config,
    path: str,
    cores: int,
    niceness: int,
    ready: multiprocessing.connection.Connection,
) -> None:
    """An engine process: load the model, serve it on ``path`` until SIGTERM, its CPU
    priority lowered by ``niceness``."""
    _child_setup(config.server.uvicorn_log_level)
    if niceness:
        os.nice(niceness)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    from .errors import ModelLoadError, PoolserveError
    from .metrics import Metrics
    from .runtime import build_engine, load_model, served_names

    try:
        loaded = load_model(config.model)
        metrics = Metrics(served_names(config)[0])  # batch metrics, summed by /metrics
        engine = build_engine(config, loaded, cores=cores, observer=metrics)
    except ModelLoadError as exc:
        ready.send(("error", str(exc)))
        sys.exit(1)
    except PoolserveError as exc:
        ready.send(("error", exc.message))
        sys.exit(1)
    except Exception as exc:
        ready.send(("error", f"{exc.__class__.__name__}: {exc}"))
        sys.exit(1)
    asyncio.run(_run_engine(engine, path, ready, loaded.info.dtype, loaded.info.device, config))


async def _run_engine(
    engine: Any,
    path: str,
    ready: multiprocessing.connection.Connection,
    dtype: str,
    device: str,
    config: Config,
) -> None:
    from .engine.remote import serve_engine

    await engine.start()
    server = await serve_engine(engine, path)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    ready.send(("ready", dtype, device))
    await stop.wait()
    server.close()
    await engine.stop(grace=config.server.shutdown_grace)


# One served model as a front end sees it: (its config, its engines' socket paths,
# (dtype, device) as its engines loaded it).
Served = tuple[Config, list[str], tuple[str, str]]


def frontend_main(
    config: Config,
    sock: socket.socket,
    served: list[Served],
    counts: Any,
    ready: multiprocessing.connection.Connection,
) -> None:
    """A front-end process: HTTP on the shared ``sock`` for every model of ``served``
    (routed by ``model`` when there are several), each over its own engines."""
    _child_setup(config.server.uvicorn_log_level)
    import uvicorn

    from .api.app import create_app
    from .api.connections import uvicorn_options
    from .runtime import frontend_context
    from .serving.router import ServedModels

    if config.server.disable_log_requests:
        logging.getLogger("poolserve.access").setLevel(logging.WARNING)
    try:
        models = ServedModels([frontend_context(m, paths, *facts) for m, paths, facts in served])
    except Exception as exc:
        ready.send(("error", f"{exc.__class__.__name__}: {exc}"))
        sys.exit(1)
    app = create_app(models, config.server, counts=counts)
    uv_config = uvicorn.Config(
        app,
        log_level=config.server.uvicorn_log_level,
        ssl_keyfile=config.server.ssl_keyfile,
        ssl_certfile=config.server.ssl_certfile,
        access_log=False,
        timeout_graceful_shutdown=math.ceil(config.server.shutdown_grace),
        **uvicorn_options(config.server, counts),
    )
    server = uvicorn.Server(uv_config)
    ready.send(("ready",))
    server.run(sockets=[sock])


def _bind(config: Config) -> socket.socket:
    host, port = config.server.host, config.server.port
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    # Not listening yet: the first front end to serve calls listen() on this shared
    # socket, so until the server can answer, clients are refused, not left hanging.
    return sock


def _gpu_count() -> int:
    with contextlib.suppress(OSError):
        return len(os.listdir("/proc/driver/nvidia/gpus"))
    return 0


def run_cluster(
    config: Config, fronts: int, engines: int, models: list[Config] | None = None
) -> int:
    """Run the server as ``fronts`` front ends over ``engines`` engine processes per
    model: ``config``'s model, or each of ``models`` (a --config file's list; their
    server settings are ``config``'s). Each model's engines are its own processes, so
    one model's slow batches or failure never hold another's (no shared GIL)."""
    from .api.admission import SharedCounts
    from .runtime import served_names

    ctx = multiprocessing.get_context("spawn")
    tmp = tempfile.mkdtemp(prefix="poolserve-")
    # Every child writes its metrics here; /metrics on any front end sums them.
    os.environ[MULTIPROC_DIR] = os.path.join(tmp, "metrics")
    os.makedirs(os.environ[MULTIPROC_DIR])
    models = models or [config]
    paths = [
        [os.path.join(tmp, f"engine-{m}-{i}.sock") for i in range(engines)]
        for m in range(len(models))
    ]
    cores = len(os.sched_getaffinity(0))
    gpus = _gpu_count()
    sock = _bind(config)  # a port in use fails here, before any model loads
    children: Children = []
    stopping = False

    def on_signal(signum: int, frame: Any) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        share = max(1, cores // (engines * len(models)))  # CPU engines split the cores
        several = len(models) > 1
        answers = _start_all(
            ctx,
            children,
            [
                (
                    f"engine {i}" + (f" of {served_names(model)[0]}" if several else ""),
                    engine_main,
                    (
                        _engine_device(model, i, gpus),
                        path,
                        share,
                        _ENGINE_NICENESS if several else 0,
                    ),
                )
                for model, model_paths in zip(models, paths, strict=True)
                for i, path in enumerate(model_paths)
            ],
            lambda: stopping,
        )
        # (dtype, device) of each model: the same for each of its engines.
        served = [
            (model, model_paths, (answers[m * engines][1], answers[m * engines][2]))
            for m, (model, model_paths) in enumerate(zip(models, paths, strict=True))
        ]
        counts = SharedCounts(ctx)
        _start_all(
            ctx,
            children,
            [
                (f"front end {i}", frontend_main, (config, sock, served, counts))
                for i in range(fronts)
            ],
            lambda: stopping,
        )
        for name, child in children:
            log.info("started %s (pid %s)", name, child.pid)
        log.info(
            "serving on http://%s:%d with %d front-end process(es) and %d engine process(es)",
            config.server.host,
            config.server.port,
            fronts,
            engines * len(models),
        )
        sock.close()  # the children hold it
        return _supervise(children, lambda: stopping)
    finally:
        _stop_all(children, config.server.shutdown_grace)
        with contextlib.suppress(OSError):
            sock.close()
        shutil.rmtree(tmp, ignore_errors=True)


def _start_all(
    ctx: Any,
    children: Children,
    specs: list[tuple[str, Any, tuple[Any, ...]]],
    stopping: Any,
) -> list[tuple[Any, ...]]:
    """Start a process per (name, target, args) (the ready pipe is appended to args),
    then wait for each to say it is ready; a start-up failure raises ModelLoadError with
    the child's one-line reason (as one process would say it)."""
    from .errors import ModelLoadError

    waits = []
    for name, target, args in specs:
        parent_end, child_end = ctx.Pipe(duplex=False)
        proc = ctx.Process(target=target, args=(*args, child_end), name=f"poolserve {name}")
        proc.start()
        child_end.close()
        children.append((name, proc))
        waits.append((name, proc, parent_end))
    answers = []
    for name, proc, conn in waits:
        answer = _await_ready(name, proc, conn, stopping)
        if answer[0] != "ready":
            # Several models: say which one failed (`engine 0 of NAME`).
            model = name.partition(" of ")[2]
            raise ModelLoadError(f"{model}: {answer[1]}" if model else str(answer[1]))
        answers.append(answer)
    return answers


def _await_ready(
    name: str,
    proc: multiprocessing.process.BaseProcess,
    conn: multiprocessing.connection.Connection,
    stopping: Any,
) -> tuple[Any, ...]:
    deadline = time.monotonic() + _START_TIMEOUT
    while time.monotonic() < deadline:
        if stopping():
            raise SystemExit(0)
        if conn.poll(0.1):
            try:
                return tuple(conn.recv())
            except EOFError:
                break
        if not proc.is_alive():
            break
    return ("error", f"exited with code {proc.exitcode} while starting")


def _supervise(
    children: Children,
    stopping: Any,
) -> int:
    """Wait for a stop signal (0) or a child's unasked exit (1, logged)."""
    while not stopping():
        sentinels = [proc.sentinel for _, proc in children]
        done = multiprocessing.connection.wait(sentinels, timeout=0.2)
        for name, proc in children:
            if proc.sentinel in done:
                proc.join(5)  # collect its exit code
                log.error(
                    "%s (pid %s) exited with code %s; stopping the server",
                    name,
                    proc.pid,
                    proc.exitcode,
                )
                return 1
    return 0


def _stop_all(
    children: list[tuple[str, multiprocessing.process.BaseProcess]], grace: float
) -> None:
    """Front ends first (they finish their requests), then engines; kill what lingers."""
    for role in ("front end", "engine"):
        group = [proc for name, proc in children if name.startswith(role) and proc.is_alive()]
        for proc in group:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid or 0, signal.SIGTERM)
        deadline = time.monotonic() + grace + 5
        for proc in group:
            proc.join(max(0.0, deadline - time.monotonic()))
            if proc.is_alive():
                log.error("%s did not stop in time; killing it", proc.name)
                proc.kill()
                proc.join(5)
