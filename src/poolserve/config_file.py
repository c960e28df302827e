"""``poolserve serve --config FILE.yaml``: flags read from a YAML file.

Two forms, told apart by a top-level ``models:`` key:

- vLLM's form (no ``models:``): every key is a serve flag by its long name (``port:
  8001``, ``max-num-seqs: 8``, ``served_model_name: [a, b]``; ``model:`` is the model
  argument), read as vLLM 0.9+ reads its ``--config``: ``true`` adds a switch, ``false``
  leaves it out, a list gives the flag its values, a mapping is the flag's JSON.
- Several models in one server: ``models:`` is a list, one entry per model, each with
  ``model`` (path, Hugging Face id or package) and any per-model serve flag by its
  snake_case (or dashed) name -- task, served_model_name, dtype, backend, limits, ... .
  The file's other top-level keys are flags for every model or for the server.

Precedence is vLLM's: the command line over the file, a model's entry over the file's
top level, any of them over the defaults. Server-wide flags (host, port, API keys,
...) cannot sit in a model's entry: one server has one of each.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Mapping
from typing import Any

from .errors import PoolserveError

# Parser destinations of the flags that belong to the whole server (config.py's
# ServerConfig, and the Ray Serve scale-out), not to one model.
_SERVER_PREFIX = "server."
_SERVER_DESTS = frozenset(
    {"ray_serve", "num_replicas", "ray_address", "autoscaling_config", "ray_actor_options"}
)


def split_config(argv: list[str]) -> tuple[str | None, list[str]]:
    """(the ``--config`` file or None, ``argv`` without it); PoolserveError when it is
    given twice or without a value."""
    found: list[tuple[int, int, str]] = []  # (index, tokens, path)
    for i, arg in enumerate(argv):
        if arg == "--config":
            if i + 1 >= len(argv):
                raise PoolserveError("--config needs a YAML file")
            found.append((i, 2, argv[i + 1]))
        elif arg.startswith("--config="):
            found.append((i, 1, arg.split("=", 1)[1]))
    if not found:
        return None, argv
    if len(found) > 1:
        raise PoolserveError("--config is given more than once")
    i, n, path = found[0]
    return path, argv[:i] + argv[i + n :]


def load_yaml(path: str) -> dict[str, Any]:
    """The file's top-level mapping (PoolserveError naming the file when it cannot be
    read or is not a YAML mapping)."""
    import yaml

    if not path.endswith((".yaml", ".yml")):
        raise PoolserveError(f"--config {path}: must be a .yaml or .yml file")
    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f)
    except OSError as exc:
        raise PoolserveError(f"--config {path}: {exc.strerror or exc}") from exc
    except yaml.YAMLError as exc:
        raise PoolserveError(f"--config {path}: not YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise PoolserveError(f"--config {path}: the file must be a mapping of flags")
    return data


def _flag_tokens(key: str, value: Any, where: str) -> list[str]:
    """``key: value`` as command-line tokens, as vLLM's --config reads them."""
    if not isinstance(key, str) or not key:
        raise PoolserveError(f"{where}: {key!r} is not a flag name")
    flag = "--" + key
    if value is None:
        return []  # the default
    if isinstance(value, bool):
        return [flag] if value else []
    if isinstance(value, list):
        if any(isinstance(v, (dict, list)) for v in value):
            raise PoolserveError(f"{where}: `{key}` must be a list of plain values")
        return [flag, *(str(v) for v in value)] if value else []
    if isinstance(value, dict):
        return [flag, json.dumps(value)]
    return [flag, str(value)]


def _action(actions: Mapping[str, argparse.Action], key: str) -> argparse.Action | None:
    """The serve flag ``key`` names (snake_case or dashed), or None."""
    return actions.get("--" + key.replace("_", "-")) or actions.get("--" + key)


def _entry_tokens(
    entry: Any, index: int, path: str, actions: Mapping[str, argparse.Action]
) -> tuple[str, list[str]]:
    """(model, flag tokens) of one ``models:`` entry, its keys checked."""
    where = f"--config {path}: models[{index}]"
    if not isinstance(entry, dict):
        raise PoolserveError(f"{where}: must be a mapping with a `model` key")
    model = entry.get("model")
    if not isinstance(model, str) or not model:
        raise PoolserveError(f"{where}: `model` (a path, Hugging Face id or package) is required")
    tokens: list[str] = []
    for key, value in entry.items():
        if key == "model":
            continue
        action = _action(actions, str(key))
        if action is None:
            raise PoolserveError(f"{where}: `{key}` is not a serve flag")
        if action.dest.startswith(_SERVER_PREFIX) or action.dest in _SERVER_DESTS:
            raise PoolserveError(
                f"{where}: `{key}` is server-wide; give it on the command line or at the "
                "top of the file"
            )
        tokens += _flag_tokens(str(key), value, where)
    return model, tokens


def expand(argv: list[str], actions: Mapping[str, argparse.Action]) -> tuple[list[list[str]], bool]:
    """(the argument lists ``argv`` stands for, whether a file listed ``models:``):
    ``argv`` itself when it has no ``--config``; else one list per model of the file
    (one for vLLM's form), each ``serve MODEL`` then the file's flags then the command
    line's, so later (higher-precedence) values win.

    ``actions`` are the serve parser's flags by option string. PoolserveError, naming
    the file and entry, for a file that cannot be read or names no model.
    """
    path, rest = split_config(argv)
    if path is None:
        return [argv], False
    if not rest or rest[0] != "serve":
        raise PoolserveError("--config is a flag of `poolserve serve`")
    data = load_yaml(path)
    cli = rest[1:]
    cli_model = cli[0] if cli and not cli[0].startswith("-") else None
    cli_flags = cli[1:] if cli_model is not None else cli
    entries = data.pop("models", None)
    top_model = data.pop("model", None)
    top: list[str] = []
    for key, value in data.items():
        top += _flag_tokens(str(key), value, f"--config {path}")
    if entries is None:  # vLLM's form: one model
        model = cli_model or top_model
        head = [model] if isinstance(model, str) else []
        return [["serve", *head, *top, *cli_flags]], False
    if cli_model is not None or top_model is not None:
        raise PoolserveError(
            f"--config {path} lists `models:`; give each model in its entry, not "
            "as the MODEL argument or a top-level `model`"
        )
    if not isinstance(entries, list) or not entries:
        raise PoolserveError(f"--config {path}: `models:` must be a non-empty list")
    out = []
    for i, entry in enumerate(entries):
        model, tokens = _entry_tokens(entry, i, path, actions)
        out.append(["serve", model, *top, *tokens, *cli_flags])
    return out, True
