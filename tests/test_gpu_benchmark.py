"""benchmarks/gpu.py runs end to end: one clear line without CUDA, a smoke run on the CPU."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "gpu.py"


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=600
    )


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_without_cuda_it_says_so_in_one_line():
    done = run()
    assert done.returncode != 0
    assert done.stderr.strip() == (
        "benchmarks/gpu.py: no CUDA device here (--device cpu --quick runs a smoke test)"
    )


def test_cpu_smoke_run_of_the_kernel_section_writes_results(tmp_path):
    out = tmp_path / "gpu.json"
    done = run("--device", "cpu", "--quick", "--skip", "train", "rollout", "--out", str(out))
    assert done.returncode == 0, done.stderr
    result = json.loads(out.read_text())
    assert result["device"] == "cpu" and result["fused_backend_auto"] == "fused"
    for dtype in ("float32", "bfloat16"):
        entry = result["kernel"][f"16x16 B1 T6 | {dtype}"]
        for op in ("copy fwd (s + p -> h)", "fused torch ops fwd+bwd", "log scan fwd+bwd"):
            assert entry[op]["median_ms"] > 0
    assert result["train"] == {} and result["rollout"] == {}
