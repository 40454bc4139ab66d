"""The model run of a rollout: context frames in, leads out (physical units), every lead passed
through the plan's lead rule before it is fed back; and the lead rules themselves (torch side).
The loop stays in the normalised (and transformed) space; only the stored leads are inverted."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from minconv_cli.data import Normalizer

Adjust = Callable[[int, Any], Any]  # (lead index, normalised prediction (B, C, H, W)) -> the lead
LeadRule = Callable[[Any, Any, np.ndarray], Adjust]  # (context in, model's outputs on it, valid)


def unchanged(lead: int, pred: Any) -> Any:
    """The identity adjustment: the lead as the model made it (no arithmetic, so bits stay)."""
    return pred


def unchanged_leads(x: Any, y: Any, valid: np.ndarray) -> Adjust:
    """The identity lead rule: no per-step perturbation, no mixing."""
    return unchanged


def forecast(
    model: Any,
    normalizer: Normalizer,
    frames: np.ndarray,
    static: np.ndarray | None,
    steps: int,
    device: Any = "cpu",
    leads: LeadRule = unchanged_leads,
) -> np.ndarray:
    """Leads 1..steps in physical units (B, steps, C, H, W) from context frames (B, K, C, H, W).

    The context is ingested in parallel mode; its last output is lead 1, then `model.step` runs
    steps-1 times carrying the state, so the cost is linear in `steps`. The model runs in its own
    `precision`; state, outputs and everything here are fp32.
    `leads` (a plan's `leads(...)`) is bound to the normalised context and the model's outputs on
    it, and the adjustment it returns is applied to every lead (normalised units) before the lead
    is stored and fed back; the default changes nothing.
    """
    import torch

    x, valid = normalizer.normalize(frames)
    with torch.inference_mode():
        xt = torch.from_numpy(np.ascontiguousarray(x)).to(device)
        st = None
        if static is not None and static.shape[0]:
            s = torch.from_numpy(np.ascontiguousarray(normalizer.normalize_static(static))).to(
                device
            )
            st = s.unsqueeze(0).expand(xt.shape[0], *s.shape).contiguous()
        y, state = model(xt, context=xt.shape[1], static=st, return_state=True)
        out = y.new_empty(y.shape[0], steps, *y.shape[2:])  # filled in place, lead by lead
        adjust = leads(xt, y, valid)
        pred = out[:, 0] = adjust(0, y[:, -1])
        for i in range(1, steps):
            pred, state = model.step(pred, state, static=st)
            pred = out[:, i] = adjust(i, pred)
        return normalizer.denormalize(out).float().cpu().numpy()


# the store attribute that says which channels the model ran in a transformed space (JSON)
TRANSFORM_ATTR = "minconv_transform"


def transform_attrs(loads: list[Any]) -> dict:
    """{TRANSFORM_ATTR: JSON {channel: spec}} when a loaded checkpoint's normaliser has
    transforms (a JSON list of those, one per checkpoint, when checkpoints differ); else {}.
    The stored values are always inverted back to the variable's own units."""
    import json

    specs = [Normalizer.from_dict(each.meta.data.normalizer).transform_specs() for each in loads]
    if not any(specs):
        return {}
    same = all(s == specs[0] for s in specs)
    return {TRANSFORM_ATTR: json.dumps(specs[0] if same else specs)}


def residual_count(context: int) -> int:
    """How many one-step residuals of the context the step noise draws from: those of its second
    half (the first half spins the state up)."""
    return (context - 1) - (context - 1) // 2


@dataclass(frozen=True)
class MemberLeads:
    """An ensemble batch's lead rule: `noise` = (index (B, steps), factor (B,)) from
    `plan.step_noise_draws` adds factor x one of the row's own one-step residuals on the second
    half of its context (teacher forced, normalised units), the model's error made on this very
    forecast's frames; then `mix` (B, B) from `plan.recentre_matrix` recentres the rows. Either
    may be None (off)."""

    noise: tuple[np.ndarray, np.ndarray] | None
    mix: np.ndarray | None

    def __call__(self, x: Any, y: Any, valid: np.ndarray) -> Adjust:
        error = None if self.noise is None else _step_errors(self.noise, x, y, valid)
        recentre = None if self.mix is None else _recentring(self.mix, x.device)
        if error is None and recentre is None:
            return unchanged

        def adjust(lead: int, pred: Any) -> Any:
            if error is not None:
                pred = pred + error[:, lead]
            if recentre is not None:
                pred = recentre(pred)
            return pred

        return adjust


def _step_errors(noise: tuple[np.ndarray, np.ndarray], x: Any, y: Any, valid: np.ndarray) -> Any:
    """(B, steps, C, H, W): each lead's drawn one-step residual of the context, x its factor."""
    import torch

    device = x.device
    n = residual_count(x.shape[1])
    ok = torch.from_numpy(np.ascontiguousarray(valid[:, -n:])).to(device)
    pool = torch.where(ok, x[:, -n:] - y[:, -n - 1 : -1], 0.0)  # (B, n, C, H, W)
    rows = torch.arange(pool.shape[0], device=device)[:, None]
    index = torch.from_numpy(noise[0]).to(device)
    factor = torch.from_numpy(noise[1]).to(device)[:, None, None, None]
    return pool[rows, index] * factor[:, None]


def _recentring(mix: np.ndarray, device: Any) -> Callable[[Any], Any]:
    """`rows -> mix @ rows` over the batch dim, in fp32 (outside the model's autocast)."""
    import torch

    m = torch.from_numpy(mix).to(device)

    def apply(rows: Any) -> Any:
        return torch.einsum("rb,b...->r...", m, rows.float())

    return apply
