"""Where a run is (saved in last.pt) and what follows from it: the curriculum's horizon for an
epoch, the noise stream of a step, and stopping cleanly on SIGINT/SIGTERM."""

from __future__ import annotations

import math
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch

from minconv_cli.training.config import Config


@dataclass
class Position:
    """Where the run is, saved in last.pt."""

    epoch: int = 0  # 0-based epoch in progress
    step: int = 0  # batches done within it
    global_step: int = 0
    loss_sum: float = 0.0  # this epoch's summed step losses so far
    epoch_seconds: float = 0.0
    elapsed: float = 0.0  # training seconds over all sessions
    best_score: float = math.inf
    best_epoch: int = 0
    history: list | None = None
    best_detail: dict | None = None


def horizon_at(config: Config, epoch: int) -> int:
    """Closed-loop steps trained in `epoch` (0-based): the curriculum grows them linearly."""
    t = config.train
    if t.curriculum_epochs <= 0 or t.horizon == 0:
        return t.horizon
    if epoch >= t.curriculum_epochs:
        return t.horizon
    span = t.horizon - t.curriculum_start
    return t.curriculum_start + (span * epoch) // t.curriculum_epochs


def generator(*parts: int) -> torch.Generator:
    """A generator seeded from `parts` (e.g. seed, step, rank): the same parts, the same draws."""
    seed = 0
    for p in parts:
        seed = (seed * 1_000_003 + int(p)) % (2**63)
    return torch.Generator().manual_seed(seed)


@contextmanager
def stop_on_signals() -> Iterator[dict]:
    """SIGINT/SIGTERM ask the loop to stop after the current step; a second SIGINT aborts."""
    flag: dict[str, int | None] = {"signal": None}

    def handler(signum: int, _frame: Any) -> None:
        if flag["signal"] is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        flag["signal"] = signum

    previous = {}
    try:
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, handler)
    except ValueError:  # not the main thread: no handlers
        pass
    try:
        yield flag
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
