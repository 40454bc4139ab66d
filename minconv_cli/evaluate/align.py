"""Alignment: the truth at each forecast's valid times, on its grid, over the overlap (and the
persistence and extrapolation forecasts from the truth at the init times); `--compare` forecasts
on the main forecast's cases (`onto`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

from minconv_cli.core.errors import MinconvError
from minconv_cli.data import Fields, timeaxis
from minconv_cli.evaluate.extrapolation import extrapolated, missing_note
from minconv_cli.evaluate.gather import at_positions
from minconv_cli.evaluate.labels import label, lead_span, span
from minconv_cli.rollout.store import DONE, INIT_DIM, LEAD_DIM, MEMBER_DIM, VALID, ForecastStore

TRUTH_TIME = "_truth_time"
LOAD_BELOW_BYTES = 128 * 2**20  # forecasts smaller than this are scored in memory
BLOCK_BYTES = 8 * 2**20  # dask chunk size the forecast is read in (several init times per chunk)


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


def _match_axis(
    truth: xr.Dataset, dim: str, target: xr.DataArray, label: str, view: bool = False
) -> xr.Dataset:
    """The truth along `dim` at the forecast's coordinates (any order), or an error naming the
    mismatch; with `view`, the truth itself (no copy) where the axes are the same."""
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
    if view and np.array_equal(pos, np.arange(truth.sizes[dim])):
        return truth.assign_coords({dim: target})
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


def roles_of(fields: Fields) -> dict[str, str | None]:
    return {"y": fields.y_dim, "x": fields.x_dim, "level": fields.level_dim}


def to_forecast_grid(
    ds: xr.Dataset, roles: dict[str, str | None], store: ForecastStore, label: str, view=False
) -> xr.Dataset:
    """`ds` renamed to the forecast's y/x/level names and selected at its coordinates (any order);
    `view`: no copy of axes that are the same (the in-memory scores keep today's float sums)."""
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
            ds = _match_axis(ds, dim, store.ds[dim], label, view)
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
    # (time, prediction_timedelta, *samples): the store has the case, its valid time is in the
    # truth, and every member's sequence is done
    ready: xr.DataArray | None = None
    of_cases: int = 0  # the store's cases: init times x leads x samples
    in_truth: xr.DataArray | None = None  # (time, prediction_timedelta): valid time in the truth
    scope: int = 0  # the store's cases whose valid time is in the truth (the main's, for --compare)
    extrapolation: dict[str, xr.DataArray] | None = None  # like persistence, per lead


def _block(da: xr.DataArray, block_bytes: int = BLOCK_BYTES) -> int:
    """Init times per dask chunk so one chunk holds about `block_bytes`."""
    per_init = da.nbytes / max(da.sizes[INIT_DIM], 1)
    return max(1, int(block_bytes // max(per_init, 1)))


def like(da: xr.DataArray, template: xr.DataArray) -> xr.DataArray:
    """`da` in memory if `template` is, else chunked like it along their shared dims."""
    if template.chunks is None:
        return da.load()
    chunks = dict(zip(template.dims, template.chunks, strict=True))
    return da.chunk({d: c for d, c in chunks.items() if d in da.dims})


def align(
    store: ForecastStore,
    truth: Fields,
    with_persistence: bool,
    load_below: int = LOAD_BELOW_BYTES,
    with_extrapolation: bool = False,
    block_bytes: int = BLOCK_BYTES,
) -> Aligned:
    """Truth at the forecast's valid times, on the forecast's grid; only the overlap is kept. A
    forecast under `load_below` bytes is read into memory; a larger one stays lazy (dask), in
    blocks of `block_bytes` of init times, and the scores are reduced block by block."""
    ds = store.ds
    pair = f"{store.path} vs {truth.path_label}"
    init, lead, valid = _valid_times(store, truth, pair)
    valid_pos = _time_indexer(truth.times, valid, truth.time_step)
    init_pos = _time_indexer(truth.times, init, truth.time_step)
    notes: list[str] = []
    ok, refs = _scorable(valid_pos, init_pos, (with_persistence, with_extrapolation), notes)
    rows, cols = np.flatnonzero(ok.any(axis=1)), np.flatnonzero(ok.any(axis=0))
    if not ok.any():
        raise MinconvError(
            f"{pair}: no overlapping times: forecast valid times {label(valid.min())} to "
            f"{label(valid.max())}, truth {label(truth.times[0])} to {label(truth.times[-1])}"
        )
    ok = ok[np.ix_(rows, cols)]
    sub = ds.isel({INIT_DIM: rows, LEAD_DIM: cols})
    case = {"dims": (INIT_DIM, LEAD_DIM), "coords": {d: sub[d] for d in (INIT_DIM, LEAD_DIM)}}
    done = sub[DONE] if DONE in sub.coords else None
    notes += _unfinished(done) if done is not None else []
    cases = _Cases(
        sub=sub,
        done=done,
        mask=xr.DataArray(ok, **case),
        pos=xr.DataArray(np.where(ok, valid_pos[np.ix_(rows, cols)], 0), **case),
        init_pos=init_pos[rows] if refs else None,
        lazy=sum(sub[v].nbytes for v in store.variables) >= load_below,
        block_bytes=block_bytes,
        refs=tuple(refs),
    )
    forecast, truth_at, persistence, extrapolation = _gather(store, truth, pair, cases, notes)
    scored_valid = valid[np.ix_(rows, cols)][ok]
    overlap = _overlap_record(store, init, lead, (rows, cols), scored_valid, ok, notes)
    # unscored cases take a scored valid time, so that lookups (climatology) never miss on them
    valid_da = xr.DataArray(np.where(ok, valid[np.ix_(rows, cols)], scored_valid[0]), **case)
    scope, ready = _ready(sub, store, cases.mask, done)
    n_cases = int(valid.size) * int(np.prod([ds.sizes[d] for d in store.sample_dims]))
    return Aligned(
        store,
        forecast,
        truth_at,
        persistence,
        valid_da,
        overlap,
        ready,
        n_cases,
        cases.mask,
        int(scope.sum()),
        extrapolation,
    )


def _ready(
    sub: xr.Dataset, store: ForecastStore, mask: xr.DataArray, done: xr.DataArray | None
) -> tuple[xr.DataArray, xr.DataArray]:
    """The cases in scope (their valid time in the truth) and those ready (every sequence done)."""
    scope = _case_grid(sub, store.sample_dims) & mask
    ready = scope & _all_members(done) if done is not None else scope
    return scope, ready.transpose(INIT_DIM, LEAD_DIM, *store.sample_dims).load()


def _overlap_record(
    store: ForecastStore,
    init: np.ndarray,
    lead: np.ndarray,
    kept: tuple[np.ndarray, np.ndarray],
    scored_valid: np.ndarray,
    ok: np.ndarray,
    notes: list[str],
) -> dict:
    """What of the forecast is scored: spans of the kept init times and leads (`kept` positions)
    and of the scored valid times, and the cases scored of all."""
    rows, cols = kept
    return {
        "forecast": store.name,
        "init_times": {**span(init[rows]), "of": int(len(init))},
        "leads": {**lead_span(lead[cols], store.lead_unit), "of": int(len(lead))},
        "valid_times": span(scored_valid),
        "cases": int(ok.sum()),
        "of_cases": int(len(init) * len(lead)),
        "notes": notes,
    }


def _scorable(
    valid_pos: np.ndarray, init_pos: np.ndarray, asked: tuple[bool, bool], notes: list[str]
) -> tuple[np.ndarray, list[str]]:
    """(init, lead) cases whose valid time (with the references from the init time `asked` for,
    persistence and extrapolation, also init time) is in the truth, and those references still
    in use (none when no init time is in the truth)."""
    refs = [r for r, on in zip(("persistence", "extrapolation"), asked, strict=True) if on]
    ok = valid_pos >= 0
    if refs and ok.any():
        if not (ok & (init_pos >= 0)[:, None]).any():
            which = " and ".join(refs)
            notes.append(f"{which} left out: no init time of the forecast is in the truth")
            return ok, []
        ok &= (init_pos >= 0)[:, None]
    return ok, refs


def _unfinished(done: xr.DataArray) -> list[str]:
    """The note on unfinished sequences (done flags False), if any."""
    if bool(done.all()):
        return []
    return [f"{int((~done).sum())} of {done.size} forecast sequences are unfinished and not scored"]


def _case_grid(ds: xr.Dataset, sample_dims: tuple[str, ...]) -> xr.DataArray:
    """True over the case dims (time, prediction_timedelta, *samples) of `ds`."""
    dims = (INIT_DIM, LEAD_DIM, *sample_dims)
    coords = {d: ds[d] for d in dims if d in ds.coords}
    return xr.DataArray(np.ones([ds.sizes[d] for d in dims], bool), dims=dims, coords=coords)


def _all_members(done: xr.DataArray) -> xr.DataArray:
    """Done flags of whole cases: an ensemble's sequence is done when every member's is."""
    return done.all(MEMBER_DIM) if MEMBER_DIM in done.dims else done


def _fill_axis(ds: xr.Dataset, dim: str, target: xr.DataArray) -> tuple[xr.Dataset, xr.DataArray]:
    """`ds` along `dim` at the `target` coordinates (any order) and where it has them (bool)."""
    source = np.asarray(ds[dim].values)
    pos = _axis_indexer(np.asarray(target.values), source)
    has = xr.DataArray(pos >= 0, dims=(dim,), coords={dim: target})
    return ds.isel({dim: np.maximum(pos, 0)}).assign_coords({dim: target}), has


def onto(
    main: Aligned, store: ForecastStore, truth: Fields, load_below: int = LOAD_BELOW_BYTES
) -> Aligned:
    """A `--compare` store on the main forecast's cases (NaN where it lacks one).

    Its init times, leads and samples are matched by coordinate (missing ones are NaN); its grid
    must hold the main forecast's points. Variables the main forecast lacks are not scored.
    """
    _valid_times(store, truth, f"{store.path} vs {truth.path_label}")
    ms = main.store
    notes: list[str] = []
    variables = _shared_variables(main, store, notes)
    ds = store.ds[variables]
    if DONE in store.ds.coords:
        ds = ds.assign_coords({DONE: _all_members(store.ds[DONE])})
    template = main.forecast[variables[0]]
    present, has = xr.DataArray(True), {}
    for dim in (INIT_DIM, LEAD_DIM, *ms.sample_dims):
        ds, has[dim] = _fill_axis(ds, dim, template[dim] if dim in template.coords else ms.ds[dim])
        present = present & has[dim]
    roles = {"y": store.y_dim, "x": store.x_dim, "level": store.level_dim}
    ds = to_forecast_grid(ds, roles, ms, f"{store.path} vs {ms.path}")
    scope = (present & main.in_truth).transpose(*main.ready.dims)
    ready = scope & ds[DONE].drop_vars(DONE) if DONE in ds.coords else scope
    ready = ready.transpose(*main.ready.dims).load()
    if DONE in store.ds.coords:
        notes += _unfinished(store.ds[DONE])
    forecast = {v: _like_main(ds[v], ready, main.forecast[v], load_below) for v in variables}
    inits, leads = has[INIT_DIM], has[LEAD_DIM]
    common = (main.in_truth & inits & leads).values
    overlap = {
        "forecast": store.name,
        "init_times": {
            **span(inits[INIT_DIM].values[inits.values]),
            "of": store.ds.sizes[INIT_DIM],
        },
        "leads": {
            **lead_span(leads[LEAD_DIM].values[leads.values], ms.lead_unit),
            "of": store.ds.sizes[LEAD_DIM],
        },
        "valid_times": span(main.valid_times.values[common]),
        "cases": int(common.sum()),
        "of_cases": int(store.ds.sizes[INIT_DIM] * store.ds.sizes[LEAD_DIM]),
        "notes": notes,
    }
    n_samples = int(np.prod([store.ds.sizes[d] for d in store.sample_dims]))
    aligned = Aligned(
        store=store,
        forecast=forecast,
        truth={v: main.truth[v] for v in variables},
        persistence=None,
        valid_times=main.valid_times,
        overlap=overlap,
        ready=ready,
        of_cases=overlap["of_cases"] * n_samples,
        in_truth=main.in_truth,
        scope=int(scope.sum()),
    )
    return aligned


def _shared_variables(main: Aligned, store: ForecastStore, notes: list[str]) -> list[str]:
    """The variables of a `--compare` store that the main forecast has (its sample dims must
    be the main's); the others are noted as not scored."""
    ms = main.store
    if set(store.sample_dims) != set(ms.sample_dims):
        raise MinconvError(
            f"{store.path}: sample dims {list(store.sample_dims)} differ from those of "
            f"{ms.path} {list(ms.sample_dims)}; --compare forecasts are scored on its cases"
        )
    variables = [v for v in store.variables if v in main.forecast]
    extra = [v for v in store.variables if v not in main.forecast]
    if extra:
        notes.append(f"variable(s) {extra} not scored: {ms.name} has no such forecast")
    if not variables:
        raise MinconvError(f"{store.path}: no variable in common with {ms.path}")
    return variables


def _like_main(
    da: xr.DataArray, ready: xr.DataArray, main_fc: xr.DataArray, load_below: int
) -> xr.DataArray:
    """A `--compare` variable on its ready cases, lazy like the main forecast's (or when large)."""
    fc = da.drop_vars(DONE, errors="ignore").where(ready)
    if main_fc.chunks is not None:
        return like(fc, main_fc)
    if fc.nbytes >= load_below:
        members = {MEMBER_DIM: -1} if MEMBER_DIM in fc.dims else {}
        return fc.chunk({INIT_DIM: _block(fc), LEAD_DIM: -1, **members})
    return fc.load()


def _valid_times(
    store: ForecastStore, truth: Fields, pair: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(init times, leads, valid times (init, lead)) of the store, after checking that its time
    axis is of the truth's kind and calendar."""
    ds = store.ds
    if store.is_dated != truth.time_is_datetime:
        kind = "datetime" if truth.time_is_datetime else "numeric"
        raise MinconvError(
            f"{store.path}: {LEAD_DIM} is {ds[LEAD_DIM].dtype} but the truth has a {kind} time axis"
        )
    extra = [d for d in truth.sample_dims if d not in store.sample_dims]
    if extra:
        raise MinconvError(f"{pair}: the truth has sample dim(s) {extra} the forecast lacks")
    init = np.asarray(ds[INIT_DIM].values)
    lead = np.asarray(ds[LEAD_DIM].values)
    if truth.time_is_datetime and timeaxis.calendar_of(init) != timeaxis.calendar_of(truth.times):
        raise MinconvError(
            f"{pair}: the forecast's init times are in the {timeaxis.calendar_of(init)} calendar, "
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
    return init, lead, valid


@dataclass
class _Cases:
    """The scored part of a store: its overlap `sub`, done flags, which (init, lead) cases are
    scored (`mask`), their truth positions (`pos`) and those of the init times (references)."""

    sub: xr.Dataset
    done: xr.DataArray | None
    mask: xr.DataArray
    pos: xr.DataArray
    init_pos: np.ndarray | None  # None: no reference from the init times
    lazy: bool
    block_bytes: int  # the size of the lazy forecast's blocks of init times
    refs: tuple[str, ...] = ()  # the references from the init times: persistence, extrapolation


def _blocks(fc: xr.DataArray, store: ForecastStore, block_bytes: int) -> xr.DataArray:
    """The forecast in dask blocks of init times (about `block_bytes` each), whole along every
    other dim (the store's own chunks of space would multiply the tasks), and along leads unless
    one init time is larger than a block."""
    per_lead = fc.nbytes / max(fc.sizes[INIT_DIM] * fc.sizes[LEAD_DIM], 1)
    leads = fc.sizes[LEAD_DIM]
    if per_lead * leads > block_bytes:
        leads = max(1, int(block_bytes // max(per_lead, 1)))
    whole = {d: -1 for d in fc.dims}
    return fc.chunk({**whole, INIT_DIM: _block(fc, block_bytes), LEAD_DIM: leads})


def _gather(store: ForecastStore, truth: Fields, pair: str, cases: _Cases, notes: list[str]):
    """Per variable: the forecast, the truth at its valid times and (if asked) persistence and
    extrapolation (lazy like the forecast, or in memory)."""
    tds = to_forecast_grid(truth.ds, roles_of(truth), store, pair, cases.lazy).rename(
        {truth.time_dim: TRUTH_TIME}
    )
    sub = cases.sub
    forecast, truth_at, persistence, extrapolation = {}, {}, {}, {}
    for v in store.variables:
        fc = sub[v]
        if cases.done is not None:
            fc = fc.where(cases.done)
        src = tds[v]
        fc = _blocks(fc, store, cases.block_bytes) if cases.lazy else fc.load()
        forecast[v] = fc
        at = at_positions(src, TRUTH_TIME, cases.pos, cases.mask, fc)
        truth_at[v] = like(at.transpose(*fc.dims, missing_dims="ignore"), fc)
        if "persistence" in cases.refs:
            ip = xr.DataArray(cases.init_pos, dims=(INIT_DIM,), coords={INIT_DIM: sub[INIT_DIM]})
            persistence[v] = like(at_positions(src, TRUTH_TIME, ip, None, fc), fc)
        if "extrapolation" in cases.refs:
            space, axis = (store.y_dim, store.x_dim), (truth.times, truth.time_step)
            ex, missing = extrapolated(
                src, TRUTH_TIME, space, cases.init_pos, (sub[INIT_DIM], sub[LEAD_DIM]), axis, fc
            )
            extrapolation[v] = like(ex.transpose(*fc.dims, missing_dims="ignore"), fc)
    if "extrapolation" in cases.refs and missing:
        notes.append(missing_note(missing, len(cases.init_pos)))
    return forecast, truth_at, persistence or None, extrapolation or None
