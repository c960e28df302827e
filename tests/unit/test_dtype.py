"""``--dtype auto``'s choice, on faked CPUs and a faked GPU."""

from __future__ import annotations

import pytest
import torch

from poolserve import cpu
from poolserve.backends.torch.device import resolve_dtype

CPUINFO = """processor\t: 0
vendor_id\t: GenuineIntel
flags\t\t: fpu vme sse sse2 avx2 avx512f avx512bw {extra}
bugs\t\t: spectre_v1

processor\t: 1
flags\t\t: fpu
"""
CPU = torch.device("cpu")


@pytest.mark.parametrize(
    ("extra", "native"),
    [
        ("", False),
        ("avx512_vnni", False),
        ("avx512_bf16", True),
        ("amx_tile amx_bf16 amx_int8", True),
        ("avx512_bf16 amx_bf16", True),
        ("amx_tile amx_int8", False),  # AMX without its bf16 part
        ("avx512_bf16x", False),  # whole flags only
    ],
)
def test_auto_is_bf16_exactly_where_the_cpu_has_it(extra: str, native: bool) -> None:
    flags = cpu.parse_flags(CPUINFO.format(extra=extra))
    assert "avx512f" in flags and "spectre_v1" not in flags  # the first processor's flags
    assert cpu.has_native_bf16(flags) is native
    expected = torch.bfloat16 if native else torch.float32
    assert resolve_dtype("auto", CPU, flags) == expected
    assert cpu.describe(flags).startswith("native bf16" if native else "no native bf16")


@pytest.mark.parametrize("native", [True, False])
def test_auto_reads_this_machines_flags_by_default(
    monkeypatch: pytest.MonkeyPatch, native: bool
) -> None:
    fake = frozenset({"avx512f", "avx512_bf16"} if native else {"avx512f"})
    monkeypatch.setattr(cpu, "cpu_flags", lambda: fake)
    assert resolve_dtype("auto", CPU) == (torch.bfloat16 if native else torch.float32)


def test_unreadable_cpuinfo_is_no_flags() -> None:
    assert cpu.parse_flags("") == frozenset()
    assert resolve_dtype("auto", CPU, frozenset()) == torch.float32


@pytest.mark.parametrize(
    ("bf16_supported", "expected"), [(True, torch.bfloat16), (False, torch.float16)]
)
def test_auto_on_cuda(
    monkeypatch: pytest.MonkeyPatch, bf16_supported: bool, expected: torch.dtype
) -> None:
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: bf16_supported)
    # CPU flags do not matter on a GPU
    for flags in (frozenset(), frozenset({"amx_bf16"})):
        assert resolve_dtype("auto", torch.device("cuda"), flags) == expected


@pytest.mark.parametrize(
    ("name", "expected"),
    [("float32", torch.float32), ("bfloat16", torch.bfloat16), ("float16", torch.float16)],
)
def test_explicit_dtype_wins_on_any_cpu(name: str, expected: torch.dtype) -> None:
    for flags in (frozenset(), frozenset({"amx_bf16"})):
        assert resolve_dtype(name, CPU, flags) == expected
