"""The Min recurrence straight from the conv output: gate logits, activations and the lerp in one
autograd function (what `MinConvCell.sequence` runs for the CPU `fused` backend).

`gates.gated_recurrence(s, p, h0)` takes the logit s and the candidate map p that the gate
arithmetic made from the conv output u. Through autograd, that arithmetic saves its own inputs,
outputs and buffers (LSTM: two softplus maps and s, 3 maps per frame beside u and h), and u's
gradient is assembled by a cat of its slices' gradients. `maps_recurrence(kind, u, hidden, h0)`
computes the same h from u, saves u and h (and z for the LSTM gate, whose softpluses are dear to
recompute) and writes u's gradient slice by slice into one buffer.
"""

from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable

from minconv_cli.models.gate_kernels import (
    compiled_forward_gates,
    compiled_frame_grads,
    compiled_frame_grads_to_channels_last,
    compiled_gates_from_channels_last,
    wanted,
)
from minconv_cli.models.gates import UPDATE_GATES, candidate_grad

# the update gates (`gates.UPDATE_GATES`) whose logit derivative `_logit_grads` knows; a new gate
# runs through `gates.gated_recurrence` with its logit under autograd until it is added here
KINDS = ("gru", "lstm", "explstm")


def maps_recurrence(
    kind: str, u: torch.Tensor, hidden: int, h0: torch.Tensor | None
) -> torch.Tensor:
    """h_t = lerp(h_{t-1}, g(p_t), sigmoid(s_t)) along dim 0 from the conv output u
    (T, B, n*hidden, H, W), whose channels are the update gate's maps, then the candidate's
    (`MinConvCell.logits`); equal to `gated_recurrence(*cell.logits(u), h0)`."""
    if kind not in KINDS:
        raise ValueError(f"Min cell kind: expected one of {', '.join(KINDS)}, got {kind!r}")
    maps = UPDATE_GATES[kind].maps + 1
    if u.shape[2] != maps * hidden:
        raise ValueError(
            f"maps_recurrence: expected {maps * hidden} channels ({maps} x {hidden}), got {u.shape[2]}"
        )
    work = torch.promote_types(u.dtype, torch.float32)  # a bf16 conv output: fp32 arithmetic
    if h0 is not None and h0.dtype != work:  # differentiably
        h0 = h0.to(work)
    return _MapsRecurrence.apply(u, h0, kind, hidden, wanted(u))


def _update(kind: str, gates: list[torch.Tensor], work: torch.dtype) -> torch.Tensor:
    """z = sigmoid(s) from the update gate's maps (of any dtype), computed in `work` in new
    memory with at most one map-sized temporary: the fewer and more alike the blocks a layer
    allocates, the less the heap fragments (docs/models.md, "Third pass")."""
    z = gates[-1].to(work, copy=True)  # gru: k; lstm, explstm: i
    if kind == "gru":
        return z.sigmoid_()
    if kind == "explstm":
        return z.sub_(gates[0]).sigmoid_()
    # lstm: s = logsigmoid(i) - logsigmoid(f) = softplus(-f) - softplus(-i), softplus(x) =
    # logaddexp(x, 0) (in place, where F.logsigmoid allocates its output and a buffer)
    zero = z.new_zeros(())
    torch.logaddexp(z.neg_(), zero, out=z)
    f = gates[0].to(work, copy=True).neg_()
    torch.logaddexp(f, zero, out=f)
    return torch.sub(f, z, out=z).sigmoid_()


