"""Rollout over several processes: forecast frames per second with 1 process, 2 torchrun ranks and
2 `--shard I/2` job-array tasks, each process on one thread, and whether the stores are the same.

Each case is the real CLI in fresh processes (`python -m minconv_cli rollout`, `python -m
torch.distributed.run ... -m minconv_cli rollout`) on a Navier-Stokes-shaped NetCDF file with an
untrained paper-sized MinConvGRU (speed does not depend on the weights), cases interleaved, the
median of `--repeats`. Frames = sequences x steps; wall time includes start-up (imports, store
creation), as a user sees it.

    python benchmarks/rollout_processes.py            # 64x64, 32 sequences x 20 steps
    python benchmarks/rollout_processes.py --quick    # 16x16, a smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import xarray as xr
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent))
from rollout import make_case  # noqa: E402  (data file + paper-sized checkpoint)

RESULT = Path(__file__).parent / "results" / "rollout_processes.json"
console = Console(stderr=True)
CLI = [sys.executable, "-m", "minconv_cli", "rollout"]
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]


def run_case(case: str, ckpt: Path, data: Path, out: Path, args: list[str]) -> float:
    """Wall seconds of one case, writing `out`."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    common = [str(ckpt), str(data), "--out", str(out), *args, "-q"]
    t0 = time.perf_counter()
    if case == "1 process":
        subprocess.run([*CLI, *common], env=env, check=True)
    elif case == "2 torchrun ranks":
        cmd = [*TORCHRUN, "-m", "minconv_cli", "rollout", *common]
        subprocess.run(cmd, env=env, check=True, capture_output=True)
    else:
        procs = [subprocess.Popen([*CLI, *common, "--shard", f"{i}/2"], env=env) for i in range(2)]
        if any(p.wait() != 0 for p in procs):
            raise RuntimeError(f"{case}: a shard failed")
    return time.perf_counter() - t0


def same_store(a: Path, b: Path) -> bool:
    ds_a, ds_b = xr.open_zarr(a).load(), xr.open_zarr(b).load()
    for ds in (ds_a, ds_b):
        ds.attrs.pop("created")
        ds.attrs.pop("command")
    return ds_a.identical(ds_b)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--repeats", type=int, default=3)
    opts = parser.parse_args()
    grid, samples, steps = (16, 8, 5) if opts.quick else (64, 32, 20)
    cases = ["1 process", "2 torchrun ranks", "2 --shard tasks"]
    seconds: dict[str, list[float]] = {c: [] for c in cases}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data, ckpt, params = make_case(tmp, "minconvgru", grid, 175_000, 4, 10, samples)
        args = ["--steps", str(steps), "--batch-size", "4", "--precision", "fp32"]
        for r in range(opts.repeats):
            for case in cases:
                out = tmp / f"{case.replace(' ', '_')}_{r}.zarr"
                seconds[case].append(run_case(case, ckpt, data, out, args))
                console.print(f"{case}: {seconds[case][-1]:.1f} s")
        last = opts.repeats - 1
        stores = {c: tmp / f"{c.replace(' ', '_')}_{last}.zarr" for c in cases}
        identical = {c: same_store(stores[cases[0]], stores[c]) for c in cases[1:]}
    frames = samples * steps
    rows = []
    for case in cases:
        median = statistics.median(seconds[case])
        rows.append(
            {
                "case": case,
                "seconds": [round(s, 2) for s in seconds[case]],
                "median_s": round(median, 2),
                "frames_per_s": round(frames / median, 2),
                "speedup": round(statistics.median(seconds[cases[0]]) / median, 2),
                "identical_to_1_process": identical.get(case, True),
            }
        )
    table = Table(
        title=f"rollout over processes: {grid}x{grid}, {samples} sequences x {steps} steps"
    )
    for col in ("case", "median s", "frames/s", "speed-up", "identical"):
        table.add_column(col)
    for row in rows:
        table.add_row(
            row["case"],
            f"{row['median_s']:.1f}",
            f"{row['frames_per_s']:.1f}",
            f"{row['speedup']:.2f}x",
            str(row["identical_to_1_process"]),
        )
    console.print(table)
    result = {
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "setup": {
            "grid": grid,
            "sequences": samples,
            "steps": steps,
            "model": "minconvgru",
            "parameters": params,
            "threads_per_process": 1,
            "repeats": opts.repeats,
        },
        "cases": rows,
    }
    if not opts.quick:
        RESULT.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
