"""The on-disk cache of converted models: a folder per (model files, runtime, recipe).

A converted model is only reused when every input to the conversion is the same: the
model's own files (names, sizes and modification times), the runtime's version, and
the recipe (head kind, pooling, Dense layers, overrides, precision). Writes are atomic
(a temporary folder renamed into place), so a crash mid-conversion leaves no half entry.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import ModelLoadError

if TYPE_CHECKING:
    from ..models.spec import ModelSpec

log = logging.getLogger("poolserve.models")

ROOT_ENV = "POOLSERVE_CACHE_DIR"


def cache_root() -> Path:
    """``$POOLSERVE_CACHE_DIR``, else ``$XDG_CACHE_HOME/poolserve``, else ~/.cache/poolserve."""
    if os.environ.get(ROOT_ENV):
        return Path(os.environ[ROOT_ENV])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "poolserve"


def _files_fingerprint(folder: Path) -> list[tuple[str, int, int]]:
    out = []
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            stat = path.stat()
            out.append((str(path.relative_to(folder)), stat.st_size, stat.st_mtime_ns))
    return out


def cache_key(folders: list[Path], recipe: dict[str, Any]) -> str:
    """A hex digest of the files under ``folders`` and the conversion ``recipe``."""
    digest = hashlib.sha256()
    for folder in folders:
        digest.update(json.dumps([str(folder), _files_fingerprint(folder)]).encode())
    digest.update(json.dumps(recipe, sort_keys=True, default=str).encode())
    return digest.hexdigest()[:32]


def cached(runtime: str, key: str, make: Callable[[Path], None]) -> tuple[Path, bool]:
    """The cache folder for ``key``, made by ``make(tmp_folder)`` when missing.

    Returns (folder, hit). ``make`` writes its files into the folder it is given.
    """
    final = cache_root() / runtime / key
    if (final / "done").is_file():
        return final, True
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{key}-", dir=final.parent))
    try:
        make(tmp)
        (tmp / "done").write_text("ok\n")
        try:
            tmp.rename(final)
        except OSError:  # another process finished the same entry first
            if not (final / "done").is_file():
                shutil.rmtree(final, ignore_errors=True)
                tmp.rename(final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final, False


def export_cached(
    runtime: str, spec: ModelSpec, recipe: dict[str, Any], make: Callable[[Path], None]
) -> tuple[Path, str]:
    """(cache folder, key) of ``spec`` exported for ``runtime`` by ``make(folder)``.

    The key covers the model's files (and its Dense modules'), the head, pooling,
    Dense, token types and config overrides, plus ``recipe`` (the runtime's version,
    the graph version). A failed export is remembered next to the entry, so a restart
    does not pay for it again: delete the ``.failed`` file to retry. Raises
    ModelLoadError naming the runtime.
    """
    full = {
        **recipe,
        "head": spec.head,
        "weights": spec.weights,
        "pooling": spec.pooling_modes,
        "dense": [(d.out_features, d.activation, d.bias) for d in spec.dense],
        "token_types": spec.rules.uses_token_type_ids,
        "config": spec.hf_config.to_json_string(use_diff=True),
    }
    key = cache_key([spec.model_dir, *(d.path for d in spec.dense)], full)
    failed = cache_root() / runtime / f"{key}.failed"
    if failed.is_file():
        raise ModelLoadError(failed.read_text(encoding="utf-8").strip())
    started = time.perf_counter()
    try:
        folder, hit = cached(runtime, key, make)
    except Exception as exc:
        if not isinstance(exc, ModelLoadError):
            exc = ModelLoadError(f"--backend {runtime} could not convert {spec.root}: {exc}")
        failed.parent.mkdir(parents=True, exist_ok=True)
        failed.write_text(f"{exc} (remembered in {failed})\n", encoding="utf-8")
        raise exc from None
    what = "read from the cache" if hit else "converted"
    elapsed = time.perf_counter() - started
    log.info("%s: %s %s in %.1f s (%s)", runtime, what, spec.root, elapsed, folder)
    return folder, key
