"""Input values training cannot compute with: ±inf, and magnitudes that overflow float32.

NaN is missing data (masked). Anything else that is not a plain float32 number is refused: ±inf,
float64 values beyond the float32 range (they become inf when cast), and values whose square
overflows float32 (|x| > sqrt(float32 max) ~ 1.8e19; the loss squares errors in float32), which in
practice means a corrupted block. Data in memory is checked once when opened (`check_values`);
lazy data block by block as it is read (`checked_lazily`: a dask `map_blocks` on each variable,
so every reader, from `Fields.frames` to `Normalizer.fit` and evaluate's sums, checks what it reads).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import xarray as xr

from minconv_cli.core.errors import MinconvError

FLOAT32_MAX = float(np.finfo(np.float32).max)
LIMIT = float(np.sqrt(FLOAT32_MAX))  # |x| above this: x * x is inf in float32


class BadValues(MinconvError):
    """Input values training cannot compute with; one line even when a DataLoader worker raised it
    (torch re-raises a worker's error as its type built from the worker's whole traceback, whose
    last line is `module.BadValues: <the message>`)."""

    def __init__(self, message: str) -> None:
        if "\n" in message:
            last = message.rstrip().splitlines()[-1]
            prefix = f"{type(self).__module__}.{type(self).__qualname__}: "
            message = last.removeprefix(prefix)
        super().__init__(message)


class Where:
    """What a message says about a variable's values: its source and its time axis."""

    def __init__(
        self, variable: str, what: str, times: np.ndarray | None, files: Sequence[tuple[int, str]]
    ) -> None:
        self.variable = variable
        self.what = what  # "variable" or "static"
        self.times = times
        self.files = list(files)  # (first time index, file), in time order

    def source(self, t: int | None) -> str:
        """The file that holds time index `t` (the first one when there is no time)."""
        label = self.files[0][1]
        for first, path in self.files:
            if t is not None and t >= first:
                label = path
        return label

    def time(self, t: int | None) -> str:
        if t is None or self.times is None:
            return ""
        from minconv_cli.data.timeaxis import short_time

        return f" at time {short_time(self.times[t])}"


def _extremes(values: np.ndarray) -> tuple[float, float]:
    """(max, min) ignoring NaN (NaN when all are NaN), without a temporary copy."""
    return float(np.fmax.reduce(values, axis=None)), float(np.fmin.reduce(values, axis=None))


def check_values(
    values: np.ndarray, where: Where, time_axis: int | None = None, offset: int = 0
) -> bool:
    """Raise one line naming the file, the variable and the first time with a value that is ±inf
    or beyond ±`LIMIT`; NaN passes. `offset`: the time index of `values`' first time. Returns
    False when every value is NaN."""
    if values.dtype.kind != "f" or not values.size:
        return values.size > 0
    hi, lo = _extremes(values)
    if not (hi > LIMIT or lo < -LIMIT):  # also False when all are NaN
        return not np.isnan(hi)
    bad = np.abs(values) > LIMIT
    t = None
    frame = values
    if time_axis is not None:
        per_time = bad.any(axis=tuple(a for a in range(values.ndim) if a != time_axis))
        t = int(np.argmax(per_time))
        frame = np.take(values, t, axis=time_axis)
        t += offset
    worst = float(np.nanmax(np.abs(frame)))
    if np.isinf(worst):
        sign = "" if np.isposinf(frame).any() else "-"
        kind = f"holds {sign}inf, which is not data (NaN marks missing values)"
    elif worst > FLOAT32_MAX:
        kind = (
            f"holds {worst:.3g}, beyond the float32 range: it would become inf and overflow "
            f"float32 arithmetic (a corrupted block?)"
        )
    else:
        kind = (
            f"holds {worst:.3g}, beyond {LIMIT:.2g}: its square would overflow float32 "
            f"arithmetic (a corrupted block?)"
        )
    raise BadValues(f"{where.source(t)}: {where.what} {where.variable!r}{where.time(t)} {kind}")


class BlockCheck:
    """`check_values` on each dask block of one variable as it is read (returns the block)."""

    def __init__(self, where: Where, time_axis: int | None) -> None:
        self.where = where
        self.time_axis = time_axis

    def __call__(self, block: np.ndarray, block_info: Any = None) -> np.ndarray:
        offset = 0
        if self.time_axis is not None and block_info:
            offset = int(block_info[0]["array-location"][self.time_axis][0])
        check_values(np.asarray(block), self.where, self.time_axis, offset)
        return block


def checked_lazily(da: xr.DataArray, where: Where, time_dim: str) -> xr.DataArray:
    """`da` (dask-backed, float) with each block checked by `check_values` when computed."""
    data = da.data
    axis = da.dims.index(time_dim) if time_dim in da.dims else None
    checked = data.map_blocks(
        BlockCheck(where, axis),
        dtype=data.dtype,
        meta=data._meta,
        name=f"minconv-checked-{data.name}",
    )
    return da.copy(data=checked)
