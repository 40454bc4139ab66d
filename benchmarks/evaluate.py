"""Scoring speed and memory of `minconv evaluate`.

A synthetic truth (daily, 32x64 lat/lon, variables z and t) and a forecast store in the rollout's
layout (one init time per chunk, leads 1..10 days) are written to a temporary directory. Each case
runs in a fresh child process, which reports the wall time of `evaluate` (all five metrics, both
references, skill) and its peak resident memory above the baseline after imports (VmHWM):

1. a year of daily init times, scored in memory (the default below 128 MB);
2. the same store forced through the dask path (blocks of init times, reduced chunk-wise);
3. `--big-years` years of init times through the dask path: peak memory must not grow with the
   store (bounded memory for a store larger than memory).

    python benchmarks/evaluate.py                # 1-year and 3-year stores
    python benchmarks/evaluate.py --big-years 10
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr
from rich.console import Console
from rich.table import Table

RESULT = Path(__file__).parent / "results" / "evaluate.json"
LEADS = 10
GRID = (32, 64)
VARIABLES = ("z", "t")


def _vmhwm_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def make_data(root: Path, years: int) -> tuple[Path, Path]:
    """A truth with one year of climatology before `years` years of daily init times, and a forecast."""
    n_init = 365 * years
    times = pd.date_range("2000-01-01", periods=366 + n_init + LEADS, freq="D")
    lat = np.linspace(87.19, -87.19, GRID[0])
    lon = np.arange(GRID[1]) * 360.0 / GRID[1]
    rng = np.random.default_rng(0)
    t = np.arange(len(times))[:, None, None]
    la, lo = np.deg2rad(lat)[None, :, None], np.deg2rad(lon)[None, None, :]
    coords = {
        "time": times,
        "latitude": ("latitude", lat, {"units": "degrees_north", "standard_name": "latitude"}),
        "longitude": ("longitude", lon, {"units": "degrees_east", "standard_name": "longitude"}),
    }
    truth, fc = {}, {}
    init = np.arange(366, 366 + n_init)
    lead_idx = np.arange(1, LEADS + 1)
    for k, v in enumerate(VARIABLES):
        seasonal = np.cos(2 * np.pi * t / 365.25) * np.cos(la)
        wave = np.sin(2 * lo - 0.3 * t + k) * np.cos(la)
        field = (seasonal + wave + 0.1 * rng.standard_normal((len(times), *GRID))).astype(
            np.float32
        )
        truth[v] = (("time", "latitude", "longitude"), field, {"units": "1"})
        frames = field[init[:, None] + lead_idx[None, :]]
        noise = 0.05 * lead_idx[None, :, None, None] * rng.standard_normal(frames.shape)
        fc[v] = (
            ("time", "prediction_timedelta", "latitude", "longitude"),
            (frames + noise).astype(np.float32),
            {"units": "1"},
        )
    truth_path, fc_path = root / f"truth_{years}y.nc", root / f"fc_{years}y.zarr"
    xr.Dataset(truth, coords=coords).to_netcdf(truth_path)
    fc_coords = {
        "time": times[init],
        "prediction_timedelta": lead_idx * np.timedelta64(1, "D"),
        "latitude": coords["latitude"],
        "longitude": coords["longitude"],
    }
    ds = xr.Dataset(fc, coords=fc_coords).chunk({"time": 1})
    ds.to_zarr(fc_path, zarr_format=2, consolidated=True)
    return truth_path, fc_path


def child(fc: str, truth: str, lazy: bool) -> None:
    """Run one scoring in this (fresh) process and print its time and peak memory as JSON."""
    from minconv_cli.evaluate import evaluate

    base = _vmhwm_mb()
    start = time.perf_counter()
    scores = evaluate(fc, truth, load_below=0 if lazy else 2**62)
    seconds = time.perf_counter() - start
    print(
        json.dumps(
            {"seconds": seconds, "peak_mb": _vmhwm_mb() - base, "records": len(scores.records)}
        )
    )


def run_case(fc: Path, truth: Path, lazy: bool) -> dict:
    cmd = [sys.executable, __file__, "--child", str(fc), str(truth), *(["--lazy"] * lazy)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--big-years", type=int, default=3)
    parser.add_argument("--child", nargs=2, metavar=("FORECAST", "TRUTH"))
    parser.add_argument("--lazy", action="store_true")
    args = parser.parse_args()
    if args.child:
        child(*args.child, args.lazy)
        return
    console = Console()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for years, modes in ((1, (False, True)), (args.big_years, (True,))):
            truth, fc = make_data(Path(tmp), years)
            store_mb = sum(f.stat().st_size for f in fc.rglob("*") if f.is_file()) / 2**20
            data_mb = 365 * years * LEADS * GRID[0] * GRID[1] * 4 * len(VARIABLES) / 2**20
            for lazy in modes:
                result = run_case(fc, truth, lazy)
                rows.append(
                    {
                        "init_times": 365 * years,
                        "leads": LEADS,
                        "grid": list(GRID),
                        "variables": len(VARIABLES),
                        "mode": "dask blocks" if lazy else "in memory",
                        "forecast_mb": round(data_mb, 1),
                        "store_mb_on_disk": round(store_mb, 1),
                        **result,
                    }
                )
    table = Table(title="minconv evaluate: 5 metrics, persistence + climatology, skill")
    for col in ("init times x leads", "mode", "forecast MB", "seconds", "peak MB (above imports)"):
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row(
            f"{r['init_times']} x {r['leads']}",
            r["mode"],
            f"{r['forecast_mb']:.0f}",
            f"{r['seconds']:.2f}",
            f"{r['peak_mb']:.0f}",
        )
    console.print(table)
    RESULT.parent.mkdir(parents=True, exist_ok=True)
    RESULT.write_text(
        json.dumps(
            {
                "benchmark": "evaluate",
                "machine": {"python": platform.python_version(), "cpu": platform.processor()},
                "note": "one run per case on a shared 2-core machine",
                "cases": rows,
            },
            indent=2,
        )
        + "\n"
    )
    console.print(f"wrote {RESULT}")


if __name__ == "__main__":
    main()
