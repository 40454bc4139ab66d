"""Data reading speed and memory: windows per second from a Zarr store, in memory and read lazily.

The issue's case: 2 years of hourly fields (17,520 times), 3 variables on a 32x64 grid, float32,
uncompressed (so the ~430 MB on disk is real), chunked 24 h per chunk. Windows of 25 frames are served
in batches, as training takes them, by three paths, each in a fresh child process (2 threads,
DataLoader workers=0 unless said; one torch thread, as reading needs no intra-op threads and
they make `torch.stack` crawl when the machine is busy) whose peak resident set size (VmHWM) is reported:

- in-memory: the data loaded and normalised once, windows sliced (`WindowDataset`, shuffled batches);
- lazy-block: read from disk in chunk-aligned blocks with a shuffle buffer (`BlockStream`), under a
  memory limit smaller than the store (so a store larger than the limit is shown to stay within it:
  the child's peak minus its RSS before opening the data must stay under the limit);
- lazy-per-window: today's lazy path, each window read on its own (`WindowDataset[i]`), timed on a
  sample of batches (it is slow).

"data peak" is the child's VmHWM minus its RSS before opening the data; with workers it counts the
main process only (each worker holds its own block buffer, the limit split between them).

Targets: lazy-block >= 10x lazy-per-window with workers=0; lazy-block's data memory <= the limit.

    python benchmarks/data_read.py                  # the issue's store, limit 256 MB
    python benchmarks/data_read.py --years 4 --limit-mb 128
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import dask.array as dsa
import numpy as np
import pandas as pd
import torch
import xarray as xr
from rich.console import Console
from rich.table import Table

RESULT = Path(__file__).parent / "results" / "data_read.json"
LENGTH, NY, NX, CHUNK = 25, 32, 64, 24
VARIABLES = ("t2m", "z500", "msl")
console = Console(stderr=True)


def write_store(path: Path, years: float) -> int:
    """Random hourly fields, 24 h per chunk, uncompressed, written chunk by chunk; returns bytes on disk."""
    n = int(round(years * 8760))
    rng = dsa.random.default_rng(0)
    data = {
        v: (("time", "lat", "lon"), rng.standard_normal((n, NY, NX), chunks=(CHUNK, NY, NX), dtype=np.float32))
        for v in VARIABLES
    }  # fmt: skip
    ds = xr.Dataset(
        data,
        coords={
            "time": pd.date_range("2000-01-01", periods=n, freq="h"),
            "lat": np.linspace(-87.2, 87.2, NY),
            "lon": np.arange(NX) * 360.0 / NX,
        },
    )
    encoding = {v: {"compressors": None} for v in VARIABLES}
    ds.to_zarr(path, mode="w", zarr_format=3, consolidated=False, encoding=encoding)
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def _status(key: str) -> int:
    """VmRSS / VmHWM of this process in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    return 0


