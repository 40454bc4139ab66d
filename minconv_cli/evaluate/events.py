"""Nowcasting scores of rain events (value >= threshold): the contingency counts behind POD, FAR,
CSI and ETS, and the fractions skill score (FSS) at window sizes, as lazy reductions and derived rows.

Both are computed like pySTEPS' accumulating verification (`det_cat_fct_accum`, `fss_accum`):
counts and FSS sums are summed over cases and space per lead, the scores derived from the sums.
Cells NaN in the forecast or the truth are not counted (categorical) and not summed (FSS); for
the FSS fractions a NaN cell counts as "no event". Counts are plain cell counts (no area weights).
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass

import numpy as np
import xarray as xr

Dims = Sequence[Hashable]

THRESHOLD_DIM, SCALE_DIM = "threshold", "scale"
CATEGORY_DIM, PART_DIM = "category", "part"
CATEGORIES = ("hits", "misses", "false_alarms", "correct_negatives")


@dataclass(frozen=True)
class Events:
    """The event thresholds (in the variable's units) and FSS window sizes (grid cells) asked for."""

    thresholds: tuple[float, ...]
    scales: tuple[int, ...] = ()


def event_name(metric: str, threshold: float, scale: int | None = None) -> str:
    """The reported name: `csi@1` (threshold 1), `fss@1/s5` (threshold 1, window 5 cells)."""
    name = f"{metric}@{threshold:g}"
    return name if scale is None else f"{name}/s{scale}"


def parse_event_name(name: str) -> tuple[str, float | None, int | None]:
    """(metric, threshold, scale) of a reported name; threshold and scale None for other metrics."""
    base, at, rest = name.partition("@")
    if not at:
        return name, None, None
    threshold, slash, scale = rest.partition("/s")
    return base, float(threshold), int(scale) if slash else None


def _exceeds(x: xr.DataArray, thresholds: Sequence[float]) -> xr.DataArray:
    """x >= each threshold along a new `threshold` dim (False where x is NaN)."""
    t = xr.DataArray(np.asarray(thresholds, dtype=np.float64), dims=THRESHOLD_DIM)
    return (x >= t).assign_coords({THRESHOLD_DIM: t.values})


def contingency(
    forecast: xr.DataArray,
    truth: xr.DataArray,
    space: Dims,
    cases: Dims,
    weights: xr.DataArray | None = None,
    events: Events | None = None,
) -> xr.DataArray | None:
    """Hits, misses, false alarms and correct negatives per threshold, summed over cases and
    space (a `category` dim); cells NaN in either field are not counted."""
    if events is None or not events.thresholds:
        return None
    valid = forecast.notnull() & truth.notnull()
    f, o = _exceeds(forecast, events.thresholds), _exceeds(truth, events.thresholds)
    dims = [*cases, *space]
    parts = [f & o, ~f & o, f & ~o, ~f & ~o]
    counts = [(p & valid).sum(dims, dtype=np.float64) for p in parts]
    return xr.concat(counts, dim=CATEGORY_DIM).assign_coords({CATEGORY_DIM: list(CATEGORIES)})


def fractions(events: np.ndarray, scale: int) -> np.ndarray:
    """The fraction of event cells in the `scale` x `scale` window around each cell of the last
    two axes (zero beyond the grid: scipy's uniform_filter, mode constant, as pySTEPS)."""
    from scipy.ndimage import uniform_filter

    if scale == 1:
        return events
    size = (1,) * (events.ndim - 2) + (scale, scale)
    return uniform_filter(events, size=size, mode="constant", cval=0.0)


def _fss_block(
    forecast: np.ndarray, truth: np.ndarray, thresholds: Sequence[float], scales: Sequence[int]
) -> np.ndarray:
    """FSS sums of one block over its last two (grid) axes: (..., part, threshold, scale)."""
    valid = np.isfinite(forecast) & np.isfinite(truth)
    out = np.zeros((*forecast.shape[:-2], 2, len(thresholds), len(scales)))
    for i, t in enumerate(thresholds):
        ef, eo = (forecast >= t).astype(np.float64), (truth >= t).astype(np.float64)  # NaN: 0
        for j, s in enumerate(scales):
            pf, po = fractions(ef, s), fractions(eo, s)
            out[..., 0, i, j] = np.where(valid, (pf - po) ** 2, 0.0).sum((-2, -1))
            out[..., 1, i, j] = np.where(valid, pf**2 + po**2, 0.0).sum((-2, -1))
    return out


def fss_sums(
    forecast: xr.DataArray,
    truth: xr.DataArray,
    space: Dims,
    cases: Dims,
    weights: xr.DataArray | None = None,
    events: Events | None = None,
) -> xr.DataArray | None:
    """The FSS numerator sum (Pf - Po)^2 and denominator sum Pf^2 + Po^2 per threshold and scale
    (a `part` dim), over cases and the cells valid in both fields; block by block, whole grids."""
    if events is None or not events.thresholds or not events.scales:
        return None
    new = (PART_DIM, THRESHOLD_DIM, SCALE_DIM)
    sizes = dict(zip(new, (2, len(events.thresholds), len(events.scales)), strict=True))
    per_case = xr.apply_ufunc(
        _fss_block,
        forecast,
        truth,
        input_core_dims=[list(space), list(space)],
        output_core_dims=[list(new)],
        kwargs={"thresholds": events.thresholds, "scales": events.scales},
        dask="parallelized",
        output_dtypes=[np.float64],
        dask_gufunc_kwargs={"output_sizes": sizes, "allow_rechunk": True},
    )
    coords = {THRESHOLD_DIM: list(events.thresholds), SCALE_DIM: list(events.scales)}
    return per_case.sum(list(cases)).assign_coords({**coords, PART_DIM: ["num", "den"]})


# Derived scores: from the summed counts (NaN where the denominator is 0).


def _counts(reductions: xr.Dataset) -> tuple[xr.DataArray, ...]:
    c = reductions["contingency"]
    return tuple(c.sel({CATEGORY_DIM: k}, drop=True) for k in CATEGORIES)


def _ratio(num: xr.DataArray, den: xr.DataArray) -> xr.DataArray:
    return num / den.where(den > 0)


def pod_of(reductions: xr.Dataset, members: int) -> xr.DataArray:
    """Probability of detection h / (h + m)."""
    h, m, _, _ = _counts(reductions)
    return _ratio(h, h + m)


def far_of(reductions: xr.Dataset, members: int) -> xr.DataArray:
    """False alarm ratio f / (h + f)."""
    h, _, f, _ = _counts(reductions)
    return _ratio(f, h + f)


def csi_of(reductions: xr.Dataset, members: int) -> xr.DataArray:
    """Critical success index (threat score) h / (h + m + f)."""
    h, m, f, _ = _counts(reductions)
    return _ratio(h, h + m + f)


def ets_of(reductions: xr.Dataset, members: int) -> xr.DataArray:
    """Equitable threat score (h - r) / (h + m + f - r), r = (h + m)(h + f) / n the random hits."""
    h, m, f, c = _counts(reductions)
    n = h + m + f + c
    r = (h + m) * (h + f) / n.where(n > 0)
    den = h + m + f - r
    return (h - r) / den.where(den != 0)


def fss_of(reductions: xr.Dataset, members: int) -> xr.DataArray:
    """Fractions skill score 1 - sum (Pf - Po)^2 / sum (Pf^2 + Po^2) (pySTEPS' fss_compute)."""
    sums = reductions["fss_sums"]
    num, den = (sums.sel({PART_DIM: k}, drop=True) for k in ("num", "den"))
    return 1.0 - _ratio(num, den)


def split_events(ds: xr.Dataset, names: Sequence[str]) -> xr.Dataset:
    """The scores `names` that carry threshold (and scale) dims as one variable per threshold
    (and scale), named `csi@1`, `fss@1/s5`; the count sums and event coordinates dropped."""
    for name in names:
        if name not in ds or THRESHOLD_DIM not in ds[name].dims:
            continue
        da = ds[name]
        for t in da[THRESHOLD_DIM].values.tolist():
            at = da.sel({THRESHOLD_DIM: t}, drop=True)
            if SCALE_DIM not in at.dims:
                ds[event_name(name, t)] = at
                continue
            for s in at[SCALE_DIM].values.tolist():
                ds[event_name(name, t, int(s))] = at.sel({SCALE_DIM: s}, drop=True)
        ds = ds.drop_vars(name)
    extra = [v for v in ds.data_vars if THRESHOLD_DIM in ds[v].dims]
    coords = (THRESHOLD_DIM, SCALE_DIM, CATEGORY_DIM, PART_DIM)
    return ds.drop_vars(extra).drop_vars(coords, errors="ignore")
