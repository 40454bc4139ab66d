"""Min-cell gate arithmetic and the fused gate + recurrence autograd function.

Every Min cell is h_t = lerp(h_{t-1}, g(p_t), z_t) = (1 - z_t) h_{t-1} + z_t g(p_t) with
z_t = sigmoid(s_t); the cells differ only in the logit s (`UPDATE_GATES`).
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Callable
from typing import NamedTuple

import torch
from torch.autograd.function import once_differentiable


def g(x: torch.Tensor) -> torch.Tensor:
    """The positive candidate activation: x + 0.5 for x >= 0, sigmoid(x) below.

    Written as max(x + 0.5, sigmoid(x)), which is the same function (the line lies above the
    sigmoid for x >= 0 and below it for x < 0) without a branch.
    """
    return torch.maximum(torch.sigmoid(x), x + 0.5)


def candidate_grad(
    sp: torch.Tensor, p: torch.Tensor, grad: torch.Tensor, out: torch.Tensor | None = None
) -> torch.Tensor:
    """grad * g'(p), with sp = sigmoid(p) (overwritten): g' = max(sp (1 - sp), [p >= 0]), since
    sp (1 - sp) <= 1/4; the step [p >= 0] (1 at -0 too) as clamp(sign(p) + 1, max=1), because
    where() and comparisons run 5-20x slower than arithmetic on the CPU (docs/models.md)."""
    slope = sp.addcmul_(sp, sp, value=-1)
    torch.maximum(slope, torch.sign(p).add_(1).clamp_max_(1), out=slope)
    return torch.mul(slope, grad, out=out) if out is not None else slope.mul_(grad)


class UpdateGate(NamedTuple):
    """How a Min cell kind forms its update logit: from how many gate maps of its conv output
    (the candidate's map comes after them), and the logit of those maps."""

    maps: int
    logit: Callable[[list[torch.Tensor]], torch.Tensor]


def _gru_logit(gates: list[torch.Tensor]) -> torch.Tensor:
    return gates[0]


def _lstm_logit(gates: list[torch.Tensor]) -> torch.Tensor:
    f, i = gates  # logsigmoid(i) - logsigmoid(f) = softplus(-f) - softplus(-i), exact for any f, i
    zero = f.new_zeros(())
    return torch.logaddexp(-f, zero) - torch.logaddexp(-i, zero)


def _explstm_logit(gates: list[torch.Tensor]) -> torch.Tensor:
    f, i = gates
    return i - f


# the Min cell kinds (a model row's `gate`): gru: s = k. lstm: z = 1 - sigmoid(f)/(sigmoid(f) +
# sigmoid(i)) = sigmoid(d) with d = softplus(-f) - softplus(-i) (stable for any f, i).
# explstm: z = 1 - sigmoid(f - i).
UPDATE_GATES = {
    "gru": UpdateGate(1, _gru_logit),
    "lstm": UpdateGate(2, _lstm_logit),
    "explstm": UpdateGate(2, _explstm_logit),
}


def update_gate(kind: str) -> UpdateGate:
    """The update gate of Min cell kind `kind`; a ValueError naming the known kinds otherwise."""
    gate = UPDATE_GATES.get(kind)
    if gate is None:
        *first, last = UPDATE_GATES
        raise ValueError(f"Min cell kind: expected {', '.join(first)} or {last}, got {kind!r}")
    return gate


def update_logit(kind: str, gates: list[torch.Tensor]) -> torch.Tensor:
    """The logit s of the update gate z = sigmoid(s) = 1 - a_t for one Min cell kind."""
    return update_gate(kind).logit(gates)


def gated_recurrence(s: torch.Tensor, p: torch.Tensor, h0: torch.Tensor | None) -> torch.Tensor:
    """h_t = lerp(h_{t-1}, g(p_t), sigmoid(s_t)) along dim 0, fused; saves only s, p and h.

    The reference for every fused backend. An `h0` of another dtype (a float32 state under bf16
    autocast) is cast to p's dtype first, differentiably.
    """
    if h0 is not None and h0.dtype != p.dtype:
        h0 = h0.to(p.dtype)
    return _GatedRecurrence.apply(s, p, h0)


FUSED_BACKENDS = ("auto", "fused", "triton")


@functools.cache
def _triton_module():
    """minconv_cli.models.triton_recurrence, or the reason it cannot be used (a string)."""
    try:
        return importlib.import_module("minconv_cli.models.triton_recurrence")
    except ImportError as error:
        return f"Triton is not installed ({error}); pip install triton"


def fused_backend(backend: str, device: torch.device) -> str:
    """The kernel a fused backend name means on `device`: `auto` is `triton` on CUDA where Triton
    imports, else `fused` (the per-step torch ops, the reference and the CPU path)."""
    if backend not in FUSED_BACKENDS:
        raise ValueError(
            f"fused backend: expected one of {', '.join(FUSED_BACKENDS)}, got {backend!r}"
        )
    if backend == "auto":
        usable = device.type == "cuda" and not isinstance(_triton_module(), str)
        return "triton" if usable else "fused"
    return backend


def fused_recurrence(
    backend: str, s: torch.Tensor, p: torch.Tensor, h0: torch.Tensor | None
) -> torch.Tensor:
    """`gated_recurrence` through the kernel `fused_backend(backend, p.device)` names."""
    if fused_backend(backend, p.device) == "fused":
        return gated_recurrence(s, p, h0)
    module = _triton_module()
    if isinstance(module, str):
        raise ValueError(f"scan_backend 'triton': {module}")
    return module.gated_recurrence(s, p, h0)


class _GatedRecurrence(torch.autograd.Function):
    """Forward: the gates of all steps in a few whole-sequence ops, then the lerp step by step.
    Backward: gates recomputed from s and p (only s, p and h are saved), the adjoint recurrence
    step by step, then the gate gradients in whole-sequence ops again. Whole-sequence ops cost
    one dispatch per op instead of one per op and step; the sequential part is one op per step."""

    @staticmethod
    def forward(ctx, s, p, h0):  # type: ignore[override]
        z = torch.sigmoid(s)
        cand = torch.maximum(torch.sigmoid(p), p + 0.5)
        h = torch.empty(p.shape, dtype=p.dtype, device=p.device)
        if h0 is None:
            torch.mul(cand[0], z[0], out=h[0])
        else:
            torch.lerp(h0, cand[0], z[0], out=h[0])
        for t in range(1, s.shape[0]):
            torch.lerp(h[t - 1], cand[t], z[t], out=h[t])
        ctx.has_h0 = h0 is not None
        ctx.save_for_backward(s, p, h, h0 if h0 is not None else h)
        return h

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_h):  # type: ignore[override]
        s, p, h, h0 = ctx.saved_tensors
        z = torch.sigmoid(s)
        keep = 1 - z  # a_t
        # G_t = dL/dh_t including the future: G_t = grad_h_t + a_{t+1} G_{t+1}
        grad = torch.empty(h.shape, dtype=h.dtype, device=h.device)
        grad[-1] = grad_h[-1]
        for t in range(s.shape[0] - 2, -1, -1):
            torch.addcmul(grad_h[t], keep[t + 1], grad[t + 1], out=grad[t])
        sp = torch.sigmoid(p)
        # dL/ds = G (g(p) - h_{t-1}) z (1 - z); dL/dp = G z g'(p), g' = 1 (p >= 0) or sp (1 - sp)
        step = torch.maximum(sp, p + 0.5)
        step[1:] -= h[:-1]
        if ctx.has_h0:
            step[0] -= h0
        grad_h0 = keep[0] * grad[0] if ctx.has_h0 else None
        gz = grad.mul_(z)
        grad_s = step.mul_(gz).mul_(keep)
        grad_p = candidate_grad(sp, p, gz)
        return grad_s, grad_p, grad_h0
