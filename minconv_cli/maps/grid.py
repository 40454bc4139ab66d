"""Axes of a map: lat/lon in degrees (longitudes wrapped to -180..180, north up whatever the
file's order), projected x/y in km, anything else as grid indices."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

LAT_NAMES = ("lat", "latitude", "rlat")
LON_NAMES = ("lon", "longitude", "rlon")


@dataclass
class MapGrid:
    """How to lay a (y, x) array on the axes: the reorder and the extent for `imshow`."""

    y_order: np.ndarray  # positions that sort y ascending (origin lower: north up)
    x_order: np.ndarray
    extent: tuple[float, float, float, float]
    x_label: str
    y_label: str
    geographic: bool

    def arrange(self, frame: np.ndarray) -> np.ndarray:
        """`frame` (..., y, x) with y and x ascending, as drawn."""
        return frame[..., self.y_order, :][..., self.x_order]


def _is(name: str, attrs: dict, names: tuple[str, ...], unit: str) -> bool:
    return name.lower() in names or str(attrs.get("units", "")).startswith(unit)


def _edges(values: np.ndarray) -> tuple[float, float]:
    """Outer cell edges of ascending centres."""
    if values.size < 2:
        return float(values[0]) - 0.5, float(values[0]) + 0.5
    half = 0.5 * (values[1] - values[0]), 0.5 * (values[-1] - values[-2])
    return float(values[0] - half[0]), float(values[-1] + half[1])


def map_grid(y: np.ndarray, x: np.ndarray, y_name: str, x_name: str, ya: dict, xa: dict) -> MapGrid:
    """The `MapGrid` of a field with coordinates `y`, `x` (names and attributes decide the kind)."""
    y = np.asarray(y, dtype=np.float64) if y.dtype.kind in "fiu" else np.arange(y.size, dtype=float)
    x = np.asarray(x, dtype=np.float64) if x.dtype.kind in "fiu" else np.arange(x.size, dtype=float)
    geographic = _is(y_name, ya, LAT_NAMES, "degrees_n") and _is(x_name, xa, LON_NAMES, "degrees_e")
    if geographic:
        x = (x + 180.0) % 360.0 - 180.0
        labels = ("longitude (°E)", "latitude (°N)")
    elif str(xa.get("units", "")) == "m" and str(ya.get("units", "")) == "m":
        x, y = x / 1000.0, y / 1000.0
        labels = (f"{x_name} (km)", f"{y_name} (km)")
    else:
        labels = (
            f"{x_name}" + (f" ({xa['units']})" if "units" in xa else ""),
            f"{y_name}" + (f" ({ya['units']})" if "units" in ya else ""),
        )
    yo, xo = np.argsort(y, kind="stable"), np.argsort(x, kind="stable")
    x0, x1 = _edges(x[xo])
    y0, y1 = _edges(y[yo])
    return MapGrid(yo, xo, (x0, x1, y0, y1), labels[0], labels[1], geographic)


def add_coastlines(ax, grid: MapGrid) -> bool:
    """Coastlines from cartopy's Natural Earth files if they are already on disk (never fetched)."""
    if not grid.geographic:
        return False
    try:
        import cartopy.io.shapereader as shpreader
        from cartopy import config
    except ImportError:
        return False
    from pathlib import Path

    found = list(Path(config["data_dir"]).glob("shapefiles/natural_earth/physical/*coastline.shp"))
    if not found:
        return False
    for geom in shpreader.Reader(str(found[0])).geometries():
        for line in getattr(geom, "geoms", [geom]):
            xs, ys = line.xy
            ax.plot(xs, ys, color="k", linewidth=0.5)
    ax.set_xlim(grid.extent[:2])
    ax.set_ylim(grid.extent[2:])
    return True
