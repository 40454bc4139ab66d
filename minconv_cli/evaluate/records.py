"""The score records: computed reductions per (forecast, channel) over every lead, written into the
(forecast, metric, variable, lead) table and the flat records of scores.json / scores.csv."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import xarray as xr

from minconv_cli.data import Fields
from minconv_cli.evaluate.events import parse_event_name
from minconv_cli.evaluate.labels import format_lead, lead_hours, lead_minutes
from minconv_cli.evaluate.metric_table import UNDEFINED_EMPTY, row_of
from minconv_cli.rollout.store import LEAD_DIM, ForecastStore


def channel_name(fields: Fields, variable: str, level: Any) -> str:
    """The channel name of a variable at a level (`z_500`), as the truth's channels call it."""
    for ch in fields.channels:
        if ch.variable == variable and ch.level == level:
            return ch.name
    return f"{variable}_{level}"


def per_channel(
    results: dict[tuple[str, str], xr.Dataset],
    main: ForecastStore,
    fields: Fields,
    leads: np.ndarray,
) -> tuple[dict[tuple[str, str], xr.Dataset], dict[str, str]]:
    """Per (name, channel): a Dataset over all leads, levels split into channels; and the units."""
    per: dict[tuple[str, str], xr.Dataset] = {}
    units: dict[str, str] = {}
    for (name, v), ds in results.items():
        ds = ds.reindex({LEAD_DIM: leads})
        level = main.level_dim if main.level_dim in ds.dims else None
        for lv in ds[level].values.tolist() if level else [None]:
            part = ds.sel({level: lv}) if level else ds
            ch = channel_name(fields, v, lv) if level else v
            per[(name, ch)] = part.drop_vars(level, errors="ignore") if level else part
            units[ch] = str(fields.ds[v].attrs.get("units", ""))
    return per, units


def _lead_fields(lead: Any, lead_unit: str | None, minutes: bool) -> dict:
    out = {"lead": format_lead(lead, lead_unit), "lead_hours": lead_hours(lead)}
    if minutes:
        out["lead_minutes"] = lead_minutes(lead)
    return out


def _event_fields(metric: str) -> dict:
    """`threshold` and `scale` of an event score (null for other metrics)."""
    _, threshold, scale = parse_event_name(metric)
    return {"threshold": threshold, "scale": scale}


def fill(
    table: xr.DataArray,
    per: dict[tuple[str, str], xr.Dataset],
    metric_names: list[str],
    leads: np.ndarray,
    lead_unit: str | None,
    notes: list[str],
    extra: tuple[bool, bool] = (False, False),
) -> list[dict]:
    """Fill `table` and return the records; undefined values are null with one note per kind.
    `extra`: whether records carry `lead_minutes` (sub-hourly leads) and `threshold`/`scale`."""
    records = []
    undefined: dict[tuple, tuple[dict, dict]] = {}  # (forecast, metric, note) -> channels, leads
    minutes, events = extra
    for (name, ch), ds in per.items():
        for m in metric_names:
            if m not in ds:
                continue
            table.loc[{"forecast": name, "metric": m, "variable": ch}] = ds[m].values
            for i, lead in enumerate(leads):
                count = ds["count"].values[i]
                if not np.isfinite(count):
                    continue  # this forecast has no such lead
                value = float(ds[m].values[i])
                note = None
                if not math.isfinite(value):
                    note = UNDEFINED_EMPTY if count == 0 else row_of(m).undefined
                    seen = undefined.setdefault((name, m, note), ({}, {}))
                    seen[0][ch], seen[1][format_lead(lead, lead_unit)] = None, None
                record = {
                    "forecast": name,
                    "variable": ch,
                    **_lead_fields(lead, lead_unit, minutes),
                }
                record.update(metric=m, value=value if note is None else None, note=note)
                records.append({**record, **(_event_fields(m) if events else {})})
    for (name, m, note), (chs, at) in undefined.items():
        where = "every lead" if len(at) == len(leads) else "lead " + ", ".join(at)
        notes.append(f"{name} {m} of {', '.join(chs)} at {where}: {note} (null in the records)")
    return records
