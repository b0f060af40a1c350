"""What this machine's CPU computes natively, from Linux's /proc/cpuinfo."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

# CPU flags of native bfloat16 arithmetic; without them torch emulates it, slower than float32.
NATIVE_BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> frozenset[str]:
    """The first CPU's feature flags (Linux); none elsewhere."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        name, _, value = line.partition(":")
        if name.strip() in ("flags", "Features"):
            return frozenset(value.split())
    return frozenset()


def native_bfloat16(flags: Iterable[str]) -> bool:
    return bool(NATIVE_BF16_FLAGS & set(flags))


def cpu_dtype(setting: str, flags: Iterable[str]) -> str:
    """The dtype a model computes in on a CPU: `auto` is bfloat16 where the CPU computes it natively, else float32;
    any other setting is itself."""
    if setting != "auto":
        return setting
    return "bfloat16" if native_bfloat16(flags) else "float32"
