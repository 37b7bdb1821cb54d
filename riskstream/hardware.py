"""What this CPU can do fast: the instruction-set features that decide which precision pays.

The inference engine asks one question here: does the CPU multiply bfloat16 natively? With AMX-BF16 (Intel
Sapphire Rapids and later) or AVX512-BF16 (Cooper Lake, AMD Zen 4 and later), oneDNN runs bf16 matrix products
several times faster than fp32. Without them torch emulates bf16, which is *slower* than fp32. So ``auto``
precision means bf16 on the first kind of CPU and fp32 on the second. (Training in bf16 stays opt-in,
``--cpu-bf16``: measured, docs/models.md.) The benchmarks report the features with :func:`cpu_summary`.

The flags are read from ``/proc/cpuinfo`` (Linux). Elsewhere, or when the file cannot be read, no feature is
assumed and every ``auto`` choice falls back to fp32, the precision that is never slow.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from pathlib import Path

CPUINFO = Path("/proc/cpuinfo")

# the features that change which path is fastest, in the order a reader compares CPUs by
REPORTED_FEATURES = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16", "amx_int8")
NATIVE_BF16_FEATURES = frozenset({"amx_bf16", "avx512_bf16"})


def parse_cpuinfo(text: str) -> tuple[str, frozenset[str]]:
    """(model name, flags) of the first processor in a ``/proc/cpuinfo`` text."""
    model, flags = "", frozenset[str]()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and not model:
            model = value.strip()
        elif key == "flags" and not flags:
            flags = frozenset(value.split())
        if model and flags:
            break
    return model, flags


@functools.cache
def _cpuinfo() -> tuple[str, frozenset[str]]:
    try:
        return parse_cpuinfo(CPUINFO.read_text(encoding="utf-8", errors="replace"))
    except OSError:
        return "", frozenset()


def cpu_flags() -> frozenset[str]:
    """This machine's CPU flags (empty where ``/proc/cpuinfo`` is not readable)."""
    return _cpuinfo()[1]


def has_native_bf16(flags: Iterable[str] | None = None) -> bool:
    """True when the CPU multiplies bf16 in hardware (AMX-BF16 or AVX512-BF16)."""
    have = cpu_flags() if flags is None else frozenset(flags)
    return bool(NATIVE_BF16_FEATURES & have)


def cpu_summary() -> dict[str, object]:
    """Model name and the performance-relevant features, for benchmark reports and start-up logs."""
    model, flags = _cpuinfo()
    return {
        "model": model or "unknown",
        "features": [f for f in REPORTED_FEATURES if f in flags],
        "native_bf16": has_native_bf16(flags),
    }
