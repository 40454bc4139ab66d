"""Score functions over xarray objects (WeatherBench 2 conventions): pure, lazy-friendly (dask), NaN-aware.

Every function compares a forecast with the truth over `space` dims (e.g. latitude, longitude) and
`cases` dims (init times and samples), keeping every other dim (lead, level). Cells where either side
is NaN are left out and the weights renormalised over the cells that remain. A result of NaN means
"undefined" (no valid cell, or a zero denominator); callers report it as such.
"""

from __future__ import annotations

import warnings
from collections.abc import Hashable, Sequence

import numpy as np
import xarray as xr

from minconv_cli.rollout.store import MEMBER_DIM

Dims = Sequence[Hashable]

# An anomaly whose RMS is below this fraction of the climatology's RMS is zero up to float32 round-off.
ZERO_ANOMALY_RTOL = 1e-6


def area_weights(latitude: xr.DataArray) -> xr.DataArray:
    """cos(latitude) normalised to mean 1 over the latitudes given (WeatherBench 2 area weighting)."""
    w = np.cos(np.deg2rad(latitude.astype(np.float64))).clip(min=0.0)
    return (w / w.mean()).rename("area_weights")


def weighted_mean(x: xr.DataArray, dims: Dims, weights: xr.DataArray | None = None) -> xr.DataArray:
    """Mean over `dims` skipping NaN, weighted by `weights` (renormalised over the non-NaN cells)."""
    if weights is None:
        return x.mean(list(dims), skipna=True)
    return x.weighted(weights).mean(list(dims), skipna=True)


def _joint(forecast: xr.DataArray, truth: xr.DataArray) -> tuple[xr.DataArray, xr.DataArray]:
    """Both arrays with NaN wherever either is NaN, so every term sees the same cells."""
    valid = forecast.notnull() & truth.notnull()
    return forecast.where(valid), truth.where(valid)


def mse(
    forecast: xr.DataArray,
    truth: xr.DataArray,
    space: Dims,
    cases: Dims,
    weights: xr.DataArray | None = None,
) -> xr.DataArray:
    """Mean squared error over cases and space (pooled: the WB2 mean of spatial means for a fixed mask)."""
    return weighted_mean((forecast - truth) ** 2, [*cases, *space], weights)


def rmse(
    forecast: xr.DataArray,
    truth: xr.DataArray,
    space: Dims,
    cases: Dims,
    weights: xr.DataArray | None = None,
) -> xr.DataArray:
    """Root of the MSE averaged over cases and space (square root last, as in WeatherBench 2)."""
    return np.sqrt(mse(forecast, truth, space, cases, weights))


def mae(
    forecast: xr.DataArray,
    truth: xr.DataArray,
    space: Dims,
    cases: Dims,
    weights: xr.DataArray | None = None,
) -> xr.DataArray:
    """Mean absolute error over cases and space."""
    return weighted_mean(abs(forecast - truth), [*cases, *space], weights)


def bias(
    forecast: xr.DataArray,
    truth: xr.DataArray,
    space: Dims,
    cases: Dims,
    weights: xr.DataArray | None = None,
) -> xr.DataArray:
    """Mean error (forecast minus truth) over cases and space."""
    return weighted_mean(forecast - truth, [*cases, *space], weights)


def acc_per_case(
    forecast: xr.DataArray,
    truth: xr.DataArray,
    climatology: xr.DataArray,
    space: Dims,
    weights: xr.DataArray | None = None,
) -> xr.DataArray:
    """Anomaly correlation of each case over space: sum w f'o' / sqrt(sum w f'^2 sum w o'^2).

    f' = forecast - climatology, o' = truth - climatology. NaN where either anomaly is zero (its
    RMS below 1e-6 of the climatology's RMS: float32 round-off): the correlation is undefined there.
    """
    f, o = _joint(forecast, truth)
    fa, oa = f - climatology, o - climatology
    ff = weighted_mean(fa**2, space, weights)
    oo = weighted_mean(oa**2, space, weights)
    fo = weighted_mean(fa * oa, space, weights)
    # "zero" relative to the field's size, taken from the climatology (cheap: no case dims)
    scale = ZERO_ANOMALY_RTOL**2 * weighted_mean(climatology**2, space, weights)
    defined = (ff > scale) & (oo > scale)
    return (fo / np.sqrt(ff * oo)).where(defined)


