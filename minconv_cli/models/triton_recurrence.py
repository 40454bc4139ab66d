"""The Min cells' fused gate + recurrence as Triton kernels: the CUDA path of `gated_recurrence`.

Same function as `minconv_cli.models.gates.gated_recurrence` (the reference): h_t =
lerp(h_{t-1}, g(p_t), sigmoid(s_t)) along dim 0. One program owns a block of elements of one
batch row and walks the time axis in-kernel with the state in registers, so s and p are read
once and h written once (forward); backward walks time in reverse, recomputing the gates from s,
p and the saved h, and carries the adjoint in registers. Arithmetic is float32 for float32,
bfloat16 and float16 inputs (float64 for float64); outputs take the inputs' dtypes.

CUDA tensors run the compiled kernels. With TRITON_INTERPRET=1 set before Triton is first
imported, the same kernels run in Triton's interpreter instead, on CPU tensors too (slow: for
tests on machines without a GPU). Importing this module needs Triton.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl
from torch.autograd.function import once_differentiable

BLOCKS = (1024, 512, 256, 128)
INTERPRETER_BLOCK = 1024


@triton.jit(do_not_specialize=["T"])  # T as a runtime int (T = 1 would become a constant)
def _forward_kernel(
    s_ptr,
    p_ptr,
    h0_ptr,
    h_ptr,
    T,
    N,
    s_st,
    s_sb,
    p_st,
    p_sb,
    h_st,
    h_sb,
    h0_sb,
    HAS_H0: tl.constexpr,
    ACC: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """h_t = h_{t-1} + sigmoid(s_t) (g(p_t) - h_{t-1}) for one block of one batch row, all t."""
    b = tl.program_id(1).to(tl.int64)
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < N
    s_ptrs = s_ptr + b * s_sb + offs
    p_ptrs = p_ptr + b * p_sb + offs
    h_ptrs = h_ptr + b * h_sb + offs
    if HAS_H0:
        h = tl.load(h0_ptr + b * h0_sb + offs, mask=mask, other=0.0).to(ACC)
    else:
        h = tl.full([BLOCK], 0.0, ACC)
    for _ in range(T):
        s = tl.load(s_ptrs, mask=mask, other=0.0).to(ACC)
        p = tl.load(p_ptrs, mask=mask, other=0.0).to(ACC)
        z = 1.0 / (1.0 + tl.exp(-s))
        cand = tl.maximum(1.0 / (1.0 + tl.exp(-p)), p + 0.5)
        h = h + z * (cand - h)
        tl.store(h_ptrs, h.to(h_ptr.dtype.element_ty), mask=mask)
        s_ptrs += s_st
        p_ptrs += p_st
        h_ptrs += h_st


@triton.jit
def _adjoint_step(
    grad, keep, prev, gh_ptrs, s_ptrs, p_ptrs, gs_ptrs, gp_ptrs, mask, ACC: tl.constexpr
):
    """One reverse step at time t: the adjoint G_t from G_{t+1}, then dL/ds_t and dL/dp_t."""
    grad = tl.load(gh_ptrs, mask=mask, other=0.0).to(ACC) + keep * grad
    s = tl.load(s_ptrs, mask=mask, other=0.0).to(ACC)
    p = tl.load(p_ptrs, mask=mask, other=0.0).to(ACC)
    z = 1.0 / (1.0 + tl.exp(-s))
    sp = 1.0 / (1.0 + tl.exp(-p))
    cand = tl.maximum(sp, p + 0.5)
    keep = 1.0 - z
    gz = grad * z
    slope = tl.where(p >= 0.0, 1.0, sp * (1.0 - sp))
    tl.store(gs_ptrs, ((cand - prev) * gz * keep).to(gs_ptrs.dtype.element_ty), mask=mask)
    tl.store(gp_ptrs, (gz * slope).to(gp_ptrs.dtype.element_ty), mask=mask)
    return grad, keep


@triton.jit(do_not_specialize=["T"])
def _backward_kernel(
    s_ptr,
    p_ptr,
    h0_ptr,
    h_ptr,
    gh_ptr,
    gs_ptr,
    gp_ptr,
    gh0_ptr,
    T,
    N,
    s_st,
    s_sb,
    p_st,
    p_sb,
    h_st,
    h_sb,
    h0_sb,
    gh_st,
    gh_sb,
    g_st,
    g_sb,
    HAS_H0: tl.constexpr,
    ACC: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """Reverse time: G_t = dL/dh_t + (1 - z_{t+1}) G_{t+1}; dL/ds_t = G_t z_t (1 - z_t) (g(p_t) -
    h_{t-1}); dL/dp_t = G_t z_t g'(p_t); dL/dh0 = (1 - z_1) G_1. grad_s and grad_p share strides."""
    b = tl.program_id(1).to(tl.int64)
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < N
    last = (T - 1).to(tl.int64)
    s_ptrs = s_ptr + b * s_sb + offs + last * s_st
    p_ptrs = p_ptr + b * p_sb + offs + last * p_st
    prev_ptrs = h_ptr + b * h_sb + offs + (last - 1) * h_st
    gh_ptrs = gh_ptr + b * gh_sb + offs + last * gh_st
    gs_ptrs = gs_ptr + b * g_sb + offs + last * g_st
    gp_ptrs = gp_ptr + b * g_sb + offs + last * g_st
    if HAS_H0:
        start = tl.load(h0_ptr + b * h0_sb + offs, mask=mask, other=0.0).to(ACC)
    else:
        start = tl.full([BLOCK], 0.0, ACC)
    grad = tl.full([BLOCK], 0.0, ACC)
    keep = tl.full([BLOCK], 0.0, ACC)  # 1 - z_{t+1}: nothing flows back from beyond the end
    for _ in range(last):  # t = T-1 .. 1, h_{t-1} from the saved states
        prev = tl.load(prev_ptrs, mask=mask, other=0.0).to(ACC)
        grad, keep = _adjoint_step(
            grad, keep, prev, gh_ptrs, s_ptrs, p_ptrs, gs_ptrs, gp_ptrs, mask, ACC
        )
        s_ptrs -= s_st
        p_ptrs -= p_st
        prev_ptrs -= h_st
        gh_ptrs -= gh_st
        gs_ptrs -= g_st
        gp_ptrs -= g_st
    grad, keep = _adjoint_step(
        grad, keep, start, gh_ptrs, s_ptrs, p_ptrs, gs_ptrs, gp_ptrs, mask, ACC
    )
    if HAS_H0:
        tl.store(gh0_ptr + b * h0_sb + offs, (keep * grad).to(gh0_ptr.dtype.element_ty), mask=mask)


