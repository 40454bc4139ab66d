"""Which init times a `--init-times` spec names (indices along DATA's time axis), each with its
context frames evenly spaced by the time step."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from minconv_cli.core.errors import MinconvError
from minconv_cli.data import Fields, timeaxis
from minconv_cli.data.splits import read_time, time_range
from minconv_cli.data.timeaxis import CalendarStep, format_step, format_time


def select_init_times(spec: str | None, fields: Fields, context: int, step: Any) -> np.ndarray:
    """Indices along DATA's time axis of the init times a SPEC names, each with `context` frames.

    SPEC: None (every possible time; for data with sample dims, the first one: index context-1),
    `all`, a comma-separated list of times, or ranges `start/stop[/stride]` (inclusive).
    """
    n = fields.n_times
    if n < context:
        raise MinconvError(
            f"{fields.path_label}: {n} time step(s), fewer than the {context} context frames"
        )
    if spec is None:
        spec = "first" if fields.sample_dims else "all"
    spec = spec.strip()
    if spec in ("all", "first"):
        candidates = range(context - 1, n) if spec == "all" else [context - 1]
        chosen = [i for i in candidates if _window_regular(fields.times, i, context, step)]
        if not chosen:
            raise MinconvError(
                f"{fields.path_label}: no time has {context} evenly spaced frames up to it"
            )
        return np.asarray(chosen, dtype=np.int64)
    indices: list[int] = []
    for part in filter(None, (p.strip() for p in spec.split(","))):
        for value in _expand(part, fields, step):
            indices.append(_time_index(fields, value))
    if not indices:
        raise MinconvError(f"--init-times: {spec!r} names no time")
    for i in sorted(set(indices)):
        if i < context - 1:
            raise MinconvError(
                f"{fields.path_label}: init time {format_time(fields.times[i])} has only {i + 1} frame(s) up to it; "
                f"the context needs {context}"
            )
        if not _window_regular(fields.times, i, context, step):
            raise MinconvError(
                f"{fields.path_label}: the {context} frames up to init time {format_time(fields.times[i])} "
                f"are not evenly spaced by {format_step(step)}"
            )
    return np.asarray(sorted(set(indices)), dtype=np.int64)


def time_labels(times: np.ndarray) -> list[Any]:
    """Init times as JSON values: ISO strings for datetimes (any calendar), numbers otherwise."""
    if timeaxis.is_cftime(times):
        return [t.isoformat() for t in times]
    if times.dtype.kind == "M":
        return [pd.Timestamp(t).isoformat() for t in times]
    return [float(t) for t in times]


def _window_regular(times: np.ndarray, i: int, context: int, step: Any) -> bool:
    window = times[i - context + 1 : i + 1]
    if len(window) < 2:
        return True
    if isinstance(step, CalendarStep) or timeaxis.is_cftime(window):
        return bool(timeaxis.regular_pairs(window, step).all())
    diffs = np.diff(window)
    if isinstance(step, np.timedelta64):
        return bool(np.all(diffs.astype("timedelta64[ns]") == step))
    return bool(np.allclose(diffs.astype(np.float64), step, rtol=1e-6, atol=0))


def _expand(part: str, fields: Fields, step: Any) -> list[Any]:
    """One list item: a single time, or the data's times in `start/stop[/stride]` (inclusive).

    A range picks the data's own times (a date alone covers its whole day), every `stride` from
    the first one in the range, so `2009-01-01/2009-12-31/7D` works on data stamped 12 UTC.
    """
    pieces = part.split("/")
    if len(pieces) == 1:
        return [read_time(fields, pieces[0], "--init-times")]
    if len(pieces) not in (2, 3):
        raise MinconvError(f"--init-times: {part!r} is not start/stop or start/stop/stride")
    start = read_time(fields, pieces[0], "--init-times")
    stop = read_time(fields, pieces[1], "--init-times", end=True)
    stride = _parse_stride(pieces[2], fields) if len(pieces) == 3 else step
    if stop < start:
        raise MinconvError(f"--init-times: range {part!r} ends before it starts")
    times = timeaxis.as_axis(fields.times)
    inside = times[time_range(fields, pieces[0], pieces[1], "--init-times")]
    if inside.size == 0:
        raise MinconvError(
            f"--init-times: no time of the data lies in {part!r} "
            f"(it covers {format_time(times[0])} to {format_time(times[-1])})"
        )
    if isinstance(stride, CalendarStep):
        keep = (
            timeaxis.month_number(inside) - timeaxis.month_number(inside[:1])
        ) % stride.months == 0
    elif timeaxis.is_cftime(inside):
        keep = timeaxis.elapsed(inside) % stride == np.timedelta64(0, "ns")
    elif fields.time_is_datetime:
        keep = (inside - inside[0]) % stride == np.timedelta64(0, "ns")
    else:
        ratio = (inside - inside[0]) / stride
        keep = np.abs(ratio - np.round(ratio)) < 1e-6
    return list(inside[keep])


def _parse_stride(text: str, fields: Fields) -> Any:
    if isinstance(fields.time_step, CalendarStep):
        calendar = timeaxis.parse_stride(text)
        if calendar is not None:  # 3M, 1Y, 6MS: a number of calendar months or years
            return calendar
        raise MinconvError(
            f"--init-times: stride {text.strip()!r}: monthly/yearly data takes strides like 3M or 1Y"
        )
    try:
        if fields.time_is_datetime:
            stride = pd.Timedelta(text.strip()).to_timedelta64().astype("timedelta64[ns]")
            ok = stride > np.timedelta64(0, "ns")
        else:
            stride = float(text)
            ok = stride > 0
    except (ValueError, TypeError):
        ok = False
    if not ok:
        raise MinconvError(f"--init-times: stride {text.strip()!r} is not a positive time step")
    return stride


def _time_index(fields: Fields, value: Any) -> int:
    times = fields.times
    if timeaxis.is_cftime(times):
        hits = np.flatnonzero(times == value)
    elif fields.time_is_datetime:
        hits = np.flatnonzero(times.astype("datetime64[ns]") == value)
    else:
        scale = abs(float(fields.time_step)) if fields.time_step else 1.0
        hits = np.flatnonzero(
            np.isclose(times.astype(np.float64), value, rtol=0, atol=1e-6 * scale)
        )
    if not len(hits):
        raise MinconvError(
            f"{fields.path_label}: init time {format_time(value)} is not in the data "
            f"(it covers {format_time(times[0])} to {format_time(times[-1])})"
        )
    return int(hits[0])
