"""Models by name (`create_model`, `MODEL_NAMES`), the `norm="auto"` choice and sizing to a
parameter budget (`width_for_params`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from minconv_cli.models.cells import CELL_BACKENDS
from minconv_cli.models.network import NORMS, PREDICTS, RecurrentForecaster
from minconv_cli.models.padding import CYLINDER_PADS, PADDINGS

MODEL_NAMES = ("minconvgru", "minconvlstm", "minconvexplstm", "convgru", "convlstm")
NORM_CHOICES = ("auto", *NORMS)

_OPTIONS = {
    "widths": None,
    "predict": "next",
    "static_channels": 0,
    "scan_backend": "auto",
    "peepholes": False,
    "cylinder_pad": "zeros",
    "norm_groups": 1,
    "time_chunk": 0,
}


def _choice(option: str, value: Any, allowed: Sequence[str]) -> None:
    if value not in allowed:
        raise ValueError(f"{option}: expected one of {', '.join(allowed)}, got {value!r}")


def create_model(
    name: str,
    in_channels: int,
    out_channels: int | None = None,
    width: int = 32,
    layers: int = 2,
    kernel_size: int = 3,
    padding: str = "zeros",
    norm: str = "layer",
    grid: Sequence[int] | None = None,
    **options: Any,
) -> RecurrentForecaster:
    """Build one of `MODEL_NAMES`; `create_model(**model.hparams)` rebuilds the same architecture.

    options: widths (per layer), predict ("next" | "increment"), static_channels, scan_backend
    ("auto" | "fused" | "linear" | "log"), peepholes (convlstm), cylinder_pad ("zeros" |
    "replicate"), norm_groups (for norm="group"), time_chunk (teacher-forced frames per chunk, 0: auto).
    norm="auto" resolves with `auto_norm` (hparams hold the resolved kind).
    """
    _choice("model", name, MODEL_NAMES)
    unknown = sorted(set(options) - set(_OPTIONS))
    if unknown:
        raise ValueError(
            f"create_model options: expected some of {', '.join(_OPTIONS)}, got {', '.join(unknown)}"
        )
    opts = {**_OPTIONS, **options}
    _choice("padding", padding, PADDINGS)
    _choice("norm", norm, NORM_CHOICES)
    _choice("predict", opts["predict"], PREDICTS)
    _choice("scan_backend", opts["scan_backend"], CELL_BACKENDS)
    _choice("cylinder_pad", opts["cylinder_pad"], CYLINDER_PADS)
    static = int(opts["static_channels"])
    if not 0 <= static < in_channels:
        raise ValueError(
            f"static_channels: expected 0..{in_channels - 1} (fewer than in_channels), got {static}"
        )
    out_channels = in_channels - static if out_channels is None else int(out_channels)
    if opts["predict"] == "increment" and out_channels != in_channels - static:
        raise ValueError(
            f"predict='increment': expected out_channels == dynamic input channels ({in_channels - static}), got {out_channels}"
        )
    widths = (
        [int(w) for w in opts["widths"]]
        if opts["widths"] is not None
        else [int(width)] * int(layers)
    )
    if not widths or min(widths) < 1:
        raise ValueError(f"widths: expected at least one positive width, got {widths}")
    if grid is not None:
        grid = tuple(int(n) for n in grid)
        if len(grid) != 2 or min(grid) < 1:
            raise ValueError(f"grid: expected (H, W) with positive sizes, got {grid}")
    if norm == "auto":
        other = _parameters_without_norm(
            name, in_channels, out_channels, widths, kernel_size, padding, grid, opts
        )
        norm = auto_norm(grid, len(widths), other)
    if norm == "layer" and grid is None:
        raise ValueError(
            "norm='layer': expected grid=(H, W) (LayerNorm over the grid has per-cell parameters), got None"
        )
    if norm == "group" and any(w % int(opts["norm_groups"]) for w in widths):
        raise ValueError(
            f"norm_groups: expected a divisor of every width {widths}, got {opts['norm_groups']}"
        )
    if int(opts["time_chunk"]) < 0:
        raise ValueError(
            f"time_chunk: expected 0 (auto) or a positive number of frames, got {opts['time_chunk']}"
        )
    hparams = {
        "name": name,
        "in_channels": int(in_channels),
        "out_channels": out_channels,
        "width": widths[0],
        "layers": len(widths),
        "kernel_size": int(kernel_size),
        "padding": padding,
        "norm": norm,
        "grid": list(grid) if grid is not None else None,
        **{
            **opts,
            "widths": widths,
            "static_channels": static,
            "peepholes": bool(opts["peepholes"]),
        },
    }
    return RecurrentForecaster(
        name=name,
        in_channels=int(in_channels),
        out_channels=out_channels,
        widths=widths,
        kernel_size=int(kernel_size),
        padding=padding,
        norm=norm,
        grid=grid,
        predict=opts["predict"],
        static_channels=static,
        scan_backend=opts["scan_backend"],
        peepholes=bool(opts["peepholes"]),
        cylinder_pad=opts["cylinder_pad"],
        norm_groups=int(opts["norm_groups"]),
        time_chunk=int(opts["time_chunk"]),
        hparams=hparams,
    )


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


def _parameters_without_norm(
    name, in_channels, out_channels, widths, kernel_size, padding, grid, opts
) -> int:
    """Parameters of this architecture with norm="none" (built on the meta device: cheap)."""
    with torch.device("meta"):
        model = create_model(
            name,
            in_channels,
            out_channels,
            kernel_size=kernel_size,
            padding=padding,
            norm="none",
            grid=grid,
            **{**opts, "widths": widths},
        )
    return count_parameters(model)


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
    """The width (same for every layer) whose parameter count is closest to `params`.

    kwargs are passed to `create_model` (kernel_size, norm, padding, options); models are built on
    the meta device, so sizing is cheap and counts exactly what `create_model` builds.
    """
    if params < 1:
        raise ValueError(f"params: expected a positive parameter budget, got {params}")
    count = _meta_counter(name, in_channels, layers, grid, out_channels, kwargs)
    return _closest_uniform(count, params)


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
    """Per-layer widths whose parameter count is within `tolerance` of `params` where possible.

    The uniform width of `width_for_params` when it lands within tolerance (the paper's widths);
    otherwise the closest mix of w and w+1 (the first or last k layers one wider), since one
    uniform width step moves the count by ~2/w, more than 3% for narrow models.
    """
    if params < 1:
        raise ValueError(f"params: expected a positive parameter budget, got {params}")
    count = _meta_counter(name, in_channels, layers, grid, out_channels, kwargs)
    smallest = count([1] * layers)
    if smallest > (1 + tolerance) * params:
        grid_part = ""
        if kwargs.get("norm", "layer") == "layer" and grid is not None:
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


def _meta_counter(name: str, in_channels: int, layers: int, grid, out_channels, kwargs):
    """count(width or widths) -> parameters of that architecture, built on the meta device."""

    def count(width: int | Sequence[int]) -> int:
        size = {"widths": list(width)} if isinstance(width, (list, tuple)) else {"width": width}
        with torch.device("meta"):
            model = create_model(
                name, in_channels, out_channels, layers=layers, grid=grid, **size, **kwargs
            )
        return count_parameters(model)

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
