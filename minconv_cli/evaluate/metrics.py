"""Score functions over xarray objects (WeatherBench 2 conventions): pure, lazy-friendly (dask), NaN-aware.

Every function compares a forecast with the truth over `space` dims (e.g. latitude, longitude) and
`cases` dims (init times and samples), keeping every other dim (lead, level). Cells where either side
is NaN are left out and the weights renormalised over the cells that remain. A result of NaN means
"undefined" (no valid cell, or a zero denominator); callers report it as such. Ensemble scores take
the members (a `number` dim); `*_of` functions derive a score from computed reductions. Which
function is which metric: `metric_table`.
"""

from __future__ import annotations

import warnings
from collections.abc import Hashable, Sequence

import numpy as np
import xarray as xr

from minconv_cli.rollout.store import LEAD_DIM, MEMBER_DIM

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


RANK_HISTOGRAM = "rank_histogram"
RANK_DIM = "rank"


def _members_joint(
    forecast: xr.DataArray, truth: xr.DataArray
) -> tuple[xr.DataArray, xr.DataArray, xr.DataArray]:
    """Members and truth with NaN wherever any member or the truth is NaN, and that mask."""
    valid = forecast.notnull().all(MEMBER_DIM) & truth.notnull()
    return forecast.where(valid), truth.where(valid), valid


def spread_mse(
    forecast: xr.DataArray,
    truth: xr.DataArray,
    space: Dims,
    cases: Dims,
    weights: xr.DataArray | None = None,
) -> xr.DataArray | None:
    """Mean unbiased (ddof=1) variance of the members over cases and space; None for one member."""
    if forecast.sizes[MEMBER_DIM] < 2:
        return None
    fc, _, _ = _members_joint(forecast, truth)
    return weighted_mean(fc.var(MEMBER_DIM, ddof=1), [*cases, *space], weights)


def _crps(
    method: str,
    forecast: xr.DataArray,
    truth: xr.DataArray,
    space: Dims,
    cases: Dims,
    weights: xr.DataArray | None,
) -> xr.DataArray:
    """The ensemble CRPS per cell from `scores` (`ecdf` or `fair`), then averaged like the MSE."""
    from scores.probability import crps_for_ensemble

    fc, o, valid = _members_joint(forecast, truth)
    per_cell = crps_for_ensemble(fc, o, MEMBER_DIM, method=method, preserve_dims="all")
    return weighted_mean(per_cell.where(valid), [*cases, *space], weights)


def crps(
    forecast: xr.DataArray,
    truth: xr.DataArray,
    space: Dims,
    cases: Dims,
    weights: xr.DataArray | None = None,
) -> xr.DataArray:
    """CRPS of the members' empirical distribution; for one member, its absolute error."""
    if forecast.sizes[MEMBER_DIM] > 1:
        return _crps("ecdf", forecast, truth, space, cases, weights)
    fc, o, _ = _members_joint(forecast, truth)
    return weighted_mean(abs(fc.squeeze(MEMBER_DIM, drop=True) - o), [*cases, *space], weights)


def crps_fair(
    forecast: xr.DataArray,
    truth: xr.DataArray,
    space: Dims,
    cases: Dims,
    weights: xr.DataArray | None = None,
) -> xr.DataArray | None:
    """The fair CRPS (Ferro 2014), unbiased for the members' parent distribution; None for one."""
    if forecast.sizes[MEMBER_DIM] < 2:
        return None
    return _crps("fair", forecast, truth, space, cases, weights)


def rank_histogram(
    forecast: xr.DataArray,
    truth: xr.DataArray,
    space: Dims,
    cases: Dims,
    weights: xr.DataArray | None = None,
) -> xr.DataArray:
    """Relative frequency of the truth's rank among the members, by lead (and level), from `scores`."""
    from scores.probability import rank_histogram as frequencies

    fc, o, _ = _members_joint(forecast, truth)
    scored = {*cases, *space, MEMBER_DIM}
    keep = [LEAD_DIM, *(d for d in fc.dims if d not in scored and d != LEAD_DIM)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "NaN in fcst": unscored cases, left out
        hist = frequencies(
            fc, o, MEMBER_DIM, preserve_dims=[d for d in keep if d in fc.dims], weights=weights
        )
    return hist


# Pooling weights: what each mean above divides by, so that means of batches of cases combine
# into the mean of all of them (sum of value x weight over the sum of weights; `evaluate/batches`).


def _weight_of(valid: xr.DataArray, dims: Dims, weights: xr.DataArray | None) -> xr.DataArray:
    """The sum of `weights` (1 without) over the `valid` cells of `dims`."""
    if weights is None:
        return valid.sum(list(dims), dtype=np.float64)
    return (valid * weights).sum(list(dims))


def cell_weight(
    forecast: xr.DataArray,
    truth: xr.DataArray,
    space: Dims,
    cases: Dims,
    weights: xr.DataArray | None = None,
) -> xr.DataArray:
    """The weight of the cells scored by `mse`, `mae` and `bias`: both fields have a value."""
    return _weight_of(forecast.notnull() & truth.notnull(), [*cases, *space], weights)


def member_cell_weight(
    forecast: xr.DataArray,
    truth: xr.DataArray,
    space: Dims,
    cases: Dims,
    weights: xr.DataArray | None = None,
) -> xr.DataArray:
    """The weight of the cells an ensemble score uses: every member and the truth have a value."""
    return _weight_of(_members_joint(forecast, truth)[2], [*cases, *space], weights)


def acc_cases(
    forecast: xr.DataArray,
    truth: xr.DataArray,
    climatology: xr.DataArray,
    space: Dims,
    cases: Dims,
    weights: xr.DataArray | None = None,
) -> xr.DataArray:
    """The number of cases whose ACC is defined (what `acc` averages over)."""
    per_case = acc_per_case(forecast, truth, climatology, space, weights)
    return per_case.notnull().sum(list(cases), dtype=np.float64)


def rel_l2_cases(
    forecast: xr.DataArray,
    truth: xr.DataArray,
    space: Dims,
    cases: Dims,
    weights: xr.DataArray | None = None,
) -> xr.DataArray:
    """The number of cases whose relative L2 error is defined (what `rel_l2` averages over)."""
    per_case = rel_l2_per_case(forecast, truth, space, weights)
    return per_case.notnull().sum(list(cases), dtype=np.float64)


# Derived scores: from the computed reductions of one forecast (and its member count).


def rmse_of(reductions: xr.Dataset, members: int) -> xr.DataArray:
    """Root of the MSE averaged over cases and space (square root last, as in WeatherBench 2)."""
    return np.sqrt(reductions["mse"])


def skill_of(reductions: xr.Dataset, reference: xr.Dataset) -> xr.DataArray:
    """Skill against a reference: 1 - MSE / MSE_ref (`skill_score`)."""
    return skill_score(reductions["mse"], reference["mse"])


def spread_of(reductions: xr.Dataset, members: int) -> xr.DataArray:
    """Ensemble spread: the root of the mean unbiased variance of the members."""
    return np.sqrt(reductions["spread_mse"])


def spread_skill_of(reductions: xr.Dataset, members: int) -> xr.DataArray:
    """Spread over the ensemble-mean RMSE, times sqrt((n+1)/n) so a reliable ensemble scores 1.

    E[MSE of the mean] = (n+1)/n E[unbiased variance] for n members (Fortin et al. 2014).
    """
    factor = np.sqrt((members + 1) / members)
    mse_ = reductions["mse"]
    return factor * reductions["spread"] / np.sqrt(mse_.where(mse_ > 0))
