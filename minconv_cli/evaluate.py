"""Scoring forecast stores against the truth: align valid times and grids, build the reference
forecasts (persistence, climatology), reduce the metrics chunk-wise with dask, and write the reports."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import os
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dask
import numpy as np
import pandas as pd
import xarray as xr
from dask.callbacks import Callback

from minconv_cli import __version__, metrics
from minconv_cli.data import Fields, open_dataset, open_fields, split_fields, timeaxis
from minconv_cli.data.dims import find_roles, is_latitude, is_longitude, recognise_dims
from minconv_cli.data.remote import as_source, is_url
from minconv_cli.data.timeaxis import CalendarStep
from minconv_cli.ensemble import (
    ENSEMBLE_METRICS,
    MEMBER_DIM,
    RANK_DIM,
    RANK_HISTOGRAM,
    ensemble_scores,
    plot_rank_histograms,
)
from minconv_cli.errors import MinconvError

INIT_DIM = "time"
LEAD_DIM = "prediction_timedelta"
VALID = "valid_time"  # true valid times (time, prediction_timedelta) of calendar-step stores
CALENDAR_LEADS = ("months", "years")
DONE = "minconv_done"
TRUTH_TIME = "_truth_time"
METRICS = ("rmse", "mae", "bias", "acc", "rel_l2")
REFERENCES = ("persistence", "climatology")
OUTPUT_FILES = ("scores.json", "scores.csv", "scores.nc")
PLOT_FILE = "scores.png"
RANK_PLOT_FILE = "rank_histogram.png"  # ensembles only
LOAD_BELOW_BYTES = 128 * 2**20  # forecasts smaller than this are scored in memory
BLOCK_BYTES = 8 * 2**20  # dask chunk size the forecast is read in (several init times per chunk)
Progress = Callable[[int, int], None]

UNDEFINED = {
    "acc": "undefined: forecast or truth anomalies are zero in every case (e.g. the climatology itself)",
    "rel_l2": "undefined: the truth is zero in every case",
    "skill": "undefined: the reference's MSE is 0 (it is exact here)",
    "empty": "undefined: no valid cells to score",
}


# --------------------------------------------------------------------------- opening


@dataclass
class ForecastStore:
    """One forecast store in WeatherBench 2 layout, with its dims recognised."""

    name: str
    path: str | Path  # a local path or a URL
    ds: xr.Dataset
    variables: list[str]
    y_dim: str
    x_dim: str
    level_dim: str | None
    sample_dims: tuple[str, ...]
    members: int | None = None  # an ensemble: the size of its `number` dim

    @property
    def lead_is_time(self) -> bool:
        return self.ds[LEAD_DIM].dtype.kind == "m"

    @property
    def lead_unit(self) -> str | None:
        """`months` / `years` for calendar leads (integers), else None."""
        unit = self.ds[LEAD_DIM].attrs.get("units")
        return unit if unit in CALENDAR_LEADS and self.ds[LEAD_DIM].dtype.kind in "iu" else None

    @property
    def is_dated(self) -> bool:
        """Forecasts of dated data: timedelta leads, calendar leads, or a valid_time coordinate."""
        return self.lead_is_time or self.lead_unit is not None or VALID in self.ds.coords


def parse_compare(spec: str) -> tuple[str, str | Path]:
    """`NAME=PATH` or `PATH` (named by the file's stem) of a `--compare` forecast; PATH may be a URL."""
    name, sep, path = spec.partition("=")
    if sep and name and "/" not in name and os.sep not in name:
        return name, as_source(path)
    return Path(spec).stem, as_source(spec)


def open_forecast(path: str | Path, name: str | None = None) -> ForecastStore:
    """Open a forecast store lazily and check its WeatherBench 2 layout (one-line errors)."""
    path = as_source(path)
    ds = open_dataset(path)
    missing = [d for d in (INIT_DIM, LEAD_DIM) if d not in ds.dims]
    if missing:
        raise MinconvError(
            f"{path}: not a forecast in WeatherBench 2 layout: no {', '.join(map(repr, missing))} "
            f"dimension (dims: {', '.join(map(str, ds.dims)) or 'none'})"
        )
    variables = [str(v) for v in ds.data_vars if {INIT_DIM, LEAD_DIM} <= set(ds[v].dims)]
    if not variables:
        raise MinconvError(
            f"{path}: no variable has the dims ({INIT_DIM}, {LEAD_DIM}); "
            f"variables: {', '.join(map(str, ds.data_vars)) or 'none'}"
        )
    dims = [d for v in variables for d in ds[v].dims if d not in (LEAD_DIM, MEMBER_DIM)]
    roles = recognise_dims(ds, dims, str(path), {"time": INIT_DIM})
    kind = ds[LEAD_DIM].dtype.kind
    if kind not in "mfiu":
        raise MinconvError(
            f"{path}: {LEAD_DIM} must be timedelta or numeric, not {ds[LEAD_DIM].dtype}"
        )
    return ForecastStore(
        name=name or Path(path).stem,
        path=path,
        ds=ds,
        variables=variables,
        y_dim=str(roles["y"]),
        x_dim=str(roles["x"]),
        level_dim=roles["level"],
        sample_dims=tuple(roles["sample"]),
        members=int(ds.sizes[MEMBER_DIM]) if MEMBER_DIM in ds.dims else None,
    )


# --------------------------------------------------------------------------- alignment


def _axis_indexer(target: np.ndarray, source: np.ndarray) -> np.ndarray:
    """Positions in `source` of each `target` value (-1 if absent); numbers match to 1e-3 of a step."""
    index = pd.Index(source)
    if (
        target.dtype.kind in "fiu"
        and source.dtype.kind in "fiu"
        and index.is_monotonic_increasing | index.is_monotonic_decreasing
    ):
        steps = np.abs(np.diff(np.asarray(target, dtype=np.float64)))
        tol = 1e-3 * float(steps[steps > 0].min()) if (steps > 0).any() else 1e-6
        return index.get_indexer(target, method="nearest", tolerance=tol)
    return index.get_indexer(target)


def _match_axis(truth: xr.Dataset, dim: str, target: xr.DataArray, label: str) -> xr.Dataset:
    """The truth along `dim` at the forecast's coordinates (any order), or an error naming the mismatch."""
    if dim not in truth.dims:
        raise MinconvError(f"{label}: the truth has no {dim!r} dimension that the forecast has")
    tv = np.asarray(target.values)
    sv = np.asarray(truth[dim].values) if dim in truth.coords else np.arange(truth.sizes[dim])
    pos = _axis_indexer(tv, sv)
    if (pos < 0).any():
        raise MinconvError(
            f"{label}: grids do not match along {dim!r}: {int((pos < 0).sum())} of {len(tv)} "
            f"forecast points are not in the truth (forecast {tv[0]}..{tv[-1]}, {len(tv)} points; "
            f"truth {sv[0]}..{sv[-1]}, {len(sv)} points)"
        )
    return truth.isel({dim: pos}).assign_coords({dim: target})


def _time_indexer(truth_times: np.ndarray, times: np.ndarray, step: Any) -> np.ndarray:
    """Positions of `times` in the truth's times (-1 where absent): exact for datetimes, 1e-6 step else."""
    index = timeaxis.time_index(truth_times)
    flat = times.ravel()
    if timeaxis.is_cftime(truth_times):
        return index.get_indexer(flat).reshape(times.shape)
    if truth_times.dtype.kind == "M":
        return index.get_indexer(flat.astype("datetime64[ns]")).reshape(times.shape)
    tol = 1e-6 * abs(step) if step else 1e-9
    return index.get_indexer(flat.astype(np.float64), method="nearest", tolerance=tol).reshape(
        times.shape
    )


def _span(values: np.ndarray) -> dict:
    values = np.asarray(values).ravel()
    if values.size == 0:
        return {"first": None, "last": None, "count": 0}
    return {"first": _label(values.min()), "last": _label(values.max()), "count": int(values.size)}


def _lead_span(leads: np.ndarray, unit: str | None) -> dict:
    """`_span` of the leads, calendar leads written `P1M` (their numbers alone read as steps)."""
    span = _span(leads)
    if unit and span["count"]:
        span["first"], span["last"] = (format_lead(span[k], unit) for k in ("first", "last"))
    return span


def _label(value: Any) -> Any:
    if isinstance(value, np.datetime64):
        return str(np.datetime_as_string(value, unit="s"))
    if isinstance(value, np.timedelta64):
        return format_lead(value)
    if hasattr(value, "calendar") and hasattr(value, "isoformat"):  # cftime
        return value.isoformat()
    return value.item() if isinstance(value, np.generic) else value


def _roles_of(fields: Fields) -> dict[str, str | None]:
    return {"y": fields.y_dim, "x": fields.x_dim, "level": fields.level_dim}


def to_forecast_grid(
    ds: xr.Dataset, roles: dict[str, str | None], store: ForecastStore, label: str
) -> xr.Dataset:
    """`ds` renamed to the forecast's y/x/level names and selected at its coordinates (any order)."""
    renames = {roles["y"]: store.y_dim, roles["x"]: store.x_dim}
    if roles.get("level") and store.level_dim:
        renames[roles["level"]] = store.level_dim
    ds = ds.rename({k: v for k, v in renames.items() if k != v})
    for dim in (store.y_dim, store.x_dim, store.level_dim):
        if dim is not None and dim not in ds.dims:
            raise MinconvError(
                f"{label}: grids do not match: no {dim!r} dimension to match the forecast's"
            )
    for dim in (store.y_dim, store.x_dim, store.level_dim, *store.sample_dims):
        if dim is not None and dim in ds.dims:
            ds = _match_axis(ds, dim, store.ds[dim], label)
    return ds


@dataclass
class Aligned:
    """A forecast and the truth frames at its valid times over the scored cases (NaN elsewhere)."""

    store: ForecastStore
    forecast: dict[str, xr.DataArray]
    truth: dict[str, xr.DataArray]
    persistence: dict[str, xr.DataArray] | None
    valid_times: xr.DataArray  # (time, prediction_timedelta)
    overlap: dict


def _block(da: xr.DataArray) -> int:
    """Init times per dask chunk so one chunk holds about BLOCK_BYTES."""
    per_init = da.nbytes / max(da.sizes[INIT_DIM], 1)
    return max(1, int(BLOCK_BYTES // max(per_init, 1)))


def like(da: xr.DataArray, template: xr.DataArray) -> xr.DataArray:
    """`da` in memory if `template` is, else chunked like it along their shared dims."""
    if template.chunks is None:
        return da.load()
    chunks = dict(zip(template.dims, template.chunks, strict=True))
    return da.chunk({d: c for d, c in chunks.items() if d in da.dims})


def align(
    store: ForecastStore, truth: Fields, with_persistence: bool, load_below: int = LOAD_BELOW_BYTES
) -> Aligned:
    """Truth at the forecast's valid times, on the forecast's grid; only the overlap is kept.

    A forecast under `load_below` bytes is read into memory; a larger one stays lazy (dask), in
    blocks of init times, so that the scores are reduced block by block within bounded memory.
    """
    ds = store.ds
    label = f"{store.path} vs {truth.path_label}"
    if store.is_dated != truth.time_is_datetime:
        kind = "datetime" if truth.time_is_datetime else "numeric"
        raise MinconvError(
            f"{store.path}: {LEAD_DIM} is {ds[LEAD_DIM].dtype} but the truth has a {kind} time axis"
        )
    extra = [d for d in truth.sample_dims if d not in store.sample_dims]
    if extra:
        raise MinconvError(f"{label}: the truth has sample dim(s) {extra} the forecast lacks")
    init = np.asarray(ds[INIT_DIM].values)
    lead = np.asarray(ds[LEAD_DIM].values)
    if truth.time_is_datetime and timeaxis.calendar_of(init) != timeaxis.calendar_of(truth.times):
        raise MinconvError(
            f"{label}: the forecast's init times are in the {timeaxis.calendar_of(init)} calendar, "
            f"the truth's in the {timeaxis.calendar_of(truth.times)} calendar"
        )
    if VALID in ds.coords:  # the true valid times, written by rollout in the data's calendar
        valid = np.asarray(ds[VALID].values)
        valid = valid.astype("datetime64[ns]") if valid.dtype.kind == "M" else valid
    else:
        if truth.time_is_datetime:
            init = init.astype("datetime64[ns]")
            lead = lead.astype("timedelta64[ns]")
        valid = init[:, None] + lead[None, :]
    valid_pos = _time_indexer(truth.times, valid, truth.time_step)
    init_pos = _time_indexer(truth.times, init, truth.time_step)
    ok = valid_pos >= 0
    notes = []
    if with_persistence and ok.any():
        if not (ok & (init_pos >= 0)[:, None]).any():
            with_persistence = False
            notes.append("persistence left out: no init time of the forecast is in the truth")
        else:
            ok &= (init_pos >= 0)[:, None]
    rows, cols = np.flatnonzero(ok.any(axis=1)), np.flatnonzero(ok.any(axis=0))
    if not ok.any():
        raise MinconvError(
            f"{label}: no overlapping times: forecast valid times {_label(valid.min())} to "
            f"{_label(valid.max())}, truth {_label(truth.times[0])} to {_label(truth.times[-1])}"
        )
    ok = ok[np.ix_(rows, cols)]
    sub = ds.isel({INIT_DIM: rows, LEAD_DIM: cols})
    case = {"dims": (INIT_DIM, LEAD_DIM), "coords": {d: sub[d] for d in (INIT_DIM, LEAD_DIM)}}
    mask = xr.DataArray(ok, **case)
    pos = xr.DataArray(np.where(ok, valid_pos[np.ix_(rows, cols)], 0), **case)
    done = sub[DONE] if DONE in sub.coords else None
    if done is not None and not bool(done.all()):
        notes.append(
            f"{int((~done).sum())} of {done.size} forecast sequences are unfinished and not scored"
        )

    tds = to_forecast_grid(truth.ds, _roles_of(truth), store, label).rename(
        {truth.time_dim: TRUTH_TIME}
    )
    lazy = sum(sub[v].nbytes for v in store.variables) >= load_below
    forecast, truth_at, persistence = {}, {}, {}
    for v in store.variables:
        fc = sub[v]
        if done is not None:
            fc = fc.where(done)
        src = tds[v]
        if lazy:  # blocks of init times; the truth is gathered lazily, block by block
            block = _block(fc)
            fc = fc.chunk(
                {INIT_DIM: block, LEAD_DIM: -1, **({MEMBER_DIM: -1} if store.members else {})}
            )
            src = src.chunk({TRUTH_TIME: block})
        else:
            fc = fc.load()
        at = src.isel({TRUTH_TIME: pos}).drop_vars(TRUTH_TIME, errors="ignore").where(mask)
        forecast[v] = fc
        truth_at[v] = like(at.transpose(*fc.dims, missing_dims="ignore"), fc)
        if with_persistence:
            ip = xr.DataArray(init_pos[rows], dims=(INIT_DIM,), coords={INIT_DIM: sub[INIT_DIM]})
            persistence[v] = like(
                src.isel({TRUTH_TIME: ip}).drop_vars(TRUTH_TIME, errors="ignore"), fc
            )
    scored_valid = valid[np.ix_(rows, cols)][ok]
    overlap = {
        "forecast": store.name,
        "init_times": {**_span(init[rows]), "of": int(len(init))},
        "leads": {**_lead_span(lead[cols], store.lead_unit), "of": int(len(lead))},
        "valid_times": _span(scored_valid),
        "cases": int(ok.sum()),
        "of_cases": int(valid.size),
        "notes": notes,
    }
    # unscored cases take a scored valid time, so that lookups (climatology) never miss on them
    valid_da = xr.DataArray(np.where(ok, valid[np.ix_(rows, cols)], scored_valid[0]), **case)
    return Aligned(
        store, forecast, truth_at, persistence if with_persistence else None, valid_da, overlap
    )


# --------------------------------------------------------------------------- climatology


class ClimatologyGap(MinconvError):
    """The climatology has no value for some valid times that are scored."""


@dataclass
class Climatology:
    """Per variable: (dayofyear[, hour], [level], y, x) for datetime truth, (month, [level], y, x)
    for monthly truth, ([level], y, x) otherwise (numeric time, yearly data)."""

    fields: dict[str, xr.DataArray]
    roles: dict[str, str | None]
    source: str
    explicit: bool  # given by the user (a gap is then an error, not a note)


def climatology_from_truth(
    truth: Fields, variables: Sequence[str], period: str | None, before: Any
) -> Climatology | None:
    """Mean by day-of-year and hour (datetime time, in the truth's calendar), by month (monthly
    data), or over time and samples (numeric time, yearly data).

    Period: `START/END` (inclusive), else for datetime truth every time before `before` (the first
    init time: no peeking at the scored period), else for numeric truth the whole truth.
    """
    if period is not None:
        if "/" not in period:
            raise MinconvError(f"--climatology-period {period!r}: expected START/END")
        sel = split_fields(truth, period)
        source = f"{truth.path_label} over {period}"
    elif truth.time_is_datetime:
        first = before if timeaxis.is_cftime(truth.times) else np.datetime64(before, "ns")
        n = int(np.searchsorted(truth.times, first))
        if n == 0:
            return None
        sel = truth.with_ds(truth.ds.isel({truth.time_dim: slice(0, n)}), truth.path_label)
        source = f"{truth.path_label} before the first init time ({_label(truth.times[0])} to {_label(truth.times[n - 1])})"
    else:
        sel, source = truth, f"{truth.path_label}, mean over all times and samples"
    out = {}
    for v in variables:
        da = sel.ds[v].mean(list(sel.sample_dims)) if sel.sample_dims else sel.ds[v]
        step = truth.time_step
        monthly = isinstance(step, CalendarStep) and step.unit == "month"
        if monthly:
            t = da[truth.time_dim]
            da = da.assign_coords(month=t.dt.month).groupby("month").mean(truth.time_dim)
        elif truth.time_is_datetime and not isinstance(step, CalendarStep):
            t = da[truth.time_dim]
            da = da.assign_coords(dayofyear=t.dt.dayofyear, hour=t.dt.hour)
            da = da.groupby(["dayofyear", "hour"]).mean(truth.time_dim)
        else:
            da = da.mean(truth.time_dim)
        out[v] = da.astype(np.float32)
    out = dict(zip(out, dask.compute(*out.values()), strict=True))
    return Climatology(out, _roles_of(truth), source, explicit=period is not None)


def climatology_from_file(
    path: str | Path, variables: Sequence[str], datetime_time: bool
) -> Climatology:
    """A climatology file: per variable (dayofyear[, hour], [level], y, x) (WeatherBench 2),
    (month, [level], y, x) for monthly data, or (y, x)."""
    ds = open_dataset(path)
    allowed = {"dayofyear", "hour", "month"} if datetime_time else set()
    out, roles = {}, None
    for v in variables:
        if v not in ds.data_vars:
            raise MinconvError(
                f"{path}: variable {v!r} not found; available: {', '.join(map(str, ds.data_vars))}"
            )
        found = find_roles(ds, ds[v].dims, str(path), None)
        if "y" not in found or "x" not in found:
            raise MinconvError(f"{path}: {v!r} has no y/x (latitude/longitude) dims: {ds[v].dims}")
        roles = {"y": found["y"], "x": found["x"], "level": found.get("level")}
        other = set(map(str, ds[v].dims)) - {d for d in roles.values() if d} - allowed
        if other or (datetime_time and "hour" in ds[v].dims and "dayofyear" not in ds[v].dims):
            want = (
                "(dayofyear[, hour] or month, y, x)"
                if datetime_time
                else "(y, x) only (numeric time)"
            )
            raise MinconvError(f"{path}: {v!r} has dims {tuple(ds[v].dims)}; expected {want}")
        out[v] = ds[v].load()
    return Climatology(out, roles, str(path), explicit=True)


def climatology_at(
    clim: xr.DataArray, valid: xr.DataArray, label: str, template: xr.DataArray
) -> xr.DataArray:
    """The climatology at each valid time (time, prediction_timedelta); ClimatologyGap if any is missing."""
    if "dayofyear" not in clim.dims and "month" not in clim.dims:
        return clim
    by_month = "month" in clim.dims
    keys = {"month": valid.dt.month} if by_month else {"dayofyear": valid.dt.dayofyear}
    if "hour" in clim.dims:
        keys["hour"] = valid.dt.hour
    names = list(keys)
    present = clim.notnull().any([d for d in clim.dims if d not in keys]).transpose(*names)
    have = {
        tuple(present[n].values[i] for n, i in zip(names, idx, strict=True))
        for idx in np.argwhere(np.asarray(present.values))
    }
    need = set(zip(*(keys[n].values.ravel().tolist() for n in names), strict=True))
    gaps = sorted(need - have)
    if gaps:
        what = ", ".join(f"{n} {g}" for n, g in zip(names, gaps[0], strict=True))
        raise ClimatologyGap(
            f"{label}: no climatology for {len(gaps)} of the scored ({', '.join(names)}) keys, "
            f"e.g. {what}; give a longer --climatology-period or a --climatology file"
        )
    if template.chunks is not None:
        clim = clim.chunk()
    return like(clim.sel(keys).drop_vars(names, errors="ignore"), template)


# --------------------------------------------------------------------------- scoring


@dataclass
class Scores:
    """Every score: the records, the table (forecast x metric x variable x lead) and what was scored."""

    records: list[dict]
    table: xr.DataArray
    overlap: list[dict]
    notes: list[str]
    units: dict[str, str]
    forecasts: list[str]
    references: list[str]
    lead_is_time: bool
    truth: str
    meta: dict = field(default_factory=dict)
    # (forecast, variable) -> relative frequency over (lead, rank), for ensemble forecasts
    rank_histograms: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"records": self.records, "overlap": self.overlap, "notes": self.notes}


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


class _TaskProgress(Callback):
    """Reports finished dask tasks to a progress callback."""

    def __init__(self, report: Progress) -> None:
        super().__init__()
        self.report, self.done, self.total = report, 0, 0

    def _start_state(self, dsk: Any, state: dict) -> None:
        self.total += sum(len(state[k]) for k in ("ready", "waiting", "running", "finished"))
        self.report(self.done, self.total)

    def _posttask(self, key: Any, result: Any, dsk: Any, state: dict, worker_id: Any) -> None:
        self.done += 1
        if self.done % 50 == 0 or self.done == self.total:
            self.report(self.done, self.total)


def _lazy_scores(
    fc: xr.DataArray,
    truth: xr.DataArray,
    clim: xr.DataArray | None,
    store: ForecastStore,
    wanted: Sequence[str],
) -> dict[str, xr.DataArray]:
    """The lazy reductions for one forecast and variable: mse, count and each wanted metric."""
    space = (store.y_dim, store.x_dim)
    cases = (INIT_DIM, *store.sample_dims)
    latlon = is_latitude(store.ds, store.y_dim) and is_longitude(store.ds, store.x_dim)
    w = metrics.area_weights(store.ds[store.y_dim]) if latlon else None
    extra = {}
    if (
        MEMBER_DIM in fc.dims
    ):  # an ensemble: the usual metrics on its mean, plus the ensemble scores
        keep = (LEAD_DIM, store.level_dim)
        extra = ensemble_scores(fc, truth, space, cases, w, keep)
        fc = fc.mean(MEMBER_DIM, skipna=False)
    out = {
        **extra,
        "mse": metrics.mse(fc, truth, space, cases, w),
        "count": (fc - truth).notnull().sum([*cases, *space]),
    }
    if "mae" in wanted:
        out["mae"] = metrics.mae(fc, truth, space, cases, w)
    if "bias" in wanted:
        out["bias"] = metrics.bias(fc, truth, space, cases, w)
    if "rel_l2" in wanted:
        out["rel_l2"] = metrics.rel_l2(fc, truth, space, cases, w)
    if "acc" in wanted and clim is not None:
        out["acc"] = metrics.acc(fc, truth, clim, space, cases, w)
    return out


def _parse_list(value: Sequence[str] | str, allowed: Sequence[str], option: str) -> list[str]:
    items = value.split(",") if isinstance(value, str) else list(value)
    items = [s.strip().lower() for s in items if s.strip()]
    bad = [s for s in items if s not in allowed]
    if bad:
        raise MinconvError(f"{option}: unknown {', '.join(bad)}; choose from {', '.join(allowed)}")
    return list(dict.fromkeys(items))


def evaluate(
    forecast: str | Path,
    truth: str | Path | Sequence[str | Path],
    compare: Sequence[str] = (),
    metrics_: Sequence[str] | str = METRICS,
    references: Sequence[str] | str = REFERENCES,
    climatology: str | Path | None = None,
    climatology_period: str | None = None,
    progress: Progress | None = None,
    load_below: int = LOAD_BELOW_BYTES,
) -> Scores:
    """Score FORECAST (and the `--compare` forecasts) against TRUTH with the reference forecasts."""
    wanted = _parse_list(metrics_, METRICS, "--metrics")
    refs = _parse_list(references, REFERENCES, "--references")
    if not wanted:
        raise MinconvError("--metrics: give at least one of " + ", ".join(METRICS))
    if climatology is not None and climatology_period is not None:
        raise MinconvError("--climatology and --climatology-period: give one or the other")
    stores = [open_forecast(forecast)]
    for spec in compare:
        name, path = parse_compare(spec)
        stores.append(open_forecast(path, name))
    names = [s.name for s in stores]
    clash = sorted({n for n in names if names.count(n) > 1} | (set(names) & set(REFERENCES)))
    if clash:
        raise MinconvError(f"--compare: forecast name(s) {clash} used twice; name them NAME=PATH")
    variables = list(dict.fromkeys(v for s in stores for v in s.variables))
    main = stores[0]
    fields = open_fields(truth, variables=variables)
    aligned = [
        align(s, fields, with_persistence="persistence" in refs and s is main) for s in stores
    ]
    notes = [f"{a.store.name}: {n}" for a in aligned for n in a.overlap.pop("notes")]

    clim = None
    if "climatology" in refs or "acc" in wanted:
        if climatology is not None:
            clim = climatology_from_file(as_source(climatology), variables, fields.time_is_datetime)
        else:
            first_init = main.ds[INIT_DIM].values.min()
            clim = climatology_from_truth(fields, variables, climatology_period, first_init)
            if clim is None:
                notes.append(
                    "no climatology: the truth has no times before the first init time; "
                    "climatology and ACC left out (give --climatology-period or --climatology)"
                )
        if clim is not None:
            notes.append(f"climatology: {clim.source}")

    lazy: dict[tuple[str, str], dict[str, xr.DataArray]] = {}
    clim_main: dict[str, xr.DataArray] | None = None
    for a in aligned:
        clim_at = None
        if clim is not None:
            grid = to_forecast_grid(xr.Dataset(clim.fields), clim.roles, a.store, f"{clim.source}")
            try:
                clim_at = {
                    v: climatology_at(grid[v], a.valid_times, clim.source, a.forecast[v])
                    for v in a.store.variables
                }
            except ClimatologyGap as gap:
                if clim.explicit:
                    raise
                notes.append(f"climatology and ACC left out: {gap}")
                clim = None
        if a.store is main:
            clim_main = clim_at
        for v in a.store.variables:
            c = clim_at[v] if clim_at is not None else None
            lazy[(a.store.name, v)] = _lazy_scores(a.forecast[v], a.truth[v], c, a.store, wanted)
    main_aligned = aligned[0]
    used_refs = []
    for ref in refs:
        for v in main.variables:
            if ref == "persistence" and main_aligned.persistence is not None:
                ref_fc = main_aligned.persistence[v]
            elif ref == "climatology" and clim_main is not None:
                ref_fc = clim_main[v]
            else:
                continue
            ref_fc = like(ref_fc.broadcast_like(main_aligned.truth[v]), main_aligned.truth[v])
            c = clim_main[v] if clim_main is not None else None
            lazy[(ref, v)] = _lazy_scores(ref_fc, main_aligned.truth[v], c, main, wanted)
            if ref not in used_refs:
                used_refs.append(ref)

    keys = list(lazy)
    with (
        _TaskProgress(progress) if progress else contextlib.nullcontext(),
        warnings.catch_warnings(),
    ):
        warnings.simplefilter("ignore", RuntimeWarning)  # 0/0 on empty or undefined cells: NaN
        computed = dask.compute(*[xr.Dataset(lazy[k]) for k in keys])
    results = {
        k: _finish_ensemble(
            ds, next(s for s in stores if s.name == k[0]) if k[0] in names else None
        )
        for k, ds in zip(keys, computed, strict=True)
    }
    return _assemble(results, stores, used_refs, wanted, fields, notes, aligned)


def _finish_ensemble(ds: xr.Dataset, store: ForecastStore | None) -> xr.Dataset:
    """Spread and spread/skill of an ensemble store's reductions (others pass through)."""
    from minconv_cli.ensemble import finish

    return finish(ds, store.members) if store is not None and store.members else ds


def _channel_name(fields: Fields, variable: str, level: Any) -> str:
    for ch in fields.channels:
        if ch.variable == variable and ch.level == level:
            return ch.name
    return f"{variable}_{level}"


def _assemble(
    results: dict[tuple[str, str], xr.Dataset],
    stores: list[ForecastStore],
    refs: list[str],
    wanted: list[str],
    fields: Fields,
    notes: list[str],
    aligned: list[Aligned],
) -> Scores:
    """Computed reductions -> skill scores, the (forecast, metric, variable, lead) table and records."""
    main = stores[0]
    leads = np.unique(np.concatenate([r[LEAD_DIM].values for r in results.values()]))
    names = [s.name for s in stores] + refs
    # per (name, channel): a Dataset over all leads, levels split into channels
    per: dict[tuple[str, str], xr.Dataset] = {}
    units: dict[str, str] = {}
    for (name, v), ds in results.items():
        ds = ds.reindex({LEAD_DIM: leads})
        level = main.level_dim if main.level_dim in ds.dims else None
        for lv in ds[level].values.tolist() if level else [None]:
            part = ds.sel({level: lv}) if level else ds
            ch = _channel_name(fields, v, lv) if level else v
            per[(name, ch)] = part.drop_vars(level, errors="ignore") if level else part
            units[ch] = str(fields.ds[v].attrs.get("units", ""))
    channels = list(dict.fromkeys(ch for _, ch in per))
    metric_names = [m for m in wanted] + [f"skill_vs_{r}" for r in refs]
    if any(s.members for s in stores):
        metric_names += [m for m in ENSEMBLE_METRICS if any(m in ds for ds in per.values())]
    rank_hists = {
        key: ds[RANK_HISTOGRAM].rename({LEAD_DIM: "lead"}).transpose("lead", RANK_DIM)
        for key, ds in per.items()
        if RANK_HISTOGRAM in ds
    }
    for (name, ch), ds in per.items():
        if "rmse" in wanted:
            ds["rmse"] = np.sqrt(ds["mse"])
        for r in refs:
            if r != name and (r, ch) in per:
                ds[f"skill_vs_{r}"] = metrics.skill_score(ds["mse"], per[(r, ch)]["mse"])
    table = xr.DataArray(
        np.full((len(names), len(metric_names), len(channels), len(leads)), np.nan),
        dims=("forecast", "metric", "variable", "lead"),
        coords={"forecast": names, "metric": metric_names, "variable": channels, "lead": leads},
        name="score",
    )
    records = []
    undefined: dict[tuple, tuple[dict, dict]] = {}  # (forecast, metric, note) -> channels, leads
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
                    kind = "empty" if count == 0 else ("skill" if m.startswith("skill") else m)
                    note = UNDEFINED.get(kind, UNDEFINED["empty"])
                    seen = undefined.setdefault((name, m, note), ({}, {}))
                    seen[0][ch], seen[1][format_lead(lead, main.lead_unit)] = None, None
                records.append(
                    {
                        "forecast": name,
                        "variable": ch,
                        "lead": format_lead(lead, main.lead_unit),
                        "lead_hours": lead_hours(lead),
                        "metric": m,
                        "value": value if note is None else None,
                        "note": note,
                    }
                )
    for (name, m, note), (chs, at) in undefined.items():
        where = "every lead" if len(at) == len(leads) else "lead " + ", ".join(at)
        notes.append(f"{name} {m} of {', '.join(chs)} at {where}: {note} (null in the records)")
    lead_is_time = main.lead_is_time
    if main.lead_unit:
        table["lead"].attrs["units"] = main.lead_unit
    if lead_is_time:
        table = table.assign_coords(
            lead_hours=("lead", [lead_hours(x) for x in leads], {"units": "hours"})
        )
    return Scores(
        records=records,
        table=table,
        overlap=[a.overlap for a in aligned],
        notes=notes,
        units=units,
        forecasts=[s.name for s in stores],
        references=refs,
        lead_is_time=lead_is_time,
        truth=fields.path_label,
        meta={s.name: str(s.path) for s in stores},
        rank_histograms=rank_hists,
    )


# --------------------------------------------------------------------------- reports


def default_out_dir(forecast: str | Path) -> Path:
    """`FORECAST_scores/` beside the forecast (`runs/fc.zarr` -> `runs/fc_scores`); for a URL
    forecast, `fc_scores/` in the current directory."""
    p = Path(forecast)
    return Path(f"{p.stem}_scores") if is_url(forecast) else p.parent / f"{p.stem}_scores"


def output_paths(out_dir: Path, plot: Path | None) -> list[Path]:
    """The files a report writes: scores.json, scores.csv, scores.nc and the PNG."""
    return [out_dir / f for f in OUTPUT_FILES] + [plot or out_dir / PLOT_FILE]


def rank_plot_path(out_dir: Path, plot: Path | None) -> Path:
    """The rank-histogram PNG of an ensemble: beside --plot (NAME_rank_histogram.png) or in OUT."""
    return plot.with_name(f"{plot.stem}_{RANK_PLOT_FILE}") if plot else out_dir / RANK_PLOT_FILE


def check_outputs(out_dir: Path, plot: Path | None, overwrite: bool) -> None:
    """Refuse (before any work) to replace existing reports unless told to."""
    if out_dir.exists() and not out_dir.is_dir():
        raise MinconvError(f"{out_dir}: exists and is not a directory (--out)")
    if plot is not None and plot.suffix.lower() != ".png":
        raise MinconvError(f"--plot {plot}: expected a .png file name")
    if not overwrite:
        paths = [*output_paths(out_dir, plot), rank_plot_path(out_dir, plot)]
        existing = [str(p) for p in paths if p.exists()]
        if existing:
            raise MinconvError(f"{existing[0]}: exists; use --overwrite to replace the scores")


def _records_csv(records: list[dict]) -> str:
    buf = io.StringIO()
    cols = ["forecast", "variable", "lead", "lead_hours", "metric", "value", "note"]
    writer = csv.DictWriter(buf, fieldnames=cols, lineterminator="\n")
    writer.writeheader()
    for r in records:
        writer.writerow({k: "" if r[k] is None else r[k] for k in cols})
    return buf.getvalue()


def _table_dataset(scores: Scores) -> xr.Dataset:
    ds = scores.table.to_dataset()
    ds["score"].attrs = {
        "long_name": "forecast scores (NaN: undefined or not scored; see notes)",
        "units_by_variable": json.dumps(scores.units),
    }
    if scores.rank_histograms:
        ds[RANK_HISTOGRAM] = _rank_table(scores)
    ds.attrs = {
        "minconv_version": __version__,
        "truth": scores.truth,
        "forecasts": json.dumps(scores.meta),
        "references": ", ".join(scores.references),
        "overlap": json.dumps(scores.overlap),
        "notes": "\n".join(scores.notes),
    }
    return ds


def _rank_table(scores: Scores) -> xr.DataArray:
    """Rank histograms as (forecast, variable, lead, rank); NaN where a pair has none."""
    keys = list(scores.rank_histograms)
    forecasts = list(dict.fromkeys(f for f, _ in keys))
    channels = list(dict.fromkeys(c for _, c in keys))
    first = scores.rank_histograms[keys[0]]
    out = xr.DataArray(
        np.full(
            (len(forecasts), len(channels), first.sizes["lead"], first.sizes[RANK_DIM]), np.nan
        ),
        dims=("forecast", "variable", "lead", RANK_DIM),
        coords={
            "forecast": forecasts,
            "variable": channels,
            "lead": first["lead"].values,
            RANK_DIM: first[RANK_DIM].values,
        },
        attrs={
            "long_name": "rank histogram: relative frequency of the truth's rank among the members"
        },
    )
    for (f, c), h in scores.rank_histograms.items():
        if h.sizes[RANK_DIM] == out.sizes[RANK_DIM]:
            out.loc[{"forecast": f, "variable": c}] = h.values
    return out


def write_reports(scores: Scores, out_dir: Path, plot: Path | None = None) -> list[Path]:
    """Write scores.json, scores.csv, scores.nc and the PNG(s), each via a temporary sibling + rename."""
    out_dir.mkdir(parents=True, exist_ok=True)
    targets = output_paths(out_dir, plot)
    rank_png = rank_plot_path(out_dir, plot)
    if scores.rank_histograms:
        targets.append(rank_png)
    else:
        rank_png.unlink(missing_ok=True)  # a stale one from an earlier ensemble
    temps = [t.with_name(f".{t.stem}.partial-{os.getpid()}{t.suffix}") for t in targets]
    try:
        temps[0].write_text(json.dumps(scores.records, indent=1) + "\n")
        temps[1].write_text(_records_csv(scores.records))
        _table_dataset(scores).to_netcdf(temps[2], engine="netcdf4")
        temps[3].parent.mkdir(parents=True, exist_ok=True)
        plot_scores(scores, temps[3])
        if scores.rank_histograms:
            leads = [format_lead(x) for x in scores.table["lead"].values]
            plot_rank_histograms(scores.rank_histograms, temps[4], leads)
        for tmp, target in zip(temps, targets, strict=True):
            os.replace(tmp, target)
    finally:
        for tmp in temps:
            tmp.unlink(missing_ok=True)
    return targets


def plot_scores(scores: Scores, path: Path) -> None:
    """Error (RMSE, else the first metric) and ACC against lead time: one column per variable."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    table = scores.table
    rows = [m for m in ("rmse", "acc") if m in table["metric"].values]
    if not rows:
        rows = [str(table["metric"].values[0])]
    channels = [str(v) for v in table["variable"].values]
    x = table["lead_hours"].values if scores.lead_is_time else table["lead"].values.astype(float)
    fig, axes = plt.subplots(
        len(rows), len(channels), figsize=(4.2 * len(channels), 3.2 * len(rows)), squeeze=False
    )
    styles = {"persistence": ("0.45", "--", "s"), "climatology": ("0.2", ":", "^")}
    for j, ch in enumerate(channels):
        for i, m in enumerate(rows):
            ax = axes[i][j]
            for name in [str(n) for n in table["forecast"].values]:
                y = table.sel(forecast=name, metric=m, variable=ch).values
                if not np.isfinite(y).any():
                    continue
                color, ls, marker = styles.get(name, (None, "-", "o"))
                (line,) = ax.plot(x, y, ls=ls, marker=marker, ms=3, color=color, label=name)
                if m == "rmse" and "spread" in table["metric"].values:  # an ensemble's spread
                    sp = table.sel(forecast=name, metric="spread", variable=ch).values
                    if np.isfinite(sp).any():
                        ax.plot(x, sp, ls="--", color=line.get_color(), label=f"{name} spread")
            unit = scores.units.get(ch, "")
            ylabel = m.upper() + (f" [{unit}]" if m != "acc" and unit and unit != "1" else "")
            ax.set_ylabel(ylabel)
            ax.set_title(ch if i == 0 else "")
            ax.grid(alpha=0.3)
            if len(x) <= 12:
                ax.set_xticks(x)
            if i == len(rows) - 1:
                unit = table["lead"].attrs.get("units", "time units")
                ax.set_xlabel("lead time [h]" if scores.lead_is_time else f"lead ({unit})")
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=8)
    fig.suptitle(f"scores against {Path(scores.truth).name}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110, format="png")
    plt.close(fig)
