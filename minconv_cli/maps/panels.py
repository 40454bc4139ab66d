"""The map figure: one row per lead, columns truth / forecast / difference (ensembles: mean,
spread and a few members), shared colour scales, NaN in its own colour; spaghetti contours."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from minconv_cli.maps.grid import MapGrid, add_coastlines, map_grid
from minconv_cli.maps.select import Selection

NAN_COLOR = "#b0b0b0"  # grey: in none of the colormaps below
FIELD_CMAP, DIFF_CMAP, SPREAD_CMAP = "viridis", "RdBu_r", "magma"
SHOWN_MEMBERS = 3
PANEL_INCHES = 2.6


@dataclass
class Column:
    """One column of panels: its title, kind (field / diff / spread) and (lead, y, x) values."""

    title: str
    kind: str
    values: np.ndarray


def panel_arrays(sel: Selection) -> list[Column]:
    """The columns to draw, in drawing order (these arrays are what matplotlib is handed)."""
    cols: list[Column] = []
    if sel.truth is not None:
        cols.append(Column("truth", "field", sel.truth))
    if sel.members is None:
        cols.append(Column("forecast", "field", sel.forecast))
        best = sel.forecast
    else:
        with warnings.catch_warnings():  # all-NaN cells (land) stay NaN
            warnings.simplefilter("ignore", RuntimeWarning)
            best = np.nanmean(sel.forecast, axis=1) if sel.members > 1 else sel.forecast[:, 0]
            spread = np.nanstd(sel.forecast, axis=1, ddof=1) if sel.members > 1 else 0 * best
        cols.append(Column("ensemble mean", "field", best))
    if sel.truth is not None:
        cols.append(
            Column(f"{'mean' if sel.members else 'forecast'} − truth", "diff", best - sel.truth)
        )
    if sel.members is not None:
        cols.append(Column("spread (std)", "spread", spread))
        for m in range(min(SHOWN_MEMBERS, sel.members)):
            cols.append(Column(f"member {m}", "field", sel.forecast[:, m]))
    return cols


def _range(arrays: list[np.ndarray], symmetric: bool) -> tuple[float, float]:
    finite = [a[np.isfinite(a)] for a in arrays]
    finite = [a for a in finite if a.size]
    if not finite:
        return (-1.0, 1.0)
    lo, hi = min(float(a.min()) for a in finite), max(float(a.max()) for a in finite)
    if symmetric:
        m = max(abs(lo), abs(hi)) or 1.0
        return -m, m
    return (lo, hi) if hi > lo else (lo - 0.5, hi + 0.5)


def scales(cols: list[Column]) -> dict[str, tuple[str, float, float]]:
    """Per kind: colormap name and shared (vmin, vmax); differences symmetric about zero."""
    out = {}
    for kind, cmap in (("field", FIELD_CMAP), ("diff", DIFF_CMAP), ("spread", SPREAD_CMAP)):
        arrays = [c.values for c in cols if c.kind == kind]
        if arrays:
            lo, hi = _range(arrays, kind == "diff")
            out[kind] = (cmap, 0.0 if kind == "spread" else lo, hi)
    return out


def colormap(name: str):
    """`name` with NaN drawn in NAN_COLOR."""
    import matplotlib

    return matplotlib.colormaps[name].with_extremes(bad=NAN_COLOR)


def draw_field(ax, grid: MapGrid, values: np.ndarray, cmap: str, lo: float, hi: float):
    """One field on `ax` in the grid's true coordinates, cells as blocks, NaN in NAN_COLOR."""
    return ax.imshow(
        grid.arrange(values),
        origin="lower",
        extent=grid.extent,
        aspect="auto",
        cmap=colormap(cmap),
        vmin=lo,
        vmax=hi,
        interpolation="nearest",
    )


def grid_of(sel: Selection) -> MapGrid:
    st = sel.store
    return map_grid(sel.y, sel.x, st.y_dim, st.x_dim, sel.y_attrs, sel.x_attrs)


