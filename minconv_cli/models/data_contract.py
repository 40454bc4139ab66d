"""The data contract of a checkpoint (`DataMeta`): what the model was trained on (channels,
grid, time step, normalisation), which `minconv train` writes and `minconv rollout` checks new
data (`check_against`) and other checkpoints (`differences`) against."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from minconv_cli.core.errors import MinconvError

# the data part of meta, stored at its top level (as every release has)
DATA_KEYS = (
    "channels",
    "static_channels",
    "variables",
    "grid",
    "time_step",
    "time_is_datetime",
    "time_calendar",
    "normalizer",
)
REQUIRED_FOR_ROLLOUT = ("channels", "grid", "normalizer", "time_step", "time_is_datetime")


def _channel_meta(channel: Any) -> dict:
    from minconv_cli.data.fields import jsonable

    return {
        "name": channel.name,
        "variable": channel.variable,
        "level": jsonable(channel.level),
        "units": channel.units,
        "attrs": jsonable(dict(channel.attrs)),
    }


def time_step_label(step: Any) -> str | float | None:
    """The time step as stored in meta: an ISO 8601 duration for timedelta64, a calendar step's
    label (`P1M`, `P1M mid`, `P1Y`, ...) for monthly/yearly data, else a float."""
    from minconv_cli.data.timeaxis import CalendarStep

    if step is None:
        return None
    if isinstance(step, CalendarStep):
        return step.label()
    if isinstance(step, (np.timedelta64, pd.Timedelta)):
        return pd.Timedelta(step).isoformat()
    return float(step)


@dataclass(frozen=True)
class GridOrder:
    """Which grid axes of the data run opposite to the checkpoint's (flipped on reading)."""

    flip_y: bool = False
    flip_x: bool = False

    def orient(self, array: np.ndarray) -> np.ndarray:
        """Frames (..., H, W) in the checkpoint's grid order."""
        if self.flip_y:
            array = array[..., ::-1, :]
        if self.flip_x:
            array = array[..., ::-1]
        return np.ascontiguousarray(array)


