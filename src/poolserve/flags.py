"""Command-line flags built from the config dataclasses, and the Config built back from them.

Shared by every ``poolserve`` sub-command (serve, the batch commands), so a flag has one
name, type and help text everywhere.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import types
import typing
from collections.abc import Sequence
from typing import Any

from .config import Config, EngineConfig, ModelConfig, ServerConfig, parse_size


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


def expand_dotted(argv: Sequence[str], json_flags: dict[str, str]) -> list[str]:
    """vLLM's dotted form of JSON flags: ``--pooler-config.pooling_type MEAN`` (or
    ``=MEAN``; ``--flag.a.b 1`` nests) merged into one ``--flag JSON`` argument.

    A value is read as JSON when it parses (``true``, ``3``, ``[1, 2]``), else as a
    string; dotted keys are merged over the flag's JSON form when both are given, which
    stays where it was. ``json_flags`` maps each spelling to its flag's main name
    (aliases merge into one). Other arguments pass through unchanged.
    """
    out: list[str] = []
    merged: dict[str, dict[str, Any]] = {}
    i = 0
    while i < len(argv):
        arg = argv[i]
        spelling = next((f for f in json_flags if arg.startswith(f + ".")), None)
        if spelling is None:
            out.append(arg)
            i += 1
            continue
        flag = json_flags[spelling]
        dotted, has_value, value = arg[len(spelling) + 1 :].partition("=")
        if not has_value:
            if i + 1 >= len(argv):
                raise argparse.ArgumentTypeError(f"{arg} needs a value")
            value = argv[i + 1]
            i += 1
        i += 1
        keys = dotted.split(".")
        if not all(keys):
            raise argparse.ArgumentTypeError(f"{arg}: empty key")
        try:
            parsed: Any = json.loads(value)
        except ValueError:
            parsed = value
        node = merged.setdefault(flag, {})
        for key in keys[:-1]:
            node = node.setdefault(key, {})
        node[keys[-1]] = parsed
    for flag, values in merged.items():
        # Merged over the JSON form if that was given (last occurrence wins in argparse).
        names = [s for s, main in json_flags.items() if main == flag]
        given = [
            a.split("=", 1)[1] if "=" in a else out[j + 1]
            for j, a in enumerate(out)
            if a.split("=", 1)[0] in names and ("=" in a or j + 1 < len(out))
        ]
        base: dict[str, Any] = {}
        if given:
            try:
                base = json.loads(given[-1])
            except ValueError as exc:
                raise argparse.ArgumentTypeError(f"{flag}: not JSON: {exc}") from exc
            if not isinstance(base, dict):
                raise argparse.ArgumentTypeError(f"{flag}: must be a JSON object")
        out += [flag, json.dumps({**base, **values})]
    return out


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


def config_from(
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