def figure(rows: int, cols: int, scale: float = 1.0):
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    size = (PANEL_INCHES * cols * scale + 0.8, PANEL_INCHES * rows * scale * 0.9 + 0.8)
    fig, axes = plt.subplots(rows, cols, figsize=size, squeeze=False, constrained_layout=True)
    return fig, axes


def _title(sel: Selection) -> str:
    what = (
        sel.variable
        + (f" [{sel.units}]" if sel.units else "")
        + (f", {sel.level}" if sel.level else "")
    )
    return f"{sel.store.name}: {what}, init {sel.init}"


def draw_panels(sel: Selection, out: Path, dpi: int = 100) -> dict:
    """Draw the lead x column grid of `sel` into the image file `out` (PNG)."""
    import matplotlib.pyplot as plt

    cols, grid = panel_arrays(sel), grid_of(sel)
    scale = scales(cols)
    fig, axes = figure(len(sel.leads), len(cols))
    images = {}
    for j, col in enumerate(cols):
        cmap, lo, hi = scale[col.kind]
        for i in range(len(sel.leads)):
            ax = axes[i, j]
            im = draw_field(ax, grid, col.values[i], cmap, lo, hi)
            add_coastlines(ax, grid)
            ax.set_title(f"{col.title}\nlead {sel.leads[i]}, valid {sel.valid[i]}", fontsize=7)
            ax.tick_params(labelsize=6)
            if i == len(sel.leads) - 1:
                ax.set_xlabel(grid.x_label, fontsize=7)
            if j == 0:
                ax.set_ylabel(grid.y_label, fontsize=7)
            images[col.kind] = im
        fig.colorbar(images[col.kind], ax=axes[:, j], location="bottom", shrink=0.8).set_label(
            sel.units if col.kind != "spread" or sel.units else "", fontsize=7
        )
    fig.suptitle(_title(sel), fontsize=9)
    fig.savefig(out, dpi=dpi, format="png")
    plt.close(fig)
    return {"rows": len(sel.leads), "columns": [c.title for c in cols]}


def draw_spaghetti(sel: Selection, value: float, out: Path, dpi: int = 100) -> dict:
    """One panel per lead: each member's contour at `value` (truth in black)."""
    import matplotlib.pyplot as plt

    grid = grid_of(sel)
    frames = sel.forecast if sel.members else sel.forecast[:, None]
    xs = np.linspace(grid.extent[0], grid.extent[1], len(grid.x_order) + 1)
    ys = np.linspace(grid.extent[2], grid.extent[3], len(grid.y_order) + 1)
    xc, yc = 0.5 * (xs[1:] + xs[:-1]), 0.5 * (ys[1:] + ys[:-1])
    fig, axes = figure(1, len(sel.leads))
    colors = plt.get_cmap("tab10")
    for i, ax in enumerate(axes[0]):
        for m in range(frames.shape[1]):
            f = grid.arrange(frames[i, m])
            if np.nanmin(f) < value < np.nanmax(f):
                ax.contour(xc, yc, f, levels=[value], colors=[colors(m % 10)], linewidths=0.8)
        if sel.truth is not None and np.nanmin(sel.truth[i]) < value < np.nanmax(sel.truth[i]):
            ax.contour(
                xc, yc, grid.arrange(sel.truth[i]), levels=[value], colors="k", linewidths=1.5
            )
        ax.set_xlim(grid.extent[:2])
        ax.set_ylim(grid.extent[2:])
        add_coastlines(ax, grid)
        ax.set_title(f"lead {sel.leads[i]}\nvalid {sel.valid[i]}", fontsize=7)
        ax.tick_params(labelsize=6)
    fig.suptitle(f"{_title(sel)}; contour {value:g} {sel.units}", fontsize=9)
    fig.savefig(out, dpi=dpi, format="png")
    plt.close(fig)
    return {"rows": 1, "columns": [f"lead {lead}" for lead in sel.leads], "contour": value}
