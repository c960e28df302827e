"""Layer rules, enforced: what a model IS never imports a runtime; runtimes stay in backends/.

DESIGN.md: models/, serving/, api/, engine/ and inputs/ import no torch (nor any other
runtime); only ``poolserve/backends/<runtime>/`` imports its runtime, and nothing under
models/ or below it imports a higher layer. batch/ (file jobs, run-batch) and scale/
(Ray) sit just below the CLI: nothing below imports them, batch/ reaches scale/ only
from inside a function (``--ray``), and only scale/ imports ray (the optional extra).
"""

from __future__ import annotations

import ast
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

import poolserve

SRC = Path(poolserve.__file__).parent
# runtime -> the backends/ sub-packages that may import it (OpenVINO and ONNX Runtime
# convert by tracing the torch graph, so their converters import torch too).
RUNTIMES = {
    "torch": ("torch", "openvino", "onnxruntime"),
    "openvino": ("openvino",),
    "onnxruntime": ("onnxruntime",),
    "nncf": ("openvino",),
}
TORCH_FREE = ("models", "serving", "api", "engine", "inputs", "protocol")
# Which packages each layer may import from poolserve (imports point down only).
NOT_ABOVE = {
    "models": ("serving", "api", "engine", "inputs", "backends", "runtime", "cli", "offline"),
    "engine": ("serving", "api", "backends", "runtime", "cli", "offline"),
    "inputs": ("serving", "api", "engine", "backends", "runtime", "cli", "offline"),
    "serving": ("api", "backends", "runtime", "cli", "offline"),
    "backends": ("serving", "api", "engine", "inputs", "runtime", "cli", "offline"),
    "api": ("backends", "runtime", "cli", "offline"),
    # The batch commands and Ray scale-out sit just below the CLI (see TOP_LAYERS).
    "batch": ("cli",),
    "scale": ("cli",),
}
# batch/ and scale/ are top layers: only these import them (scale runs batch's windows
# on Ray; the CLI dispatches to both) ...
TOP_LAYERS = {
    "batch": ("batch", "scale", "cli", "__main__"),
    "scale": ("scale", "cli", "__main__"),
}
# ... and batch/ reaches scale/ only lazily, from inside a function (file_cli loads the
# Ray runner for `--ray`), so a file job without --ray never imports it.
LAZY_ONLY = {("batch", "scale")}
# Ray (the optional poolserve[ray] extra) is imported by poolserve/scale/ alone.
RAY_LAYER = "scale"


def _imports(path: Path, *, lazy: bool = True) -> set[str]:
    """Absolute module names a file imports (relative imports resolved); ``lazy=False``:
    only those outside function bodies (run when the module is imported)."""
    package = ".".join(("poolserve", *path.relative_to(SRC).with_suffix("").parts))
    if path.name == "__init__.py":
        package = package.removesuffix(".__init__")
    else:
        package = package.rsplit(".", 1)[0]
    found: set[str] = set()
    tree = ast.parse(path.read_text(encoding="utf-8"))
    in_functions = {
        id(inner)
        for fn in ast.walk(tree)
        if isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef)
        for inner in ast.walk(fn)
    }
    for node in ast.walk(tree):
        if not lazy and id(node) in in_functions:
            continue
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                parts = parts[: len(parts) - node.level + 1]
                base = ".".join([*parts, base] if base else parts)
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def _files() -> list[Path]:
    return sorted(SRC.rglob("*.py"))


@pytest.mark.parametrize("path", _files(), ids=lambda p: str(p.relative_to(SRC)))
def test_runtimes_are_imported_only_by_their_backend(path: Path) -> None:
    rel = path.relative_to(SRC).parts
    for name in _imports(path):
        root = name.split(".")[0]
        if root in RUNTIMES:
            assert rel[0] == "backends" and rel[1] in RUNTIMES[root], (
                f"{'/'.join(rel)} imports {name}"
            )


@pytest.mark.parametrize("path", _files(), ids=lambda p: str(p.relative_to(SRC)))
def test_imports_point_down(path: Path) -> None:
    rel = path.relative_to(SRC).parts
    layer = rel[0].removesuffix(".py")
    banned = NOT_ABOVE.get(layer, ())
    for name in _imports(path):
        parts = name.split(".")
        if parts[0] == "poolserve" and len(parts) > 1:
            assert parts[1] not in banned, f"{'/'.join(rel)} ({layer}) imports {name}"


@pytest.mark.parametrize("path", _files(), ids=lambda p: str(p.relative_to(SRC)))
def test_ray_is_imported_only_by_scale(path: Path) -> None:
    rel = path.relative_to(SRC).parts
    for name in _imports(path):
        if name.split(".")[0] == "ray":
            assert rel[0] == RAY_LAYER, f"{'/'.join(rel)} imports {name}"


@pytest.mark.parametrize("path", _files(), ids=lambda p: str(p.relative_to(SRC)))
def test_top_layers_are_imported_only_from_above(path: Path) -> None:
    rel = path.relative_to(SRC).parts
    layer = rel[0].removesuffix(".py")
    eager = _imports(path, lazy=False)
    for name in _imports(path):
        parts = name.split(".")
        if parts[0] != "poolserve" or len(parts) < 2 or parts[1] not in TOP_LAYERS:
            continue
        if layer in TOP_LAYERS[parts[1]]:
            continue
        lazy_ok = (layer, parts[1]) in LAZY_ONLY and name not in eager
        assert lazy_ok, f"{'/'.join(rel)} ({layer}) imports {name}"


def test_importing_the_upper_layers_loads_no_runtime() -> None:
    """Every module of the torch-free layers imported in a fresh interpreter: no runtime."""
    modules = [f"poolserve.{pkg}" for pkg in TORCH_FREE]
    for pkg in TORCH_FREE:
        found = pkgutil.walk_packages([str(SRC / pkg)], prefix=f"poolserve.{pkg}.")
        modules += [m.name for m in found]
    modules += ["poolserve.config", "poolserve.cpu", "poolserve.backends", "poolserve.runtime"]
    watched = [*sorted(RUNTIMES), "transformers", "ray"]  # ray: the optional extra
    code = (
        "import importlib, sys\n"
        f"for name in {modules!r}:\n"
        "    importlib.import_module(name)\n"
        f"print(sorted(r for r in {watched!r} if r in sys.modules))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
