"""Small synthetic datasets with real structure, shared by the tests (written to tmp_path by each test).

- `latlon_dataset`: ERA5/WeatherBench-like fields on a lat/lon grid: waves travelling eastwards at a
  fixed speed, so persistence is beatable and a model can learn the dynamics from few steps.
- `trajectory_dataset`: simulation-like fields with a trajectory dim, numeric time, a doubly periodic
  grid and a `split` coordinate, shaped like the bundled Navier-Stokes sample.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import xarray as xr

UNITS = {"z": "m**2 s**-2", "t": "K", "msl": "Pa", "t2m": "K", "vorticity": "s**-1"}
OFFSETS = {"z": 54000.0, "t": 275.0, "msl": 101325.0, "t2m": 280.0}
SCALES = {"z": 800.0, "t": 6.0, "msl": 900.0, "t2m": 4.0}


def latlon_dataset(
    n_time: int = 40,
    n_lat: int = 8,
    n_lon: int = 16,
    variables: Sequence[str] = ("z", "t"),
    start: str = "2000-01-01",
    freq: str = "D",
    lat_descending: bool = True,
    global_lon: bool = False,
    levels: Sequence[int] | None = None,
    nan_mask: bool = False,
    seed: int = 0,
) -> xr.Dataset:
    """Eastward-travelling waves plus a little noise, in physical units, with CF attributes."""
    rng = np.random.default_rng(seed)
    time = pd.date_range(start, periods=n_time, freq=freq)
    lat = np.linspace(30.0, 55.0, n_lat)
    if lat_descending:
        lat = lat[::-1].copy()
    lon = np.arange(n_lon) * (360.0 / n_lon) if global_lon else np.linspace(-15.0, 15.0, n_lon)
    t = np.arange(n_time)[:, None, None]
    la = np.deg2rad(lat)[None, :, None]
    lo = np.arange(n_lon)[None, None, :] / n_lon
    coords = {
        "time": ("time", time, {"standard_name": "time", "axis": "T"}),
        "latitude": (
            "latitude",
            lat,
            {"units": "degrees_north", "standard_name": "latitude", "axis": "Y"},
        ),
        "longitude": (
            "longitude",
            lon,
            {"units": "degrees_east", "standard_name": "longitude", "axis": "X"},
        ),
    }
    dims: tuple[str, ...] = ("time", "latitude", "longitude")
    if levels is not None:
        coords["level"] = (
            "level",
            np.asarray(levels),
            {"units": "hPa", "long_name": "pressure level", "axis": "Z"},
        )
        dims = ("time", "level", "latitude", "longitude")
    data_vars = {}
    for k, name in enumerate(variables):
        wave = np.sin(2 * np.pi * (2 * lo - 0.1 * t) + k) * np.cos(la) + 0.3 * np.cos(
            2 * np.pi * (lo + 0.05 * t)
        )
        field = wave + 0.05 * rng.standard_normal((n_time, n_lat, n_lon))
        if levels is not None:
            field = np.stack([field * (1 + 0.1 * j) for j in range(len(levels))], axis=1)
        values = (OFFSETS.get(name, 0.0) + SCALES.get(name, 1.0) * field).astype(np.float32)
        if nan_mask:
            values[..., : n_lat // 3, : n_lon // 4] = np.nan  # a "land" corner, constant in time
        attrs = {"units": UNITS.get(name, "1"), "long_name": f"synthetic {name}"}
        data_vars[name] = (dims, values, attrs)
    return xr.Dataset(
        data_vars, coords=coords, attrs={"title": "minconv synthetic lat/lon test data"}
    )


def trajectory_dataset(
    n_traj: int = 6,
    n_time: int = 20,
    n: int = 8,
    splits: Sequence[str] | None = None,
    seed: int = 0,
) -> xr.Dataset:
    """Vorticity-like doubly periodic fields (trajectory, time, y, x) with numeric time and a split coord."""
    rng = np.random.default_rng(seed)
    x = np.arange(n) / n
    phase = rng.uniform(0, 2 * np.pi, size=(n_traj, 1, 1, 1))
    amp = rng.uniform(0.5, 1.5, size=(n_traj, 1, 1, 1))
    tt = np.arange(n_time)[None, :, None, None]
    xx = x[None, None, None, :]
    yy = x[None, None, :, None]
    w = amp * np.sin(2 * np.pi * (xx + yy) - 0.3 * tt + phase) * np.exp(-0.02 * tt)
    w = (w + 0.01 * rng.standard_normal(w.shape)).astype(np.float32)
    if splits is None:
        splits = ["train"] * (n_traj - 2) + ["val", "test"]
    return xr.Dataset(
        {
            "vorticity": (
                ("trajectory", "time", "y", "x"),
                w,
                {"units": "s**-1", "long_name": "vorticity"},
            )
        },
        coords={
            "trajectory": ("trajectory", np.arange(n_traj)),
            "time": (
                "time",
                np.arange(1, n_time + 1, dtype=np.float64),
                {"units": "1", "long_name": "simulation time"},
            ),
            "y": ("y", x, {"units": "1", "long_name": "y"}),
            "x": ("x", x, {"units": "1", "long_name": "x"}),
            "split": ("trajectory", np.asarray(list(splits), dtype=str)),
        },
        attrs={"title": "minconv synthetic trajectory test data", "periodic_dims": "y x"},
    )


def radar_dataset(n_time: int = 12, n: int = 512, blobs: int = 12, seed: int = 0) -> xr.Dataset:
    """Radar-like precipitation (mm/h, >= 0) on an n x n x/y grid in km, every 10 minutes: rain
    cells of a few km to tens of km drifting with a common wind, like a composite's field."""
    rng = np.random.default_rng(seed)
    km = np.arange(n, dtype=np.float32)
    time = pd.date_range("2024-06-01T12:00", periods=n_time, freq="10min")
    centre = rng.uniform(0, n, size=(blobs, 2)).astype(np.float32)
    size = rng.uniform(n / 40, n / 8, size=blobs).astype(np.float32)
    peak = rng.uniform(1.0, 20.0, size=blobs).astype(np.float32)
    wind = np.float32(n / 100) * np.array([1.0, 0.5], dtype=np.float32)  # cells per step
    rain = np.zeros((n_time, n, n), dtype=np.float32)
    for t in range(n_time):
        for (cy, cx), s, p in zip(centre + t * wind, size, peak, strict=True):
            dy = (km - cy + n / 2) % n - n / 2  # periodic distances: cells drift out and back in
            dx = (km - cx + n / 2) % n - n / 2
            gy, gx = np.exp(-(dy**2) / (2 * s * s)), np.exp(-(dx**2) / (2 * s * s))
            rain[t] += p * gy[:, None] * gx[None, :]
    rain = np.maximum(rain - 0.5, 0.0)  # dry where the cells are weak
    return xr.Dataset(
        {"precip": (("time", "y", "x"), rain, {"units": "mm h-1", "long_name": "rain rate"})},
        coords={
            "time": ("time", time, {"standard_name": "time", "axis": "T"}),
            "y": ("y", km, {"units": "km", "axis": "Y", "long_name": "y"}),
            "x": ("x", km, {"units": "km", "axis": "X", "long_name": "x"}),
        },
        attrs={"title": "minconv synthetic radar-like test data"},
    )


