"""Data reading speed and memory: windows from a chunked Zarr store vs the training step that eats them.

1. Speed: a Zarr store of 64x64 Navier-Stokes-shaped fields (trajectory, time=50, y, x), chunked one
   trajectory per chunk. Median time to read one batch of windows (length 26 = 20 teacher-forced +
   5 closed loop + 1 target) through a DataLoader, read lazily from the store and from memory,
   against the median time of one training step (forward, masked MSE backward, Adam) of a
   MinConvGRU at ~175k parameters on that batch. Target: reading >= 10x faster than the step.
2. Memory: a synthetic store of `--big-gb` GB on disk (uncompressed, so the size is real) is
   normalised (statistics computed chunk-wise) and iterated window by window in a fresh child
   process; its peak resident set size (VmHWM) must stay under 1.5 GB. The store is deleted.

    python benchmarks/data_read.py              # quick: 0.25 GB store
    python benchmarks/data_read.py --big-gb 4   # the real larger-than-comfortable case
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import dask.array as dsa
import numpy as np
import torch
import xarray as xr
from rich.console import Console
from rich.table import Table

import minconv_cli.data.open as data_open
from minconv_cli.data import Normalizer, WindowDataset, open_fields

RESULT = Path(__file__).parent / "results" / "data_read.json"
N_TIME, GRID, LENGTH, CONTEXT = 50, 64, 26, 20
RSS_LIMIT_GB = 1.5
console = Console(stderr=True)


def write_store(path: Path, n_traj: int, compress: bool = True) -> None:
    """Random fields (trajectory, time, y, x) float32, one trajectory per chunk, written chunk-wise."""
    data = dsa.random.default_rng(0).standard_normal(
        (n_traj, N_TIME, GRID, GRID), chunks=(1, N_TIME, GRID, GRID), dtype=np.float32
    )
    ds = xr.Dataset(
        {"vorticity": (("trajectory", "time", "y", "x"), data, {"units": "s**-1"})},
        coords={
            "trajectory": np.arange(n_traj),
            "time": np.arange(N_TIME, dtype=np.float64),
            "y": np.arange(GRID) / GRID,
            "x": np.arange(GRID) / GRID,
        },
        attrs={"periodic_dims": "y x"},
    )
    encoding = {} if compress else {"vorticity": {"compressors": None}}
    ds.to_zarr(path, mode="w", zarr_format=3, consolidated=False, encoding=encoding)


def median_batch_read(dataset: WindowDataset, batch: int, n_batches: int) -> float:
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch, shuffle=True, num_workers=0)
    times, it = [], iter(loader)
    for _ in range(n_batches):
        start = time.perf_counter()
        next(it)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def median_train_step(batch_x: torch.Tensor, mask: torch.Tensor, repeats: int) -> tuple[float, int]:
    from minconv_cli.models import create_model, width_for_params

    width = width_for_params("minconvgru", 175_000, in_channels=1, layers=4, grid=(GRID, GRID))
    model = create_model(
        "minconvgru", 1, width=width, layers=4, grid=(GRID, GRID), padding="circular"
    )
    params = sum(p.numel() for p in model.parameters())
    optimizer = torch.optim.Adam(model.parameters(), lr=5e-4)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        y = model(batch_x[:, :-1], CONTEXT)
        m = mask[:, 1:]
        loss = ((y - batch_x[:, 1:]).square() * m).sum() / m.sum()
        loss.backward()
        optimizer.step()

    step()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return statistics.median(times), params


def speed(workdir: Path, n_traj: int, batch: int, n_batches: int, repeats: int) -> dict:
    store = workdir / "speed.zarr"
    write_store(store, n_traj)
    memory_fields = open_fields(store)
    limit = data_open.LOAD_BELOW_BYTES
    data_open.LOAD_BELOW_BYTES = 0  # force the lazy, chunk-by-chunk path
    try:
        lazy_fields = open_fields(store)
    finally:
        data_open.LOAD_BELOW_BYTES = limit
    norm = Normalizer.fit(memory_fields)
    lazy = WindowDataset(lazy_fields, LENGTH, norm)
    memory = WindowDataset(memory_fields, LENGTH, norm)
    lazy_read = median_batch_read(lazy, batch, n_batches)
    memory_read = median_batch_read(memory, batch, n_batches)
    sample = next(iter(torch.utils.data.DataLoader(lazy, batch_size=batch)))
    step, params = median_train_step(sample["x"], sample["mask"], repeats)
    return {
        "store_mb": round(
            sum(f.stat().st_size for f in store.rglob("*") if f.is_file()) / 2**20, 1
        ),
        "trajectories": n_traj,
        "batch": batch,
        "window_length": LENGTH,
        "model_params": params,
        "lazy_read_batch_s": lazy_read,
        "memory_read_batch_s": memory_read,
        "train_step_s": step,
        "step_over_lazy_read": step / lazy_read,
        "step_over_memory_read": step / memory_read,
    }


def peak_rss_gb() -> float:
    """This process's peak RSS: VmHWM, which (unlike ru_maxrss) does not inherit the parent's peak."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def read_everything(store: str) -> None:
    """Child process: fit statistics and iterate every window once; print time and peak RSS."""
    start = time.perf_counter()
    fields = open_fields(store)
    norm = Normalizer.fit(fields)
    fit_s = time.perf_counter() - start
    dataset = WindowDataset(fields, LENGTH, norm, stride=LENGTH)
    loader = torch.utils.data.DataLoader(dataset, batch_size=4, num_workers=0)
    start, frames = time.perf_counter(), 0
    for item in loader:
        frames += item["x"].shape[0] * item["x"].shape[1]
    read_s = time.perf_counter() - start
    peak_gb = peak_rss_gb()
    print(json.dumps({"lazy": fields.is_lazy, "windows": len(dataset), "frames": frames,
                      "fit_s": fit_s, "iterate_s": read_s, "peak_rss_gb": peak_gb}))  # fmt: skip


