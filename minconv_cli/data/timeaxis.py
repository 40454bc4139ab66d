"""Time axes and their steps: datetime64 or cftime (noleap, 360_day, ...) or numeric, spaced by a
fixed step (np.timedelta64 / float) or by a calendar step (`CalendarStep`: months or years).

Monthly and yearly means are stamped at the same place in each period (its start, its end, or its
midpoint as CMIP monthly means are), so consecutive stamps are 28-31 (or 365-366) days apart and no
fixed step fits them; a `CalendarStep` says how to go from one stamp to the next in the axis' calendar.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

MONTHS_PER = {"month": 1, "year": 12}
ANCHORS = ("start", "end", "mid")
MONTHLY_FROM = np.timedelta64(28, "D")  # spacings this long are tried against calendar steps
_ZERO = np.timedelta64(0, "ns")
_LABEL = re.compile(r"^P(\d+)([MY])(?:\s+(start|end|mid)(?:([+-])(\S+))?)?$")
_STRIDE = re.compile(r"^(\d*)\s*(MS|ME|M|months?|YS|YE|Y|years?)$")
_ISO = re.compile(
    r"^(-?\d{1,4})(?:-(\d{1,2})(?:-(\d{1,2})(?:[T ](\d{1,2})(?::(\d{2})(?::(\d{2}))?)?)?)?)?$"
)


@dataclass(frozen=True)
class CalendarStep:
    """`count` calendar months or years between stamps at the same place in their period.

    anchor `start`: `offset` after the period's first instant (month start = offset 0, the 15th =
    14 days); `end`: `offset` before the next period's start (last day 00:00 = 1 day); `mid`: the
    period's midpoint (CMIP monthly means: 16 Jan 12:00, 15 Feb 00:00 in `noleap`, ...).
    """

    unit: str  # "month" | "year"
    anchor: str = "start"
    offset: np.timedelta64 = _ZERO
    count: int = 1

    @property
    def months(self) -> int:
        return self.count * MONTHS_PER[self.unit]

    def label(self) -> str:
        """ISO 8601-style text stored in checkpoints: `P1M`, `P1M end-P1D`, `P1M mid`, `P1Y`."""
        text = f"P{self.count}{'M' if self.unit == 'month' else 'Y'}"
        if self.anchor == "start" and self.offset == _ZERO:
            return text
        if self.anchor == "mid":
            return f"{text} mid"
        sign = "+" if self.anchor == "start" else "-"
        return f"{text} {self.anchor}{sign}{pd.Timedelta(self.offset).isoformat()}"

    @classmethod
    def parse(cls, text: str) -> CalendarStep | None:
        """The step a `label()` describes, or None for text that is not a calendar step."""
        m = _LABEL.match(str(text).strip())
        if not m:
            return None
        count, unit, anchor, _, offset = m.groups()
        off = pd.Timedelta(offset).to_timedelta64().astype("timedelta64[ns]") if offset else _ZERO
        return cls("month" if unit == "M" else "year", anchor or "start", off, int(count))

    def __str__(self) -> str:
        return f"{self.count} {self.unit}{'s' if self.count != 1 else ''}"


# --------------------------------------------------------------------------- kinds of axes


def is_cftime(times: np.ndarray) -> bool:
    """True for an object array of cftime datetimes (non-standard calendars, or out of range)."""
    times = np.asarray(times)
    if times.dtype != object or times.size == 0:
        return False
    import cftime

    return isinstance(times.flat[0], cftime.datetime)


def is_dated(times: np.ndarray) -> bool:
    """True for datetime64 and cftime axes (dates in some calendar), False for numeric time."""
    return np.asarray(times).dtype.kind == "M" or is_cftime(times)


def calendar_of(times: np.ndarray) -> str | None:
    """The CF calendar of a dated axis (`proleptic_gregorian` for datetime64), None for numeric."""
    times = np.asarray(times)
    if times.dtype.kind == "M":
        return "proleptic_gregorian"
    return str(times.flat[0].calendar) if is_cftime(times) else None


def as_axis(times: np.ndarray) -> np.ndarray:
    """The axis in comparable form: datetime64[ns], cftime objects, or float64."""
    times = np.asarray(times)
    if times.dtype.kind == "M":
        return times.astype("datetime64[ns]")
    return times if is_cftime(times) else times.astype(np.float64)


def time_index(times: np.ndarray) -> pd.Index:
    """A pandas / xarray index over the times (CFTimeIndex for cftime), for `get_indexer`."""
    if is_cftime(times):
        import xarray as xr

        return xr.CFTimeIndex(np.asarray(times))
    return pd.Index(as_axis(times))


def elapsed(times: np.ndarray, origin: Any = None) -> np.ndarray:
    """timedelta64[ns] from `origin` (default: the first time) of each time of a dated axis."""
    times = np.asarray(times)
    if times.size == 0:
        return np.zeros(0, "timedelta64[ns]")
    origin = times.flat[0] if origin is None else origin
    if times.dtype.kind == "M":
        return (times.astype("datetime64[ns]") - np.datetime64(origin, "ns")).astype(
            "timedelta64[ns]"
        )
    return (
        np.array([pd.Timedelta(t - origin).to_timedelta64() for t in times.ravel()])
        .reshape(times.shape)
        .astype("timedelta64[ns]")
    )


def spacings(times: np.ndarray) -> np.ndarray:
    """Differences of consecutive times: timedelta64[ns] for dated axes, as stored for numeric."""
    times = np.asarray(times)
    if times.dtype.kind == "M" or is_cftime(times):
        return np.diff(elapsed(times))
    return np.diff(times)


def label(value: Any) -> str:
    """A time as ISO 8601 text (any calendar) or a number as text."""
    if isinstance(value, np.datetime64):
        return pd.Timestamp(value).isoformat()
    if hasattr(value, "calendar") and hasattr(value, "isoformat"):
        return value.isoformat()
    return f"{float(value):g}"


# --------------------------------------------------------------------------- calendar arithmetic


def _stamp(value: Any) -> Any:
    """A time as an object with year/month/replace and timedelta arithmetic."""
    return pd.Timestamp(value) if isinstance(value, np.datetime64) else value


def _unstamp(value: Any, dated64: bool) -> Any:
    return np.datetime64(value.to_datetime64(), "ns") if dated64 else value


def _period_index(t: Any, unit: str) -> int:
    return t.year * 12 + t.month - 1 if unit == "month" else int(t.year)


def _period_start(index: int, unit: str, like: Any) -> Any:
    year, month = divmod(index, 12) if unit == "month" else (index, 0)
    fields = {"year": year, "month": month + 1, "day": 1, "hour": 0, "minute": 0, "second": 0}
    fields["microsecond"] = 0
    if isinstance(like, pd.Timestamp):
        fields["nanosecond"] = 0
    return like.replace(**fields)


def _td(x: Any) -> np.timedelta64:
    return pd.Timedelta(x).to_timedelta64().astype("timedelta64[ns]")


def _positions(
    times: np.ndarray, unit: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per time: period index, offset after the period start, offset before its end, is-midpoint."""
    idx, after, before, mid = [], [], [], []
    for value in np.asarray(times).ravel():
        t = _stamp(value)
        p = _period_index(t, unit)
        start, end = _period_start(p, unit, t), _period_start(p + 1, unit, t)
        idx.append(p)
        after.append(_td(t - start))
        before.append(_td(end - t))
        mid.append(_td(t - start) * 2 == _td(end - start))
    return (
        np.asarray(idx, dtype=np.int64),
        np.asarray(after, dtype="timedelta64[ns]"),
        np.asarray(before, dtype="timedelta64[ns]"),
        np.asarray(mid, dtype=bool),
    )


