"""The allocator setting that `train` and `rollout` apply, and that building a model applies for a
library user: freed tensor memory is reused, not page-faulted back in. Each case runs in a fresh
process, since the setting is process-wide."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

PROBE = """
import resource, sys, torch
from minconv_cli.core.allocator import keep_freed_memory
before = keep_freed_memory.cache_info().currsize
if sys.argv[1] == "model":  # a library user who builds a model and never calls the setting
    from minconv_cli.models import create_model
    create_model("minconvgru", 1, width=4, layers=1, grid=(8, 8))
else:
    keep_freed_memory()
after = keep_freed_memory.cache_info().currsize
for mb in (4, 16, 64, 256):  # activations of growing sizes, as in training steps
    n = (mb << 20) // 4
    x = torch.ones(n); del x
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(5):
        x = torch.ones(n); del x
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults
# applied before, applied after, the setting's result, pages faulted per 256 MB allocation
print(before, after, keep_freed_memory(), faults / 5 / ((mb << 20) // 4096))
"""


def probe(how: str = "call", **env: str) -> tuple[str, str, str, float]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    clean.pop("LD_PRELOAD", None)
    done = subprocess.run(
        [sys.executable, "-c", PROBE, how],
        capture_output=True,
        text=True,
        check=True,
        env={**clean, **env},
    )
    before, after, applied, fraction = done.stdout.split()
    return before, after, applied, float(fraction)


glibc = pytest.mark.skipif(
    platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc only"
)


@glibc
def test_a_freed_large_tensor_is_reused_without_page_faults():
    _, _, applied, fraction = probe()
    assert applied == "True"
    assert fraction < 0.25  # glibc's default unmaps it and faults every page back in (1.0)


@glibc
def test_the_users_own_malloc_settings_are_left_alone():
    _, _, applied, _ = probe(MALLOC_MMAP_THRESHOLD_=str(1 << 20))
    assert applied == "False"


@glibc
def test_building_a_model_keeps_freed_memory_for_reuse():
    before, after, applied, fraction = probe("model")
    assert (before, after, applied) == ("0", "1", "True")  # applied by building, not importing
    assert fraction < 0.25


@glibc
def test_building_a_model_leaves_the_users_malloc_settings_alone():
    _, after, applied, _ = probe("model", MALLOC_TRIM_THRESHOLD_=str(1 << 20))
    assert (after, applied) == ("1", "False")
