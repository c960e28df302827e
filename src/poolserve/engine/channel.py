"""The wire between front-end processes and engine processes: frames of raw arrays.

A frame is ``u32 length`` (little-endian, of what follows), ``u8 kind``, ``u64 id``
and a body. Token ids and outputs travel as the bytes of one int32 / float32 buffer
per request (no per-token or per-float Python objects, no pickle):

- SUBMIT  body: ``u32 n``, ``u8 has_types``; int32 lengths[n], int32 prompt_lens[n],
  u8 per_token codes[n]; int32 ids[sum]; int32 type ids[sum] when has_types.
- CANCEL  no body: the front end's caller went away; drop its queued sequences.
- RESULT  body: ``f64 queue_s``, ``f64 compute_s``, ``u32 n``; int32 shapes[n, 2]
  (rows, width; rows -1 for a 1-D output); float32 data of every output, in order.
- ERROR   body: JSON ``{"type", "message", "param"}`` naming a poolserve error class.
"""

from __future__ import annotations

import asyncio
import json
import struct
from collections.abc import Sequence

import numpy as np

from .. import errors
from ..models.base import TokenSeq

SUBMIT, CANCEL, RESULT, ERROR = 1, 2, 3, 4

_HEAD = struct.Struct("<IBQ")  # length, kind, id
_PER_TOKEN = ("", "hidden", "head", "query", "colbert")
_MAX_FRAME = 1 << 31


def _frame(kind: int, rid: int, parts: Sequence[bytes | memoryview]) -> list[bytes | memoryview]:
    # The length counts the kind and id bytes (9) and the body.
    return [_HEAD.pack(9 + sum(len(p) for p in parts), kind, rid), *parts]


def submit_frame(rid: int, seqs: Sequence[TokenSeq]) -> list[bytes | memoryview]:
    """A SUBMIT frame for ``seqs`` (as a list of buffers for ``writelines``)."""
    n = len(seqs)
    has_types = any(s.token_type_ids is not None for s in seqs)
    lengths = np.fromiter((len(s) for s in seqs), dtype=np.int32, count=n)
    prompts = np.fromiter((s.prompt_len for s in seqs), dtype=np.int32, count=n)
    modes = np.fromiter((_PER_TOKEN.index(s.per_token) for s in seqs), dtype=np.uint8, count=n)
    ids = np.concatenate([s.token_ids for s in seqs]) if n else np.zeros(0, np.int32)
    parts: list[bytes | memoryview] = [
        struct.pack("<IB", n, has_types),
        lengths.tobytes(),
        prompts.tobytes(),
        modes.tobytes(),
        ids.astype(np.int32, copy=False).tobytes(),
    ]
    if has_types:
        types = [
            s.token_type_ids if s.token_type_ids is not None else np.zeros(len(s), np.int32)
            for s in seqs
        ]
        parts.append(np.concatenate(types).astype(np.int32, copy=False).tobytes())
    return _frame(SUBMIT, rid, parts)


def read_submit(body: bytes) -> list[TokenSeq]:
    """The sequences of a SUBMIT body (views into one buffer; no per-token objects)."""
    n, has_types = struct.unpack_from("<IB", body)
    at = 5
    lengths = np.frombuffer(body, np.int32, n, at)
    prompts = np.frombuffer(body, np.int32, n, at + 4 * n)
    modes = np.frombuffer(body, np.uint8, n, at + 8 * n)
    at += 9 * n
    total = int(lengths.sum())
    ids = np.frombuffer(body, np.int32, total, at)
    types = np.frombuffer(body, np.int32, total, at + 4 * total) if has_types else None
    bounds = np.concatenate([[0], np.cumsum(lengths)])
    return [
        TokenSeq(
            ids[bounds[i] : bounds[i + 1]],
            types[bounds[i] : bounds[i + 1]] if types is not None else None,
            int(prompts[i]),
            _PER_TOKEN[modes[i]],
        )
        for i in range(n)
    ]


def result_frame(
    rid: int, outputs: Sequence[np.ndarray], queue_s: float, compute_s: float
) -> list[bytes | memoryview]:
    """A RESULT frame holding ``outputs`` (1-D vectors or 2-D per-token rows)."""
    arrays = [np.asarray(o, dtype=np.float32) for o in outputs]
    shapes = np.array(
        [(-1, a.shape[0]) if a.ndim == 1 else a.shape for a in arrays], dtype=np.int32
    ).reshape(len(arrays), 2)
    data = np.concatenate([a.ravel() for a in arrays]) if arrays else np.zeros(0, np.float32)
    head = struct.pack("<ddI", queue_s, compute_s, len(arrays))
    return _frame(RESULT, rid, [head, shapes.tobytes(), data.tobytes()])


def read_result(body: bytes) -> tuple[list[np.ndarray], float, float]:
    """(outputs, queue seconds, compute seconds) of a RESULT body."""
    queue_s, compute_s, n = struct.unpack_from("<ddI", body)
    at = 20
    shapes = np.frombuffer(body, np.int32, 2 * n, at).reshape(n, 2)
    data = np.frombuffer(body, np.float32, offset=at + 8 * n)
    outputs, start = [], 0
    for rows, width in shapes.tolist():
        size = width if rows < 0 else rows * width
        piece = data[start : start + size]
        outputs.append(piece if rows < 0 else piece.reshape(rows, width))
        start += size
    return outputs, queue_s, compute_s


def error_frame(rid: int, exc: BaseException) -> list[bytes | memoryview]:
    """An ERROR frame: a poolserve error by class name, anything else as InternalError."""
    if isinstance(exc, errors.PoolserveError):
        info = {"type": type(exc).__name__, "message": exc.message, "param": exc.param}
    else:
        info = {"type": "InternalError", "message": f"engine error: {exc!r}", "param": None}
    return _frame(ERROR, rid, [json.dumps(info).encode()])


def read_error(body: bytes) -> errors.PoolserveError:
    """The poolserve error an ERROR body names (InternalError for unknown names)."""
    info = json.loads(body)
    cls = getattr(errors, str(info.get("type")), None)
    if not (isinstance(cls, type) and issubclass(cls, errors.PoolserveError)):
        cls = errors.InternalError
    return cls(str(info.get("message")), param=info.get("param"))


def control_frame(kind: int, rid: int) -> list[bytes | memoryview]:
    """A frame with no body (CANCEL)."""
    return _frame(kind, rid, [])


async def read_frame(reader: asyncio.StreamReader) -> tuple[int, int, bytes]:
    """(kind, id, body) of the next frame; IncompleteReadError at the end of the stream."""
    head = await reader.readexactly(_HEAD.size)
    size, kind, rid = _HEAD.unpack(head)
    if not 9 <= size < _MAX_FRAME:
        raise ValueError(f"bad frame length {size}")
    return kind, rid, await reader.readexactly(size - 9)
