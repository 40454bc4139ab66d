"""The ensemble training option (`train.ensemble_members` > 1): each window runs as several members
whose inputs carry independent Gaussian noise, and the closed-loop steps are scored with the fair
CRPS over the members, so the model learns to turn input uncertainty into honest spread."""

from __future__ import annotations

import math

import torch

from minconv_cli.training.config import TrainConfig
from minconv_cli.training.window import split_window, weighted_loss


def fair_crps(members: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    """Fair CRPS per cell (Ferro 2014) of members (B, M, ...) against truth (B, ...):
    mean_i |x_i - y| - sum_ij |x_i - x_j| / (2 M (M - 1))."""
    m = members.shape[1]
    skill = (members - truth.unsqueeze(1)).abs().mean(1)
    pairs = (members.unsqueeze(1) - members.unsqueeze(2)).abs().sum((1, 2))
    return skill - pairs / (2 * m * (m - 1))


def ensemble_loss(
    model: torch.nn.Module,
    batch: dict,
    context: int,
    horizon: int,
    cfg: TrainConfig,
    device: torch.device,
    noise: torch.Generator | None,
) -> torch.Tensor:
    """Masked MSE of every member over the teacher-forced steps and fair CRPS over the closed-loop
    steps, weighted by tf_weight/cl_weight; the members' noise (ensemble_noise, plus train.noise)
    comes from the `noise` generator."""
    inputs, targets, mask, static = split_window(batch, context, horizon, device)
    m, b = cfg.ensemble_members, inputs.shape[0]
    x = inputs.repeat_interleave(m, dim=0)
    std = math.sqrt(cfg.ensemble_noise**2 + cfg.noise**2)
    if std > 0:
        x = x + std * torch.randn(x.shape, generator=noise).to(device)
    st = static.repeat_interleave(m, dim=0) if static is not None else None
    y = model(x, context, static=st)
    y = y.float().reshape(b, m, *y.shape[1:])
    weight = mask.float()
    sq = ((y[:, :, :context] - targets[:, None, :context]) ** 2).mean(1) * weight[:, :context]
    tf = sq.sum() / weight[:, :context].sum().clamp_min(1)
    if horizon == 0:
        return tf
    crps = fair_crps(y[:, :, context:], targets[:, context:]) * weight[:, context:]
    cl = crps.sum() / weight[:, context:].sum().clamp_min(1)
    return weighted_loss(tf, cl, cfg)
