"""The three passes of each model's layer convolution at one grid size: forward, backward to the
input and backward to the weights, bf16, in the standard layout and channels-last.

A training step at 128x128 and up is mostly these convolutions (docs/models.md, "Scaling with
grid size"), so their cost per model says how far a model can lead at matched parameters. Each
model's layer at its paper width (`grid_scaling_case.PAPER_WIDTHS`): the Min cells one 3x3 conv
of the layer input, w -> n*w; ConvGRU two of [x, h] (2w -> 2w, 2w -> w); ConvLSTM one (2w -> 4w).
The halo is padded beforehand (as `GridConv2d` does for circular grids), so the call is the conv
alone. Cases interleaved, `--repeats` rounds, medians; prints a table and writes
benchmarks/results/conv_passes.json.

    python benchmarks/conv_passes.py --size 128 --frames 4 --repeats 5
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch
from grid_scaling_case import PAPER_WIDTHS
from rich.console import Console
from rich.table import Table

RESULT = Path(__file__).resolve().parent / "results" / "conv_passes.json"
PASSES = ("forward", "backward_input", "backward_weight")  # the three oneDNN primitives
LAYOUTS = {"standard": torch.contiguous_format, "channels_last": torch.channels_last}


def layer_convs(model: str, width: int) -> list[tuple[int, int]]:
    """(in, out) channels of the 3x3 convs in one layer of `model` at `width`."""
    if model == "convgru":
        return [(2 * width, 2 * width), (2 * width, width)]
    if model == "convlstm":
        return [(2 * width, 4 * width)]
    maps = 2 if model == "minconvgru" else 3
    return [(width, maps * width)]


def pass_seconds(cin: int, cout: int, frames: int, size: int, layout: str) -> dict[str, float]:
    """Seconds of each pass of one bf16 conv over `frames` frames of size x size."""
    fmt = LAYOUTS[layout]
    dt = torch.bfloat16
    x = torch.randn(frames, cin, size + 2, size + 2, dtype=dt).contiguous(memory_format=fmt)
    w = torch.randn(cout, cin, 3, 3, dtype=dt).contiguous(memory_format=fmt)
    b = torch.zeros(cout, dtype=dt)
    grad = torch.randn(frames, cout, size, size, dtype=dt).contiguous(memory_format=fmt)
    args = ([cout], [1, 1], [0, 0], [1, 1], False, [0, 0], 1)
    calls = {
        "forward": lambda: torch.conv2d(x, w, b),
        "backward_input": lambda: torch.ops.aten.convolution_backward(
            grad, x, w, *args, [True, False, False]
        ),
        "backward_weight": lambda: torch.ops.aten.convolution_backward(
            grad, x, w, *args, [False, True, True]
        ),
    }
    out = {}
    for name, call in calls.items():
        call()  # warm-up: oneDNN builds its primitive
        start = time.perf_counter()
        call()
        out[name] = time.perf_counter() - start
    return out


def measure(size: int, frames: int, repeats: int) -> dict[str, dict]:
    """Per model and layout: each pass's median ms, summed over the layer's convs."""
    cases = [(m, layout) for m in PAPER_WIDTHS for layout in LAYOUTS]
    runs: dict[tuple[str, str], list[dict[str, float]]] = {c: [] for c in cases}
    for _ in range(repeats):
        for model, layout in cases:
            convs = layer_convs(model, PAPER_WIDTHS[model])
            times = [pass_seconds(cin, cout, frames, size, layout) for cin, cout in convs]
            runs[model, layout].append({p: sum(t[p] for t in times) for p in PASSES})
    result: dict[str, dict] = {}
    for (model, layout), got in runs.items():
        ms = {p: statistics.median(r[p] for r in got) * 1000 for p in PASSES}
        entry = result.setdefault(model, {"width": PAPER_WIDTHS[model]})
        entry["convs"] = layer_convs(model, PAPER_WIDTHS[model])
        entry[layout] = {**ms, "total": sum(ms.values()), "runs_ms": [
            round(sum(r.values()) * 1000, 1) for r in got
        ]}  # fmt: skip
    return result


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--frames", type=int, default=4, help="frames per call (batch x chunk)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=RESULT)
    args = parser.parse_args(argv)
    result = measure(args.size, args.frames, args.repeats)
    table = Table(title=f"one layer's 3x3 convs, {args.frames} frames of {args.size}², bf16, ms")
    for col in ("model", "in → out", "layout", *PASSES, "total"):
        table.add_column(col, justify="right")
    for model, entry in result.items():
        shapes = " + ".join(f"{i} → {o}" for i, o in entry["convs"])
        for layout in LAYOUTS:
            t = entry[layout]
            table.add_row(model, shapes, layout, *(f"{t[p]:.1f}" for p in (*PASSES, "total")))
    Console(width=120).print(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"machine": platform.processor() or platform.machine(), "torch": torch.__version__}
    meta |= {"threads": torch.get_num_threads(), "size": args.size, "frames": args.frames}
    args.out.write_text(json.dumps({**meta, "repeats": args.repeats, "models": result}, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
