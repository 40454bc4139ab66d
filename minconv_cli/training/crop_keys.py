"""The `train.crop` / `train.crop_dry_keep` / `train.step_memory` keys: parsing and checking
(a leaf module, so that the config can check them without importing the crop machinery)."""

from __future__ import annotations

from typing import Any

from minconv_cli.core.errors import MinconvError
from minconv_cli.data.memory import parse_size


def crop_shape(crop: list[int] | None) -> tuple[int, int] | None:
    """(H, W) of `train.crop` ([N] is N x N); None without a crop; one-line error when invalid."""
    if crop is None:
        return None
    if len(crop) not in (1, 2) or min(crop) < 1:
        raise MinconvError(f"--crop (train.crop): expected N or HxW with sizes >= 1, got {crop}")
    return (int(crop[0]), int(crop[-1]))


def parse_crop(text: str | None) -> list[int] | None:
    """`128` -> [128], `128x96` -> [128, 96] (H x W); one-line error naming --crop otherwise."""
    if text is None:
        return None
    parts = text.lower().replace(" ", "").split("x")
    if len(parts) not in (1, 2) or not all(p.isdigit() and int(p) > 0 for p in parts):
        raise MinconvError(f"--crop: expected N or HxW (e.g. 128 or 128x96), got {text!r}")
    return [int(p) for p in parts]


def check_train_options(train: Any, source: str) -> None:
    """One-line errors for the crop and step-memory keys of `train` (a `TrainConfig`)."""
    crop_shape(train.crop)
    if not 0.0 <= train.crop_dry_keep <= 1.0:
        raise MinconvError(
            f"{source}: train.crop_dry_keep (--crop-dry-keep): expected 0..1, got {train.crop_dry_keep}"
        )
    if train.step_memory is not None:
        parse_size(train.step_memory, f"{source}: train.step_memory")
