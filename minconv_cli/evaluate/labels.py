"""Leads, times and spans as they appear in the score records and notes."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from minconv_cli.rollout.store import CALENDAR_LEADS


def format_lead(lead: Any, unit: str | None = None) -> str:
    """ISO 8601 duration for a timedelta (`PT6H`, `P1D`, `P1DT12H`) or calendar lead (`P3M`, `P1Y`
    with `unit` months/years), `str` of the number otherwise."""
    if unit in CALENDAR_LEADS:
        return f"P{int(lead)}{'M' if unit == 'months' else 'Y'}"
    if isinstance(lead, (np.timedelta64, pd.Timedelta)):
        seconds = int(pd.Timedelta(lead).total_seconds())
        sign, seconds = ("-" if seconds < 0 else ""), abs(seconds)
        days, rest = divmod(seconds, 86400)
        h, rest = divmod(rest, 3600)
        m, s = divmod(rest, 60)
        clock = "".join(f"{n}{u}" for n, u in ((h, "H"), (m, "M"), (s, "S")) if n)
        text = (f"{days}D" if days else "") + (f"T{clock}" if clock else "")
        return f"{sign}P{text or 'T0H'}"
    return f"{float(lead):g}"


def lead_hours(lead: Any) -> float | None:
    if isinstance(lead, (np.timedelta64, pd.Timedelta)):
        return pd.Timedelta(lead).total_seconds() / 3600.0
    return None


def lead_minutes(lead: Any) -> float | None:
    """The lead in minutes when it is a time span (5-min radar leads read 5, 10, ...), else None."""
    hours = lead_hours(lead)
    return None if hours is None else hours * 60.0


def sub_hourly(leads: np.ndarray) -> bool:
    """Whether the leads are time spans not all on whole hours (5-min radar steps)."""
    hours = [lead_hours(x) for x in np.asarray(leads).ravel()]
    return bool(hours) and None not in hours and any(h != int(h) for h in hours)


def minutes_axis(leads: np.ndarray) -> bool:
    """Whether plots read leads in minutes: sub-hourly time leads, every one under 6 h."""
    return sub_hourly(leads) and max(lead_hours(x) for x in np.asarray(leads).ravel()) < 6


def span(values: np.ndarray) -> dict:
    values = np.asarray(values).ravel()
    if values.size == 0:
        return {"first": None, "last": None, "count": 0}
    return {"first": label(values.min()), "last": label(values.max()), "count": int(values.size)}


def lead_span(leads: np.ndarray, unit: str | None) -> dict:
    """`span` of the leads, calendar leads written `P1M` (their numbers alone read as steps)."""
    out = span(leads)
    if unit and out["count"]:
        out["first"], out["last"] = (format_lead(out[k], unit) for k in ("first", "last"))
    return out


def label(value: Any) -> Any:
    if isinstance(value, np.datetime64):
        return str(np.datetime_as_string(value, unit="s"))
    if isinstance(value, np.timedelta64):
        return format_lead(value)
    if hasattr(value, "calendar") and hasattr(value, "isoformat"):  # cftime
        return value.isoformat()
    return value.item() if isinstance(value, np.generic) else value
