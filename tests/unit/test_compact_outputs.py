"""vLLM's compact outputs (embed_dtype x endianness), without a server.

The reference for the bits is torch's own conversion: vLLM's ``tensor2binary`` is
``tensor.to(dtype)`` then a byte swap when the asked order is not the host's. An
independent decoder (struct, explicit byte order) checks the values as well.
"""

from __future__ import annotations

import base64
import json
import math
import struct
import sys

import numpy as np
import pytest
import torch

from poolserve.protocol.embeddings import EmbeddingRequest, PoolingRequest
from poolserve.serving.embeddings import OctetBody, _encode, _octets, _packed, to_embed_dtype

EMBED_DTYPES = ("float32", "float16", "bfloat16", "fp8_e4m3", "fp8_e5m2")
ENDIANNESS = ("native", "big", "little")
TORCH_DTYPES = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "fp8_e4m3": torch.float8_e4m3fn,
    "fp8_e5m2": torch.float8_e5m2,
}
ITEMSIZE = {"float32": 4, "float16": 2, "bfloat16": 2, "fp8_e4m3": 1, "fp8_e5m2": 1}
# Largest relative error of round-to-nearest, and the absolute one at the bottom of the
# range (half the subnormal step).
TOLERANCE = {
    "float32": (0.0, 0.0),
    "float16": (2.0**-11, 2.0**-25),
    "bfloat16": (2.0**-8, 2.0**-134),
    "fp8_e4m3": (2.0**-4, 2.0**-10),
    "fp8_e5m2": (2.0**-3, 2.0**-17),
}


def _fp8_value(b: int, exp_bits: int, mant_bits: int) -> float:
    bias = (1 << (exp_bits - 1)) - 1
    sign = -1.0 if b & 0x80 else 1.0
    e = (b >> mant_bits) & ((1 << exp_bits) - 1)
    m = b & ((1 << mant_bits) - 1)
    if exp_bits == 4 and e == 15 and m == 7:  # e4m3fn: one NaN, no infinity
        return math.nan
    if exp_bits == 5 and e == 31:
        return sign * math.inf if m == 0 else math.nan
    if e == 0:
        return sign * m * 2.0 ** (1 - bias - mant_bits)
    return sign * (1 + m / (1 << mant_bits)) * 2.0 ** (e - bias)


def decode(raw: bytes, embed_dtype: str, endianness: str) -> list[float]:
    """Independent of the server code: struct with an explicit byte order."""
    order = {"little": "<", "big": ">", "native": "<" if sys.byteorder == "little" else ">"}
    o = order[endianness]
    n = len(raw) // ITEMSIZE[embed_dtype]
    if embed_dtype == "float32":
        return list(struct.unpack(f"{o}{n}f", raw))
    if embed_dtype == "float16":
        return list(struct.unpack(f"{o}{n}e", raw))
    if embed_dtype == "bfloat16":
        halves = struct.unpack(f"{o}{n}H", raw)
        return [struct.unpack("<f", struct.pack("<I", h << 16))[0] for h in halves]
    exp_bits, mant_bits = (4, 3) if embed_dtype == "fp8_e4m3" else (5, 2)
    return [_fp8_value(b, exp_bits, mant_bits) for b in raw]


def torch_bytes(x: np.ndarray, embed_dtype: str, endianness: str) -> bytes:
    """What vLLM's tensor2binary sends for ``x``."""
    t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).to(TORCH_DTYPES[embed_dtype])
    size = ITEMSIZE[embed_dtype]
    view = {4: torch.int32, 2: torch.int16, 1: torch.uint8}[size]
    arr = t.flatten().contiguous().view(view).numpy()
    if endianness not in ("native", sys.byteorder):
        arr = arr.byteswap()
    return arr.tobytes()


def _specials() -> np.ndarray:
    vals = [0.0, 1.0, 1 + 2**-8, 1 + 3 * 2**-8, 1 + 2**-11, 1 + 3 * 2**-11, 0.1, 1 / 3]
    vals += [448, 464, 470, 479.9, 480, 500, 57344, 61440, 65504, 65519, 65520, 65536, 1e5]
    vals += [2**-6, 2**-9, 2**-10, 3 * 2**-11, 2**-14, 2**-16, 2**-17, 3 * 2**-17, 2**-24]
    vals += [2**-25, 3 * 2**-26, 6e-8, 1e-40, 1e-45, 3.4e38, np.inf, np.nan]
    x = np.asarray(vals, dtype=np.float32)
    return np.concatenate([x, -x])


def _inputs() -> np.ndarray:
    rng = np.random.default_rng(1234)
    scaled = rng.standard_normal(20_000) * 10.0 ** rng.integers(-12, 7, 20_000)
    bits = rng.integers(0, 2**32, 50_000, dtype=np.uint64).astype(np.uint32).view(np.float32)
    return np.concatenate(
        [
            _specials(),
            rng.standard_normal(20_000).astype(np.float32),
            scaled.astype(np.float32),
            bits,
        ]
    )