@dataclass
class DataMeta:
    """The data contract between `minconv train` and `minconv rollout`: what the model was trained
    on. `grid` is `Fields.grid_meta()` (y/x dims and coordinates, shape, time/sample/level dims,
    default padding); `time_step` is encoded by `time_step_label` and decoded by `step()`."""

    channels: list[dict] | None = None  # name, variable, level, units, attrs
    static_channels: list[dict] = field(default_factory=list)
    variables: dict[str, dict] = field(default_factory=dict)  # name -> units and attrs
    grid: dict | None = None
    time_step: str | float | None = None  # ISO duration, calendar label (P1M, P1Y), or float
    time_is_datetime: bool | None = None
    time_calendar: str | None = None  # CF calendar; None for numeric time
    normalizer: dict | None = None  # Normalizer.to_dict()

    @classmethod
    def from_fields(cls, fields: Any, normalizer: Any) -> DataMeta:
        """From training data (`Fields`) and the `Normalizer` fitted on its training split."""
        from minconv_cli.data.timeaxis import calendar_of

        channels = [_channel_meta(c) for c in fields.channels]
        variables: dict[str, dict] = {}
        for c in channels:
            variables.setdefault(c["variable"], {"units": c["units"], "attrs": c["attrs"]})
        return cls(
            channels=channels,
            static_channels=[_channel_meta(c) for c in fields.static_channels],
            variables=variables,
            grid=fields.grid_meta(),
            time_step=time_step_label(fields.time_step),
            time_is_datetime=bool(fields.time_is_datetime),
            time_calendar=calendar_of(fields.times),
            normalizer=normalizer.to_dict(),
        )

    @classmethod
    def from_dict(cls, meta: dict) -> DataMeta:
        """From a stored meta dict (the data keys at its top level; older releases' through
        `compat.checkpoint_meta`)."""
        return cls(**{k: meta[k] for k in DATA_KEYS if k in meta})

    def to_dict(self) -> dict:
        return {k: getattr(self, k) for k in DATA_KEYS}

    @property
    def time_dim(self) -> str | None:
        return (self.grid or {}).get("time_dim")

    @property
    def sample_dims(self) -> list[str]:
        return list((self.grid or {}).get("sample_dims") or [])

    @property
    def level_dim(self) -> str | None:
        return (self.grid or {}).get("level_dim")

    def missing(self) -> list[str]:
        """Keys a rollout needs that this description lacks."""
        return [k for k in REQUIRED_FOR_ROLLOUT if getattr(self, k) is None]

    def step(self) -> Any:
        """The training time step: np.timedelta64[ns], float, or a `CalendarStep` (monthly/yearly)."""
        from minconv_cli.data.timeaxis import CalendarStep

        step = self.time_step
        if step is None:
            raise MinconvError("checkpoint: no time step recorded (it cannot drive a rollout)")
        if self.time_is_datetime and CalendarStep.parse(str(step)) is not None:
            return CalendarStep.parse(str(step))
        if self.time_is_datetime:
            return pd.Timedelta(step).to_timedelta64().astype("timedelta64[ns]")
        return float(step)

    def open_matching(self, data: Sequence[Any], allow_missing_chunks: bool = False) -> Any:
        """Open DATA (`Fields`) with these variables, statics, levels and (where present) dims."""
        from minconv_cli.data import open_dataset, open_fields

        variables = list(dict.fromkeys(c["variable"] for c in self.channels))
        static = list(dict.fromkeys(c["variable"] for c in self.static_channels))
        levels = [c["level"] for c in self.channels if c.get("level") is not None]
        grid = self.grid
        named = {"time": self.time_dim, "y": grid["y_dim"], "x": grid["x_dim"]}
        named["level"] = self.level_dim
        with open_dataset(data[0]) as first:
            present = set(first.dims)
        dims: dict[str, Any] = {role: name for role, name in named.items() if name in present}
        samples = [d for d in self.sample_dims if d in present]
        if samples:
            dims["sample"] = samples
        return open_fields(
            list(data),
            variables=variables,
            static=static or None,
            dims=dims,
            levels=list(dict.fromkeys(levels)) or None,
            allow_missing_chunks=allow_missing_chunks,
        )

    def check_against(self, fields: Any) -> GridOrder:
        """Every way DATA (`Fields`) differs from what the model was trained on, as one
        MinconvError line; else which of its grid axes run reversed."""
        problems = self._channel_problems(fields)
        flips = []
        for axis, dim in (("y", fields.y_dim), ("x", fields.x_dim)):
            verdict = _compare_axis(np.asarray(fields.ds[dim].values), self.grid[axis]["values"])
            if verdict is None:
                trained = self.grid[f"{axis}_dim"]
                problems.append(f"grid {dim!r} differs from the checkpoint's {trained!r}")
            flips.append(verdict == "reversed")
        problems.extend(self._time_problems(fields))
        if problems:
            raise MinconvError(
                f"{fields.path_label}: does not match the checkpoint: " + "; ".join(problems)
            )
        return GridOrder(*flips)

    def _channel_problems(self, fields: Any) -> list[str]:
        problems = []
        want = [(c["name"], c.get("units", "")) for c in self.channels]
        have = [(c.name, c.units) for c in fields.channels]
        if [n for n, _ in want] != [n for n, _ in have]:
            problems.append(
                f"channels {[n for n, _ in have]} differ from the checkpoint's {[n for n, _ in want]}"
            )
        else:
            for (name, u_want), (_, u_have) in zip(want, have, strict=True):
                if str(u_want) != str(u_have):
                    problems.append(f"{name!r} has units {u_have!r}, the checkpoint {u_want!r}")
        want_static = [c["name"] for c in self.static_channels]
        have_static = [c.name for c in fields.static_channels]
        if want_static != have_static:
            problems.append(
                f"static inputs {have_static} differ from the checkpoint's {want_static}"
            )
        return problems

    def _time_problems(self, fields: Any) -> list[str]:
        from minconv_cli.data.timeaxis import format_step, same_step

        if bool(self.time_is_datetime) != fields.time_is_datetime:
            kind = "datetime" if self.time_is_datetime else "numeric"
            return [f"time axis is not {kind} like the checkpoint's"]
        step = self.step()
        if fields.time_step is not None and not same_step(fields.time_step, step):
            return [
                f"time step {format_step(fields.time_step)} differs from the checkpoint's "
                f"{format_step(step)}"
            ]
        return []

    def differences(self, other: DataMeta) -> list[str]:
        """How `other` (another checkpoint's contract) differs from this one: channels, units,
        static inputs, grid and time step (normalisation may differ)."""
        problems = []
        for key, what in (("channels", "channels"), ("static_channels", "static inputs")):
            mine, theirs = _named_units(getattr(self, key)), _named_units(getattr(other, key))
            if mine != theirs:
                problems.append(f"{what} {theirs} differ from {mine}")
        for axis in ("y", "x"):
            dim = other.grid.get(f"{axis}_dim")
            values = np.asarray(other.grid[axis]["values"])
            same = _compare_axis(values, self.grid[axis]["values"]) == "same"
            if dim != self.grid.get(f"{axis}_dim") or not same:
                problems.append(f"grid {dim!r} differs")
        if bool(self.time_is_datetime) != bool(other.time_is_datetime) or str(
            self.time_step
        ) != str(other.time_step):
            problems.append(f"time step {other.time_step} differs from {self.time_step}")
        return problems


def _named_units(channels: list[dict] | None) -> list[tuple[str, str]]:
    return [(c["name"], str(c.get("units", ""))) for c in channels or []]


def _compare_axis(values: np.ndarray, trained: Sequence[Any]) -> str | None:
    """`"same"`, `"reversed"` (same points in opposite order) or None (another grid)."""
    trained_a = np.asarray(trained, dtype=np.float64)
    if values.shape != trained_a.shape or values.dtype.kind not in "fiu":
        return None
    span = float(np.ptp(trained_a)) if len(trained_a) > 1 else 1.0
    tol = 1e-6 * max(span, 1e-12) + 1e-9
    if np.allclose(values, trained_a, rtol=0, atol=tol):
        return "same"
    if len(values) > 1 and np.allclose(values[::-1], trained_a, rtol=0, atol=tol):
        return "reversed"
    return None
