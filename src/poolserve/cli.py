"""The ``poolserve`` command: ``serve`` (the HTTP server) and the batch commands
(``embed``, ``classify``, ``score``, ``run-batch``: poolserve/batch/)."""

from __future__ import annotations

import argparse
import logging
import math
import signal
import sys
import threading
import types
from collections.abc import Sequence

from . import __version__, config_file
from .config import Config, EngineConfig, ModelConfig, ServerConfig
from .errors import ModelLoadError, PoolserveError
from .flags import add_dataclass_flags, config_from, expand_dotted
from .vllm_flags import add_vllm_engine_flags, check_vllm_engine_flags, dashed

# JSON flags that also take vLLM's dotted form (--pooler-config.pooling_type MEAN).
DOTTED_FLAGS = {
    "--pooler-config": "--pooler-config",
    "--override-pooler-config": "--pooler-config",
    "--hf-overrides": "--hf-overrides",
}

# Kept for callers of the earlier private name.
_config_from = config_from


def build_parser() -> argparse.ArgumentParser:
    """Every sub-command's parser; each sets ``handler(args) -> exit code``."""
    from .batch.commands import add_batch_commands

    parser = argparse.ArgumentParser(prog="poolserve", description=__doc__)
    parser.add_argument("--version", action="version", version=f"poolserve {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    serve_cmd = sub.add_parser("serve", help="Serve a pooling model over HTTP (vLLM's API).")
    add_dataclass_flags(serve_cmd, ModelConfig, "model")
    add_dataclass_flags(serve_cmd, EngineConfig, "engine")
    add_dataclass_flags(serve_cmd, ServerConfig, "server")
    serve_cmd.add_argument(
        "--config",
        dest="config_file",
        metavar="FILE.yaml",
        help="Flags from a YAML file (vLLM's --config); a top-level `models:` list serves "
        "several models in one server, routed by each request's `model` (docs/models.md).",
    )
    _add_ray_serve_flags(serve_cmd)  # Ray Serve scale-out (poolserve/scale/ray_serve.py)
    add_vllm_engine_flags(serve_cmd)
    serve_cmd.set_defaults(handler=_serve_command)
    add_batch_commands(sub)
    return parser


# -- Ray Serve scale-out (the poolserve[ray] extra): flags and dispatch ----------------


def _add_ray_serve_flags(cmd: argparse.ArgumentParser) -> None:
    from .flags import _json_arg

    group = cmd.add_argument_group("Ray Serve (pip install poolserve[ray]; docs/ray.md)")
    group.add_argument(
        "--ray-serve",
        action="store_true",
        help="Serve the same app as Ray Serve replicas, each with its own copy of the model.",
    )
    group.add_argument(
        "--num-replicas", type=int, default=1, help="Ray Serve replicas (default 1)."
    )
    group.add_argument(
        "--ray-address",
        default=None,
        help="Ray cluster to join ('auto', 'ray://HOST:PORT'); default: start a local Ray.",
    )
    group.add_argument(
        "--autoscaling-config",
        type=_json_arg,
        default=None,
        help="JSON: the deployment's Ray Serve autoscaling_config (replaces --num-replicas).",
    )
    group.add_argument(
        "--ray-actor-options",
        type=_json_arg,
        default=None,
        help="JSON: each replica's ray_actor_options (default: the node's CPUs split "
        "between the replicas; one GPU each on a GPU).",
    )


def _serve_command(args: argparse.Namespace) -> int:
    """``poolserve serve``: uvicorn, or Ray Serve replicas with ``--ray-serve`` (only then
    is poolserve.scale, and so ray, imported)."""
    listed: list[argparse.Namespace] | None = getattr(args, "models_args", None)
    for each in listed or [args]:
        check_vllm_engine_flags(each)
    config = config_from(args)
    models = [config_from(each) for each in listed] if listed is not None else None
    if models is not None and args.ray_serve:
        raise PoolserveError(
            "--ray-serve serves one model per application; a --config file listing "
            "`models:` runs in one server process"
        )
    if not args.ray_serve:
        given = [
            flag
            for flag, value in (
                ("--num-replicas", args.num_replicas != 1),
                ("--ray-address", args.ray_address is not None),
                ("--autoscaling-config", args.autoscaling_config is not None),
                ("--ray-actor-options", args.ray_actor_options is not None),
            )
            if value
        ]
        if given:
            raise PoolserveError(f"{', '.join(given)} need --ray-serve")
        return serve(config, models)
    from .scale.ray_serve import RayServeOptions, serve_on_ray

    level = config.server.uvicorn_log_level.upper()
    logging.basicConfig(
        level=getattr(logging, level if level != "TRACE" else "DEBUG"),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    options = RayServeOptions(
        num_replicas=args.num_replicas,
        address=args.ray_address,
        autoscaling_config=args.autoscaling_config,
        ray_actor_options=args.ray_actor_options,
    )
    return serve_on_ray(config, options)


# -- end of Ray Serve ------------------------------------------------------------------


def _stopped_on_purpose(signum: int, frame: types.FrameType | None) -> None:
    """Exit 0: uvicorn calls this after its graceful shutdown on SIGINT/SIGTERM."""
    raise SystemExit(0)


def serve(config: Config, models: list[Config] | None = None) -> int:
    """Load the model (or each of ``models``, one server routing by ``model``: their
    server settings are ``config``'s), then run uvicorn until SIGINT/SIGTERM (then exit
    0, as vLLM)."""
    import uvicorn

    from .api.app import create_app
    from .api.connections import uvicorn_options
    from .backends import gpu_visible
    from .cluster import cluster_sizes, run_cluster
    from .runtime import build_context

    level = config.server.uvicorn_log_level.upper()
    logging.basicConfig(
        level=getattr(logging, level if level != "TRACE" else "DEBUG"),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if config.server.disable_log_requests:
        logging.getLogger("poolserve.access").setLevel(logging.WARNING)
    if models is not None:
        # Each model's engine in its own process: no GIL shared between models.
        return run_cluster(config, config.server.api_server_count or 1, _engines(models), models)
    gpu = config.model.device != "cpu" and gpu_visible()
    fronts, engines = cluster_sizes(config, gpu=gpu)
    if fronts > 1 or engines > 1:
        return run_cluster(config, fronts, engines)
    app = create_app(build_context(config), config.server)
    if threading.current_thread() is threading.main_thread():
        # uvicorn shuts down gracefully on these signals, then re-raises the signal to
        # the handler it found, so by default the process would die *by* the signal.
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, _stopped_on_purpose)
    uvicorn.run(
        app,
        host=config.server.host,
        port=config.server.port,
        log_level=config.server.uvicorn_log_level,
        ssl_keyfile=config.server.ssl_keyfile,
        ssl_certfile=config.server.ssl_certfile,
        access_log=False,
        # uvicorn stops accepting, then waits this long for in-flight requests (queued
        # engine work included) before it cancels them; the engine then stops.
        timeout_graceful_shutdown=math.ceil(config.server.shutdown_grace),
        # Read deadlines, idle keep-alive and the connection cap (api/connections.py).
        **uvicorn_options(config.server),
    )
    return 0


def _engines(models: list[Config]) -> int:
    """Engine processes per model of a models file: --data-parallel-size, which must be
    the same for every model (give it on the command line or the file's top level).
    PoolserveError, too, for a served name given to two models."""
    from .runtime import served_names

    seen: set[str] = set()
    for each in models:
        for name in served_names(each):
            if name in seen:  # refused before any model loads
                raise PoolserveError(
                    f"served model name `{name}` is given to two models; each name must "
                    "name one model"
                )
            seen.add(name)
    sizes = {max(1, each.engine.data_parallel_size) for each in models}
    if len(sizes) > 1:
        raise PoolserveError(
            "--data-parallel-size differs between the models; give it on the command line "
            "or at the top of the --config file"
        )
    return sizes.pop()


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line (default: ``sys.argv[1:]``) parsed, with ``serve --config FILE``
    read in (config_file.py) and vLLM's dotted JSON flags (``--pooler-config.pooling_type
    MEAN``) merged first; exits 2 on a bad flag.

    A file listing ``models:`` gives one parse per model: ``models_args`` holds them all
    (the first is also the result); otherwise ``models_args`` is None.
    """
    parser = build_parser()
    raw = sys.argv[1:] if argv is None else list(argv)
    try:
        argvs, listed = config_file.expand(raw, _serve_parser(parser)._option_string_actions)
    except PoolserveError as exc:
        parser.error(exc.message)
    parsed = []
    for args in argvs:
        try:
            args = expand_dotted(dashed(args), DOTTED_FLAGS)
        except argparse.ArgumentTypeError as exc:
            parser.error(str(exc))
        parsed.append(parser.parse_args(args))
    result = parsed[0]
    result.models_args = parsed if listed else None
    return result


def _serve_parser(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The ``serve`` sub-command's parser (its flags tell a models file's keys)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            found: argparse.ArgumentParser = action.choices["serve"]
            return found
    raise AssertionError("no serve sub-command")


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        code: int = args.handler(args)
        return code
    except ModelLoadError as exc:
        print(f"poolserve: error: {exc}", file=sys.stderr)
        return 1
    except PoolserveError as exc:
        print(f"poolserve: error: {exc.message}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
