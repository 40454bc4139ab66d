"""Numeric precision of training and rollout: `fp32`, or `bf16` autocast for the convolutions
(the recurrence, the norms, the 1x1 encoder/decoder and the loss stay in fp32); `auto` picks
bf16 where the hardware computes it natively (CUDA with bf16, x86 CPUs with AVX512-BF16 or AMX)."""

from __future__ import annotations

import contextlib
import functools
from pathlib import Path

import torch

from minconv_cli.core.errors import MinconvError

PRECISIONS = ("fp32", "bf16", "auto")
CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16")  # /proc/cpuinfo names of native bf16 arithmetic


@functools.lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """The CPU feature flags Linux reports (empty elsewhere)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith("flags"):
            return frozenset(line.partition(":")[2].split())
    return frozenset()


def native_bf16(device: torch.device | str) -> bool:
    """True where bf16 convolutions run on hardware bf16 units rather than emulated.

    torch's own `mkldnn._is_mkldnn_bf16_supported()` is also true on AVX512 CPUs without
    bf16 instructions, where oneDNN emulates bf16 and it is slower than fp32; hence the flags.
    """
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return torch.backends.mkldnn.is_available() and any(
            flag in cpu_flags() for flag in CPU_BF16_FLAGS
        )
    return False


def resolve_precision(precision: str, device: torch.device | str, option: str = "precision") -> str:
    """`fp32` or `bf16` for `device`; `auto` is bf16 where `native_bf16`, else fp32."""
    if precision not in PRECISIONS:
        raise MinconvError(f"{option}: expected one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "auto":
        return "bf16" if native_bf16(device) else "fp32"
    return precision


def autocast(device: torch.device | str, precision: str) -> contextlib.AbstractContextManager:
    """bf16 autocast on `device` for a resolved precision `bf16`; nothing for `fp32`."""
    device = torch.device(device)
    if precision == "bf16" and device.type in ("cpu", "cuda"):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def full_precision(x: torch.Tensor) -> contextlib.AbstractContextManager:
    """Inside an autocast region, a block that runs in fp32 (for ops on `x`'s device)."""
    return torch.autocast(x.device.type, enabled=False)
