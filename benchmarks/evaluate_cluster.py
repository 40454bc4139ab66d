"""Throughput and peak memory of `minconv evaluate` under `--memory-limit`, in-process and on a
dask.distributed LocalCluster (`--workers N`), on a forecast store several times the limit.

A truth (daily, lat/lon grid, one variable) and a forecast store in the rollout's layout (one init
time per chunk, float32) of about `--store-gb` are written to a temporary directory. Each case runs
`python -m minconv_cli evaluate ... --memory-limit LIMIT [--workers N]` in a fresh process; its
peak memory is the largest resident set of the whole process tree (the CLI, and with --workers
its worker processes), sampled every 0.1 s with psutil. The limit holds when the process tree
stays under it in-process, and the workers together with --workers (the CLI process, which holds
the graph and the truth, comes on top: what dask's worker memory limit means too). Throughput (GB of forecast per minute) is
from the run's OUT/run.json (forecast bytes / seconds of scoring, the cluster's start excluded).

    nice -n 5 python benchmarks/evaluate_cluster.py     # 9 GB store: 8x 1GB, 4x 2GiB of workers
    python benchmarks/evaluate_cluster.py --data /scratch/evb   # keep (and reuse) the data there
    python benchmarks/evaluate_cluster.py --quick       # a CI-sized smoke run (0.3 GB store)
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import psutil
import xarray as xr
from rich.console import Console
from rich.table import Table

from minconv_cli.data.memory import parse_size

RESULT = Path(__file__).parent / "results" / "evaluate_cluster.json"
GRID = (128, 256)  # 128 KB per float32 frame
LEADS = 24  # the truth is a 24th of the store: loaded in memory under the limit
WRITE_INITS = 64  # init times generated and appended at a time
SCORING = ["--references", "persistence", "--metrics", "rmse,mae,bias,rel_l2"]


def _truth(n_time: int, rng: np.random.Generator) -> xr.Dataset:
    """Travelling waves plus noise on a lat/lon grid, daily."""
    times = pd.date_range("2000-01-01", periods=n_time, freq="D")
    lat = np.linspace(89.0, -89.0, GRID[0])
    lon = np.arange(GRID[1]) * 360.0 / GRID[1]
    t = np.arange(n_time, dtype=np.float32)[:, None, None]
    la, lo = np.deg2rad(lat)[None, :, None], np.deg2rad(lon)[None, None, :]
    field = np.sin(2 * lo - 0.3 * t) * np.cos(la) + 0.1 * rng.standard_normal(
        (n_time, *GRID), dtype=np.float32
    )
    coords = {
        "time": times,
        "latitude": ("latitude", lat, {"units": "degrees_north", "standard_name": "latitude"}),
        "longitude": ("longitude", lon, {"units": "degrees_east", "standard_name": "longitude"}),
    }
    data = {"t": (("time", "latitude", "longitude"), field.astype(np.float32), {"units": "K"})}
    return xr.Dataset(data, coords=coords)


def make_data(root: Path, store_gb: float) -> tuple[Path, Path, int]:
    """The truth (NetCDF) and a forecast store of about `store_gb` GB; its size in bytes."""
    frame = GRID[0] * GRID[1] * 4
    n_init = max(WRITE_INITS, int(store_gb * 1e9 / (frame * LEADS)) // WRITE_INITS * WRITE_INITS)
    rng = np.random.default_rng(0)
    truth = _truth(n_init + LEADS + 1, rng)
    truth_path, fc_path = root / "truth.nc", root / "fc.zarr"
    # chunked along time, as a large truth is (a contiguous NetCDF file is one dask chunk)
    truth.to_netcdf(truth_path, encoding={"t": {"chunksizes": (16, *GRID)}})
    lead_idx = np.arange(1, LEADS + 1)
    values = truth.t.values
    for start in range(0, n_init, WRITE_INITS):
        init = np.arange(start, start + WRITE_INITS)
        frames = values[init[:, None] + lead_idx[None, :]]
        scale = (0.05 * lead_idx).astype(np.float32)[:, None, None]
        noise = rng.standard_normal(frames.shape, dtype=np.float32) * scale
        block = xr.Dataset(
            {
                "t": (
                    ("time", "prediction_timedelta", "latitude", "longitude"),
                    frames + noise,
                    {"units": "K"},
                )
            },
            coords={
                "time": truth.time.values[init],
                "prediction_timedelta": lead_idx * np.timedelta64(1, "D"),
                "latitude": truth.latitude,
                "longitude": truth.longitude,
            },
        ).chunk({"time": 1})
        if start == 0:
            block.to_zarr(fc_path, mode="w", zarr_format=2, consolidated=True)
        else:
            block.to_zarr(fc_path, append_dim="time", zarr_format=2, consolidated=True)
    return truth_path, fc_path, n_init * LEADS * frame


def _data(root: Path, store_gb: float) -> tuple[Path, Path, int]:
    """`make_data` in `root`, or what an earlier run left there (a complete store)."""
    truth, fc = root / "truth.nc", root / "fc.zarr"
    if truth.exists() and ((fc / "zarr.json").exists() or (fc / ".zmetadata").exists()):
        with xr.open_zarr(fc) as ds:
            return truth, fc, int(ds["t"].nbytes)
    root.mkdir(parents=True, exist_ok=True)
    return make_data(root, store_gb)


def _rss(procs: list[psutil.Process]) -> int:
    total = 0
    for p in procs:
        with contextlib.suppress(psutil.Error):  # gone between listing and reading
            total += p.memory_info().rss
    return total


def run_case(fc: Path, truth: Path, out: Path, limit: str, workers: int | None) -> dict:
    """One evaluation in a fresh process tree: its peak memory (sampled) and run.json."""
    cmd = [sys.executable, "-m", "minconv_cli", "evaluate", str(fc), str(truth), *SCORING]
    cmd += ["--out", str(out), "--overwrite", "-q", "--memory-limit", limit]
    cmd += ["--workers", str(workers)] if workers else []
    start = time.perf_counter()
    child = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    proc, peak, main_peak, children_peak = psutil.Process(child.pid), 0, 0, 0
    while child.poll() is None:
        with contextlib.suppress(psutil.Error):
            main, children = _rss([proc]), _rss(proc.children(recursive=True))
            peak = max(peak, main + children)
            main_peak, children_peak = max(main_peak, main), max(children_peak, children)
        time.sleep(0.1)
    wall = time.perf_counter() - start
    if child.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed: {child.stderr.read().strip()}")
    run = json.loads((out / "run.json").read_text())
    # what the limit bounds: the whole process in-process; the workers (the children) on a cluster
    bounded = children_peak if workers else peak
    return {
        "mode": f"--workers {workers}" if workers else "in-process",
        "memory_limit": limit,
        "peak_mb": round(peak / 2**20, 1),
        "client_peak_mb": round(main_peak / 2**20, 1),
        "workers_peak_mb": round(children_peak / 2**20, 1),
        "limit_held": bounded <= parse_size(limit),
        "gb_per_min": round(run["forecast_bytes"] / 1e9 / (run["seconds"] / 60), 3),
        "wall_s": round(wall, 1),
        "run": run,
    }


def _table(rows: list[dict], store_gb: float) -> Table:
    table = Table(
        title=f"minconv evaluate: {store_gb:.2f} GB forecast store, persistence + 4 metrics"
    )
    cols = (
        "mode",
        "limit",
        "GB/min",
        "seconds",
        "wall s",
        "peak MB (tree)",
        "of it workers",
        "held",
    )
    for col in cols:
        table.add_column(col, justify="right", no_wrap=True)
    for r in rows:
        table.add_row(
            r["mode"],
            r["memory_limit"],
            f"{r['gb_per_min']:.2f}",
            f"{r['run']['seconds']:.1f}",
            f"{r['wall_s']:.1f}",
            f"{r['peak_mb']:.0f}",
            f"{r['workers_peak_mb']:.0f}",
            "yes" if r["limit_held"] else "NO",
        )
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store-gb", type=float, default=9.0)
    parser.add_argument(
        "--data",
        type=Path,
        help="write the data here and reuse it when there (default: a temp dir)",
    )
    parser.add_argument("--quick", action="store_true", help="a 0.3 GB store: a smoke run")
    parser.add_argument("--memory-limit", default="1GB")
    parser.add_argument(
        "--workers-memory-limit", default="2GiB", help="the workers' total (1 GiB each at least)"
    )
    parser.add_argument("--workers", type=int, default=2, help="0: in-process only")
    parser.add_argument("--result", type=Path, default=RESULT)
    args = parser.parse_args()
    if args.quick:
        args.store_gb = 0.3
    console = Console()
    with contextlib.ExitStack() as stack:
        root = args.data or Path(stack.enter_context(tempfile.TemporaryDirectory()))
        truth, fc, nbytes = _data(root, args.store_gb)
        on_disk = sum(f.stat().st_size for f in fc.rglob("*") if f.is_file())
        console.print(
            f"store: {nbytes / 1e9:.2f} GB of float32 ({on_disk / 1e9:.2f} GB on disk), "
            f"{nbytes / parse_size(args.memory_limit):.1f}x the limit {args.memory_limit}"
        )
        rows = [
            run_case(
                fc,
                truth,
                root / f"out_{w or 0}",
                args.workers_memory_limit if w else args.memory_limit,
                w,
            )
            for w in (None, *([args.workers] if args.workers else []))
        ]
    console.print(_table(rows, nbytes / 1e9))
    args.result.parent.mkdir(parents=True, exist_ok=True)
    record = {
        "benchmark": "evaluate_cluster",
        "machine": {
            "python": platform.python_version(),
            "cpus": psutil.cpu_count(),
            "memory_gb": round(psutil.virtual_memory().total / 1e9, 1),
        },
        "store": {"bytes": nbytes, "bytes_on_disk": on_disk, "grid": list(GRID), "leads": LEADS},
        "scoring": " ".join(SCORING),
        "store_to_limit": round(nbytes / parse_size(args.memory_limit), 2),
        "store_to_workers_limit": round(nbytes / parse_size(args.workers_memory_limit), 2),
        "limit_counts": "in-process: the whole process's resident memory (what a user or Slurm "
        "sees); --workers: the workers' together (the client process comes on top)",
        "note": "run with nice -n 5 on a shared machine (other jobs running): throughput is a "
        "lower bound" + (" (--quick smoke run)" if args.quick else ""),
        "cases": rows,
    }
    args.result.write_text(json.dumps(record, indent=2) + "\n")
    console.print(f"wrote {args.result}")


if __name__ == "__main__":
    main()