def acc(
    forecast: xr.DataArray,
    truth: xr.DataArray,
    climatology: xr.DataArray,
    space: Dims,
    cases: Dims,
    weights: xr.DataArray | None = None,
) -> xr.DataArray:
    """ACC per case (init time, sample), then averaged over the cases where it is defined (WB2)."""
    return acc_per_case(forecast, truth, climatology, space, weights).mean(list(cases), skipna=True)


def rel_l2_per_case(
    forecast: xr.DataArray,
    truth: xr.DataArray,
    space: Dims,
    weights: xr.DataArray | None = None,
) -> xr.DataArray:
    """||forecast - truth|| / ||truth|| of each case over space (weighted L2 norms); NaN if ||truth|| = 0."""
    f, o = _joint(forecast, truth)
    num = weighted_mean((f - o) ** 2, space, weights)
    den = weighted_mean(o**2, space, weights)
    return np.sqrt(num / den.where(den > 0))


def rel_l2(
    forecast: xr.DataArray,
    truth: xr.DataArray,
    space: Dims,
    cases: Dims,
    weights: xr.DataArray | None = None,
) -> xr.DataArray:
    """Relative L2 error per case, then averaged over cases (the neural-operator convention)."""
    return rel_l2_per_case(forecast, truth, space, weights).mean(list(cases), skipna=True)


def skill_score(mse_forecast: xr.DataArray, mse_reference: xr.DataArray) -> xr.DataArray:
    """1 - MSE / MSE_ref: 1 is perfect, 0 no better than the reference; NaN where MSE_ref = 0."""
    return 1.0 - mse_forecast / mse_reference.where(mse_reference > 0)


ENSEMBLE_METRICS = ("spread", "spread_skill", "crps", "crps_fair")
RANK_HISTOGRAM = "rank_histogram"
RANK_DIM = "rank"


def ensemble_scores(
    fc: xr.DataArray,
    truth: xr.DataArray,
    space: Sequence[Hashable],
    cases: Sequence[Hashable],
    weights: xr.DataArray | None,
    keep: Sequence[Hashable],
) -> dict[str, xr.DataArray]:
    """Lazy reductions of an ensemble `fc` (with a `number` dim) against `truth` over cases and space.

    spread: sqrt of the mean unbiased (ddof=1) ensemble variance; `spread_mse` its square (so the
    spread/skill ratio can be formed with the ensemble-mean MSE); crps/crps_fair: the ensemble CRPS
    (empirical CDF and fair, Ferro 2014) per cell from `scores`, then averaged like the MSE;
    rank_histogram: relative frequency of the truth's rank among the members, by `keep` dims.
    """
    from scores.probability import crps_for_ensemble, rank_histogram

    n = fc.sizes[MEMBER_DIM]
    valid = fc.notnull().all(MEMBER_DIM) & truth.notnull()
    fc_v, truth_v = fc.where(valid), truth.where(valid)
    over = [*cases, *space]
    out: dict[str, xr.DataArray] = {}
    if n > 1:
        var = fc_v.var(MEMBER_DIM, ddof=1)
        out["spread_mse"] = weighted_mean(var, over, weights)
        for method, name in (("ecdf", "crps"), ("fair", "crps_fair")):
            per_cell = crps_for_ensemble(
                fc_v, truth_v, MEMBER_DIM, method=method, preserve_dims="all"
            )
            out[name] = weighted_mean(per_cell.where(valid), over, weights)
    else:  # one member: the CRPS is the absolute error, there is no spread
        out["crps"] = weighted_mean(
            abs(fc_v.squeeze(MEMBER_DIM, drop=True) - truth_v), over, weights
        )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "NaN in fcst": unscored cases, left out
        hist = rank_histogram(
            fc_v,
            truth_v,
            MEMBER_DIM,
            preserve_dims=[d for d in keep if d in fc.dims],
            weights=weights,
        )
    out[RANK_HISTOGRAM] = hist
    return out


def add_spread_skill(ds: xr.Dataset, members: int) -> xr.Dataset:
    """Spread and the spread/skill ratio from the reduced `spread_mse` and ensemble-mean `mse`.

    The ratio carries the (n+1)/n finite-ensemble factor (Fortin et al. 2014), so a reliable
    ensemble of any size scores 1: E[MSE of the mean] = (n+1)/n E[unbiased variance].
    """
    if "spread_mse" in ds:
        ds["spread"] = np.sqrt(ds["spread_mse"])
        factor = np.sqrt((members + 1) / members)
        ds["spread_skill"] = factor * ds["spread"] / np.sqrt(ds["mse"].where(ds["mse"] > 0))
    return ds
