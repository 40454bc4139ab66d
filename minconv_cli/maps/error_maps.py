"""The error-map picture: RMSE and bias per grid cell for a few leads, one forecast."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import xarray as xr

from minconv_cli.evaluate.error_maps import KINDS
from minconv_cli.maps.grid import add_coastlines, map_grid
from minconv_cli.maps.panels import DIFF_CMAP, draw_field, figure

RMSE_CMAP = "magma_r"
MAX_LEADS, MAX_VARIABLES = 4, 3


def shown_leads(n: int) -> list[int]:
    """Up to MAX_LEADS positions, evenly spaced, always the first and the last."""
    return sorted({round(i * (n - 1) / (MAX_LEADS - 1)) for i in range(MAX_LEADS)}) if n else []


def _frames(ds: xr.Dataset, name: str, forecast: str) -> np.ndarray:
    """(lead, y, x) of `name` for `forecast`, at the first level if it has levels."""
    da = ds[name].sel(forecast=forecast)
    extra = [
        d
        for d in da.dims
        if d not in ("prediction_timedelta", ds.attrs["y_dim"], ds.attrs["x_dim"])
    ]
    return da.isel({d: 0 for d in extra}).values


def draw_error_maps(ds: xr.Dataset, path: Path, forecast: str, dpi: int = 100) -> dict:
    """Rows of leads, columns RMSE and bias per variable (up to MAX_VARIABLES), into PNG `path`."""
    import matplotlib.pyplot as plt

    y_dim, x_dim = ds.attrs["y_dim"], ds.attrs["x_dim"]
    grid = map_grid(
        ds[y_dim].values, ds[x_dim].values, y_dim, x_dim, ds[y_dim].attrs, ds[x_dim].attrs
    )
    variables = [n.removesuffix("_rmse") for n in ds.data_vars if n.endswith("_rmse")][
        :MAX_VARIABLES
    ]
    rows = shown_leads(ds.sizes["prediction_timedelta"])
    fig, axes = figure(len(rows), 2 * len(variables))
    for k, var in enumerate(variables):
        for j, kind in enumerate(KINDS):
            frames = _frames(ds, f"{var}_{kind}", forecast)[rows]
            finite = frames[np.isfinite(frames)]
            top = float(np.abs(finite).max()) if finite.size else 1.0
            cmap, lo = (RMSE_CMAP, 0.0) if kind == "rmse" else (DIFF_CMAP, -(top or 1.0))
            col = 2 * k + j
            for i, lead in enumerate(rows):
                ax = axes[i, col]
                im = draw_field(ax, grid, frames[i], cmap, lo, top or 1.0)
                add_coastlines(ax, grid)
                ax.set_title(f"{var} {kind}, lead {ds['lead_label'].values[lead]}", fontsize=7)
                ax.tick_params(labelsize=6)
            units = ds[f"{var}_{kind}"].attrs.get("units", "")
            fig.colorbar(im, ax=axes[:, col], location="bottom", shrink=0.8).set_label(
                units, fontsize=7
            )
    fig.suptitle(f"{forecast}: error per grid cell over every scored init time", fontsize=9)
    fig.savefig(path, dpi=dpi, format="png")
    plt.close(fig)
    return {"rows": [str(ds["lead_label"].values[i]) for i in rows], "variables": variables}