def memory(workdir: Path, big_gb: float) -> dict:
    bytes_per_traj = N_TIME * GRID * GRID * 4
    n_traj = max(2, int(big_gb * 2**30 / bytes_per_traj))
    store = workdir / "big.zarr"
    start = time.perf_counter()
    write_store(store, n_traj, compress=False)
    write_s = time.perf_counter() - start
    size_gb = sum(f.stat().st_size for f in store.rglob("*") if f.is_file()) / 2**30
    try:
        out = subprocess.run(
            [sys.executable, __file__, "--read-store", str(store)],
            check=True, capture_output=True, text=True,
        )  # fmt: skip
    finally:
        shutil.rmtree(store, ignore_errors=True)
    child = json.loads(out.stdout.strip().splitlines()[-1])
    return {"store_gb": size_gb, "trajectories": n_traj, "write_s": write_s, **child,
            "rss_limit_gb": RSS_LIMIT_GB, "under_limit": child["peak_rss_gb"] < RSS_LIMIT_GB}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--big-gb", type=float, default=0.25, help="size of the memory-test store on disk"
    )
    parser.add_argument(
        "--trajectories", type=int, default=64, help="trajectories in the speed store"
    )
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--batches", type=int, default=30, help="batches read per timing")
    parser.add_argument("--repeats", type=int, default=5, help="timed training steps")
    parser.add_argument(
        "--workdir", type=Path, default=None, help="where stores are written (default: a temp dir)"
    )
    parser.add_argument("--read-store", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.read_store:
        read_everything(args.read_store)
        return
    torch.set_num_threads(2)
    workdir = Path(tempfile.mkdtemp(prefix="minconv-data-read-", dir=args.workdir))
    try:
        console.print("speed: reading windows vs a training step ...")
        s = speed(workdir, args.trajectories, args.batch, args.batches, args.repeats)
        console.print(f"memory: {args.big_gb} GB store ...")
        m = memory(workdir, args.big_gb)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    table = Table(title="minconv data reading (median per batch of 4 windows, 26 frames of 64x64)")
    table.add_column("measure")
    table.add_column("value", justify="right")
    table.add_row("read batch, lazy from Zarr", f"{s['lazy_read_batch_s'] * 1e3:.2f} ms")
    table.add_row("read batch, in memory", f"{s['memory_read_batch_s'] * 1e3:.2f} ms")
    table.add_row(
        f"train step, MinConvGRU {s['model_params'] / 1e3:.0f}k params",
        f"{s['train_step_s'] * 1e3:.0f} ms",
    )
    table.add_row("step / lazy read (target >= 10)", f"{s['step_over_lazy_read']:.0f}x")
    table.add_row("step / in-memory read", f"{s['step_over_memory_read']:.0f}x")
    table.add_row(
        f"big store on disk ({m['trajectories']} trajectories)", f"{m['store_gb']:.2f} GB"
    )
    table.add_row("fit statistics (chunk-wise)", f"{m['fit_s']:.1f} s")
    table.add_row(
        f"iterate {m['windows']} windows ({m['frames']} frames)", f"{m['iterate_s']:.1f} s"
    )
    table.add_row(f"peak RSS (limit {RSS_LIMIT_GB} GB)", f"{m['peak_rss_gb']:.2f} GB")
    Console().print(table)
    RESULT.parent.mkdir(parents=True, exist_ok=True)
    RESULT.write_text(json.dumps({
        "benchmark": "data_read",
        "machine": {"platform": platform.platform(), "cpus": torch.get_num_threads(), "torch": torch.__version__},
        "speed": s,
        "memory": m,
    }, indent=2) + "\n")  # fmt: skip
    console.print(f"wrote {RESULT}")


if __name__ == "__main__":
    main()
