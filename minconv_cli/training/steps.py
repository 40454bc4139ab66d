"""One training step's loss and one validation pass, in the paper's two modes (teacher forcing over
`context` steps, closed loop for `horizon` steps), masked where the data has no values."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch

from minconv_cli.core.errors import MinconvError
from minconv_cli.data import Normalizer
from minconv_cli.training.config import TrainConfig
from minconv_cli.training.distributed import Dist, all_reduce_sum
from minconv_cli.training.ensemble_loss import ensemble_loss
from minconv_cli.training.window import split_window, weighted_loss


def training_loss(
    model: torch.nn.Module,
    batch: dict,
    context: int,
    horizon: int,
    cfg: TrainConfig,
    device: torch.device,
    noise: torch.Generator | None = None,
) -> torch.Tensor:
    """Masked MSE over the teacher-forced and closed-loop outputs, weighted by tf_weight/cl_weight;
    gradients flow through the closed loop. Input noise (cfg.noise) comes from the `noise` generator.
    The loss is fp32 whatever the model's precision."""
    if cfg.ensemble_members > 1:
        return ensemble_loss(model, batch, context, horizon, cfg, device, noise)
    inputs, targets, mask, static = split_window(batch, context, horizon, device)
    if cfg.noise > 0 and noise is not None:
        inputs = inputs + cfg.noise * torch.randn(inputs.shape, generator=noise).to(device)
    y = model(inputs, context, static=static)
    sq = (y.float() - targets) ** 2 * mask
    weight = mask.float()
    tf = sq[:, :context].sum() / weight[:, :context].sum().clamp_min(1)
    if horizon == 0:
        return tf
    cl = sq[:, context:].sum() / weight[:, context:].sum().clamp_min(1)
    return weighted_loss(tf, cl, cfg)


@dataclass
class Validation:
    """Validation RMSE in physical units, per channel: teacher-forced, closed-loop, persistence,
    and by lead (lead 1 = the last teacher-forced output, leads 2.. = the closed loop)."""

    channels: list[str]
    std: torch.Tensor  # per channel, to weigh channels equally in `score`
    rmse_tf: torch.Tensor
    rmse_cl: torch.Tensor
    persistence_cl: torch.Tensor
    rmse_by_lead: torch.Tensor  # (leads, C)
    persistence_by_lead: torch.Tensor
    windows: int

    @property
    def has_closed_loop(self) -> bool:
        return self.rmse_by_lead.shape[0] > 1

    @property
    def score(self) -> float:
        """Model selection: closed-loop RMSE in units of each channel's std, averaged over channels."""
        rmse = self.rmse_cl if self.has_closed_loop else self.rmse_tf
        return float((rmse / self.std).mean())

    def row(self) -> dict[str, float]:
        """Headline columns (means over channels of the per-channel RMSE), plus per channel if several."""
        out = {
            "val_rmse_tf": float(self.rmse_tf.mean()),
            "val_rmse_cl": float(self.rmse_cl.mean()),
            "persistence_rmse": float(self.persistence_cl.mean()),
        }
        if len(self.channels) > 1:
            for i, name in enumerate(self.channels):
                out[f"val_rmse_cl[{name}]"] = float(self.rmse_cl[i])
                out[f"persistence_rmse[{name}]"] = float(self.persistence_cl[i])
        return out

    def detail(self) -> dict[str, dict]:
        """Per channel, everything (for summary.json)."""
        return {
            name: {
                "rmse_tf": float(self.rmse_tf[i]),
                "rmse_cl": float(self.rmse_cl[i]),
                "persistence_rmse_cl": float(self.persistence_cl[i]),
                "rmse_by_lead": [float(v) for v in self.rmse_by_lead[:, i]],
                "persistence_by_lead": [float(v) for v in self.persistence_by_lead[:, i]],
            }
            for i, name in enumerate(self.channels)
        }


@torch.no_grad()
def validate(
    model: torch.nn.Module,
    batches: Iterable[dict],
    context: int,
    horizon: int,
    normalizer: Normalizer,
    device: torch.device,
    info: Dist,
) -> Validation:
    """RMSE of the model and of persistence (the last observed frame) on the same windows, summed
    over this rank's windows and reduced over ranks."""
    channels = list(normalizer.channels)
    n_ch, steps = len(channels), context + horizon
    model_se = torch.zeros(steps, n_ch, dtype=torch.float64)
    counts = torch.zeros(steps, n_ch, dtype=torch.float64)
    persist_se = torch.zeros(horizon + 1, n_ch, dtype=torch.float64)
    windows = torch.zeros(1, dtype=torch.float64)
    mean = torch.as_tensor(normalizer.mean, dtype=torch.float32, device=device)[:, None, None]
    std = torch.as_tensor(normalizer.std, dtype=torch.float32, device=device)[:, None, None]
    for batch in batches:
        inputs, targets, mask, static = split_window(batch, context, horizon, device)
        y = model(inputs, context, static=static)
        pred = y.float() * std + mean
        truth = targets * std + mean
        weight = mask.float()
        model_se += ((pred - truth) ** 2 * weight).sum(dim=(0, 3, 4)).double().cpu()
        counts += weight.sum(dim=(0, 3, 4)).double().cpu()
        last = inputs[:, context - 1 : context] * std + mean
        tail = slice(context - 1, steps)
        persist_se += (
            ((last - truth[:, tail]) ** 2 * weight[:, tail]).sum(dim=(0, 3, 4)).double().cpu()
        )
        windows += inputs.shape[0]
    for t in (model_se, counts, persist_se, windows):
        all_reduce_sum(t, info)
    empty = [name for name, n in zip(channels, counts.sum(0).tolist(), strict=True) if n == 0]
    if empty:  # an RMSE over no cells is no score (and never 0)
        raise MinconvError(
            f"validation: the validation windows hold no valid (non-NaN) value of "
            f"{', '.join(map(repr, empty))}; choose a --val-period with data"
        )
    lead_counts = counts[context - 1 :]
    return Validation(
        channels=channels,
        std=torch.as_tensor(normalizer.std, dtype=torch.float64),
        rmse_tf=_rms(model_se[:context].sum(0), counts[:context].sum(0)),
        rmse_cl=_rms(model_se[context:].sum(0), counts[context:].sum(0))
        if horizon
        else torch.full((n_ch,), float("nan"), dtype=torch.float64),
        persistence_cl=_rms(persist_se[1:].sum(0), counts[context:].sum(0))
        if horizon
        else _rms(persist_se[0], lead_counts[0]),
        rmse_by_lead=_rms(model_se[context - 1 :], lead_counts),
        persistence_by_lead=_rms(persist_se, lead_counts),
        windows=int(windows.item()),
    )


def _rms(squares: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """sqrt(sum / count), NaN where nothing was counted."""
    return torch.where(counts > 0, squares / counts.clamp_min(1), float("nan")).sqrt()
