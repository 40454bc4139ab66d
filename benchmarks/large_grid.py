"""A 512x512 radar-like field (10-minute precipitation): model size, step time and `--max-time`.

1. Parameters of the default model (minconvgru, width 24, 2 layers) with the paper's LayerNorm over
   (H, W) (`--norm layer`, the old default) and with the default `norm: auto`.
2. Seconds per training step with each norm, interleaved (same batch, same model otherwise; the
   first step of each model, allocations included, unless --steps asks for more).
3. A real `minconv train DATA --max-time BUDGET` call: its wall time against the budget and the
   step and validation times it reports.
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

import torch
from rich.console import Console
from rich.table import Table

from minconv_cli.models import count_parameters
from minconv_cli.training import build_model
from minconv_cli.training.config import resolve_config
from minconv_cli.training.data import prepare_data
from minconv_cli.training.steps import training_loss

sys.path.insert(0, str(Path(__file__).parents[1] / "tests"))
from factories import radar_dataset  # noqa: E402  (the tests' radar-like field)

RESULT = Path(__file__).parent / "results" / "large_grid.json"
SPLITS = {"data.train_period": "0.0:0.6", "data.val_period": "0.6:1.0"}  # windows of 16 steps


def step_seconds(path: Path, norm: str, batch_size: int, steps: int) -> tuple[int, list[float]]:
    """(parameters, seconds of each training step) of the default model with `norm`."""
    cfg = resolve_config(
        options={
            "data.paths": [str(path)],
            "model.norm": norm,
            "train.batch_size": batch_size,
            **SPLITS,
        }
    )
    data = prepare_data(cfg)
    torch.manual_seed(0)
    model = build_model(cfg, data)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.optim.lr)
    loader = torch.utils.data.DataLoader(data.train_windows, batch_size=batch_size)
    batch = next(iter(loader))
    t = cfg.train
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss = training_loss(model, batch, t.context, t.horizon, t, torch.device("cpu"))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        times.append(time.perf_counter() - start)
    return count_parameters(model), times


def budget_run(path: Path, out: Path, budget: float, batch_size: int) -> tuple[float, dict]:
    """Wall time of one `minconv train --max-time` call (a fresh process) and its summary."""
    command = [
        sys.executable, "-m", "minconv_cli", "train", str(path), "--max-time", str(budget),
        "--batch-size", str(batch_size), "--train-period", SPLITS["data.train_period"],
        "--val-period", SPLITS["data.val_period"], "--out", str(out), "--json", "-q",
    ]  # fmt: skip
    start = time.monotonic()
    proc = subprocess.run(command, capture_output=True, text=True, check=True)
    return time.monotonic() - start, json.loads(proc.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--grid", type=int, default=512)
    parser.add_argument("--times", type=int, default=64, help="10-minute steps in the field")
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--steps", type=int, default=1, help="timed steps per model")
    parser.add_argument("--rounds", type=int, default=1, help="interleaved rounds of both norms")
    parser.add_argument("--budget", type=float, default=60.0, help="--max-time of the real run")
    parser.add_argument("--out", type=Path, default=RESULT)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "radar.nc"
        radar_dataset(n_time=args.times, n=args.grid).to_netcdf(path)
        counts, times = {}, {"layer": [], "auto": []}
        for _ in range(args.rounds):  # interleaved; the last step of each model counts
            for norm in ("layer", "auto"):
                counts[norm], t = step_seconds(path, norm, args.batch_size, args.steps)
                times[norm].append(t[-1])
        wall, summary = budget_run(path, Path(tmp) / "run", args.budget, args.batch_size)

    load = os.getloadavg()[0]
    medians = {k: statistics.median(v) for k, v in times.items()}
    table = Table(title=f"{args.grid}x{args.grid}, default model, batch {args.batch_size}")
    for col in ("norm", "parameters", "s/step (median)"):
        table.add_column(col, justify="right")
    for norm in ("layer", "auto"):
        label = norm if norm == "layer" else f"auto ({summary['norm']})"
        table.add_row(label, f"{counts[norm]:,}", f"{medians[norm]:.2f}")
    console = Console()
    console.print(table)
    last = summary["last_validation"]
    console.print(
        f"--max-time {args.budget:g}: wall {wall:.1f} s (process), run {summary['seconds']:.1f} s, "
        f"{summary['steps']} step(s) of {summary['seconds_per_step']:.2f} s (longest "
        f"{summary['longest_step_seconds']:.2f} s), validation on {last['windows']} of "
        f"{last['of']} windows in {last['seconds']:.1f} s; load average {load:.1f}"
    )
    result = {
        "grid": args.grid,
        "batch_size": args.batch_size,
        "parameters": counts,
        "seconds_per_step": {"samples": times, "median": medians},
        "budget_run": {"max_time": args.budget, "wall_seconds": round(wall, 2), "summary": summary},
        "machine": {"platform": platform.platform(), "cores": os.cpu_count(), "load": load},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
