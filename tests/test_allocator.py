"""The allocator setting that `train` and `rollout` apply: freed tensor memory is reused, not
page-faulted back in. Each case runs in a fresh process, since the setting is process-wide."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

PROBE = """
import resource, torch
from minconv_cli.core.allocator import keep_freed_memory
print(keep_freed_memory())
for mb in (4, 16, 64, 256):  # activations of growing sizes, as in training steps
    n = (mb << 20) // 4
    x = torch.ones(n); del x
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(5):
        x = torch.ones(n); del x
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
print(faults / 5 / ((mb << 20) // 4096))  # of the 256 MB tensor: pages faulted per allocation
"""


def probe(**env: str) -> tuple[str, float]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    clean.pop("LD_PRELOAD", None)
    done = subprocess.run(
        [sys.executable, "-c", PROBE],
        capture_output=True,
        text=True,
        check=True,
        env={**clean, **env},
    )
    applied, fraction = done.stdout.split()
    return applied, float(fraction)


glibc = pytest.mark.skipif(
    platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc only"
)


@glibc
def test_a_freed_large_tensor_is_reused_without_page_faults():
    applied, fraction = probe()
    assert applied == "True"
    assert fraction < 0.25  # glibc's default unmaps it and faults every page back in (1.0)


@glibc
def test_the_users_own_malloc_settings_are_left_alone():
    applied, _ = probe(MALLOC_MMAP_THRESHOLD_=str(1 << 20))
    assert applied == "False"
