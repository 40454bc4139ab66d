"""`Fields`: one opened data set with its dims recognised, read as (time, channel, y, x) frames."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import xarray as xr

import minconv_cli.data.timeaxis as timeaxis
from minconv_cli.core.errors import MinconvError


@dataclass(frozen=True)
class Channel:
    """One input channel: a variable, or one level of a variable."""

    name: str
    variable: str
    level: Any
    units: str
    attrs: dict


def jsonable(value: Any) -> Any:
    """Plain Python (JSON-able) version of attribute values and coordinate arrays."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        if value.dtype.kind in "mM":
            return [str(v) for v in value]
        return [jsonable(v) for v in value.tolist()]
    if isinstance(value, (np.datetime64, np.timedelta64)):
        return str(value)
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, float) and not np.isfinite(value):
        return str(value)
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    return value


def regular_segments(times: np.ndarray, step: Any) -> list[tuple[int, int]]:
    """Half-open index ranges [a, b) of consecutive times spaced exactly `step` apart
    (a fixed step, or a `CalendarStep`: one month or year later in the axis' calendar)."""
    n = len(times)
    if n == 0:
        return []
    if n == 1 or step is None:
        return [(0, n)]
    if isinstance(step, timeaxis.CalendarStep) or timeaxis.is_cftime(times):
        breaks = np.flatnonzero(~timeaxis.regular_pairs(times, step)) + 1
    else:
        breaks = np.flatnonzero(np.diff(times) != step) + 1
    edges = [0, *breaks.tolist(), n]
    return [(a, b) for a, b in zip(edges[:-1], edges[1:], strict=True)]


