"""Benchmark `minconv plot`: 10 leads of a 512x512 field to PNG (target < 10 s) and a 40-frame
GIF of a 512x512 field (target < 30 s); prints a table, writes benchmarks/results/maps.json.

Run with `OMP_NUM_THREADS=1 python benchmarks/maps.py`."""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from factories import radar_dataset  # noqa: E402

from minconv_cli.data import open_fields  # noqa: E402
from minconv_cli.maps import animate, draw_panels, select  # noqa: E402
from minconv_cli.rollout.store import open_forecast  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "maps.json"


def _store(truth: xr.Dataset, path: Path, leads: int) -> None:
    """A forecast of the truth's first frame + lead (noisy), in WeatherBench 2 layout."""
    rng = np.random.default_rng(0)
    var = next(iter(truth.data_vars))
    frames = truth[var].values[1 : leads + 1][None].astype(np.float32)
    frames = frames + rng.normal(0, 0.1, frames.shape).astype(np.float32)
    dims = ("time", "prediction_timedelta", *truth[var].dims[1:])
    times = truth.time.values
    coords = {d: truth[d] for d in truth[var].dims[1:]}
    coords.update(time=times[:1], prediction_timedelta=(times[1 : leads + 1] - times[0]))
    xr.Dataset({var: (dims, frames, truth[var].attrs)}, coords=coords).to_zarr(path)


def main() -> None:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        truth = radar_dataset(n_time=41, n=512)
        truth.to_netcdf(d / "truth.nc")
        _store(truth, d / "fc.zarr", 40)
        store, fields = open_forecast(d / "fc.zarr"), open_fields(d / "truth.nc")
        for name, target, leads, run in (
            ("10 leads 512x512 -> PNG", 10.0, "1,2,3,4,5,6,7,8,9,10", "png"),
            ("40-frame GIF 512x512", 30.0, None, "gif"),
        ):
            t0 = time.perf_counter()
            sel = select(store, fields, leads=leads)
            if run == "png":
                draw_panels(sel, d / "out.png")
            else:
                animate(sel, d / "out.gif", "gif")
            seconds = time.perf_counter() - t0
            size = (d / f"out.{run}").stat().st_size
            rows.append(
                {
                    "case": name,
                    "seconds": round(seconds, 2),
                    "target_s": target,
                    "ok": seconds < target,
                    "bytes": size,
                }
            )
    print(pd.DataFrame(rows).to_string(index=False))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
