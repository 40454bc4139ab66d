"""Shared test set-up: factories on the path, deterministic torch."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture(autouse=True)
def _own_working_directory(tmp_path, monkeypatch):
    """Each test runs in its own empty folder, so none reads or writes the caller's working
    directory (e.g. the `runs/` that the README's main job leaves behind)."""
    monkeypatch.chdir(tmp_path)


@pytest.fixture(autouse=True)
def _seeded():
    import torch

    torch.manual_seed(0)
    yield