def child(args: argparse.Namespace) -> None:
    """One path in a fresh process: open, serve windows, print windows/s and peak memory as JSON."""
    from torch.utils.data import DataLoader

    from minconv_cli.data import Normalizer, WindowDataset, open_fields
    from minconv_cli.data.stream import BlockStream

    torch.set_num_threads(1)  # reading needs no intra-op threads (they spin on a busy machine)
    baseline = _status("VmRSS")
    limit = (
        args.limit_mb * 2**20
        if args.path == "lazy-block"
        else (0 if "lazy" in args.path else "1TB")
    )
    fields = open_fields(args.store, memory_limit=limit)
    norm = Normalizer.from_dict(json.loads(args.norm))
    if fields.is_lazy != ("lazy" in args.path):
        raise SystemExit(f"{args.path}: the data was {'not ' * ('lazy' in args.path)}read lazily")
    windows = WindowDataset(fields, LENGTH, norm)
    if args.path == "lazy-block":
        loader = DataLoader(
            BlockStream(windows, args.batch, shuffle=True, workers=args.workers,
                        buffer_bytes=limit // (2 * max(1, args.workers))),
            batch_size=None, num_workers=args.workers,
        )  # fmt: skip
    else:
        order = torch.randperm(len(windows), generator=torch.Generator().manual_seed(0)).tolist()
        batches = [order[i : i + args.batch] for i in range(0, len(order), args.batch)]
        loader = DataLoader(windows, batch_sampler=batches, num_workers=args.workers)
    start, served, checksum = time.perf_counter(), 0, 0.0
    for batch in loader:
        served += batch["x"].shape[0]
        checksum += float(batch["x"][:, 0, 0, 0, 0].sum())
        if served >= args.max_windows:
            break
    seconds = time.perf_counter() - start
    peak = _status("VmHWM")
    print(json.dumps({
        "path": args.path, "workers": args.workers, "lazy": fields.is_lazy, "windows": served,
        "seconds": seconds, "windows_per_s": served / seconds, "peak_rss_mb": peak / 2**20,
        "data_peak_mb": (peak - baseline) / 2**20,
    }))  # fmt: skip


def run_child(store: Path, path: str, norm: str, a: argparse.Namespace, workers: int = 0) -> dict:
    cmd = [
        sys.executable, __file__, "--child", path, "--store", str(store), "--norm", norm,
        "--batch", str(a.batch), "--workers", str(workers), "--limit-mb", str(a.limit_mb),
        "--max-windows", str(a.per_window_windows if path == "lazy-per-window" else 10**9),
    ]  # fmt: skip
    out = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--years", type=float, default=2.0, help="hourly years in the store")
    parser.add_argument("--limit-mb", type=int, default=256, help="memory limit of lazy-block")
    parser.add_argument("--batch", type=int, default=16, help="windows per batch")
    parser.add_argument(
        "--per-window-windows", type=int, default=480, help="lazy-per-window sample"
    )
    parser.add_argument("--workdir", type=Path, default=None, help="where the store goes (temp)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--store", help=argparse.SUPPRESS)
    parser.add_argument("--norm", help=argparse.SUPPRESS)
    parser.add_argument("--workers", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--max-windows", type=int, default=10**9, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        args.path = args.child
        child(args)
        return
    from minconv_cli.data import Normalizer, open_fields

    load = os.getloadavg()
    workdir = Path(tempfile.mkdtemp(prefix="minconv-data-read-", dir=args.workdir))
    store = workdir / "hourly.zarr"
    try:
        console.print(f"writing a {args.years} year hourly store ...")
        size = write_store(store, args.years)
        norm = json.dumps(Normalizer.fit(open_fields(store, memory_limit=0)).to_dict())
        rows = []
        for path, workers in [
            ("in-memory", 0), ("lazy-block", 0), ("lazy-per-window", 0),
            ("lazy-block", 2), ("lazy-per-window", 2),
        ]:  # fmt: skip
            console.print(f"{path}, workers={workers} ...")
            rows.append(run_child(store, path, norm, args, workers))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    rate = {(r["path"], r["workers"]): r["windows_per_s"] for r in rows}
    speedup = rate[("lazy-block", 0)] / rate[("lazy-per-window", 0)]
    block = rows[1]
    within = block["data_peak_mb"] <= args.limit_mb
    table = Table(
        title=f"windows of {LENGTH} frames, batches of {args.batch}, from a {size / 2**20:.0f} MB "
        f"Zarr store (3 vars, {NY}x{NX}, 24 h chunks)"
    )
    for col in ("path", "workers", "windows", "windows/s", "peak RSS MB", "data peak MB"):
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row(
            r["path"], str(r["workers"]), str(r["windows"]), f"{r['windows_per_s']:,.0f}",
            f"{r['peak_rss_mb']:,.0f}", f"{r['data_peak_mb']:,.0f}",
        )  # fmt: skip
    Console().print(table)
    Console().print(
        f"lazy-block / lazy-per-window (workers=0): {speedup:.1f}x (target >= 10); lazy-block data "
        f"peak {block['data_peak_mb']:.0f} MB with a {args.limit_mb} MB limit on a "
        f"{size / 2**20:.0f} MB store: {'within' if within else 'OVER'}"
    )
    RESULT.parent.mkdir(parents=True, exist_ok=True)
    RESULT.write_text(json.dumps({
        "benchmark": "data_read",
        "machine": {"platform": platform.platform(), "threads": 1, "torch": torch.__version__,
                    "load_average_1m": {"start": load[0], "end": os.getloadavg()[0]}},
        "store_mb": size / 2**20, "years": args.years, "window_length": LENGTH, "batch": args.batch,
        "memory_limit_mb": args.limit_mb, "paths": rows,
        "block_over_per_window": speedup, "block_within_limit": within,
    }, indent=2) + "\n")  # fmt: skip
    console.print(f"wrote {RESULT}")


if __name__ == "__main__":
    main()
