"""How the channel count of a 3x3 convolution, and so a model's width, sets CPU speed at 64x64.

oneDNN's speed per FLOP depends strongly on the channel counts, which is why MinConvGRU at the
paper's width 49 trains slower than at 48. Prints a table and writes
benchmarks/results/conv_channels.json: forward+backward of one conv over 80 frames of 64x64
(the Min cell's batched teacher-forced conv), and MinConvGRU's training step at widths 48 and 49
against ConvGRU at its paper width 28 (B4, T25 = 20 teacher-forced + 5 closed loop), interleaved,
with MinConvLSTM and ConvLSTM at theirs. `--precision bf16` runs all of it under bf16 autocast as
`minconv train --precision bf16` does (the convs channels-last) and writes conv_channels_bf16.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from minconv_cli.core.allocator import keep_freed_memory
from minconv_cli.core.precision import autocast
from minconv_cli.models import count_parameters, create_model

RESULTS = Path(__file__).parent / "results"
CONVS = [(49, 98), (48, 96), (49, 112), (64, 112), (56, 112), (64, 128)]
STEPS = [
    ("minconvgru", 49),
    ("minconvgru", 48),
    ("convgru", 28),
    ("minconvlstm", 40),
    ("convlstm", 25),
]


def conv_ms(cin: int, cout: int, frames: int, reps: int, precision: str) -> float:
    conv = torch.nn.Conv2d(cin, cout, 3, padding=1)
    x = torch.randn(frames, cin, 64, 64, requires_grad=True)
    if precision == "bf16":  # the layout the bf16 kernels use natively, as GridConv2d runs them
        conv = conv.to(memory_format=torch.channels_last)
        x = x.detach().to(torch.bfloat16, memory_format=torch.channels_last).requires_grad_()
    times = []
    for _ in range(reps + 1):  # the first is warm-up
        t0 = time.perf_counter()
        with autocast("cpu", precision):
            y = conv(x)
        y.sum().backward()
        times.append(time.perf_counter() - t0)
    return statistics.median(times[1:]) * 1000


def step_timer(name: str, width: int, precision: str):
    """A closure timing one training step (forward, MSE backward, Adam) of a 4-layer model."""
    torch.manual_seed(0)
    model = create_model(name, 1, width=width, layers=4, grid=(64, 64), padding="circular")
    opt = torch.optim.Adam(model.parameters())
    x = torch.randn(4, 26, 1, 64, 64)

    def step() -> float:
        t0 = time.perf_counter()
        with autocast("cpu", precision):
            y = model(x[:, :25], 20)
        loss = ((y.float() - x[:, 1:]) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        return (time.perf_counter() - t0) * 1000

    return model, step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    parser.add_argument("--out", type=Path, help="default: results/conv_channels[_bf16].json")
    args = parser.parse_args()
    suffix = "" if args.precision == "fp32" else f"_{args.precision}"
    out = args.out or RESULTS / f"conv_channels{suffix}.json"
    keep_freed_memory()  # as `minconv train` runs
    console = Console()
    convs = [
        {"in": cin, "out": cout, "gflop": 2 * 80 * 64 * 64 * cin * cout * 9 * 3 / 1e9}
        | {"ms": conv_ms(cin, cout, 80, args.repeats, args.precision)}
        for cin, cout in CONVS
    ]
    timers = {f"{n} w{w}": step_timer(n, w, args.precision) for n, w in STEPS}
    times: dict[str, list[float]] = {k: [] for k in timers}
    for _ in range(args.repeats + 1):  # interleaved; the first round is warm-up
        for key, (_, step) in timers.items():
            times[key].append(step())
    steps = [
        {"model": key, "params": count_parameters(timers[key][0]), "ms": statistics.median(t[1:])}
        for key, t in times.items()
    ]
    table = Table(title=f"3x3 conv, 80 frames of 64x64, forward + backward, {args.precision}")
    for col in ("in → out", "GFLOP", "ms", "GFLOP/s"):
        table.add_column(col, justify="right")
    for c in convs:
        table.add_row(f"{c['in']} → {c['out']}", f"{c['gflop']:.1f}", f"{c['ms']:.0f}",
                      f"{c['gflop'] / c['ms'] * 1000:.0f}")  # fmt: skip
    console.print(table)
    table = Table(title=f"training step, 64x64 B4 T25 (20 tf + 5 cl), 4 layers, {args.precision}")
    for col in ("model", "params", "median ms"):
        table.add_column(col, justify="right")
    for s in steps:
        table.add_row(s["model"], str(s["params"]), f"{s['ms']:.0f}")
    console.print(table)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(
            {
                "benchmark": "conv_channels",
                "torch": torch.__version__,
                "threads": torch.get_num_threads(),
                "precision": args.precision,
                "machine": platform.machine(),
                "repeats": args.repeats,
                "convs": convs,
                "steps": steps,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
