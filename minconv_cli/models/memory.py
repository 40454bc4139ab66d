"""The activation memory of a step, estimated before it runs (so that a step too large for the
machine is shrunk or refused instead of being killed by the kernel).

A step's activations grow as batch x frames x H x W x (floats kept per grid cell and frame); the
floats per cell are `BYTES_PER_WIDTH[cell]` per unit of hidden width, summed over the layers,
plus `BYTES_PER_CHANNEL` per input and output channel. The constants are fitted (rounded up) to
the peak resident memory of one step measured in fresh processes by benchmarks/memory_estimate.py
(fp32 and bf16 autocast, CPU); see its results in benchmarks/results/memory_estimate.json.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from minconv_cli.models.spec import model_row

# bytes per grid cell, frame and unit of width, forward + backward
BYTES_PER_WIDTH = {"min": 44.0, "convgru": 56.0, "convlstm": 68.0}
# a no-grad forward keeps this share: Min cells scan all frames at once, the others step by step
INFERENCE_SHARE = {"min": 0.7, "convgru": 0.3, "convlstm": 0.3}
BYTES_PER_CHANNEL = 24.0  # per input/output channel, grid cell and frame
HALF_PRECISION_SHARE = 0.9  # bf16/fp16 autocast: only the convolutions' outputs halve


def step_bytes(
    hparams: dict[str, Any],
    batch: int,
    frames: int,
    grid: Sequence[int],
    precision: str = "fp32",
    training: bool = True,
) -> int:
    """Estimated peak activation bytes of one step of `frames` frames on `grid` for a model with
    `hparams` (a `ModelSpec` dict): linear in batch, frames and grid cells."""
    cell = model_row(hparams["name"]).cell
    widths = hparams.get("widths") or [hparams["width"]] * int(hparams["layers"])
    channels = int(hparams["in_channels"]) + int(hparams.get("out_channels") or 0)
    per_cell = BYTES_PER_WIDTH[cell] * sum(widths) + BYTES_PER_CHANNEL * channels
    if not training:
        per_cell *= INFERENCE_SHARE[cell]
    if precision in ("bf16", "fp16"):
        per_cell *= HALF_PRECISION_SHARE
    return int(batch * frames * int(grid[0]) * int(grid[1]) * per_cell)


def format_bytes(n: float) -> str:
    """`31.2 GB`, `640 MB`, `12 KB`: a size for messages."""
    if n >= 2**30:
        return f"{n / 2**30:,.1f} GB"
    if n >= 2**20:
        return f"{n / 2**20:,.0f} MB"
    return f"{n / 2**10:,.0f} KB"
