"""Layer rules, enforced: what a model IS never imports a runtime; runtimes stay in backends/.

DESIGN.md: models/, serving/, api/, engine/ and inputs/ import no torch (nor any other
runtime); only ``poolserve/backends/<runtime>/`` imports its runtime, and nothing under
models/ or below it imports a higher layer.
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
}


def _imports(path: Path) -> set[str]:
    """Absolute module names a file imports (relative imports resolved)."""
    package = ".".join(("poolserve", *path.relative_to(SRC).with_suffix("").parts))
    if path.name == "__init__.py":
        package = package.removesuffix(".__init__")
    else:
        package = package.rsplit(".", 1)[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
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


def test_importing_the_upper_layers_loads_no_runtime() -> None:
    """Every module of the torch-free layers imported in a fresh interpreter: no runtime."""
    modules = [f"poolserve.{pkg}" for pkg in TORCH_FREE]
    for pkg in TORCH_FREE:
        found = pkgutil.walk_packages([str(SRC / pkg)], prefix=f"poolserve.{pkg}.")
        modules += [m.name for m in found]
    modules += ["poolserve.config", "poolserve.cpu", "poolserve.backends", "poolserve.runtime"]
    code = (
        "import importlib, sys\n"
        f"for name in {modules!r}:\n"
        "    importlib.import_module(name)\n"
        f"print(sorted(r for r in {sorted(RUNTIMES)!r} + ['transformers'] if r in sys.modules))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
