"""`minconv train --crop N|HxW --crop-dry-keep P`: the options and their config keys (a module
of its own so that train.py stays small)."""

from __future__ import annotations

from typing import Annotated, Any

import typer

Crop = Annotated[
    str | None,
    typer.Option(
        "--crop",
        help="Train on random crops of N x N (or H x W: 128x96) cells of the grid; the model still "
        "forecasts the whole grid. Norm and padding are chosen to fit (said once).",
    ),
]
CropDryKeep = Annotated[
    float | None,
    typer.Option(
        "--crop-dry-keep",
        help="Chance of keeping a crop whose target frames have no cell above "
        "train.crop_wet_threshold (default 0.1, data units); a dropped crop is redrawn. Default 1.",
    ),
]


def crop_options(crop: str | None, dry_keep: float | None) -> dict[str, Any]:
    """The `train.crop` / `train.crop_dry_keep` overrides the options give (None: not given)."""
    from minconv_cli.training.crop_keys import parse_crop

    return {"train.crop": parse_crop(crop), "train.crop_dry_keep": dry_keep}
