"""Facts about this machine's CPU that choose defaults (no torch, no runtime imports).

Read once from ``/proc/cpuinfo``; every decision that depends on the CPU takes the flag
set as an argument, so tests can fake any machine.
"""

from __future__ import annotations

import functools
from pathlib import Path

# Either one means bfloat16 math runs in hardware: AVX512-BF16's dot products (Zen 4,
# Cooper Lake and later Xeons) or AMX tiles (Sapphire Rapids and later). Without them
# oneDNN emulates bf16 and runs ~3x slower than float32 (measured on an AVX-512 CPU
# lacking avx512_bf16), so ``--dtype auto`` must not pick it there.
NATIVE_BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})


def parse_flags(cpuinfo: str) -> frozenset[str]:
    """The ``flags`` of the first processor in a /proc/cpuinfo text (empty if none)."""
    for line in cpuinfo.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() in ("flags", "Features"):  # x86, arm64
            return frozenset(value.split())
    return frozenset()


@functools.cache
def cpu_flags() -> frozenset[str]:
    """This machine's CPU flags (empty where /proc/cpuinfo cannot be read)."""
    try:
        return parse_flags(Path("/proc/cpuinfo").read_text())
    except OSError:
        return frozenset()


def has_native_bf16(flags: frozenset[str] | None = None) -> bool:
    """True when the CPU with ``flags`` (default: this one) computes bfloat16 natively."""
    return bool(NATIVE_BF16_FLAGS & (cpu_flags() if flags is None else flags))


def describe(flags: frozenset[str] | None = None) -> str:
    """One line for logs and benchmark output: which kind of CPU this is."""
    flags = cpu_flags() if flags is None else flags
    native = sorted(NATIVE_BF16_FLAGS & flags)
    amx = sorted(f for f in flags if f.startswith("amx"))
    avx512 = "avx512f" in flags
    kind = f"native bf16 ({', '.join(native)})" if native else "no native bf16"
    extra = ", ".join(x for x in ("avx512f" if avx512 else "", *amx) if x)
    return f"{kind}; {extra or 'no AVX-512'}"
