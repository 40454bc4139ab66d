"""Models from their spec (`create_model`), the `norm="auto"` choice and sizing to a parameter
budget (`width_for_params`)."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import torch

from minconv_cli.models.network import RecurrentForecaster
from minconv_cli.models.spec import ModelSpec


def create_model(
    spec: ModelSpec | str | None = None, *args: Any, **kwargs: Any
) -> RecurrentForecaster:
    """Build the model a `ModelSpec` describes; `create_model(model.spec)` rebuilds it.

    `create_model(name, in_channels, ...)` / `create_model(**model.hparams)` are shorthands for
    `create_model(ModelSpec(name, in_channels, ...))` (positional order as in `ModelSpec`).
    norm="auto" resolves with `auto_norm` (the model's spec holds the resolved kind).
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
        other = count_parameters(_on_meta(dataclasses.replace(spec, norm="none")))
        spec = dataclasses.replace(spec, norm=auto_norm(spec.grid, spec.layers, other))
    return RecurrentForecaster(spec)


def _on_meta(spec: ModelSpec) -> RecurrentForecaster:
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


def width_for_params(
    name: str,
    params: int,
    in_channels: int,
    layers: int,
    grid: Sequence[int] | None,
    out_channels: int | None = None,
    **kwargs: Any,
) -> int:
    """`fit_width` of `ModelSpec(name, in_channels, out_channels, layers=, grid=, **kwargs)`."""
    return fit_width(_sized_spec(name, in_channels, layers, grid, out_channels, kwargs), params)


def widths_for_params(
    name: str,
    params: int,
    in_channels: int,
    layers: int,
    grid: Sequence[int] | None,
    out_channels: int | None = None,
    tolerance: float = 0.03,
    **kwargs: Any,
) -> list[int]:
    """`fit_widths` of `ModelSpec(name, in_channels, out_channels, layers=, grid=, **kwargs)`."""
    spec = _sized_spec(name, in_channels, layers, grid, out_channels, kwargs)
    return fit_widths(spec, params, tolerance)


def _sized_spec(name, in_channels, layers, grid, out_channels, kwargs) -> ModelSpec:
    values = {"name": name, "in_channels": in_channels, "out_channels": out_channels, **kwargs}
    return ModelSpec.from_dict({**values, "layers": layers, "grid": grid})


def fit_width(spec: ModelSpec, params: int) -> int:
    """The width (same for every layer) whose parameter count is closest to `params`.

    Models are built on the meta device, so sizing is cheap and counts exactly what
    `create_model` builds.
    """
    if params < 1:
        raise ValueError(f"params: expected a positive parameter budget, got {params}")
    return _closest_uniform(_meta_counter(spec), params)


def fit_widths(spec: ModelSpec, params: int, tolerance: float = 0.03) -> list[int]:
    """Per-layer widths (`spec.layers` of them) whose parameter count is within `tolerance` of
    `params` where possible.

    The uniform width of `fit_width` when it lands within tolerance (the paper's widths);
    otherwise the closest mix of w and w+1 (the first or last k layers one wider), since one
    uniform width step moves the count by ~2/w, more than 3% for narrow models.
    """
    if params < 1:
        raise ValueError(f"params: expected a positive parameter budget, got {params}")
    layers, grid = spec.layers, spec.grid
    count = _meta_counter(spec)
    smallest = count([1] * layers)
    if smallest > (1 + tolerance) * params:
        grid_part = ""
        if spec.norm == "layer" and grid is not None:
            grid_part = (
                f", {grid_norm_parameters(grid, layers):,} of them LayerNorm's per-cell parameters "
                f"over the {grid[0]}x{grid[1]} grid (norm='auto' or 'instance' has none)"
            )
        raise ValueError(
            f"params: expected at least {smallest:,} (the smallest such model, width 1{grid_part}), "
            f"got {params:,}"
        )
    uniform = _closest_uniform(count, params)
    if abs(count(uniform) - params) <= tolerance * params or layers == 1:
        return [uniform] * layers
    w = uniform if count(uniform) < params or uniform == 1 else uniform - 1
    candidates = [[w] * layers]
    for k in range(1, layers):
        candidates += [[w] * (layers - k) + [w + 1] * k, [w + 1] * k + [w] * (layers - k)]
    return min(candidates, key=lambda ws: abs(count(ws) - params))


def _meta_counter(spec: ModelSpec):
    """count(width or widths) -> parameters of `spec` at that size, built on the meta device."""

    def count(width: int | Sequence[int]) -> int:
        if isinstance(width, (list, tuple)):
            sized = dataclasses.replace(spec, widths=list(width))
        else:
            sized = dataclasses.replace(spec, width=width, widths=None)
        return count_parameters(_on_meta(sized))

    return count


def _closest_uniform(count, params: int) -> int:
    lo, hi = 1, 2
    while count(hi) < params:
        lo, hi = hi, hi * 2
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if count(mid) < params:
            lo = mid
        else:
            hi = mid
    return min((lo, hi), key=lambda w: abs(count(w) - params))