@dataclass
class Fields:
    """A recognised data set: variables as channels over (samples, time, y, x); no torch in here.

    `ds` holds the selected variables (transposed to sample dims, time, [level], y, x) and the statics.
    """

    ds: xr.Dataset
    path_label: str
    time_dim: str
    y_dim: str
    x_dim: str
    sample_dims: tuple[str, ...]
    level_dim: str | None
    channels: list[Channel]
    static_channels: list[Channel]
    time_step: Any
    is_latlon: bool
    default_padding: str
    times: np.ndarray = field(init=False)
    segments: list[tuple[int, int]] = field(init=False)

    def __post_init__(self) -> None:
        self.times = np.asarray(self.ds[self.time_dim].values)
        self.segments = regular_segments(self.times, self.time_step)

    @property
    def variables(self) -> list[str]:
        """Names of the dynamic (predicted) variables, in channel order."""
        return list(dict.fromkeys(c.variable for c in self.channels))

    @property
    def static_variables(self) -> list[str]:
        return list(dict.fromkeys(c.variable for c in self.static_channels))

    @property
    def n_times(self) -> int:
        return int(self.ds.sizes[self.time_dim])

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return tuple(int(self.ds.sizes[d]) for d in self.sample_dims)

    @property
    def n_samples(self) -> int:
        return int(np.prod(self.sample_shape, dtype=np.int64))

    @property
    def grid_shape(self) -> tuple[int, int]:
        return int(self.ds.sizes[self.y_dim]), int(self.ds.sizes[self.x_dim])

    @property
    def time_is_datetime(self) -> bool:
        """True for dates (datetime64, or cftime in any calendar), False for numeric time."""
        return timeaxis.is_dated(self.times)

    @property
    def is_lazy(self) -> bool:
        """True when the variables are dask arrays still on disk (read window by window)."""
        return any(self.ds[v].chunks is not None for v in self.variables)

    def sample_index(self, sample: int) -> dict[str, int]:
        """Positions along each sample dim of flat sample number `sample` (C order)."""
        if not 0 <= sample < self.n_samples:
            raise IndexError(f"sample {sample} out of range 0..{self.n_samples - 1}")
        if not self.sample_dims:
            return {}
        pos = np.unravel_index(sample, self.sample_shape)
        return {d: int(p) for d, p in zip(self.sample_dims, pos, strict=False)}

    def sample_labels(self, sample: int) -> dict[str, Any]:
        """Coordinate values (or positions, when a dim has no coordinate) of one sample."""
        labels = {}
        for d, p in self.sample_index(sample).items():
            labels[d] = jsonable(self.ds[d].values[p]) if d in self.ds.coords else p
        return labels

    def time_index(self, time: Any) -> int:
        """Index of a time value (datetime string/np.datetime64/cftime, or number); error if absent."""
        try:
            if timeaxis.is_cftime(self.times):
                value = timeaxis.parse_time(time, self.times) if isinstance(time, str) else time
                times = self.times
            else:
                value = np.datetime64(time, "ns") if self.time_is_datetime else float(time)
                times = self.times.astype("datetime64[ns]") if self.time_is_datetime else self.times
            hits = np.flatnonzero(times == value)
        except (TypeError, ValueError) as err:
            raise MinconvError(f"{self.path_label}: cannot read time {time!r} ({err})") from None
        if len(hits) == 0:
            first, last = self.times[0], self.times[-1]
            raise MinconvError(
                f"{self.path_label}: time {time} is not in the data (it covers {first} to {last})"
            )
        return int(hits[0])

    def frames(self, sample: int, start: int, stop: int) -> np.ndarray:
        """Frames `start:stop` of one sample as float32 (T, C, H, W) in physical units, NaN kept."""
        index: dict[str, Any] = dict(self.sample_index(sample))
        index[self.time_dim] = slice(start, stop)
        return self._stack(self.ds[self.variables].isel(index), lead=(self.time_dim,))

    def array(self) -> np.ndarray:
        """All frames as float32 (S, T, C, H, W); for in-memory data (reads everything)."""
        ds = self.ds[self.variables]
        if self.sample_dims:
            ds = ds.stack(_sample=list(self.sample_dims))
        else:
            ds = ds.expand_dims("_sample")
        return self._stack(ds, lead=("_sample", self.time_dim))

    def _stack(self, ds: xr.Dataset, lead: tuple[str, ...]) -> np.ndarray:
        """Concatenate variables (each (*lead, [level], y, x)) along a channel axis after `lead`."""
        import dask

        lead_dims = len(lead)
        order = (*lead, *self._tail_dims)
        with dask.config.set(scheduler="synchronous"):
            values = dask.compute(
                *[ds[v].transpose(*order, missing_dims="ignore").data for v in self.variables]
            )
        parts = []
        for v in values:
            v = np.asarray(v)
            if v.ndim == lead_dims + 2:
                v = v[..., None, :, :]
            parts.append(v.astype(np.float32, copy=False))
        return np.concatenate(parts, axis=lead_dims) if len(parts) > 1 else parts[0]

    @property
    def _tail_dims(self) -> tuple[str, ...]:
        level = (self.level_dim,) if self.level_dim else ()
        return (*level, self.y_dim, self.x_dim)

    def static_array(self) -> np.ndarray:
        """Static inputs as float32 (S, H, W) in physical units (S may be 0)."""
        h, w = self.grid_shape
        out = np.empty((len(self.static_channels), h, w), dtype=np.float32)
        for i, ch in enumerate(self.static_channels):
            da = self.ds[ch.variable]
            if ch.level is not None:
                da = da.sel({self.level_dim: ch.level})
            extra = {d: 0 for d in da.dims if d not in (self.y_dim, self.x_dim)}
            da = da.isel(extra)
            da = da.broadcast_like(self._grid_template())
            out[i] = np.asarray(da.transpose(self.y_dim, self.x_dim).values, dtype=np.float32)
        return out

    def _grid_template(self) -> xr.DataArray:
        return xr.DataArray(np.zeros(self.grid_shape, np.float32), dims=(self.y_dim, self.x_dim))

    def grid_meta(self) -> dict:
        """JSON-able description of the grid: dim names, coordinate values and attrs of y and x."""
        y = self.ds[self.y_dim]
        x = self.ds[self.x_dim]
        yv = np.asarray(y.values)
        return {
            "y_dim": self.y_dim,
            "x_dim": self.x_dim,
            "y": {"values": jsonable(yv), "attrs": jsonable(dict(y.attrs))},
            "x": {"values": jsonable(np.asarray(x.values)), "attrs": jsonable(dict(x.attrs))},
            "shape": list(self.grid_shape),
            "y_descending": bool(len(yv) > 1 and yv[0] > yv[-1]),
            "is_latlon": self.is_latlon,
            "default_padding": self.default_padding,
            "time_dim": self.time_dim,
            "sample_dims": list(self.sample_dims),
            "level_dim": self.level_dim,
        }

    def with_ds(self, ds: xr.Dataset, label: str) -> Fields:
        """The same recognised layout over a subset `ds` of this data (used by splits)."""
        return Fields(
            ds=ds,
            path_label=label,
            time_dim=self.time_dim,
            y_dim=self.y_dim,
            x_dim=self.x_dim,
            sample_dims=self.sample_dims,
            level_dim=self.level_dim,
            channels=self.channels,
            static_channels=self.static_channels,
            time_step=self.time_step,
            is_latlon=self.is_latlon,
            default_padding=self.default_padding,
        )
