"""The climatology reference: from the truth before the first init time (or a period), or from
a file; and its value at each valid time."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dask
import numpy as np
import xarray as xr

from minconv_cli.core.errors import MinconvError
from minconv_cli.data import Fields, open_dataset, split_fields, timeaxis
from minconv_cli.data.dims import find_roles
from minconv_cli.data.integrity import check_chunks
from minconv_cli.data.timeaxis import CalendarStep
from minconv_cli.evaluate.align import like, roles_of
from minconv_cli.evaluate.gather import gather
from minconv_cli.evaluate.labels import label

KEY_AXIS = "_climatology_key"  # the climatology's (dayofyear, hour) or month keys, flattened


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
        source = f"{truth.path_label} before the first init time ({label(truth.times[0])} to {label(truth.times[n - 1])})"
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
    return Climatology(out, roles_of(truth), source, explicit=period is not None)


def climatology_from_file(
    path: str | Path,
    variables: Sequence[str],
    datetime_time: bool,
    allow_missing_chunks: bool = False,
) -> Climatology:
    """A climatology file: per variable (dayofyear[, hour], [level], y, x) (WeatherBench 2),
    (month, [level], y, x) for monthly data, or (y, x). A Zarr chunk it lacks is an error unless
    `allow_missing_chunks` (then it reads as NaN)."""
    ds = open_dataset(path)
    check_chunks(path, ds, [v for v in variables if v in ds.data_vars], allow_missing_chunks)
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
    if template.chunks is not None:  # block by block, like the forecast
        return like(_gathered(clim, keys, valid, template), template)
    return like(clim.sel(keys).drop_vars(names, errors="ignore"), template)


def _gathered(
    clim: xr.DataArray, keys: dict[str, xr.DataArray], valid: xr.DataArray, like_: xr.DataArray
) -> xr.DataArray:
    """The climatology at the `keys` of each valid time, gathered lazily, one task per block of
    cases (a vectorised `sel` makes one per case): its key dims flattened into one axis."""
    names = list(keys)
    other = [d for d in clim.dims if d not in names]
    flat = clim.transpose(*names, *other)
    data = flat.data.reshape((-1, *flat.shape[len(names) :]))
    idx = [clim.indexes[n].get_indexer(keys[n].values.ravel()) for n in names]
    pos = np.ravel_multi_index(idx, [clim.sizes[n] for n in names]).reshape(valid.shape)
    coords = {k: c for k, c in clim.coords.items() if not set(c.dims) & set(names)}
    src = xr.DataArray(data, dims=(KEY_AXIS, *other), coords=coords, attrs=clim.attrs)
    at = xr.DataArray(pos, dims=valid.dims, coords={d: valid[d] for d in valid.dims})
    return gather(src, KEY_AXIS, at, None, dict(zip(like_.dims, like_.chunks, strict=True)))
