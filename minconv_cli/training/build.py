"""What a run trains: the configured model for its data, its optimiser and its learning-rate
schedule, and the note on what `norm: auto` chose."""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from minconv_cli.core.errors import MinconvError
from minconv_cli.models import count_parameters, create_model, fit_widths, grid_norm_parameters
from minconv_cli.training.config import Config
from minconv_cli.training.crop import check_fits, crop_model_options, crop_shape
from minconv_cli.training.data import TrainingData


def build_model(config: Config, data: TrainingData) -> torch.nn.Module:
    """The configured model for this data (width from the parameter budget when one is given).
    With `train.crop` it has no grid (it runs on any), so it trains on crops and rolls out whole."""
    m = config.model
    fields = data.fields
    n_static = len(fields.static_channels)
    padding = fields.default_padding if m.padding == "auto" else m.padding
    grid: list[int] | None = list(fields.grid_shape)
    extra = {}
    shape = crop_shape(config.train.crop)
    if shape is not None:
        check_fits(shape, fields.grid_shape, fields.path_label)
        norm, padding, _ = crop_model_options(
            m.norm, m.padding, fields.default_padding, m.peepholes
        )
        grid, extra = None, {"norm": norm}
    spec = m.to_spec(
        in_channels=len(fields.channels) + n_static,
        static_channels=n_static,
        grid=grid,
        padding=padding,
        **extra,
    )
    try:
        if m.params is not None:  # the paper's uniform width where it lands within 3%
            spec = dataclasses.replace(spec, widths=fit_widths(spec, m.params))
        return create_model(spec)
    except ValueError as err:
        raise MinconvError(f"config: model: {err}") from None


def norm_note(requested: str, model: torch.nn.Module) -> str | None:
    """What `norm: auto` chose for this model and why (None when the norm was given)."""
    if requested != "auto" or model.grid is None:
        return None
    kind, (h, w) = model.hparams["norm"], model.grid
    cost = grid_norm_parameters(model.grid, len(model.widths))
    other = count_parameters(model) - sum(p.numel() for p in model.norms.parameters())
    if kind == "layer":
        return (
            f"norm: layer (auto: LayerNorm over the {h}x{w} grid, {cost:,} per-cell parameters "
            f"beside the model's {other:,})"
        )
    return (
        f"norm: {kind} (auto: LayerNorm over the {h}x{w} grid would add {cost:,} per-cell "
        f"parameters to the model's {other:,}; --norm layer to use it anyway)"
    )


def build_optimizer(config: Config, model: torch.nn.Module) -> torch.optim.Optimizer:
    """Adam or AdamW over the model's parameters, as `optim` says."""
    o = config.optim
    opt_cls = torch.optim.AdamW if o.name == "adamw" else torch.optim.Adam
    return opt_cls(model.parameters(), lr=o.lr, weight_decay=o.weight_decay)


def build_scheduler(config: Config, optimizer: torch.optim.Optimizer, steps_per_epoch: int) -> Any:
    """The learning-rate schedule: cosine over every step of the run, on plateau, or None."""
    o = config.optim
    if o.schedule == "cosine":
        total = max(1, config.train.epochs * steps_per_epoch)
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total, eta_min=o.min_lr)
    if o.schedule == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer,
            factor=o.plateau_factor,
            patience=o.plateau_patience,
            min_lr=o.min_lr,
        )
    return None