@pytest.mark.parametrize("endianness", ENDIANNESS)
@pytest.mark.parametrize("embed_dtype", EMBED_DTYPES)
def test_bits_match_torch(embed_dtype: str, endianness: str) -> None:
    """Bit for bit what vLLM sends: rounding, subnormals, overflow, infinities, NaNs."""
    x = _inputs()
    got = to_embed_dtype(x, embed_dtype, endianness).tobytes()
    expected = torch_bytes(x, embed_dtype, endianness)
    assert len(got) == len(expected) == x.size * ITEMSIZE[embed_dtype]
    a = np.frombuffer(got, np.uint8)
    b = np.frombuffer(expected, np.uint8)
    bad = np.flatnonzero(a != b)
    assert bad.size == 0, [(x[i // ITEMSIZE[embed_dtype]], a[i], b[i]) for i in bad[:5]]


@pytest.mark.parametrize("endianness", ENDIANNESS)
@pytest.mark.parametrize("embed_dtype", EMBED_DTYPES)
def test_values_within_rounding(embed_dtype: str, endianness: str) -> None:
    rng = np.random.default_rng(7)
    x = np.concatenate([rng.standard_normal(3000), rng.uniform(-1e-3, 1e-3, 1000)])
    x = x.astype(np.float32)
    if embed_dtype.startswith("fp8"):
        x = x[np.abs(x) < 400]
    raw = to_embed_dtype(x, embed_dtype, endianness).tobytes()
    got = np.asarray(decode(raw, embed_dtype, endianness))
    rtol, atol = TOLERANCE[embed_dtype]
    if embed_dtype == "float32":
        assert np.array_equal(got, x.astype(np.float64))
    else:
        assert np.all(np.abs(got - x) <= rtol * np.abs(x) + atol)


def test_known_bits() -> None:
    x = np.asarray([1.0, 1 + 2**-8, 1 + 3 * 2**-8, -2.0, np.inf, np.nan], np.float32)
    assert to_embed_dtype(x, "bfloat16", "big").tobytes() == bytes.fromhex(
        "3f80" "3f80" "3f82" "c000" "7f80" "ffff"
    )  # fmt: skip
    assert to_embed_dtype(x, "float16", "little").tobytes() == bytes.fromhex(
        "003c" "043c" "0c3c" "00c0" "007c" "007e"
    )  # fmt: skip
    assert to_embed_dtype(x, "fp8_e4m3", "native").tobytes() == bytes.fromhex("383838c07e7f")
    assert to_embed_dtype(x, "fp8_e5m2", "native").tobytes() == bytes.fromhex("3c3c3cc07c7f")
    assert to_embed_dtype(x, "float32", "big").tobytes() == struct.pack(">6f", *x.tolist())


def test_packed_items_and_spans() -> None:
    rows = [np.ones((3, 4), np.float32), np.zeros((0, 4), np.float32), np.full((1, 4), 2.0)]
    raw, shapes, spans = _packed(rows, "float16", "big")
    assert shapes == [(3, 4), (0, 4), (1, 4)]
    assert spans == [(0, 24), (24, 24), (24, 32)]
    assert bytes(raw) == struct.pack(">16e", *([1.0] * 12 + [2.0] * 4))
    raw, shapes, spans = _packed(np.zeros((0, 8), np.float32), "float32", "native")
    assert (bytes(raw), shapes, spans) == (b"", [], [])
    # A strided view (dimensions cut) is packed row-major.
    m = np.arange(12, dtype=np.float32).reshape(3, 4)[:, :1]
    raw, shapes, spans = _packed(m, "float32", "little")
    assert bytes(raw) == struct.pack("<3f", 0.0, 4.0, 8.0) and shapes == [(1,)] * 3


@pytest.mark.parametrize("embed_dtype", EMBED_DTYPES)
def test_base64_is_each_items_bytes(embed_dtype: str) -> None:
    v = np.random.default_rng(3).standard_normal((5, 7)).astype(np.float32)
    req = EmbeddingRequest(input="x", encoding_format="base64", embed_dtype=embed_dtype)
    got = [base64.b64decode(s) for s in _encode(v, req)]
    assert got == [torch_bytes(row, embed_dtype, "native") for row in v]
    floats = EmbeddingRequest(input="x", embed_dtype=embed_dtype, endianness="big")
    assert [list(r) for r in _encode(v, floats)] == [list(r) for r in v]  # ignored for float


def test_default_base64_is_the_openai_sdk_format() -> None:
    v = np.random.default_rng(4).standard_normal((3, 16)).astype(np.float32)
    req = EmbeddingRequest(input="x", encoding_format="base64")
    assert [np.frombuffer(base64.b64decode(s), "<f4").tolist() for s in _encode(v, req)] == [
        r.tolist() for r in v
    ]


def test_octets_metadata_layout() -> None:
    rows = [np.ones((2, 3), np.float32), np.ones((4, 3), np.float32)]
    head = {"id": "pool-x", "created": 5, "model": "m\u00e9"}
    used = {"prompt_tokens": 6, "total_tokens": 6, "completion_tokens": 0}
    req = PoolingRequest(input="x", encoding_format="bytes", embed_dtype="bfloat16")
    body = _octets(rows, req, head, used)
    assert isinstance(body, OctetBody) and len(body) == 36
    assert body.metadata is not None
    meta = json.loads(body.metadata)
    assert body.metadata == json.dumps(meta)  # ", " and ": " spacing, ASCII escapes
    assert "\\u00e9" in body.metadata
    assert list(meta) == ["id", "created", "model", "data", "usage"]
    assert meta["usage"] == {"prompt_tokens": 6, "total_tokens": 6}
    assert meta["data"] == [
        {"index": 0, "embed_dtype": "bfloat16", "endianness": "native", "start": 0, "end": 12,
         "shape": [2, 3]},
        {"index": 1, "embed_dtype": "bfloat16", "endianness": "native", "start": 12, "end": 36,
         "shape": [4, 3]},
    ]  # fmt: skip
    assert list(meta["data"][0]) == ["index", "embed_dtype", "endianness", "start", "end", "shape"]
    only = _octets(rows, req.model_copy(update={"encoding_format": "bytes_only"}), head, used)
    assert only == body and only.metadata is None
