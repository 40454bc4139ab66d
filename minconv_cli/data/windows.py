"""`WindowDataset`: every run of `length` regularly spaced steps within one sample, normalised, as tensors."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from minconv_cli.core.errors import MinconvError
from minconv_cli.data.fields import Fields
from minconv_cli.data.normalize import Normalizer


def window_starts(fields: Fields, length: int, stride: int = 1) -> np.ndarray:
    """Start indices of windows that stay inside one regular run of times (never across a gap)."""
    starts = [np.arange(a, b - length + 1, stride) for a, b in fields.segments if b - a >= length]
    return np.concatenate(starts).astype(np.int64) if starts else np.zeros(0, np.int64)


class WindowDataset(Dataset):
    """Map-style dataset of windows; in-memory data is normalised once into one array and sliced,
    lazy data is read window by window from the chunked store. Picklable (DataLoader workers, DDP)."""

    def __init__(
        self, fields: Fields, length: int, normalizer: Normalizer, stride: int = 1
    ) -> None:
        if length < 1 or stride < 1:
            raise ValueError("WindowDataset: length and stride must be >= 1")
        if [c.name for c in fields.channels] != normalizer.channels:
            raise ValueError(
                f"WindowDataset: normaliser channels {normalizer.channels} differ from the data's "
                f"{[c.name for c in fields.channels]}"
            )
        self.fields = fields
        self.length = int(length)
        self.stride = int(stride)
        self.normalizer = normalizer
        self.starts = window_starts(fields, self.length, self.stride)
        if len(self.starts) == 0 or fields.n_samples == 0:
            longest = max((b - a for a, b in fields.segments), default=0)
            raise MinconvError(
                f"{fields.path_label}: too short for one window of {self.length} steps "
                f"({fields.n_times} time steps, longest regular run {longest})"
            )
        self.static = torch.from_numpy(
            np.ascontiguousarray(normalizer.normalize_static(fields.static_array()))
        )
        self._x: np.ndarray | None = None
        self._mask: np.ndarray | None = None
        if not fields.is_lazy:
            self._x, self._mask = normalizer.normalize(fields.array())

    def __len__(self) -> int:
        return self.fields.n_samples * len(self.starts)

    def locate(self, index: int) -> tuple[int, int]:
        """(sample, start) of item `index`."""
        if not 0 <= index < len(self):
            raise IndexError(f"window {index} out of range 0..{len(self) - 1}")
        sample, k = divmod(int(index), len(self.starts))
        return sample, int(self.starts[k])

    def __getitem__(self, index: int) -> dict[str, Any]:
        sample, start = self.locate(index)
        stop = start + self.length
        if self._x is not None:
            x = self._x[sample, start:stop]
            mask = self._mask[sample, start:stop]
        else:
            x, mask = self.normalizer.normalize(self.fields.frames(sample, start, stop))
        return {
            "x": torch.from_numpy(np.ascontiguousarray(x)),
            "mask": torch.from_numpy(np.ascontiguousarray(mask)),
            "static": self.static,
            "sample": sample,
            "start": start,
        }