class _MapsRecurrence(torch.autograd.Function):
    """Forward: z and g(p) in whole-sequence ops, then the lerp step by step in g(p)'s memory.
    Backward: the adjoint recurrence as in `gates._GatedRecurrence`, the gate gradients written
    into one gradient of u."""

    @staticmethod
    def forward(ctx, u, h0, kind, hidden, compiled):  # type: ignore[override]
        # a bf16 u (the conv's own output) is kept as it is, half the bytes of its fp32 copy,
        # and upcast block by block in backward: the same values; each map is upcast on its own
        gates = u.split(hidden, dim=2)
        ctx.grad_geometry = None
        if compiled and _channels_last(u):  # u's gradient goes back in u's layout
            ctx.grad_geometry = (u.shape, u.stride())
            z, h, u = compiled_gates_from_channels_last(kind, list(gates[:-1]), gates[-1])
        elif compiled:
            z, h = compiled_forward_gates(kind, list(gates[:-1]), gates[-1])
        else:
            z = _update(kind, list(gates[:-1]), torch.promote_types(u.dtype, torch.float32))
            h = gates[-1].to(z.dtype, copy=True)
            sp = torch.sigmoid(h)
            torch.maximum(sp, h.add_(0.5), out=h)  # g(p), then h in its place
            del sp
        if h0 is None:
            h[0].mul_(z[0])
        else:
            torch.lerp(h0, h[0], z[0], out=h[0])
        for t in range(1, h.shape[0]):
            torch.lerp(h[t - 1], h[t], z[t], out=h[t])
        ctx.kind, ctx.hidden, ctx.has_h0, ctx.compiled = kind, hidden, h0 is not None, compiled
        saved_z = z if kind == "lstm" else h  # h: a placeholder, never read
        ctx.save_for_backward(u, h, h0 if h0 is not None else h, saved_z)
        return h

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_h):  # type: ignore[override]
        u, h, h0, z = ctx.saved_tensors
        if ctx.compiled:
            return (*_compiled_grads(ctx, u, h, h0, z, grad_h), None, None, None)
        grad_u = torch.empty(u.shape, dtype=h.dtype, device=u.device)
        # G_t = dL/dh_t including the future: G_t = grad_h_t + a_{t+1} G_{t+1}, run in blocks of
        # frames from the end, so that the gate gradients' temporaries are a block's, not the
        # chunk's; (a, G) of a block's first frame carry to the block before it
        T, frame = h.shape[0], h[0].numel()
        block = max(1, BLOCK_ELEMENTS // frame)
        carry = None
        for t0 in reversed(range(0, T, block)):
            t1 = min(t0 + block, T)
            before = h[t0 - 1] if t0 else (h0 if ctx.has_h0 else None)
            u_block = u[t0:t1].to(h.dtype)
            carry = _block_grads(
                ctx, u_block, h[t0:t1], before, z[t0:t1], grad_h[t0:t1], grad_u[t0:t1], carry
            )
        grad_h0 = carry[0] * carry[1] if ctx.has_h0 else None
        return grad_u.to(u.dtype), grad_h0, None, None, None


def _compiled_grads(ctx, u, h, h0, z, grad_h):
    """(u's gradient, h0's) frame by frame from the end through `gate_kernels.frame_grads`,
    which folds the adjoint step G_t = dL/dh_t + a_{t+1} G_{t+1} into the gate gradients."""
    T = h.shape[0]
    gates = u.split(ctx.hidden, dim=2)
    zeros = torch.zeros_like(h[0])
    kernel, grad_u = compiled_frame_grads, None
    if ctx.grad_geometry is not None:
        kernel = compiled_frame_grads_to_channels_last
        if T > 1:
            grad_u = torch.empty_strided(*ctx.grad_geometry, dtype=u.dtype, device=u.device)
    elif T > 1:
        grad_u = torch.empty_like(u)
    carry = zeros
    for t in reversed(range(T)):
        prev = h[t - 1] if t else (h0 if ctx.has_h0 else zeros)
        frame, carry = kernel(
            ctx.kind, [g[t] for g in gates[:-1]], gates[-1][t], prev, grad_h[t], carry, z[t]
        )
        if grad_u is None:
            grad_u = frame.unsqueeze(0)
        else:
            grad_u[t].copy_(frame)
    return grad_u, carry if ctx.has_h0 else None


def _channels_last(u: torch.Tensor) -> bool:
    """Whether conv output u (T, B, C, H, W) is channels-last (`GridConv2d.forward_channels_last`)."""
    return u.stride(2) == 1 and u.shape[2] > 1 and not u.is_contiguous()


# elements of one hidden map per block of frames in backward (at 64x64 B4 w40 one frame)
BLOCK_ELEMENTS = 2**20


def _block_grads(ctx, u, h, before, z, grad_h, grad_u, carry):
    """The gradients of one block of frames into `grad_u`; returns (a, G) of its first frame.
    `before`: h of the frame before the block (h0 before the first, None without one)."""
    gates = u.split(ctx.hidden, dim=2)
    if ctx.kind != "lstm":
        z = _update(ctx.kind, list(gates[:-1]), h.dtype)
    keep = 1 - z  # a_t
    grad = torch.empty(h.shape, dtype=h.dtype, device=h.device)
    if carry is None:
        grad[-1] = grad_h[-1]
    else:
        torch.addcmul(grad_h[-1], carry[0], carry[1], out=grad[-1])
    for t in range(h.shape[0] - 2, -1, -1):
        torch.addcmul(grad_h[t], keep[t + 1], grad[t + 1], out=grad[t])
    carry = (keep[0].clone(), grad[0].clone())
    gz = grad.mul_(z)
    p = gates[-1]
    sp = torch.sigmoid(p)
    # dL/ds = G (g(p) - h_{t-1}) z (1 - z); dL/dp = G z g'(p), g' = 1 (p >= 0) or sp (1 - sp)
    step = torch.maximum(sp, p + 0.5)
    step[1:] -= h[:-1]
    if before is not None:
        step[0] -= before
    slots = grad_u.split(ctx.hidden, dim=2)
    # dL/ds: straight into its slot where the logit is a map (gru: k; explstm: i - f)
    into = {"gru": slots[0], "explstm": slots[-2]}.get(ctx.kind, step)
    grad_s = torch.mul(step, gz, out=into).mul_(keep)
    del keep, step
    candidate_grad(sp, p, gz, out=slots[-1])
    del sp, gz
    _logit_grads(ctx.kind, grad_s, gates[:-1], slots[:-1])
    return carry


def _logit_grads(kind: str, grad_s, gates, slots) -> None:
    """The other gate maps' gradients from dL/ds. lstm: s = logsigmoid(i) - logsigmoid(f), so
    ds/di = sigmoid(-i), ds/df = -sigmoid(-f); explstm: s = i - f (dL/di = dL/ds is in place)."""
    if kind == "explstm":
        torch.neg(grad_s, out=slots[0])
    elif kind == "lstm":
        f, i = gates
        torch.mul(torch.neg(i).sigmoid_(), grad_s, out=slots[1])
        torch.mul(torch.neg(f).sigmoid_().neg_(), grad_s, out=slots[0])
