"""The file job on one process vs on a local Ray actor pool (``--ray --ray-actors N``).

Writes ``--rows`` texts of the seeded workload (5-120 words) to a Parquet file, then
runs ``poolserve embed`` on it with the packaged default model (all-MiniLM-L6-v2):
once in one process, once with ``--ray --ray-actors N`` on a private local Ray that
the command starts and stops itself. Prints rows/s of each (the job's own figure, Ray
start-up included, and the wall clock of the whole command, model loading included),
their ratio, and the minimum cosine between the two outputs, with the CPU's kind.
Not a test: numbers depend on the machine. On one node the actors share its cores
with each other, so expect roughly the single process's rate; Ray pays off across
nodes (or GPUs).

    python benchmarks/ray_file_job.py
    python benchmarks/ray_file_job.py --rows 5000 --actors 2 --extra "--dtype float32"
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from common import workload

from poolserve.cpu import describe


def run_job(inp: Path, out: Path, extra: list[str]) -> tuple[float, float, str]:
    """(job rows/s, wall seconds, summary line) of one ``poolserve embed`` run."""
    argv = [sys.executable, "-m", "poolserve", "embed", "-i", str(inp), "-o", str(out)]
    argv += ["--no-progress", *extra]
    started = time.perf_counter()
    proc = subprocess.run(argv, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"{shlex.join(argv)} failed ({proc.returncode}):\n{proc.stderr}")
    summary = next(
        (line for line in proc.stderr.splitlines() if " rows/s -> " in line), "poolserve: ?"
    )
    match = re.search(r"([0-9.]+) rows/s", summary)
    rate = float(match.group(1)) if match else float("nan")
    return rate, wall, summary


def vectors(path: Path) -> np.ndarray:
    column = pq.read_table(path, columns=["embedding"]).column("embedding")
    return np.stack(column.to_numpy(zero_copy_only=False)).astype(np.float32)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=20_000, help="Rows of the input file.")
    parser.add_argument("--actors", type=int, default=2, help="Ray actors (--ray-actors).")
    parser.add_argument(
        "--extra", default="", help="More `poolserve embed` flags for both runs (quoted)."
    )
    args = parser.parse_args()
    extra = shlex.split(args.extra)
    texts = workload(args.rows)
    with tempfile.TemporaryDirectory(prefix="poolserve-ray-bench-") as tmp:
        inp = Path(tmp) / "input.parquet"
        pq.write_table(pa.table({"text": texts}), inp)
        one, ray = Path(tmp) / "one.parquet", Path(tmp) / "ray.parquet"
        # Ray's services on loopback, as `poolserve serve --ray-serve` does for its own.
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
        rate_one, wall_one, _ = run_job(inp, one, extra)
        on_ray = [*extra, "--ray", "--ray-actors", str(args.actors)]
        rate_ray, wall_ray, _ = run_job(inp, ray, on_ray)
        a, b = vectors(one), vectors(ray)
        cosine = float(
            np.min((a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)))
        )
    print("model: packaged default (all-MiniLM-L6-v2)" + (f", {args.extra}" if extra else ""))
    print(f"cpu: {describe()}")
    print(f"workload: {args.rows} rows of 5-120 words (seed 0), Parquet in and out")
    print("| how | job rows/s | wall s (with model load) | wall rows/s |")
    print("|---|---|---|---|")
    print(f"| one process | {rate_one:.0f} | {wall_one:.1f} | {args.rows / wall_one:.0f} |")
    print(
        f"| --ray, {args.actors} local actors | {rate_ray:.0f} | {wall_ray:.1f} "
        f"| {args.rows / wall_ray:.0f} |"
    )
    ratio = f"job {rate_ray / rate_one:.2f}x, wall {wall_one / wall_ray:.2f}x"
    print(f"ratio ray / one process: {ratio}")
    print(f"min cosine between the outputs: {cosine:.6f}")


if __name__ == "__main__":
    main()
