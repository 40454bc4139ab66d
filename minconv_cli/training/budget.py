"""The wall-clock budget (`train.max_time`): when to stop taking training steps so that a
validation still fits, and how many validation windows fit in the time that is left.

The run ends within about one step of the budget: training stops when one more step (as long as
the last one) plus the time held back for validation would not fit; validation then covers an
evenly spread subset of the windows when all of them would not fit (at least one batch, so every
run has a score and a best checkpoint), and stops before a batch that would overrun.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

VAL_SHARE = 0.25  # at most this share of the budget is held back for the final validation
VAL_COST = 0.5  # before any validation: seconds per window ≈ this × a training step's per window


@dataclass
class Budget:
    """Time accounting of one session of a run; `started` is when the budget began (monotonic)."""

    max_time: float | None
    started: float
    batch_size: int = 1
    step_seconds: list[float] = field(default_factory=list)  # this session's training steps
    window_seconds: float | None = None  # measured by the last validation, per window and rank
    validation_seconds: float = 0.0  # the last validation's duration

    def left(self) -> float:
        """Seconds left (infinite without a budget)."""
        if self.max_time is None:
            return math.inf
        return self.started + self.max_time - time.monotonic()

    def step_done(self, seconds: float) -> None:
        self.step_seconds.append(seconds)

    def val_window_seconds(self) -> float | None:
        """Seconds one validation window takes on one rank: measured, else estimated from the steps."""
        if self.window_seconds is not None:
            return self.window_seconds
        if self.step_seconds:
            return VAL_COST * self.step_seconds[-1] / self.batch_size
        return None

    def stop_training(self, val_windows: int) -> bool:
        """True when another step as long as the last one, plus the validation of this rank's
        `val_windows` (at most VAL_SHARE of the budget), would not fit in what is left."""
        if self.max_time is None or not self.step_seconds:
            return False
        per_window = self.val_window_seconds() or 0.0
        reserve = min(val_windows * per_window, VAL_SHARE * self.max_time)
        return self.step_seconds[-1] + reserve > self.left()

    def val_windows(self, total: int, world: int) -> int:
        """How many of `total` validation windows (over `world` ranks) fit in what is left: all of
        them without a budget, and never fewer than one batch per rank."""
        per_window = self.val_window_seconds()
        if self.max_time is None or per_window is None or per_window <= 0:
            return total
        fits = math.floor(world * max(0.0, self.left()) / per_window)
        return max(min(total, self.batch_size * world), min(total, fits))

    def limit(self, batches: Iterable[dict]) -> Iterator[dict]:
        """The validation batches until the next one would overrun the budget (the first always
        runs); measures seconds per window for the next estimate."""
        start = time.monotonic()
        windows, longest = 0, 0.0
        it = iter(batches)
        try:
            while not windows or longest <= self.left():
                began = time.monotonic()
                batch = next(it, None)
                if batch is None:
                    break
                yield batch  # the caller computes on it before asking for the next one
                longest = max(longest, time.monotonic() - began)
                windows += int(batch["x"].shape[0])
        finally:
            self.validation_seconds = time.monotonic() - start
            if windows:
                self.window_seconds = self.validation_seconds / windows


def spread(total: int, count: int) -> list[int]:
    """`count` of the indices 0..total-1, evenly spread and in order (all of them when count >= total)."""
    if count >= total:
        return list(range(total))
    return [i * total // count for i in range(count)]
