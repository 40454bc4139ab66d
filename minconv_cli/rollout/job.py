"""The sequences a rollout forecasts (`Job`: DATA in the checkpoint's grid order, init times,
context and steps) and how their frames are read, batch by batch."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from minconv_cli.data import Fields
from minconv_cli.models.checkpoint import GridOrder
from minconv_cli.rollout.plan import Key, Row


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass
class Job:
    """The sequences to forecast: DATA in the checkpoint's grid order, init times, context, steps."""

    fields: Fields
    order: GridOrder
    init_index: np.ndarray
    context: int
    steps: int
    step: Any = None  # the time step (the data's own stamps for calendar steps)

    def sequences(self) -> list[tuple[int, int, tuple[int, ...]]]:
        """(init position, flat sample, store position (init, *sample)) of every sequence."""
        shape = self.fields.sample_shape
        return [
            (i, s, (i, *(int(k) for k in np.unravel_index(s, shape))) if shape else (i,))
            for i in range(len(self.init_index))
            for s in range(self.fields.n_samples)
        ]

    def context_frames(self, batch: Sequence[Row]) -> np.ndarray:
        """(B, K, C, H, W) physical frames up to and including each init time; rows of one (init,
        sample), such as ensemble members, share one read."""
        pairs = list(dict.fromkeys((i, s) for i, s, _ in batch))
        stop = self.init_index[[i for i, _ in pairs]] + 1
        read = np.stack(
            [
                self.order.orient(self.fields.frames(s, int(t) - self.context, int(t)))
                for (_, s), t in zip(pairs, stop, strict=True)
            ]
        )
        if len(pairs) == len(batch):
            return read
        where = {pair: n for n, pair in enumerate(pairs)}
        return read[[where[(i, s)] for i, s, _ in batch]]

    def keys(self, batch: Sequence[Row]) -> list[Key]:
        """(data time index of the init, flat sample, store position) of each row."""
        return [(int(self.init_index[i]), s, pos) for i, s, pos in batch]

    def static(self) -> np.ndarray | None:
        if not self.fields.static_channels:
            return None
        return self.order.orient(self.fields.static_array())
