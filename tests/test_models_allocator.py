"""`create_model` applies the allocator setting itself, so a model used from Python (not through
`minconv train` / `rollout`) keeps freed activations for the next step. Fresh processes: the
setting is process-wide."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PROBE = """
import resource, torch
from minconv_cli.core.allocator import keep_freed_memory
from minconv_cli.models import create_model
before = keep_freed_memory.cache_info().currsize
create_model("minconvgru", 1, width=4, layers=1, grid=(8, 8))
after = keep_freed_memory.cache_info().currsize
for mb in (4, 16, 64, 256):  # activations of growing sizes, as in training steps
    n = (mb << 20) // 4
    x = torch.ones(n); del x
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(5):
        x = torch.ones(n); del x
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults
print(before, after, keep_freed_memory(), faults / 5 / ((mb << 20) // 4096))
"""


def probe(**env: str) -> list[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    clean.pop("LD_PRELOAD", None)
    done = subprocess.run(
        [sys.executable, "-c", PROBE],
        capture_output=True,
        text=True,
        check=True,
        cwd=REPO,
        env={**clean, "PYTHONPATH": str(REPO), **env},
    )
    return done.stdout.split()


glibc = pytest.mark.skipif(
    platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc only"
)


@glibc
def test_building_a_model_keeps_freed_memory_for_reuse():
    before, after, applied, fraction = probe()
    assert (before, after, applied) == ("0", "1", "True")  # applied by building, not importing
    assert float(fraction) < 0.25  # glibc's default faults every page of a freed 256 MB back in


@glibc
def test_building_a_model_leaves_the_users_malloc_settings_alone():
    _, after, applied, _ = probe(MALLOC_TRIM_THRESHOLD_=str(1 << 20))
    assert (after, applied) == ("1", "False")
