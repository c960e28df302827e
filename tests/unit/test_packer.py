"""poolserve.engine.packer.choose_window: the pure token-budget window chooser."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from poolserve.engine.packer import choose_window


@st.composite
def cases(draw: st.DrawFn, max_n: int = 9, max_len: int = 12) -> tuple[list[int], int, int, int]:
    """(ascending lengths, anchor, max_tokens, max_seqs), small enough to brute-force."""
    lengths = sorted(draw(st.lists(st.integers(1, max_len), min_size=1, max_size=max_n)))
    anchor = draw(st.integers(0, len(lengths) - 1))
    max_tokens = draw(st.integers(1, 4 * max_len))
    max_seqs = draw(st.integers(1, max_n + 1))
    return lengths, anchor, max_tokens, max_seqs


def feasible(lengths: list[int], anchor: int, max_tokens: int, max_seqs: int):
    """Every contiguous window containing the anchor that the limits allow."""
    for lo in range(anchor + 1):
        for hi in range(anchor + 1, len(lengths) + 1):
            rows = hi - lo
            if rows > max_seqs:
                continue
            if rows > 1 and rows * lengths[hi - 1] > max_tokens:
                continue
            yield lo, hi


def padded(lengths: list[int], lo: int, hi: int) -> int:
    return (hi - lo) * lengths[hi - 1]


@settings(max_examples=250, deadline=None)
@given(cases())
def test_window_contains_anchor_and_respects_limits(case) -> None:
    lengths, anchor, max_tokens, max_seqs = case
    lo, hi = choose_window(lengths, anchor, max_tokens=max_tokens, max_seqs=max_seqs)
    assert 0 <= lo <= anchor < hi <= len(lengths)
    assert hi - lo <= max_seqs
    if hi - lo > 1:
        assert padded(lengths, lo, hi) <= max_tokens
    else:  # a lone row may be over budget, but only when nothing fits with it
        assert (lo, hi) == (anchor, anchor + 1)


@settings(max_examples=400, deadline=None)
@given(cases())
def test_window_is_optimal_against_brute_force(case) -> None:
    lengths, anchor, max_tokens, max_seqs = case
    lo, hi = choose_window(lengths, anchor, max_tokens=max_tokens, max_seqs=max_seqs)
    windows = list(feasible(lengths, anchor, max_tokens, max_seqs))
    assert (lo, hi) in windows
    best = max(sum(lengths[a:b]) for a, b in windows)
    assert sum(lengths[lo:hi]) == best
    # Among equally full windows, the one with the least padded work.
    ties = [(a, b) for a, b in windows if sum(lengths[a:b]) == best]
    assert padded(lengths, lo, hi) == min(padded(lengths, a, b) for a, b in ties)


@settings(max_examples=100, deadline=None)
@given(cases(max_n=40, max_len=600))
def test_larger_inputs_keep_invariants(case) -> None:
    lengths, anchor, max_tokens, max_seqs = case
    max_tokens *= 20
    lo, hi = choose_window(lengths, anchor, max_tokens=max_tokens, max_seqs=max_seqs)
    assert lo <= anchor < hi and hi - lo <= max_seqs
    assert hi - lo == 1 or padded(lengths, lo, hi) <= max_tokens


def test_single_sequence() -> None:
    assert choose_window([5], 0, max_tokens=100, max_seqs=8) == (0, 1)


def test_single_over_budget_sequence_runs_alone() -> None:
    lengths = [2, 3, 500, 600]
    assert choose_window(lengths, 2, max_tokens=100, max_seqs=8) == (2, 3)
    assert choose_window(lengths, 3, max_tokens=100, max_seqs=8) == (3, 4)


def test_everything_fits() -> None:
    lengths = [1, 2, 3, 4]
    assert choose_window(lengths, 1, max_tokens=1000, max_seqs=10) == (0, 4)


def test_max_seqs_one() -> None:
    lengths = [1, 1, 1, 1]
    for anchor in range(4):
        assert choose_window(lengths, anchor, max_tokens=1000, max_seqs=1) == (anchor, anchor + 1)


@pytest.mark.parametrize("max_seqs", [0, -3])
def test_non_positive_max_seqs_acts_as_one(max_seqs: int) -> None:
    assert choose_window([1, 2, 3], 1, max_tokens=100, max_seqs=max_seqs) == (1, 2)


def test_budget_limits_rows_by_longest() -> None:
    # 4 rows of 10 is 40 padded tokens; the budget of 30 allows 3 of them.
    lo, hi = choose_window([10, 10, 10, 10, 10], 0, max_tokens=30, max_seqs=10)
    assert (lo, hi) == (0, 3)


def test_prefers_longer_rows_when_they_carry_more_tokens() -> None:
    # Budget 8: [1, 4] (5 tokens) beats [1, 1, 1] (3 tokens); [4, 4] beats [1, 1, 1, 4].
    lengths = [1, 1, 1, 4, 4]
    assert choose_window(lengths, 2, max_tokens=8, max_seqs=10) == (2, 4)
    assert choose_window(lengths, 3, max_tokens=8, max_seqs=10) == (3, 5)


def test_tie_prefers_less_padding() -> None:
    # [3, 3, 5] and [5, 6] both carry 11 tokens; the second pads to 12, the first to 15.
    assert choose_window([2, 3, 3, 5, 6], 3, max_tokens=17, max_seqs=4) == (3, 5)


@pytest.mark.parametrize("anchor", [-1, 3, 10])
def test_anchor_out_of_range(anchor: int) -> None:
    with pytest.raises(IndexError):
        choose_window([1, 2, 3], anchor, max_tokens=10, max_seqs=2)


def test_empty_lengths() -> None:
    with pytest.raises(IndexError):
        choose_window([], 0, max_tokens=10, max_seqs=2)


def test_zero_length_rows_do_not_divide_by_zero() -> None:
    lo, hi = choose_window([0, 0, 3], 0, max_tokens=6, max_seqs=4)
    assert lo == 0 and hi >= 1
