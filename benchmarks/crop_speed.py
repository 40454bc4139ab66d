"""Training throughput on a 512x512 radar-like event: `minconv train --crop 128` against whole
frames, same model and settings, in windows per second.

Each run is a real `minconv train` in a fresh process with `--threads` OpenMP threads; the two
variants alternate for `--rounds` rounds so that both see the same machine load. Windows per
second = batch / mean step time, the first step of a run (allocations) left out; the batch is the
one the run used (a whole-frame step too large for the memory is shrunk by the memory check, and
the table says so). Prints a table and writes benchmarks/results/crop_speed.json.

    python benchmarks/crop_speed.py                 # the measurement (run on an idle machine)
    python benchmarks/crop_speed.py --quick         # a 128x128 grid and --crop 32: checks it runs
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
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parents[1] / "tests"))
from factories import radar_dataset  # noqa: E402  (the tests' radar-like field)

RESULT = Path(__file__).parent / "results" / "crop_speed.json"


def event(path: Path, size: int, frames: int) -> None:
    """A radar-like event of `frames` 10-minute steps on a size x size km grid."""
    radar_dataset(n_time=frames, n=size, blobs=12, seed=0).to_netcdf(path)


def train(data: Path, out: Path, crop: int | None, args: argparse.Namespace) -> dict:
    """One `minconv train` run in a fresh process: its batch, steps and windows per second."""
    cmd = [sys.executable, "-m", "minconv_cli", "train", str(data), "--out", str(out)]
    cmd += ["--context", "4", "--horizon", "2", "--epochs", "1", "--width", str(args.width)]
    cmd += ["--batch-size", str(args.batch_size), "--quiet", "--overwrite", "--device", "cpu"]
    cmd += ["--set", "data.train_period=0.0:0.7", "--set", "data.val_period=0.7:1.0"]
    cmd += ["--set", "train.precision=fp32"]
    if crop:
        cmd += ["--crop", str(crop)]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise SystemExit(f"minconv train failed: {done.stderr.strip()}")
    s = json.loads((out / "summary.json").read_text())
    steps, mean, longest = s["steps"], s["seconds_per_step"], s["longest_step_seconds"]
    # the first step (allocations) is the longest: leave it out where there are others
    per_step = (mean * steps - longest) / (steps - 1) if steps > 1 else mean
    batch = s["step_memory"]["batch"]
    return {
        "crop": crop,
        "batch": batch,
        "requested_batch": s["step_memory"]["requested_batch"],
        "steps": steps,
        "seconds_per_step": round(per_step, 4),
        "windows_per_second": round(batch / per_step, 3),
        "estimated_step_mb": round(s["step_memory"]["estimate_bytes"] / 2**20, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=512, help="grid cells per side")
    parser.add_argument("--crop", type=int, default=128)
    parser.add_argument("--frames", type=int, default=26, help="time steps of the event")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--width", type=int, default=24)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="128x128, --crop 32, 1 round")
    args = parser.parse_args()
    if args.quick:
        args.size, args.crop, args.frames, args.rounds = 128, 32, 24, 1
    runs: dict[str, list[dict]] = {"whole": [], "crop": []}
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "event.nc"
        event(data, args.size, args.frames)
        for _ in range(args.rounds):  # interleaved: whole, crop, whole, crop, ...
            runs["whole"].append(train(data, Path(tmp) / "whole", None, args))
            runs["crop"].append(train(data, Path(tmp) / "crop", args.crop, args))
    report(runs, args)


def report(runs: dict[str, list[dict]], args: argparse.Namespace) -> None:
    """Print the table and, unless --quick, write the JSON result."""
    rate = {k: statistics.median(r["windows_per_second"] for r in v) for k, v in runs.items()}
    speedup = rate["crop"] / rate["whole"]
    label = {"whole": f"whole {args.size}x{args.size}", "crop": f"--crop {args.crop}"}
    print(
        f"{'variant':<16} {'batch':>5} {'steps':>5} {'s/step':>8} {'windows/s':>10} {'est MB':>8}"
    )
    for key, rows in runs.items():
        for r in rows:
            batch = f"{r['batch']}" + ("*" if r["batch"] != r["requested_batch"] else "")
            print(
                f"{label[key]:<16} {batch:>5} {r['steps']:>5} {r['seconds_per_step']:>8} "
                f"{r['windows_per_second']:>10} {r['estimated_step_mb']:>8}"
            )
    print(f"crop / whole windows per second (medians): {speedup:.1f}x  (* batch shrunk to fit)")
    if args.quick:
        return
    RESULT.write_text(
        json.dumps(
            {
                "grid": [args.size, args.size],
                "crop": args.crop,
                "threads": args.threads,
                "machine": {"cpus": os.cpu_count(), "processor": platform.processor()},
                "runs": runs,
                "windows_per_second": rate,
                "speedup": round(speedup, 2),
            },
            indent=1,
        )
        + "\n"
    )
    print(f"wrote {RESULT}")


if __name__ == "__main__":
    main()
