"""Models from their spec (`create_model`), the `norm="auto"` choice and counting parameters."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import torch

from minconv_cli.core import allocator
from minconv_cli.models.network import RecurrentForecaster
from minconv_cli.models.spec import ModelSpec


def create_model(
    spec: ModelSpec | str | None = None, *args: Any, **kwargs: Any
) -> RecurrentForecaster:
    """Build the model a `ModelSpec` describes; `create_model(model.spec)` rebuilds it.

    `create_model(name, in_channels, ...)` / `create_model(**model.hparams)` are shorthands for
    `create_model(ModelSpec(name, in_channels, ...))` (positional order as in `ModelSpec`).
    norm="auto" resolves with `auto_norm` (the model's spec holds the resolved kind).
    Also applies `core.allocator.keep_freed_memory()` (once per process, as `train` and
    `rollout` do), so that a model used from Python reuses freed activations too (2x faster
    steps at 128x128); glibc's MALLOC_*_ variables or a preloaded allocator opt out.
    """
    if not isinstance(spec, ModelSpec):
        values = dict(kwargs)
        if spec is not None:
            values["name"] = spec
        names = [f.name for f in dataclasses.fields(ModelSpec)][1 : 1 + len(args)]
        values.update(zip(names, args, strict=True))
        spec = ModelSpec.from_dict(values)
    elif args or kwargs:
        raise TypeError("create_model(spec): no further arguments with a ModelSpec")
    spec = spec.validated()
    if spec.norm == "auto":
        other = count_parameters(on_meta(dataclasses.replace(spec, norm="none")))
        spec = dataclasses.replace(spec, norm=auto_norm(spec.grid, spec.layers, other))
    allocator.keep_freed_memory()
    return RecurrentForecaster(spec)


def on_meta(spec: ModelSpec) -> RecurrentForecaster:
    """The model built on the meta device (cheap: for counting parameters)."""
    with torch.device("meta"):
        return create_model(spec)


def grid_norm_parameters(grid: Sequence[int], layers: int) -> int:
    """Parameters of `norm="layer"`: a weight and a bias per grid cell, in every layer."""
    return 2 * int(grid[0]) * int(grid[1]) * int(layers)


def auto_norm(grid: Sequence[int] | None, layers: int, other_parameters: int) -> str:
    """`layer` (the paper's LayerNorm over (H, W)) while its per-cell parameters do not outnumber
    the rest of the model (`other_parameters`); else `instance` (the same statistics with a
    per-channel affine), so that large grids do not make the model grow with the grid."""
    if grid is None or grid_norm_parameters(grid, layers) > other_parameters:
        return "instance"
    return "layer"


def count_parameters(model: torch.nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
