"""glibc malloc set to keep freed tensor memory for the next step instead of unmapping it.

By default glibc serves blocks over a few MB with mmap and returns them on free, so every
training step page-faults its activations back in: 153k faults (600 MB zeroed by the kernel) per
step of MinConvLSTM at 64x64, against 20k with the settings here (benchmarks/allocator.py).
PyTorch's CPU tuning guide gets the same from jemalloc/tcmalloc via LD_PRELOAD; this needs nothing
installed.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os

M_TRIM_THRESHOLD = -1  # glibc mallopt parameters (malloc.h)
M_MMAP_THRESHOLD = -3
KEEP_BYTES = 1 << 30  # blocks below this come from the heap; up to this much free heap is kept
USER_SETTINGS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "LD_PRELOAD")


@functools.cache
def keep_freed_memory() -> bool:
    """Tune glibc malloc once per process; False where it is not glibc or the user chose their own
    allocator settings (glibc's MALLOC_*_ variables, or a preloaded jemalloc/tcmalloc)."""
    if any(os.environ.get(name) for name in USER_SETTINGS):
        return False
    name = ctypes.util.find_library("c")
    try:
        mallopt = ctypes.CDLL(name).mallopt
    except (OSError, AttributeError, TypeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    return bool(mallopt(M_MMAP_THRESHOLD, KEEP_BYTES)) and bool(
        mallopt(M_TRIM_THRESHOLD, KEEP_BYTES)
    )