def month_stamps(n_months: int, start: str, calendar: str, stamp: str) -> np.ndarray:
    """Monthly time stamps: at each month's start, end (last day 00:00) or midpoint (CMIP style).

    `calendar="standard"` gives datetime64 (pandas); any other CF calendar gives cftime objects.
    """
    use_cftime = calendar != "standard"
    starts = xr.date_range(
        start, periods=n_months + 1, freq="MS", calendar=calendar, use_cftime=use_cftime
    )
    starts = np.asarray(starts)
    if stamp == "start":
        return starts[:-1]
    if stamp == "end":
        if not use_cftime:
            return starts[1:] - np.timedelta64(1, "D")
        return np.asarray([b - pd.Timedelta(1, "D").to_pytimedelta() for b in starts[1:]])
    if not use_cftime:
        return starts[:-1] + (starts[1:] - starts[:-1]) / 2
    return np.asarray([a + (b - a) / 2 for a, b in zip(starts[:-1], starts[1:], strict=True)])


def monthly_dataset(
    n_months: int = 120,
    n_lat: int = 8,
    n_lon: int = 16,
    start: str = "1970-01-01",
    calendar: str = "standard",
    stamp: str = "start",
    seed: int = 0,
) -> xr.Dataset:
    """Monthly-mean SST-like fields on a lat/lon grid: a seasonal cycle plus a slow eastward wave,
    NaN over a "land" block; month-start (or end / mid-month) stamps in the given calendar."""
    rng = np.random.default_rng(seed)
    time = month_stamps(n_months, start, calendar, stamp)
    lat = np.linspace(-20.0, 20.0, n_lat)
    lon = np.linspace(140.0, 260.0, n_lon)
    m = np.arange(n_months)[:, None, None]
    la = np.deg2rad(lat)[None, :, None]
    lo = np.arange(n_lon)[None, None, :] / n_lon
    season = 2.0 * np.sin(2 * np.pi * (m % 12) / 12) * np.sin(la)
    wave = np.sin(2 * np.pi * (lo - m / 18.0))
    values = 300.0 + season + wave + 0.05 * rng.standard_normal((n_months, n_lat, n_lon))
    values = values.astype(np.float32)
    values[:, : n_lat // 4, : n_lon // 4] = np.nan  # land
    return xr.Dataset(
        {
            "sst": (
                ("time", "lat", "lon"),
                values,
                {"units": "K", "long_name": "sea surface temperature"},
            )
        },
        coords={
            "time": ("time", time, {"standard_name": "time", "axis": "T"}),
            "lat": ("lat", lat, {"units": "degrees_north", "standard_name": "latitude"}),
            "lon": ("lon", lon, {"units": "degrees_east", "standard_name": "longitude"}),
        },
        attrs={"title": "minconv synthetic monthly SST test data"},
    )


def hold_in_process(code: str, *args: str):
    """A real Python process running `code` with `args` (it prints 'held' once it holds a lock,
    then sleeps) until the caller kills it."""
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-c", code, *args], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc
