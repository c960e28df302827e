"""The /score pairing rule and the rerank ordering (vLLM's messages, in vLLM's order)."""

from __future__ import annotations

import numpy as np
import pytest

from poolserve.errors import InvalidRequest
from poolserve.inputs.pairs import as_list, pair_up
from poolserve.serving.score import top_order

LENGTHS = "Input lengths must be either 1:1, 1:N or N:N"


def test_str_is_a_one_list() -> None:
    assert as_list("a") == ["a"]
    assert as_list(["a", "b"]) == ["a", "b"]
    assert as_list([]) == []


@pytest.mark.parametrize(
    ("t1", "t2", "firsts"),
    [
        (["q"], ["a"], ["q"]),
        (["q"], ["a", "b", "c"], ["q", "q", "q"]),
        (["x", "y"], ["a", "b"], ["x", "y"]),
    ],
)
def test_broadcast_and_zip(t1: list[str], t2: list[str], firsts: list[str]) -> None:
    assert pair_up(t1, t2) == (firsts, t2)


@pytest.mark.parametrize(
    ("t1", "t2", "message", "param"),
    [
        (["x", "y"], ["a", "b", "c"], LENGTHS, "text_1"),
        (["x", "y"], ["a"], LENGTHS, "text_1"),
        (["x", "y"], [], LENGTHS, "text_1"),  # lengths are checked first, as vLLM
        ([], ["a"], "At least one text element must be given", "text_1"),
        ([], [], "At least one text element must be given", "text_1"),
        (["x"], [], "At least one text_pair element must be given", "text_2"),
    ],
)
def test_errors(t1: list[str], t2: list[str], message: str, param: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        pair_up(t1, t2)
    assert info.value.message == message
    assert info.value.param == param


def test_error_param_names_the_request_fields() -> None:
    with pytest.raises(InvalidRequest) as info:
        pair_up(["q"], [], params=("query", "documents"))
    assert info.value.param == "documents"


@pytest.mark.parametrize(
    ("top_n", "expected"),
    [(None, [1, 3, 0, 2]), (0, [1, 3, 0, 2]), (-2, [1, 3, 0, 2]), (2, [1, 3]),
     (4, [1, 3, 0, 2]), (9, [1, 3, 0, 2])],
)  # fmt: skip
def test_top_order(top_n: int | None, expected: list[int]) -> None:
    # Ties keep input order (index 1 before 3).
    assert top_order(np.array([0.2, 0.9, 0.1, 0.9]), top_n) == expected
