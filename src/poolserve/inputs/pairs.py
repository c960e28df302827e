"""The /score pairing rule (vLLM's, message for message).

A str is a 1-list. One ``text_1`` is broadcast against every ``text_2`` (1:N); equal
lengths are zipped (N:N); anything else is a 400. One result per ``text_2``, in order.
"""

from __future__ import annotations

from collections.abc import Sequence

from ..errors import InvalidRequest


def as_list(texts: str | Sequence[str]) -> list[str]:
    """A str is a one-element list."""
    return [texts] if isinstance(texts, str) else list(texts)


def pair_up(
    texts_1: Sequence[str],
    texts_2: Sequence[str],
    *,
    params: tuple[str, str] = ("text_1", "text_2"),
) -> tuple[list[str], list[str]]:
    """(firsts, seconds) of equal length: text_1 broadcast (1:N) or zipped (N:N).

    Raises InvalidRequest with vLLM's messages, checked in vLLM's order: the lengths
    first, then an empty ``text_1``, then an empty ``text_2``. ``params`` names the two
    request fields in the error's ``param``.
    """
    if len(texts_1) > 1 and len(texts_1) != len(texts_2):
        raise InvalidRequest("Input lengths must be either 1:1, 1:N or N:N", param=params[0])
    if not texts_1:
        raise InvalidRequest("At least one text element must be given", param=params[0])
    if not texts_2:
        raise InvalidRequest("At least one text_pair element must be given", param=params[1])
    firsts = list(texts_1) * len(texts_2) if len(texts_1) == 1 else list(texts_1)
    return firsts, list(texts_2)
