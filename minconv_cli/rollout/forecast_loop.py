"""The model run of a rollout: context frames in, leads out (physical units)."""

from __future__ import annotations

from typing import Any

import numpy as np

from minconv_cli.data import Normalizer


def forecast(
    model: Any,
    normalizer: Normalizer,
    frames: np.ndarray,
    static: np.ndarray | None,
    steps: int,
    device: Any = "cpu",
    precision: str = "fp32",
    noise: tuple[np.ndarray, np.ndarray] | None = None,
    mix: np.ndarray | None = None,
) -> np.ndarray:
    """Leads 1..steps in physical units (B, steps, C, H, W) from context frames (B, K, C, H, W).

    The context is ingested in parallel mode; its last output is lead 1, then `model.step` runs
    steps-1 times carrying the state, so the cost is linear in `steps`. `precision` (resolved:
    fp32 or bf16) is that of the convolutions; state and outputs are fp32.
    `noise` = (index (B, steps), factor (B,)) from `ensemble.step_noise_draws`: every lead gets
    factor x one of the row's own one-step residuals on the second half of its context (teacher
    forced, normalised units), the model's error made on this very forecast's frames.
    `mix` (B, B) from `ensemble.recentre_matrix`, if given, recentres every lead's rows (after the
    noise, before they are fed back).
    """
    import torch

    from minconv_cli.core.precision import autocast
    from minconv_cli.rollout.plan import residual_count

    x, valid = normalizer.normalize(frames)
    with torch.inference_mode(), autocast(device, precision):
        xt = torch.from_numpy(np.ascontiguousarray(x)).to(device)
        st = None
        if static is not None and static.shape[0]:
            s = torch.from_numpy(np.ascontiguousarray(normalizer.normalize_static(static))).to(
                device
            )
            st = s.unsqueeze(0).expand(xt.shape[0], *s.shape).contiguous()
        y, state = model(xt, context=xt.shape[1], static=st, return_state=True)
        leads = y.new_empty(y.shape[0], steps, *y.shape[2:])  # filled in place, lead by lead
        error = None
        if noise is not None:
            n = residual_count(xt.shape[1])
            ok = torch.from_numpy(np.ascontiguousarray(valid[:, -n:])).to(device)
            pool = torch.where(ok, xt[:, -n:] - y[:, -n - 1 : -1], 0.0)  # (B, n, C, H, W)
            rows = torch.arange(pool.shape[0], device=device)[:, None]
            index = torch.from_numpy(noise[0]).to(device)
            factor = torch.from_numpy(noise[1]).to(device)[:, None, None, None]
            error = pool[rows, index] * factor[:, None]  # (B, steps, C, H, W)
        recentre = None if mix is None else _recentring(mix, device)
        pred = y[:, -1] if error is None else y[:, -1] + error[:, 0]
        pred = leads[:, 0] = pred if recentre is None else recentre(pred)
        for i in range(1, steps):
            pred, state = model.step(pred, state, static=st)
            if error is not None:
                pred = pred + error[:, i]
            if recentre is not None:
                pred = recentre(pred)
            leads[:, i] = pred
        out = normalizer.denormalize(leads)
        return out.float().cpu().numpy()


def _recentring(mix: np.ndarray, device: Any) -> Any:
    """`rows -> mix @ rows` over the batch dim, in fp32 whatever the autocast around it."""
    import torch

    m = torch.from_numpy(mix).to(device)

    def apply(rows: Any) -> Any:
        with torch.autocast(m.device.type, enabled=False):
            return torch.einsum("rb,b...->r...", m, rows.float())

    return apply
