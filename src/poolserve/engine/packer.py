"""The pure batch packer.

The queue is kept sorted by length. A batch is a contiguous window of that sorted
list, so its rows have similar lengths and padding stays small. The window always
contains the oldest waiting sequence, so nothing starves: under any load every
sequence is in a batch after at most (queue length) batches.
"""

from __future__ import annotations

from collections.abc import Sequence


def choose_window(
    lengths: Sequence[int],
    anchor: int,
    *,
    max_tokens: int,
    max_seqs: int,
) -> tuple[int, int]:
    """Pick ``[lo, hi)`` over the ascending ``lengths`` with ``lo <= anchor < hi``.

    The window's padded size ``(hi - lo) * lengths[hi - 1]`` stays within
    ``max_tokens`` (a single over-budget sequence still runs alone) and it holds
    at most ``max_seqs`` rows. Among such windows it maximizes the real tokens
    carried, preferring the least padded window on ties.
    """
    n = len(lengths)
    if not 0 <= anchor < n:
        raise IndexError("anchor out of range")
    max_seqs = max(1, max_seqs)
    start = max(0, anchor - max_seqs + 1)
    stop = min(n, anchor + max_seqs)
    prefix = [0]
    for length in lengths[start:stop]:
        prefix.append(prefix[-1] + length)

    best = (anchor, anchor + 1)
    best_score = (-1, 0)  # (real tokens, -padded tokens): more work done, less padding
    for hi in range(anchor + 1, stop + 1):
        longest = lengths[hi - 1]
        rows = min(max_seqs, max(1, max_tokens // max(1, longest)), hi - start)
        lo = hi - rows
        if lo > anchor:  # the window no longer reaches the anchor: longer his won't either
            break
        score = (prefix[hi - start] - prefix[lo - start], -(hi - lo) * longest)
        if score > best_score:
            best, best_score = (lo, hi), score
    return best
