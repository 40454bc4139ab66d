"""Min-cell gate arithmetic and the fused gate + recurrence autograd function.

Every Min cell is h_t = lerp(h_{t-1}, g(p_t), z_t) = (1 - z_t) h_{t-1} + z_t g(p_t) with
z_t = sigmoid(s_t); the cells differ only in the logit s (see `update_logit`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable


def g(x: torch.Tensor) -> torch.Tensor:
    """The positive candidate activation: x + 0.5 for x >= 0, sigmoid(x) below (branch-free)."""
    return torch.relu(x) + torch.sigmoid(x.clamp(max=0))


def update_logit(kind: str, gates: list[torch.Tensor]) -> torch.Tensor:
    """The logit s of the update gate z = sigmoid(s) = 1 - a_t for one Min cell kind.

    gru: s = k. lstm: z = 1 - sigmoid(f)/(sigmoid(f)+sigmoid(i)) = sigmoid(d) with
    d = softplus(-f) - softplus(-i) (stable for any f, i). explstm: z = 1 - sigmoid(f - i).
    """
    if kind == "gru":
        return gates[0]
    f, i = gates
    if kind == "lstm":
        return F.softplus(-f) - F.softplus(-i)
    if kind == "explstm":
        return i - f
    raise ValueError(f"Min cell kind: expected gru, lstm or explstm, got {kind!r}")


def gated_recurrence(s: torch.Tensor, p: torch.Tensor, h0: torch.Tensor | None) -> torch.Tensor:
    """h_t = lerp(h_{t-1}, g(p_t), sigmoid(s_t)) along dim 0, fused; saves only s, p and h."""
    return _GatedRecurrence.apply(s, p, h0)


class _GatedRecurrence(torch.autograd.Function):
    """Forward: gates and the lerp per step. Backward: gates recomputed, adjoint scan, gate grads."""

    @staticmethod
    def forward(ctx, s, p, h0):  # type: ignore[override]
        z = torch.sigmoid(s)
        cand = g(p)
        h = torch.empty_like(cand)
        prev = h0
        for t in range(s.shape[0]):
            if prev is None:
                torch.mul(cand[t], z[t], out=h[t])
            else:
                torch.lerp(prev, cand[t], z[t], out=h[t])
            prev = h[t]
        ctx.has_h0 = h0 is not None
        ctx.save_for_backward(s, p, h, h0 if h0 is not None else h)
        return h

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_h):  # type: ignore[override]
        s, p, h, h0 = ctx.saved_tensors
        z = torch.sigmoid(s)
        cand = g(p)
        keep = 1 - z  # a_t
        grad = grad_h.contiguous().clone()  # becomes dL/dh_t including the future
        for t in range(s.shape[0] - 2, -1, -1):
            grad[t].addcmul_(keep[t + 1], grad[t + 1])
        # dL/dz_t = G_t (g(p_t) - h_{t-1}); dL/ds = dL/dz z(1-z); dL/dp = G_t z_t g'(p_t)
        prev = torch.empty_like(h)
        prev[1:] = h[:-1]
        if ctx.has_h0:
            prev[0] = h0
        else:
            prev[0].zero_()
        grad_s = (cand - prev).mul_(grad).mul_(z).mul_(keep)
        slope = torch.where(p >= 0, torch.ones_like(cand), cand * (1 - cand))
        grad_p = slope.mul_(z).mul_(grad)
        grad_h0 = keep[0] * grad[0] if ctx.has_h0 else None
        return grad_s, grad_p, grad_h0
