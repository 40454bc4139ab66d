"""The reductions of every forecast and reference: built lazily over the common cases, computed
in one dask pass per batch of init times (`batches.py`), combined, and the derived rows added."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from typing import Any

import dask
import xarray as xr

from minconv_cli.core.files import Progress, dask_progress
from minconv_cli.data.dims import is_latitude, is_longitude
from minconv_cli.evaluate.align import Aligned
from minconv_cli.evaluate.batches import (
    BATCH_BYTES,
    WEIGHT,
    add_up,
    batch_progress,
    combine,
    init_spans,
    take_init,
)
from minconv_cli.evaluate.cases import CaseSet, overlap_counts
from minconv_cli.evaluate.error_maps import lazy_error_sums
from minconv_cli.evaluate.events import Events, split_events
from minconv_cli.evaluate.metric_table import METRICS, SUM
from minconv_cli.evaluate.metrics import area_weights
from minconv_cli.rollout.store import INIT_DIM, MEMBER_DIM, ForecastStore

# runs the one reduction pass: (lazy objects, progress) -> their values (evaluate/cluster.py)
Compute = Callable[[Sequence[Any], Progress | None], tuple]
# how each reduction combines over batches (the others: means, by their weights)
POOLED = {"count": SUM, **{name: row.pooled for name, row in METRICS.items()}}


def compute_here(objs: Sequence[Any], progress: Progress | None) -> tuple:
    """`dask.compute` on the current scheduler (in this process, or a current `Client`),
    reporting finished tasks of the local schedulers to `progress`."""
    with dask_progress(progress, every=50):
        return dask.compute(*objs)


def lazy_scores(
    fc: xr.DataArray,
    truth: xr.DataArray,
    clim: xr.DataArray | None,
    store: ForecastStore,
    wanted: Sequence[str],
    events: Events | None = None,
    pooled: bool = False,
) -> dict[str, xr.DataArray]:
    """The lazy reductions of one forecast and variable: the count and every row of the table it
    gets (an ensemble: the member rows on its members, the others, event scores too, on its mean);
    `pooled`: each mean's weight beside it, for combining batches."""
    space = (store.y_dim, store.x_dim)
    cases = (INIT_DIM, *store.sample_dims)
    latlon = is_latitude(store.ds, store.y_dim) and is_longitude(store.ds, store.x_dim)
    w = area_weights(store.ds[store.y_dim]) if latlon else None
    members = MEMBER_DIM in fc.dims
    mean = fc.mean(MEMBER_DIM, skipna=False) if members else fc
    out = {"count": (mean - truth).notnull().sum([*cases, *space])}
    for row in METRICS.values():
        if not row.applies(wanted, members):
            continue
        scored = fc if row.needs_members else mean
        value = row.compute(scored, truth, clim, space, cases, w, events)
        if value is None:
            continue
        out[row.name] = value
        if pooled and row.weight is not None:
            out[f"{row.name}{WEIGHT}"] = row.compute(
                scored, truth, clim, space, cases, w, events, weight=True
            )
    return out


def derive(ds: xr.Dataset, wanted: Sequence[str], members: int) -> xr.Dataset:
    """The derived rows (RMSE, an ensemble's spread and spread/skill) from computed reductions."""
    for row in METRICS.values():
        if row.derive is None or row.per_reference or not row.applies(wanted, members > 0):
            continue
        if all(name in ds for name in row.derived_from):
            ds[row.name] = row.derive(ds, members)
    return split_events(ds, [n for n, r in METRICS.items() if r.per_threshold and r.in_table])


def _lazy_batch(
    aligned: list[Aligned],
    cases: CaseSet,
    clim_at: dict[str, xr.DataArray] | None,
    wanted: list[str],
    events: Events | None,
    pooled: bool,
) -> dict[tuple[str, str], xr.Dataset]:
    """(forecast or reference, variable) -> its lazy reductions over `cases`."""
    main = aligned[0].store

    def scores(fc: xr.DataArray, v: str) -> xr.Dataset:
        c = clim_at[v] if clim_at is not None else None
        return xr.Dataset(lazy_scores(fc, cases.truth[v], c, main, wanted, events, pooled))

    lazy = {(a.store.name, v): scores(cases.forecast[(a.store.name, v)], v) for a in aligned
            for v in a.forecast}  # fmt: skip
    lazy.update({key: scores(ref_fc, key[1]) for key, ref_fc in cases.references.items()})
    return lazy


def reduce_all(
    aligned: list[Aligned],
    cases: CaseSet,
    clim_at: dict[str, xr.DataArray] | None,
    wanted: list[str],
    progress: Progress | None,
    events: Events | None = None,
    maps: bool = False,
    compute: Compute | None = None,
    batch_bytes: int = BATCH_BYTES,
) -> tuple[dict[tuple[str, str], xr.Dataset], dict, int]:
    """Every (forecast or reference, variable)'s reductions, derived rows added; the stage counts
    go into each forecast's overlap record. One dask pass (`compute`) per batch of about
    `batch_bytes` of forecast; `maps`: the error-map sums too. Returns (reductions, error-map
    sums, batches)."""
    spans = init_spans(list(cases.forecast.values()), batch_bytes)
    pooled, parts = len(spans) > 1, []
    case_dims = (INIT_DIM, *aligned[0].store.sample_dims)
    for i, span in enumerate(spans):
        sub, clim = cases, clim_at
        if pooled:
            sub = cases.take(span)
            clim = None if clim_at is None else {v: take_init(c, span) for v, c in clim_at.items()}
        lazy = _lazy_batch(aligned, sub, clim, wanted, events, pooled)
        sums = lazy_error_sums(sub.forecast, sub.truth, case_dims) if maps else {}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # 0/0 on empty or undefined cells: NaN
            part = (compute or compute_here)(
                [lazy, sub.stage_counts(), sums], batch_progress(progress, i, len(spans))
            )
        parts.append(part)
    if pooled:
        computed = {k: combine([p[0][k] for p in parts], POOLED) for k in parts[0][0]}
    else:
        computed = parts[0][0]
    stages, along = add_up([p[1] for p in parts]), add_up([p[2] for p in parts])
    for a in aligned:
        a.overlap.update(overlap_counts(a, {**cases.fixed[a.store.name], **stages[a.store.name]}))
        a.overlap["case"] = list(map(str, aligned[0].ready.dims))
    members = {a.store.name: a.store.members or 0 for a in aligned}
    derived = {k: derive(ds, wanted, members.get(k[0], 0)) for k, ds in computed.items()}
    return derived, along, len(spans)
