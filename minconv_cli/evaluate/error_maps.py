"""Where the forecast goes wrong: RMSE and bias per grid cell and lead, over every init time.

The sums are lazy (dask) and reduced in the same pass as the scores; `error_maps` turns them into
the maps written to `error_maps.nc`. A cell's score pools its scored cases (init times and
samples); an ensemble is scored by its mean, as the deterministic scores are.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence

import numpy as np
import xarray as xr

from minconv_cli.evaluate.labels import format_lead
from minconv_cli.rollout.store import LEAD_DIM, MEMBER_DIM

ERROR_MAPS_FILE = "error_maps.nc"
ERROR_MAPS_PNG = "error_maps.png"
KINDS = ("rmse", "bias")


def error_sums(
    forecast: xr.DataArray, truth: xr.DataArray, cases: Sequence[Hashable]
) -> xr.Dataset:
    """Per cell (and lead, level): the count of scored cases, the sum of errors and of squares."""
    fc = forecast.mean(MEMBER_DIM, skipna=False) if MEMBER_DIM in forecast.dims else forecast
    diff = (fc - truth).astype(np.float64)
    over = [d for d in cases if d in diff.dims]
    return xr.Dataset(
        {
            "count": diff.notnull().sum(over),
            "sum": diff.sum(over, skipna=True),
            "sum_sq": (diff**2).sum(over, skipna=True),
        }
    )


def lazy_error_sums(
    forecasts: dict[tuple[str, str], xr.DataArray],
    truth: dict[str, xr.DataArray],
    cases: Sequence[Hashable],
) -> dict[tuple[str, str], xr.Dataset]:
    """`error_sums` of every (forecast, variable), lazy: computed in the scores' dask pass."""
    return {key: error_sums(fc, truth[key[1]], cases) for key, fc in forecasts.items()}


def error_maps(sums: xr.Dataset) -> xr.Dataset:
    """RMSE and bias from computed `error_sums`; NaN where no case was scored."""
    n = sums["count"].where(sums["count"] > 0)
    return xr.Dataset(
        {
            "rmse": np.sqrt(sums["sum_sq"] / n),
            "bias": sums["sum"] / n,
            "count": sums["count"].astype(np.int64),
        }
    )


def error_map_dataset(
    sums: dict[tuple[str, str], xr.Dataset],
    units: dict[str, str],
    lead_unit: str | None,
    space: tuple[str, str],
) -> xr.Dataset:
    """One Dataset of every forecast's maps from computed `error_sums`: `VAR_rmse`, `VAR_bias`, `VAR_count` over (forecast,
    lead, [level], y, x), units from the variables, leads labelled as in the records."""
    maps = {key: error_maps(ds) for key, ds in sums.items()}
    names = list(dict.fromkeys(name for name, _ in maps))
    out = xr.Dataset()
    for var in dict.fromkeys(v for _, v in maps):
        parts = [maps[(n, var)] for n in names if (n, var) in maps]
        here = [n for n in names if (n, var) in maps]
        joined = xr.concat(parts, dim=xr.DataArray(here, dims="forecast", name="forecast"))
        for kind in (*KINDS, "count"):
            da = joined[kind].transpose("forecast", LEAD_DIM, ..., *space)
            long = {"rmse": "root mean squared error", "bias": "mean error (forecast - truth)"}
            da.attrs = {
                "long_name": f"{long.get(kind, 'scored cases')} of {var} per grid cell",
                **({"units": units.get(var, "")} if kind != "count" else {}),
            }
            out[f"{var}_{kind}"] = da
    leads = out[LEAD_DIM].values
    out = out.assign_coords(lead_label=(LEAD_DIM, [format_lead(x, lead_unit) for x in leads]))
    out.attrs = {
        "title": "minconv error maps: RMSE and bias per grid cell over every scored init time",
        "y_dim": space[0],
        "x_dim": space[1],
    }
    return out
