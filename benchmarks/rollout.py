"""Rollout speed: forecast frames per second for each model at 16x16 and 64x64, the share of the
rollout's time spent writing the Zarr store, and how the time grows with the number of steps.

Each measurement is a real `minconv_cli.rollout.rollout` call (checkpoint file in, Navier-Stokes-
shaped NetCDF file in, Zarr store out) on untrained models sized like the paper's (~175k parameters,
4 layers, widths fixed at 16x16; speed does not depend on the weights). Frames = sequences x steps. Targets: writing takes
at most 15% of the rollout's time (creating the store included); 10x the steps takes at most 11x the time.

    python benchmarks/rollout.py            # all five models, 16x16 and 64x64
    python benchmarks/rollout.py --quick    # smaller models and fewer steps (a smoke run)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from minconv_cli.data import Normalizer, open_fields
from minconv_cli.models import MODEL_NAMES, count_parameters, create_model, width_for_params
from minconv_cli.models.checkpoint import data_meta, save_checkpoint
from minconv_cli.rollout import rollout

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from factories import trajectory_dataset  # noqa: E402  (the shared synthetic NS-shaped fields)

RESULT = Path(__file__).parent / "results" / "rollout.json"
WRITE_SHARE_TARGET, LINEARITY_TARGET = 0.15, 11.0
console = Console(stderr=True)


def make_case(
    tmp: Path, name: str, grid: int, params: int, layers: int, context: int, samples: int
):
    """A data file and a checkpoint of one model on it; returns their paths and the parameter count."""
    data = tmp / f"ns_{grid}.nc"
    if not data.exists():
        trajectory_dataset(n_traj=samples, n_time=context + 1, n=grid).to_netcdf(data)
    fields = open_fields(data)
    # sized at 16x16 as in the paper; the same widths at 64x64 (LayerNorm's per-cell parameters
    # grow with the grid, the convolutions do not)
    width = width_for_params(name, params, 1, layers, (16, 16), padding="circular")
    net = create_model(
        name, 1, width=width, layers=layers, grid=fields.grid_shape, padding="circular"
    )
    ckpt = tmp / f"{name}_{grid}.pt"
    meta = {**data_meta(fields, Normalizer.fit(fields)), "model": net.hparams, "context": context}
    save_checkpoint(ckpt, net, meta)
    return data, ckpt, count_parameters(net)


def timed_rollout(
    data: Path,
    ckpt: Path,
    out: Path,
    steps: int,
    batch: int,
    repeats: int,
    precisions: tuple[str, ...] = ("fp32",),
) -> dict:
    """Per precision, median over `repeats` fresh rollouts (precisions interleaved) of the total
    and per-phase seconds."""
    runs: dict[str, list] = {p: [] for p in precisions}
    for _ in range(repeats):
        for p in precisions:
            result = rollout(
                ckpt,
                [data],
                steps,
                out,
                batch_size=batch,
                mode="overwrite",
                device="cpu",
                precision=p,
            )
            runs[p].append({"seconds": result.seconds, **result.timings})
    return {
        p: {key: statistics.median(r[key] for r in rs) for key in rs[0]} for p, rs in runs.items()
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small models, few steps")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--precisions", default="fp32,bf16", help="comma-separated fp32, bf16")
    parser.add_argument("--grids", default="16,64", help="comma-separated grid sizes")
    parser.add_argument("--models", default=",".join(MODEL_NAMES), help="comma-separated")
    parser.add_argument("--out", type=Path, default=RESULT)
    args = parser.parse_args()
    precisions = tuple(args.precisions.split(","))
    if args.threads:
        torch.set_num_threads(args.threads)
    params, layers, context, steps = 175_000, 4, 10, 20
    sequences = {16: 32, 64: 4}  # per grid: a few seconds of work per rollout
    sequences = {g: n for g, n in sequences.items() if str(g) in args.grids.split(",")}
    if args.quick:
        params, steps, args.repeats = 20_000, 5, 1
    rows, scaling = [], {}
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        (tmp / "lin").mkdir()
        for grid, samples in sequences.items():
            for name in args.models.split(","):
                data, ckpt, n_params = make_case(tmp, name, grid, params, layers, context, samples)
                per = timed_rollout(
                    data, ckpt, tmp / "fc.zarr", steps, samples, args.repeats, precisions
                )
                frames = samples * steps
                for precision, t in per.items():
                    rows.append(
                        {
                            "model": name,
                            "grid": f"{grid}x{grid}",
                            "precision": precision,
                            "params": n_params,
                            "sequences": samples,
                            "frames": frames,
                            "seconds": t["seconds"],
                            "frames_per_s": frames / t["seconds"],
                            "model_frames_per_s": frames / t["model"],
                            "write_share": t["write"] / t["seconds"],
                            "read_share": t["read"] / t["seconds"],
                        }
                    )
                    console.log(
                        f"{name} {grid}x{grid} {precision}: {frames / t['seconds']:.1f} frames/s"
                    )
        # linearity: the same 8 initial conditions, 10x the steps
        data, ckpt, _ = make_case(tmp / "lin", "minconvgru", 16, params, layers, context, 8)
        short = timed_rollout(data, ckpt, tmp / "fc.zarr", steps, 8, args.repeats)["fp32"]
        long = timed_rollout(data, ckpt, tmp / "fc.zarr", 10 * steps, 8, args.repeats)["fp32"]
        scaling = {
            "model": "minconvgru",
            "grid": "16x16",
            "sequences": 8,
            "steps": [steps, 10 * steps],
            "seconds": [short["seconds"], long["seconds"]],
            "ratio_total": long["seconds"] / short["seconds"],
            "ratio_model": long["model"] / short["model"],
            "target": LINEARITY_TARGET,
        }
    table = Table(title=f"minconv rollout: {steps} steps, context {context}, CPU")
    columns = (
        "model",
        "grid",
        "precision",
        "params",
        "seqs",
        "frames/s",
        "model only",
        "write",
        "read",
    )
    for col in columns:
        table.add_column(col, justify="left" if col in ("model", "grid") else "right")
    for r in rows:
        table.add_row(
            r["model"],
            r["grid"],
            r["precision"],
            f"{r['params']:,}",
            str(r["sequences"]),
            f"{r['frames_per_s']:.1f}",
            f"{r['model_frames_per_s']:.1f}",
            f"{100 * r['write_share']:.1f}%",
            f"{100 * r['read_share']:.1f}%",
        )
    Console().print(table)
    worst = max(r["write_share"] for r in rows)
    Console().print(
        f"writing: at most {100 * worst:.1f}% of a rollout (target <= {100 * WRITE_SHARE_TARGET:.0f}%); "
        f"{10 * steps} vs {steps} steps: {scaling['ratio_total']:.2f}x the time "
        f"({scaling['ratio_model']:.2f}x in the model; target <= {LINEARITY_TARGET:.0f}x)"
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "benchmark": "rollout",
                "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "machine": {
                    "platform": platform.platform(),
                    "processor": platform.processor(),
                    "torch": torch.__version__,
                    "threads": torch.get_num_threads(),
                    "cpus": os.cpu_count(),
                    "load_average_at_end": list(os.getloadavg()),
                },
                "settings": {
                    "params": params,
                    "layers": layers,
                    "context": context,
                    "sequences": sequences,
                    "steps": steps,
                    "batch_size": "all sequences of a grid",
                    "repeats": args.repeats,
                    "quick": args.quick,
                },
                "rows": rows,
                "max_write_share": worst,
                "write_share_target": WRITE_SHARE_TARGET,
                "steps_scaling": scaling,
            },
            indent=2,
        )
        + "\n"
    )
    console.log(f"wrote {args.out}")


if __name__ == "__main__":
    main()
