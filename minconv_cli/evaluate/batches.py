"""Scoring a store larger than memory in batches of init times, each one dask pass over its own
graph, the batches' reductions then combined into the whole's.

One graph over a whole archive store grows with it (about 0.1-0.2 MB per MB of forecast in the
process that schedules it: tasks, keys, the per-block partial sums), so no memory limit holds for
every store size. A batch's graph is bounded instead. Every reduction is a sum or a mean with a
weight (`metric_table.Metric.pooled` / `.weight`): sums add up, maxima and minima take theirs,
means combine as the sum of value x weight over the sum of weights, which is the mean over all
cases to float round-off.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

import numpy as np
import xarray as xr

from minconv_cli.core.files import Progress
from minconv_cli.evaluate.metric_table import MAX, MEAN, MIN, SUM
from minconv_cli.rollout.store import INIT_DIM

WEIGHT = "_weight"  # suffix of a mean's weight among a batch's reductions
BATCH_BYTES = 2**30  # forecast bytes per batch when no memory limit sets it


def init_spans(arrays: Sequence[xr.DataArray], batch_bytes: int) -> list[slice]:
    """Positions of init times in batches of about `batch_bytes` of these arrays, cut at their
    dask chunks along the init dim (no block is read twice); one span when they are in memory
    (or disagree on the init times)."""
    lazy = [a for a in arrays if a.chunks is not None and INIT_DIM in a.dims]
    if not lazy:
        return [slice(None)]
    n = lazy[0].sizes[INIT_DIM]
    if any(a.sizes[INIT_DIM] != n for a in lazy):
        return [slice(None)]
    per_init = sum(a.nbytes for a in lazy) / max(1, n)
    bounds = {0, n}
    for a in lazy:
        bounds |= set(np.cumsum(a.chunks[a.get_axis_num(INIT_DIM)]).tolist())
    spans, start, edges = [], 0, sorted(bounds)
    for prev, edge in zip(edges[:-1], edges[1:], strict=True):
        if prev > start and (edge - start) * per_init > batch_bytes:
            spans.append(slice(start, prev))
            start = prev
    spans.append(slice(start, n))
    return spans


def take_init(x: xr.DataArray, span: slice) -> xr.DataArray:
    """`x` at the init times `span` (positions); `x` itself when it has no init dim."""
    return x.isel({INIT_DIM: span}) if INIT_DIM in x.dims else x


def combine(parts: Sequence[xr.Dataset], pooled: Mapping[Hashable, str]) -> xr.Dataset:
    """The reductions of all cases from those of the batches: each variable as `pooled` says
    (SUM, MAX, MIN), else a mean weighted by its `NAME_weight` variable."""
    out = {}
    for name in parts[0].data_vars:
        if str(name).endswith(WEIGHT):
            continue
        values = [p[name] for p in parts]
        how = pooled.get(name, MEAN)
        if how == SUM:
            out[name] = sum(values[1:], values[0])
        elif how in (MAX, MIN):
            out[name] = getattr(xr.concat(values, "batch"), how)("batch", skipna=True)
        else:
            out[name] = _weighted([(p[name], p[f"{name}{WEIGHT}"]) for p in parts])
    return xr.Dataset(out)


def _weighted(pairs: list[tuple[xr.DataArray, xr.DataArray]]) -> xr.DataArray:
    """Sum of value x weight over the sum of weights (batches of weight 0 left out; NaN if all)."""
    total = sum(w for _, w in pairs)
    pooled = sum(v.where(w > 0, 0.0) * w for v, w in pairs)
    return (pooled / total.where(total > 0)).astype(pairs[0][0].dtype)


def add_up(parts: Sequence[dict]) -> dict:
    """Nested dicts of computed sums (counts, error-map sums), added leaf by leaf."""
    first = parts[0]
    if isinstance(first, dict):
        return {k: add_up([p[k] for p in parts]) for k in first}
    return sum(parts[1:], first)


def batch_progress(report: Progress | None, batch: int, batches: int) -> Progress | None:
    """`report` for batch `batch` of `batches`: one bar over all of them (each batch an equal
    share, its tasks spread over it)."""
    if report is None or batches == 1:
        return report
    scale = 1000

    def progress(done: int, total: int) -> None:
        share = done / total if total else 1.0
        report(int((batch + share) * scale), batches * scale)

    return progress
