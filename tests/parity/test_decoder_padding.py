"""Decoder backends under left and right padding equal the unpadded single-sequence result."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from poolserve.config import ModelConfig
from poolserve.models.base import Batch, TokenSeq
from poolserve.runtime import load_model

LENGTHS = (3, 11, 7, 1)
ARCHS = ("qwen2", "qwen3", "llama", "mistral", "gemma")


def _seqs(vocab: int) -> list[TokenSeq]:
    rng = np.random.default_rng(0)
    return [TokenSeq(tuple(int(t) for t in rng.integers(10, vocab, n))) for n in LENGTHS]


def _check(backend: object, seqs: list[TokenSeq], side: str) -> None:
    backend.padding_side = side  # type: ignore[attr-defined]
    batched = backend.forward(Batch(seqs))  # type: ignore[attr-defined]
    for seq, got in zip(seqs, batched, strict=True):
        alone = backend.forward(Batch([seq]))[0]  # type: ignore[attr-defined]
        assert np.all(np.isfinite(got))
        np.testing.assert_allclose(got, alone, atol=1e-5)


@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("arch", ARCHS)
def test_last_token_classifier(tiny: Callable[..., Path], arch: str, side: str) -> None:
    path = tiny("decoder", arch, "seq-cls", 2)
    loaded = load_model(ModelConfig(model=str(path), dtype="float32"))
    _check(loaded.backend, _seqs(loaded.rules.vocab_size), side)


@pytest.mark.parametrize("side", ["left", "right"])
def test_last_token_embedding(tiny: Callable[..., Path], side: str) -> None:
    path = tiny("decoder", "llama", "base")
    loaded = load_model(ModelConfig(model=str(path), task="embed", dtype="float32"))
    _check(loaded.backend, _seqs(loaded.rules.vocab_size), side)


@pytest.mark.parametrize("side", ["left", "right"])
def test_per_token_rows(tiny: Callable[..., Path], side: str) -> None:
    path = tiny("decoder", "qwen2", "seq-cls", 2)
    loaded = load_model(ModelConfig(model=str(path), task="reward", dtype="float32"))
    seqs = _seqs(loaded.rules.vocab_size)
    _check(loaded.backend, seqs, side)
    rows = loaded.backend.forward(Batch(seqs))
    assert [r.shape for r in rows] == [(n, 2) for n in LENGTHS]