def shift(times: np.ndarray, step: Any, n: int | np.ndarray) -> np.ndarray:
    """times + n steps, elementwise (n broadcasts against times), in the axis' own calendar."""
    times = np.asarray(times)
    n_arr = np.asarray(n)
    if not isinstance(step, CalendarStep):
        if is_cftime(times):
            t, k = np.broadcast_arrays(times, n_arr)
            delta = pd.Timedelta(step)
            return np.array(
                [
                    a + (delta * int(b)).to_pytimedelta()
                    for a, b in zip(t.ravel(), k.ravel(), strict=True)
                ],
                dtype=object,
            ).reshape(t.shape)
        return times + n_arr * step
    dated64 = times.dtype.kind == "M"
    t, k = np.broadcast_arrays(times, n_arr)
    out = []
    for value, m in zip(t.ravel(), k.ravel(), strict=True):
        s = _stamp(value)
        p = _period_index(s, step.unit) + int(m) * step.count
        out.append(_unstamp(_place(p, step, s), dated64))
    return np.array(out, dtype="datetime64[ns]" if dated64 else object).reshape(t.shape)


def _place(p: int, step: CalendarStep, like: Any) -> Any:
    start, end = _period_start(p, step.unit, like), _period_start(p + 1, step.unit, like)
    if step.anchor == "start":
        return start + pd.Timedelta(step.offset).to_pytimedelta()
    if step.anchor == "end":
        return end - pd.Timedelta(step.offset).to_pytimedelta()
    return start + (end - start) / 2


