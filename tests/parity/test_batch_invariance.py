"""Batch invariance: how much a text's vector depends on the batch it shares.

float32: the same vector whatever the batch (FLOAT32 bounds). bfloat16: measured worst
cosine to the text's vector alone, across batch neighbours of other lengths (so other
padding widths), batch sizes and positions, against BF16_BATCH_MIN_COSINE. The figures
are printed (``pytest -s``) and quoted in the README.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from poolserve.config import ModelConfig
from poolserve.models.base import Batch, TokenSeq
from poolserve.runtime import load_model
from tests.fixtures.precision import BF16_BATCH_MIN_COSINE, assert_same_vectors, cosines
from tests.fixtures.tiny_models import WORDS

SIZES = (2, 3, 8, 32)


def worst_case(model: str | None, dtype: str, targets: int, max_words: int, label: str) -> float:
    """Min cosine of a target's vector in a batch vs alone; asserts the dtype's bound."""
    loaded: Any = load_model(ModelConfig(model=model, dtype=dtype))
    limit = loaded.rules.max_model_len
    rng = random.Random(11)

    def seq() -> TokenSeq:
        text = " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, max_words)))
        return TokenSeq(token_ids=tuple(loaded.tokenizer(text)["input_ids"][:limit]))

    worst = 1.0
    for _ in range(targets):
        target = seq()
        alone = loaded.backend.forward(Batch([target]))[0]
        for size in SIZES:
            others = [seq() for _ in range(size - 1)]
            at = rng.randrange(size)
            vector = loaded.backend.forward(Batch([*others[:at], target, *others[at:]]))[at]
            assert_same_vectors(vector, alone, dtype)
            worst = min(worst, float(cosines(np.atleast_2d(vector), np.atleast_2d(alone))[0]))
    print(f"batch invariance, {label}, {dtype}: min cosine {worst:.7f}")
    return worst


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_tiny_model(tiny: Any, dtype: str) -> None:
    path: Path = tiny("st", "bert")
    worst = worst_case(str(path), dtype, targets=12, max_words=55, label="tiny BERT")
    assert worst >= BF16_BATCH_MIN_COSINE


@pytest.mark.slow
def test_default_model_bf16() -> None:
    """The packaged all-MiniLM-L6-v2 (real weights), texts up to its 256 tokens."""
    assert (
        worst_case(None, "bfloat16", targets=3, max_words=120, label="all-MiniLM-L6-v2")
        >= BF16_BATCH_MIN_COSINE
    )
