"""Queued tokens are int32 arrays: 4 bytes a token plus one small array per sequence.

Before, a sequence was a tuple of Python ints: 8 bytes of pointer a token, and 28 more
for every id past the small-int cache (256) -- ~36 bytes a token for real vocabularies.
Measured here with tracemalloc on what the tokenizer hands the engine (the default
model's WordPiece vocabulary, 30,522 ids).
"""

from __future__ import annotations

import tracemalloc

from poolserve.inputs.processor import InputProcessor
from poolserve.models.base import InputRules
from poolserve.models.resolve import resolve_model_dir


def test_queued_token_costs_at_most_8_bytes() -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(resolve_model_dir(None))
    proc = InputProcessor(tok, InputRules(max_model_len=256, vocab_size=len(tok)))
    words = "retrieval embedding vector model server batch token query document ranking"
    texts = [" ".join(words.split()[: 1 + i % 10]) * 6 for i in range(500)]
    proc.from_texts(texts[:10])  # warm the tokenizer's own caches
    tracemalloc.start()
    try:
        seqs = proc.from_texts(texts)
        held, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    tokens = sum(len(s) for s in seqs)
    assert tokens / len(seqs) >= 32  # a short retrieval chunk
    print(f"{held / tokens:.2f} bytes a token, {tokens / len(seqs):.0f} tokens a sequence")
    assert held / tokens <= 8, f"{held / tokens:.1f} bytes a token"
    assert all(s.token_ids.dtype.itemsize == 4 for s in seqs)