def regular_pairs(times: np.ndarray, step: Any) -> np.ndarray:
    """bool per consecutive pair: is the second time exactly one `step` after the first?"""
    times = np.asarray(times)
    if len(times) < 2:
        return np.zeros(0, dtype=bool)
    if isinstance(step, CalendarStep):
        nxt = shift(times[:-1], step, 1)
        return np.array([a == b for a, b in zip(nxt, as_axis(times[1:]), strict=True)], dtype=bool)
    return spacings(times) == step


def month_number(times: np.ndarray) -> np.ndarray:
    """year * 12 + month - 1 of each time of a dated axis (for strides in months)."""
    return np.array([_period_index(_stamp(t), "month") for t in np.asarray(times).ravel()])


# --------------------------------------------------------------------------- detection


@dataclass(frozen=True)
class StepFit:
    """The detected step of an axis and how many of its spacings it fits."""

    step: Any
    fits: int
    pairs: int
    summary: str  # the most common spacings, for messages

    @property
    def regular(self) -> bool:
        """At least half of the spacings are one step (gaps allowed, not chaos)."""
        return self.pairs < 2 or 2 * self.fits >= self.pairs


def detect_step(times: np.ndarray) -> StepFit:
    """The most common fixed spacing, or a calendar step (month, year) when one fits as many pairs.

    Calendar steps are tried only when the most common spacing is 28 days or more, so sub-monthly
    axes keep their fixed step exactly.
    """
    times = np.asarray(times)
    if len(times) < 2:
        return StepFit(None, 0, 0, "")
    diffs = spacings(times)
    values, counts = np.unique(diffs, return_counts=True)
    best = int(np.argmax(counts))
    step: Any = values[best]
    fits = int(counts[best])
    if not is_dated(times):  # numeric (simulation) time: never judged irregular
        return StepFit(float(step), fits, 0, "")
    order = np.argsort(-counts, kind="stable")[:4]
    summary = ", ".join(f"{_fmt_spacing(values[i])} x{int(counts[i])}" for i in order)
    if len(values) > 4:
        summary += f", ... ({len(values)} different spacings)"
    if step >= MONTHLY_FROM:
        for cand, n in _calendar_candidates(times):
            if n >= fits:
                step, fits = cand, n
    return StepFit(step, fits, len(diffs), summary)


def _fmt_spacing(value: np.timedelta64) -> str:
    td = pd.Timedelta(value)
    return f"{td.days} days" if td == pd.Timedelta(days=td.days) else str(td)


def _calendar_candidates(times: np.ndarray) -> list[tuple[CalendarStep, int]]:
    """Each (unit, anchor) step with the offset most pairs share, and the number of pairs it fits."""
    out = []
    for unit in ("month", "year"):
        idx, after, before, mid = _positions(times, unit)
        nxt = np.diff(idx) == 1
        for anchor, pos in (("start", after), ("end", before)):
            same = nxt & (pos[1:] == pos[:-1])
            if same.any():
                offset = Counter(pos[1:][same].tolist()).most_common(1)[0][0]
                offset = np.timedelta64(offset, "ns")
                out.append(
                    (CalendarStep(unit, anchor, offset), int((same & (pos[1:] == offset)).sum()))
                )
        both = nxt & mid[1:] & mid[:-1]
        if both.any():
            out.append((CalendarStep(unit, "mid"), int(both.sum())))
    # ties: a month before a year, a start before an end before a midpoint (the order above)
    return sorted(out, key=lambda c: -c[1])[:1]