# Only builtins inside the kernels (no tl.sigmoid / tl.zeros: those are jitted library functions).
INTERPRETER = not isinstance(_forward_kernel, triton.runtime.JITFunction)


def launch_config(batch: int, n: int, device: torch.device) -> tuple[int, int]:
    """(elements per program, warps): the largest block that still gives every multiprocessor
    about four programs (a recurrence has no other parallelism), 4 elements per thread."""
    if INTERPRETER or device.type != "cuda":
        return min(INTERPRETER_BLOCK, triton.next_power_of_2(n)), 1
    sms = torch.cuda.get_device_properties(device).multi_processor_count
    block = next((b for b in BLOCKS if batch * math.ceil(n / b) >= 4 * sms), BLOCKS[-1])
    return block, block // 128


def _rows(x: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """x viewed as `shape` with a unit-stride last dim (copied only where no such view exists)."""
    try:
        view = x.view(shape)
    except RuntimeError:
        view = x.contiguous().view(shape)
    if shape[-1] > 1 and view.stride(-1) != 1:
        view = view.contiguous()
    return view


def _acc(dtype: torch.dtype):
    return tl.float64 if dtype == torch.float64 else tl.float32


def _check(s: torch.Tensor, p: torch.Tensor, h0: torch.Tensor | None) -> None:
    if s.shape != p.shape or s.dim() == 0:
        raise ValueError(
            f"triton gated_recurrence: s and p must have one shape with a time dim, got {tuple(s.shape)} and {tuple(p.shape)}"
        )
    if h0 is not None and h0.shape != p.shape[1:]:
        raise ValueError(
            f"triton gated_recurrence: h0 must have shape {tuple(p.shape[1:])}, got {tuple(h0.shape)}"
        )
    if s.device != p.device or (h0 is not None and h0.device != p.device):
        raise ValueError("triton gated_recurrence: s, p and h0 must be on one device")
    if p.device.type != "cuda" and not INTERPRETER:
        raise ValueError(
            f"scan_backend 'triton': expected CUDA tensors, got {p.device} (CPU runs need "
            "TRITON_INTERPRET=1 set before Triton is imported: Triton's interpreter, slow)"
        )


def gated_recurrence(
    s: torch.Tensor, p: torch.Tensor, h0: torch.Tensor | None, block: int | None = None
) -> torch.Tensor:
    """`gates.gated_recurrence` with Triton kernels; `block` overrides the launch's block size."""
    _check(s, p, h0)
    return _TritonGatedRecurrence.apply(s, p, h0, block)


def _layout(p: torch.Tensor) -> tuple[int, int, int]:
    """(T, B, N): time, batch rows (dim 1) and the elements of one row."""
    T = p.shape[0]
    B = p.shape[1] if p.dim() > 1 else 1
    return T, B, math.prod(p.shape[2:])


class _TritonGatedRecurrence(torch.autograd.Function):
    """Saves s, p, h and h0, like `gates._GatedRecurrence`; nothing else is kept."""

    @staticmethod
    def forward(ctx, s, p, h0, block):  # type: ignore[override]
        T, B, N = _layout(p)
        h = torch.empty(p.shape, dtype=p.dtype, device=p.device)
        ctx.block = block
        ctx.has_h0 = h0 is not None
        ctx.save_for_backward(s, p, h, h0)
        if h.numel() == 0:
            return h
        s3, p3, h3 = _rows(s, (T, B, N)), _rows(p, (T, B, N)), h.view(T, B, N)
        h02 = _rows(h0, (B, N)) if h0 is not None else h3[0]
        size, warps = launch_config(B, N, p.device) if block is None else (block, 1)
        _forward_kernel[(triton.cdiv(N, size), B)](
            s3,
            p3,
            h02,
            h3,
            T,
            N,
            s3.stride(0),
            s3.stride(1),
            p3.stride(0),
            p3.stride(1),
            h3.stride(0),
            h3.stride(1),
            h02.stride(0),
            HAS_H0=h0 is not None,
            ACC=_acc(p.dtype),
            BLOCK=size,
            num_warps=warps,
        )
        return h

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_h):  # type: ignore[override]
        s, p, h, h0 = ctx.saved_tensors
        T, B, N = _layout(p)
        grad_s = torch.empty(s.shape, dtype=s.dtype, device=s.device)
        grad_p = torch.empty(p.shape, dtype=p.dtype, device=p.device)
        grad_h0 = (
            torch.empty_like(h0, memory_format=torch.contiguous_format) if ctx.has_h0 else None
        )
        if h.numel() == 0:
            return grad_s, grad_p, grad_h0, None
        s3, p3, h3 = _rows(s, (T, B, N)), _rows(p, (T, B, N)), h.view(T, B, N)
        gh3 = _rows(grad_h, (T, B, N))
        gs3, gp3 = grad_s.view(T, B, N), grad_p.view(T, B, N)
        h02 = _rows(h0, (B, N)) if ctx.has_h0 else h3[0]
        gh02 = grad_h0.view(B, N) if ctx.has_h0 else h3[0]
        if ctx.has_h0 and h02.stride(0) != N:
            h02 = h02.contiguous()  # h0 and its gradient share one row stride
        size, warps = launch_config(B, N, p.device) if ctx.block is None else (ctx.block, 1)
        _backward_kernel[(triton.cdiv(N, size), B)](
            s3,
            p3,
            h02,
            h3,
            gh3,
            gs3,
            gp3,
            gh02,
            T,
            N,
            s3.stride(0),
            s3.stride(1),
            p3.stride(0),
            p3.stride(1),
            h3.stride(0),
            h3.stride(1),
            h02.stride(0),
            gh3.stride(0),
            gh3.stride(1),
            gs3.stride(0),
            gs3.stride(1),
            HAS_H0=ctx.has_h0,
            ACC=_acc(p.dtype),
            BLOCK=size,
            num_warps=warps,
        )
        return grad_s, grad_p, grad_h0, None
