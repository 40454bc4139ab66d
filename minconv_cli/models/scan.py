"""The linear recurrence h_t = a_t * h_{t-1} + b_t over a time axis, with interchangeable backends.

`linear` is a sequential loop in linear space with a hand-written backward (fast on CPU, exact,
never under/overflows for a in [0, 1]); `log` is the paper's parallel log-space Heinsen scan
(O(log T) depth, the GPU path); `auto` picks per device.
"""

from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable

BACKENDS = ("auto", "linear", "log")


def resolve_backend(backend: str, device: torch.device) -> str:
    """The concrete backend `auto` means on `device`; ValueError for an unknown name."""
    if backend not in BACKENDS:
        raise ValueError(f"scan backend: expected one of {', '.join(BACKENDS)}, got {backend!r}")
    if backend == "auto":
        return "log" if device.type == "cuda" else "linear"
    return backend


def linear_recurrence(
    a: torch.Tensor,
    b: torch.Tensor,
    h0: torch.Tensor | None = None,
    dim: int = 1,
    backend: str = "auto",
) -> torch.Tensor:
    """All states h_t = a_t * h_{t-1} + b_t along `dim` (h_0 = `h0`, zeros when None).

    `a` and `b` have the same shape; `h0` has that shape without `dim`. Returns a tensor shaped
    like `b`. Differentiable in a, b and h0 with every backend.
    """
    if a.shape != b.shape:
        raise ValueError(
            f"linear_recurrence: a and b must have one shape, got {tuple(a.shape)} and {tuple(b.shape)}"
        )
    if b.dim() == 0:
        raise ValueError("linear_recurrence: expected a tensor with a time dim, got a scalar")
    dim = dim % b.dim()
    if h0 is not None:
        expected = b.shape[:dim] + b.shape[dim + 1 :]
        if h0.shape != expected:
            raise ValueError(
                f"linear_recurrence: h0 must have shape {tuple(expected)}, got {tuple(h0.shape)}"
            )
    kind = resolve_backend(backend, b.device)
    if kind == "linear":
        return _LinearScan.apply(a, b, h0, dim)
    return _log_scan(a, b, h0, dim)


class _LinearScan(torch.autograd.Function):
    """Sequential scan; backward runs the adjoint recurrence, saving only a, h0 and the output."""

    @staticmethod
    def forward(ctx, a, b, h0, dim):  # type: ignore[override]
        h = torch.empty_like(b, memory_format=torch.contiguous_format)
        prev = h0
        for t in range(b.shape[dim]):
            out = h.select(dim, t)
            if prev is None:
                out.copy_(b.select(dim, t))
            else:
                torch.addcmul(b.select(dim, t), a.select(dim, t), prev, out=out)
            prev = out
        ctx.dim = dim
        ctx.has_h0 = h0 is not None
        ctx.save_for_backward(a, h, h0 if h0 is not None else h)
        return h

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_h):  # type: ignore[override]
        a, h, h0 = ctx.saved_tensors
        dim = ctx.dim
        grad_b = grad_h.contiguous().clone()
        for t in range(grad_b.shape[dim] - 2, -1, -1):
            grad_b.select(dim, t).addcmul_(a.select(dim, t + 1), grad_b.select(dim, t + 1))
        grad_a = torch.empty_like(grad_b)
        n = grad_b.shape[dim]
        torch.mul(
            grad_b.narrow(dim, 1, n - 1), h.narrow(dim, 0, n - 1), out=grad_a.narrow(dim, 1, n - 1)
        )
        first = grad_a.select(dim, 0)
        grad_h0 = None
        if ctx.has_h0:
            torch.mul(grad_b.select(dim, 0), h0, out=first)
            grad_h0 = a.select(dim, 0) * grad_b.select(dim, 0)
        else:
            first.zero_()
        return grad_a, grad_b, grad_h0, None


def _safe_log(x: torch.Tensor) -> torch.Tensor:
    """log(x) where x > 0, a huge negative finite number elsewhere (keeps gradients finite)."""
    positive = x > 0
    floor = torch.finfo(x.dtype).min / 4
    return torch.where(positive, torch.log(torch.where(positive, x, torch.ones_like(x))), floor)


def log_recurrence(
    log_a: torch.Tensor, log_b: torch.Tensor, log_h0: torch.Tensor | None = None, dim: int = 1
) -> torch.Tensor:
    """log h_t for h_t = a_t h_{t-1} + b_t with positive b, given logs (Heinsen 2023's parallel scan)."""
    if log_h0 is not None:
        log_a = torch.cat([torch.zeros_like(log_h0).unsqueeze(dim), log_a], dim=dim)
        log_b = torch.cat([log_h0.unsqueeze(dim), log_b], dim=dim)
    a_star = torch.cumsum(log_a, dim=dim)
    log_h = a_star + torch.logcumsumexp(log_b - a_star, dim=dim)
    if log_h0 is not None:
        log_h = log_h.narrow(dim, 1, log_h.shape[dim] - 1)
    return log_h


def _log_scan(a: torch.Tensor, b: torch.Tensor, h0: torch.Tensor | None, dim: int) -> torch.Tensor:
    """The log backend for any sign of b and h0: scan the positive and negative parts separately."""
    tiny = torch.finfo(a.dtype).tiny
    log_a = torch.log(a.clamp_min(tiny))
    h = torch.exp(log_recurrence(log_a, _safe_log(b), None if h0 is None else _safe_log(h0), dim))
    if bool((b < 0).any()) or (h0 is not None and bool((h0 < 0).any())):
        neg_h0 = None if h0 is None else _safe_log(-h0)
        h = h - torch.exp(log_recurrence(log_a, _safe_log(-b), neg_h0, dim))
    return h