# --------------------------------------------------------------------------- parsing


def parse_time(text: str, times: np.ndarray, end: bool = False) -> Any:
    """A date/time text on the axis' calendar; `end` gives the last instant of what it names
    (`1995-12-31` -> its last nanosecond, `1995-12` -> the end of December). ValueError if unreadable."""
    text = text.strip()
    if np.asarray(times).dtype.kind == "M":
        value = np.datetime64(pd.Timestamp(text).to_datetime64(), "ns")
        if end:
            m = _ISO.match(text)
            if m and m.group(4) is None:  # a date, month or year alone: up to its last instant
                value = (
                    _end_of(_stamp(value), m)
                    if m.group(3) is None
                    else value + np.timedelta64(1, "D")
                )
                value = np.datetime64(value, "ns") - np.timedelta64(1, "ns")
        return value
    import cftime

    m = _ISO.match(text)
    if not m:
        raise ValueError(f"not an ISO date {text!r}")
    parts = [
        int(g) if g is not None else d for g, d in zip(m.groups(), (0, 1, 1, 0, 0, 0), strict=True)
    ]
    calendar = calendar_of(times)
    value = cftime.datetime(
        *parts, calendar=calendar, has_year_zero=np.asarray(times).flat[0].has_year_zero
    )
    if end and m.group(4) is None:
        nxt = (
            _end_of(value, m)
            if m.group(3) is None
            else value + pd.Timedelta(1, "D").to_pytimedelta()
        )
        value = nxt - pd.Timedelta(1, "us").to_pytimedelta()
    return value


def _end_of(t: Any, m: re.Match) -> Any:
    """The first instant after the month (or year) that `t` starts."""
    unit = "year" if m.group(2) is None else "month"
    nxt = _period_start(_period_index(t, unit) + 1, unit, t)
    return nxt.to_datetime64() if isinstance(nxt, pd.Timestamp) else nxt


def parse_stride(text: str) -> CalendarStep | None:
    """`3M`, `3MS`, `1Y`, `12 months`, ... as a calendar stride; None for other text."""
    m = _STRIDE.match(text.strip())
    if not m:
        return None
    count = int(m.group(1) or 1)
    unit = "year" if m.group(2)[0] in "Yy" else "month"
    return CalendarStep(unit, count=count) if count > 0 else None


# --------------------------------------------------------------------------- steps in messages


def same_step(a: Any, b: Any) -> bool:
    """Whether two time steps are the same (calendar steps: the same number of months; where in
    the month the stamps sit does not change the dynamics)."""
    if isinstance(a, CalendarStep) or isinstance(b, CalendarStep):
        return isinstance(a, CalendarStep) and isinstance(b, CalendarStep) and a.months == b.months
    if isinstance(b, np.timedelta64):
        return np.timedelta64(a, "ns") == b
    return math.isclose(float(a), float(b), rel_tol=1e-6)


def format_step(step: Any) -> str:
    """A time step for messages: `1 days 00:00:00`, `P1M`, `0.5`."""
    if isinstance(step, CalendarStep):
        return str(step)
    if isinstance(step, np.timedelta64):
        return str(pd.Timedelta(step))
    return f"{float(step):g}"


def short_time(value: Any) -> str:
    """A time for messages about places in data: a datetime's date alone at midnight
    (`2000-01-06`), else to the second; cftime dates and numbers as `str`."""
    if isinstance(value, np.datetime64):
        return str(np.datetime_as_string(value, unit="s")).replace("T00:00:00", "")
    return str(value)


def format_time(value: Any) -> str:
    """A time for messages: a Timestamp's text, a cftime date's, or the number."""
    if isinstance(value, np.datetime64):
        return str(pd.Timestamp(value))
    if hasattr(value, "calendar"):  # cftime
        return str(value)
    return f"{float(value):g}"
