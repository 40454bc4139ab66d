"""What both losses share: a window batch split into inputs, targets, mask and statics on the
device, and the weighting of the teacher-forced and closed-loop parts."""

from __future__ import annotations

import torch

from minconv_cli.training.config import TrainConfig


def split_window(
    batch: dict, context: int, horizon: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """(inputs x[:, :T], targets x[:, 1:T+1], target mask, static) with T = context + horizon."""
    steps = context + horizon
    x = batch["x"].to(device, non_blocking=True)
    mask = batch["mask"].to(device, non_blocking=True)
    static = batch["static"]
    static = static.to(device, non_blocking=True) if static.shape[1] else None
    return x[:, :steps], x[:, 1 : steps + 1], mask[:, 1 : steps + 1], static


def weighted_loss(tf: torch.Tensor, cl: torch.Tensor, cfg: TrainConfig) -> torch.Tensor:
    """The teacher-forced and closed-loop parts of the loss, weighted by tf_weight/cl_weight."""
    return (cfg.tf_weight * tf + cfg.cl_weight * cl) / (cfg.tf_weight + cfg.cl_weight)
