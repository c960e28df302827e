"""Ray is optional: ``poolserve serve`` never imports it; without it ``--ray-serve`` and
``--ray`` say how to install it. Runs with or without the extra installed."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from poolserve.cli import main
from poolserve.errors import PoolserveError


def test_serve_and_the_scale_modules_import_no_ray() -> None:
    code = (
        "import sys\n"
        "from poolserve.cli import build_parser\n"
        "args = build_parser().parse_args(['serve', '--num-replicas', '2'])\n"
        "assert not args.ray_serve and args.num_replicas == 2\n"
        "import poolserve.scale.ray_serve, poolserve.scale.ray_data\n"
        "print('ray' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False", out.stderr


def test_without_ray_the_error_says_how_to_install(
    monkeypatch: pytest.MonkeyPatch, tiny: Callable[..., Path], capsys: pytest.CaptureFixture[str]
) -> None:
    from poolserve.batch.window import TaskOptions
    from poolserve.scale import ray_data, ray_serve

    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    with pytest.raises(PoolserveError, match=r"pip install poolserve\[ray\]"):
        ray_serve.require_ray()
    assert main(["serve", str(tiny("st")), "--ray-serve", "--dtype", "float32"]) == 1
    assert "pip install poolserve[ray]" in capsys.readouterr().err
    compute = ray_data.ray_compute(None, 1, {}, TaskOptions("embed"))
    from poolserve.batch.window import Window

    with pytest.raises(PoolserveError, match=r"pip install poolserve\[ray\]"):
        next(compute(iter([Window(0, 0, {"text": ["x"]})])))


def test_cli_refuses_other_scale_out_flags_with_ray_serve(
    tiny: Callable[..., Path], capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["serve", str(tiny("st")), "--ray-serve", "--data-parallel-size", "2"]
    assert main(argv) == 1
    assert "use --num-replicas" in capsys.readouterr().err


def test_ray_serve_flags_need_ray_serve(
    tiny: Callable[..., Path], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["serve", str(tiny("st")), "--num-replicas", "2"]) == 1
    assert "--num-replicas need --ray-serve" in capsys.readouterr().err
