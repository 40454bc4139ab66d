"""Before the first step: will a step fit in memory? The estimate (`models/memory.step_bytes`)
against the memory a step may use; too large a batch is halved until it fits (said once), and a
step that does not fit at batch 1 is refused in one line naming the --crop sizes that would fit."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from minconv_cli.core.errors import MinconvError
from minconv_cli.data.memory import available_memory, parse_size
from minconv_cli.models.memory import format_bytes, step_bytes
from minconv_cli.training.crop_keys import crop_shape

# offered when a whole frame is too large
CROP_SIZES = (512, 384, 256, 192, 128, 96, 64, 48, 32, 16)


@dataclass
class StepMemory:
    """The estimate behind a run's batch size (recorded in summary.json)."""

    requested_batch: int
    batch: int
    step_bytes: int  # estimated at `batch`
    room_bytes: int
    room_source: str  # "train.step_memory" or "available memory less the data"
    grid: list[int]
    frames: int
    note: str | None = None

    def summary(self) -> dict[str, Any]:
        return {
            "requested_batch": self.requested_batch,
            "batch": self.batch,
            "estimate_bytes": self.step_bytes,
            "room_bytes": self.room_bytes,
            "room": self.room_source,
            "grid": self.grid,
            "frames": self.frames,
        }


def step_room(step_memory: Any, data_bytes: int, device: Any = None) -> tuple[int, str]:
    """(bytes a step may use, where that number comes from): `step_memory`, the free memory of
    a CUDA `device`, or the machine's available memory less `data_bytes`."""
    if step_memory is not None:
        return parse_size(step_memory, "train.step_memory"), "train.step_memory"
    if device is not None and getattr(device, "type", None) == "cuda":
        import torch

        return int(torch.cuda.mem_get_info(device)[0]), "free GPU memory"
    return max(0, available_memory() - int(data_bytes)), "available memory less the data"


def fitting_crops(
    hparams: dict, batch: int, frames: int, grid: tuple[int, int], room: int, precision: str
) -> list[int]:
    """The crop sizes of CROP_SIZES (below the grid) whose step at `batch` fits in `room`."""
    sizes = [n for n in CROP_SIZES if n < min(grid)]
    return [n for n in sizes if step_bytes(hparams, batch, frames, (n, n), precision) <= room]


def plan_batch(
    hparams: dict,
    batch: int,
    frames: int,
    grid: tuple[int, int],
    precision: str,
    room: tuple[int, str],
    what: str = "step",
    offer: str | None = None,
    training: bool = True,
) -> StepMemory:
    """The batch to run: `batch`, or the largest halving of it whose step fits `room`; a one-line
    error naming --batch-size and fitting --crop sizes when batch 1 does not fit."""
    limit, source = room

    def estimate(b: int) -> int:
        return step_bytes(hparams, b, frames, grid, precision, training)

    need, b = estimate(batch), batch
    while b > 1 and estimate(b) > limit:
        b = max(1, b // 2)
    fits = estimate(b)
    shape = f"{grid[0]}x{grid[1]}"
    if fits > limit:
        if offer is None:
            crops = fitting_crops(hparams, 1, frames, grid, limit, precision)
            offer = f"use --crop {crops[0]} (or smaller)" if crops else "use a smaller --width"
            offer += " with --batch-size 1"
        raise MinconvError(
            f"memory: a {what} of batch 1 on the {shape} grid needs ~{format_bytes(fits)}, "
            f"{format_bytes(limit)} free ({source}); {offer}"
        )
    record = StepMemory(batch, b, fits, limit, source, list(grid), frames)
    if b != batch:
        record.note = (
            f"batch {batch} -> {b}: a {what} of {batch} on the {shape} grid needs "
            f"~{format_bytes(need)}, {format_bytes(limit)} free ({source}); "
            "--batch-size or --crop to choose"
        )
    return record


def plan_training_step(
    config: Any, data: Any, hparams: dict, precision: str, device: Any = None
) -> StepMemory:
    """The training batch for this run's grid (or crop), frames and precision (see plan_batch).
    Available memory is read after the data was loaded; lazily read data's block buffers (half
    its memory limit) are set aside as well."""
    t = config.train
    grid = crop_shape(t.crop) or tuple(data.fields.grid_shape)
    reserved = 0 if data.memory.get("in_memory", True) else data.memory["memory_limit_bytes"] // 2
    room = step_room(t.step_memory, reserved, device)
    # an ensemble loss runs each window once per member: activations grow as more frames would
    frames = (t.context + t.horizon) * max(1, t.ensemble_members)
    return plan_batch(hparams, t.batch_size, frames, grid, precision, room)
