"""The ``poolserve`` command: ``serve`` (the HTTP server) and ``embed`` (offline batch)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import os
import signal
import sys
import threading
import types
import typing
from collections.abc import Sequence
from typing import Any

from . import __version__
from .config import Config, EngineConfig, ModelConfig, ServerConfig, parse_size
from .errors import ModelLoadError, PoolserveError


def _json_arg(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("must be a JSON object")
    return value


def _list_arg(text: str) -> list[str]:
    """One value, or vLLM's JSON-list form of several (``'["a", "b"]'``)."""
    if not text.lstrip().startswith("["):
        return [text]
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not a JSON list: {exc}") from exc
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise argparse.ArgumentTypeError("must be a JSON list of strings")
    return value


def _size_arg(text: str) -> int:
    try:
        return parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def _base_type(tp: Any) -> Any:
    """``int | None`` -> int; ``tuple[str, ...]`` -> str."""
    if isinstance(tp, types.UnionType) or typing.get_origin(tp) is typing.Union:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return _base_type(args[0])
    if typing.get_origin(tp) is tuple:
        return typing.get_args(tp)[0]
    return tp


def add_dataclass_flags(parser: argparse.ArgumentParser, cls: type, dest_prefix: str) -> None:
    """One flag per field of ``cls`` (``--field-name``), typed and documented from it."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        meta = f.metadata
        dest = f"{dest_prefix}.{f.name}"
        default = f.default if f.default is not dataclasses.MISSING else None
        help_text = meta.get("help", "")
        if meta.get("positional"):
            parser.add_argument(
                dest, metavar=f.name.upper(), nargs="?", default=default, help=help_text
            )
            continue
        flags = ["--" + f.name.replace("_", "-"), *meta.get("aliases", ())]
        base = _base_type(hints[f.name])
        if base is bool:
            parser.add_argument(
                *flags, dest=dest, action="store_true", default=default, help=help_text
            )
            continue
        parsers = {"size": _size_arg, "json": _json_arg, "list": _list_arg}
        kind = parsers.get(meta.get("parse", ""), base)
        kwargs: dict[str, Any] = {"dest": dest, "default": default, "help": help_text, "type": kind}
        if "choices" in meta:
            kwargs["choices"] = meta["choices"]
        if "nargs" in meta:
            kwargs["nargs"] = meta["nargs"]
        parser.add_argument(*flags, **kwargs)


_SECTIONS: dict[str, type] = {"model": ModelConfig, "engine": EngineConfig, "server": ServerConfig}


def _config_from(
    args: argparse.Namespace, sections: Sequence[str] = ("model", "engine", "server")
) -> Config:
    """Build the Config from parsed flags (sections without flags keep their defaults)."""
    parts: dict[str, Any] = {}
    for name in sections:
        cls = _SECTIONS[name]
        values = {}
        for f in dataclasses.fields(cls):
            value = getattr(args, f"{name}.{f.name}")
            if isinstance(value, list) and f.metadata.get("parse") == "list":
                value = tuple(v for values in value for v in values)
            elif isinstance(value, list):
                value = tuple(value)
            if value is None and f.default is not dataclasses.MISSING:
                value = f.default
            values[f.name] = value
        parts[name] = cls(**values)
    server = parts.setdefault("server", ServerConfig())
    if not server.api_key and os.environ.get("POOLSERVE_API_KEY"):
        keys = tuple(k for k in os.environ["POOLSERVE_API_KEY"].split(",") if k)
        parts["server"] = dataclasses.replace(server, api_key=keys)
    return Config(**parts)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="poolserve", description=__doc__)
    parser.add_argument("--version", action="version", version=f"poolserve {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="Serve a pooling model over HTTP (vLLM's API).")
    add_dataclass_flags(serve, ModelConfig, "model")
    add_dataclass_flags(serve, EngineConfig, "engine")
    add_dataclass_flags(serve, ServerConfig, "server")
    embed = sub.add_parser("embed", help="Embed a file of texts offline (one per line).")
    add_dataclass_flags(embed, ModelConfig, "model")
    add_dataclass_flags(embed, EngineConfig, "engine")
    embed.add_argument(
        "--input",
        "-i",
        default="-",
        help="Text file, one input per line, or .jsonl with a 'text' field; - for stdin.",
    )
    embed.add_argument(
        "--output",
        "-o",
        default="-",
        help="Output .npy (float32 [n, dim]) or .jsonl; - for JSONL on stdout.",
    )
    embed.add_argument(
        "--normalize",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="Override the model's normalization.",
    )
    embed.add_argument("--dimensions", type=int, default=None, help="Matryoshka dimensions.")
    embed.add_argument(
        "--truncate-prompt-tokens",
        type=int,
        default=None,
        help="Truncate inputs to this many tokens (-1: the max length).",
    )
    embed.add_argument("--chunk", type=int, default=1024, help="Inputs per engine call.")
    return parser


def _stopped_on_purpose(signum: int, frame: types.FrameType | None) -> None:
    """Exit 0: uvicorn calls this after its graceful shutdown on SIGINT/SIGTERM."""
    raise SystemExit(0)


def serve(config: Config) -> int:
    """Load the model, then run uvicorn until SIGINT/SIGTERM (then exit 0, as vLLM)."""
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
    fronts, engines = cluster_sizes(config, gpu=config.model.device != "cpu" and gpu_visible())
    if fronts > 1 or engines > 1:
        return run_cluster(config, fronts, engines)
    ctx = build_context(config)
    app = create_app(ctx, config.server)
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


def _read_inputs(path: str) -> list[str]:
    stream = sys.stdin if path == "-" else open(path, encoding="utf-8")  # noqa: SIM115
    with stream:
        lines = [line.rstrip("\n") for line in stream]
    if path.endswith(".jsonl"):
        return [str(json.loads(line)["text"]) for line in lines if line.strip()]
    return [line for line in lines if line]


def embed_file(args: argparse.Namespace) -> int:
    """``poolserve embed``: the offline engine over a file; exit 1 on any bad input."""
    import numpy as np

    from .offline import PoolingModel

    cfg = _config_from(args, ("model", "engine"))
    texts = _read_inputs(args.input)
    options = {**dataclasses.asdict(cfg.model), **dataclasses.asdict(cfg.engine)}
    model_name = options.pop("model")
    with PoolingModel(model_name, **options) as model:
        chunks = [
            model.embed(
                texts[i : i + args.chunk],
                normalize=args.normalize,
                dimensions=args.dimensions,
                truncate_prompt_tokens=args.truncate_prompt_tokens,
            )
            for i in range(0, len(texts), args.chunk)
        ]
    vectors = np.concatenate(chunks) if chunks else np.zeros((0, 0), np.float32)
    if args.output.endswith(".npy"):
        np.save(args.output, vectors)
    else:
        import orjson

        out = sys.stdout.buffer if args.output == "-" else open(args.output, "wb")  # noqa: SIM115
        with out:
            for i, row in enumerate(vectors):
                out.write(
                    orjson.dumps({"index": i, "embedding": row}, option=orjson.OPT_SERIALIZE_NUMPY)
                    + b"\n"
                )
    print(f"poolserve: embedded {len(texts)} inputs -> {args.output}", file=sys.stderr)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "serve":
            return serve(_config_from(args))
        if args.command == "embed":
            return embed_file(args)
    except ModelLoadError as exc:
        print(f"poolserve: error: {exc}", file=sys.stderr)
        return 1
    except PoolserveError as exc:
        print(f"poolserve: error: {exc.message}", file=sys.stderr)
        return 1
    return 2


if __name__ == "__main__":
    sys.exit(main())
