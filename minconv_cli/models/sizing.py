"""Sizing a model to a parameter budget: `fit_widths` (what training uses), `fit_width`, and
the same from loose arguments (`width_for_params`, `widths_for_params`)."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from minconv_cli.models.create import count_parameters, grid_norm_parameters, on_meta
from minconv_cli.models.spec import ModelSpec


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
        return count_parameters(on_meta(sized))

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
