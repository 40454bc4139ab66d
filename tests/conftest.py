"""Shared test set-up: factories on the path, deterministic torch, Triton's interpreter without a GPU.

MINCONV_TEST_DEVICE=cuda runs the tests' tensors and models on that device (torch's default
device; TF32 off so that float32 tolerances hold): `tests/test_models.py`, `test_scan.py` and
`test_triton.py` are written for it (see .ci/gpu_check.sh).
"""

import os
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))

# Triton reads TRITON_INTERPRET when it is first imported: set it before any test can import it,
# so that tests/test_triton.py runs the kernels in the interpreter on machines without a GPU.
if "TRITON_INTERPRET" not in os.environ and not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"

TEST_DEVICE = os.environ.get("MINCONV_TEST_DEVICE")

# The compiled gate kernels of large frames (models/gate_kernels.py) cost 20-40 s of compiling
# per gate kind and dtype: tests/test_models_gate_kernels.py turns them on and checks them, the
# rest of the suite (and the processes it starts) runs the same arithmetic eagerly.
os.environ.setdefault("MINCONV_COMPILE", "0")


@pytest.fixture(autouse=True)
def _own_working_directory(tmp_path, monkeypatch):
    """Each test runs in its own empty folder, so none reads or writes the caller's working
    directory (e.g. the `runs/` that the README's main job leaves behind)."""
    monkeypatch.chdir(tmp_path)


@pytest.fixture(autouse=True)
def _seeded():
    torch.manual_seed(0)
    if TEST_DEVICE:
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.set_default_device(TEST_DEVICE)
    yield
    if TEST_DEVICE:
        torch.set_default_device(None)
