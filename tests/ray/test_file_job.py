"""``poolserve embed ... --ray ADDRESS``: the file job over a Ray actor pool equals the
single-process job row for row; bad rows are reported the same; the pool keeps
results in window order with a bounded number of windows in flight."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

ray = pytest.importorskip("ray")
pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")

from poolserve.batch.window import TaskOptions, Window, WindowResult  # noqa: E402
from poolserve.cli import main  # noqa: E402
from poolserve.scale import ray_data  # noqa: E402

WORDS = "the quick brown fox jumps over a lazy dog while cats sit on warm mats".split()


def _texts(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 10))) for _ in range(n)]


def _embeddings(path: Path) -> tuple[np.ndarray, list[Any]]:
    table = pq.read_table(path)
    vectors = np.stack(table.column("embedding").to_numpy(zero_copy_only=False))
    return vectors.astype(np.float32), table.column("id").to_pylist()


@pytest.mark.slow
def test_20k_rows_over_two_actors_equal_one_process(
    ray_cluster: str, tiny: Callable[..., Path], tmp_path: Path
) -> None:
    """The CLI joins the session's cluster from another process (``--ray ADDRESS``)."""
    inp = tmp_path / "in.parquet"
    pq.write_table(pa.table({"id": list(range(20_000)), "text": _texts(20_000)}), inp)
    common = [str(tiny("st")), "-i", str(inp), "--id-field", "id", "--dtype", "float32"]
    common += ["--no-progress"]
    one, pool = tmp_path / "one.parquet", tmp_path / "ray.parquet"
    assert main(["embed", *common, "-o", str(one)]) == 0
    argv = ["embed", *common, "-o", str(pool), "--ray", ray_cluster, "--ray-actors", "2"]
    env = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
    proc = subprocess.run(
        [sys.executable, "-m", "poolserve", *argv],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "2 Ray actor(s)" in proc.stderr
    a, ids_a = _embeddings(one)
    b, ids_b = _embeddings(pool)
    assert ids_a == ids_b == list(range(20_000))
    cosine = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    assert cosine.min() >= 0.9999
    assert not (tmp_path / "ray.parquet.parts").exists()


def test_bad_rows_are_reported_as_in_one_process(
    ray_cluster: str, tiny: Callable[..., Path], tmp_path: Path
) -> None:
    """In-process CLI on the session's Ray (already initialised: reused, left running)."""
    inp = tmp_path / "in.jsonl"
    rows: list[dict[str, Any]] = [{"text": t} for t in _texts(50, seed=1)]
    rows[3] = {"text": "word " * 500}  # past the tiny model's max length
    rows[17] = {"text": None}
    rows[40] = {"other": "x"}
    inp.write_text("".join(json.dumps(r) + "\n" for r in rows))
    common = [str(tiny("st")), "-i", str(inp), "--dtype", "float32", "--no-progress"]
    common += ["--window", "8", "--on-error", "skip"]
    one, pool = tmp_path / "one.jsonl", tmp_path / "ray.jsonl"
    assert main(["embed", *common, "-o", str(one)]) == 0
    assert main(["embed", *common, "-o", str(pool), "--ray", ray_cluster, "--ray-actors", "2"]) == 0
    assert ray.is_initialized()  # not ours to shut down
    report_one = (tmp_path / "one.jsonl.errors.jsonl").read_text()
    report_ray = (tmp_path / "ray.jsonl.errors.jsonl").read_text()
    assert report_one == report_ray
    assert [json.loads(line)["row"] for line in report_ray.splitlines()] == [3, 17, 40]
    a = [json.loads(line) for line in one.read_text().splitlines()]
    b = [json.loads(line) for line in pool.read_text().splitlines()]
    assert len(a) == len(b) == 50
    for x, y in zip(a, b, strict=True):
        if x["embedding"] is None:
            assert y["embedding"] is None
        else:
            np.testing.assert_allclose(x["embedding"], y["embedding"], atol=1e-5)


class _SlowFirst:
    """Stands in for WindowActor (no model): window 0 finishes last."""

    def __init__(self, model_options: dict[str, Any], options: TaskOptions) -> None:
        self.options = options

    def ready(self) -> bool:
        return True

    def run(self, window: Window) -> WindowResult:
        import time

        time.sleep(0.5 if window.index == 0 else 0.01)
        values = np.full((len(window), 1), window.index, np.float32)
        return WindowResult(window.index, window.start, None, values, {})


def test_pool_yields_in_order_with_bounded_in_flight(
    ray_cluster: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ray_data, "WindowActor", _SlowFirst)
    handed: list[int] = []

    def windows() -> Iterator[Window]:
        for i in range(12):
            handed.append(i)
            yield Window(i, 4 * i, {"text": ["x"] * 4})

    compute = ray_data.ray_compute(ray_cluster, 2, {}, TaskOptions("embed"))
    results = compute(windows())
    first = next(results)
    # Window 0 took longest: meanwhile at most 2 per actor (4) were handed out, plus
    # the reader's read-ahead (one queued, one waiting to be).
    assert first.index == 0
    assert len(handed) <= 2 * ray_data.IN_FLIGHT_PER_ACTOR + 2
    rest = list(results)
    assert [r.index for r in [first, *rest]] == list(range(12))
    assert all(float(r.values[0, 0]) == r.index for r in rest)


@pytest.mark.parametrize(
    ("nodes", "actors", "gpus", "want"),
    [
        ([2.0], 2, 0.0, {"num_cpus": 1.0}),
        ([2.0], 4, 0.0, {"num_cpus": 0.5}),
        ([2.0], 3, 0.0, {"num_cpus": 0.66}),
        ([8.0, 8.0], 3, 0.0, {"num_cpus": 4.0}),  # two on one node, one on the other
        ([16.0, 4.0], 2, 0.0, {"num_cpus": 8.0}),
        ([16.0], 2, 1.0, {"num_cpus": 8.0, "num_gpus": 0.5}),
        ([16.0], 2, 4.0, {"num_cpus": 8.0, "num_gpus": 1.0}),
    ],
)
def test_actor_resources_fit_the_nodes(
    nodes: list[float], actors: int, gpus: float, want: dict[str, float]
) -> None:
    assert ray_data.actor_resources(nodes, actors, gpus) == want
