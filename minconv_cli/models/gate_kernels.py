"""The Min gate arithmetic of large frames as `torch.compile`d kernels: one pass over memory where
the eager ops of `gate_maps` make ten to twenty (docs/models.md, "Third pass").

Each kernel is a pure function of whole tensors, compiled once per process and gate kind with
dynamic shapes (inductor's C++ backend on the CPU). Where compiling fails (no C++ compiler, an
unsupported platform) the same function runs eagerly, with one warning; `MINCONV_COMPILE=0` turns
compiling off.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable

import torch

from minconv_cli.models.gates import candidate_grad, g, update_logit

# frames of at least this many grid cells (training on the CPU) take the compiled kernels: below
# it the eager ops cost little and a compile (20-40 s on two cores) would not pay back
COMPILE_CELLS = 64 * 64


def wanted(u: torch.Tensor) -> bool:
    """Whether the fused recurrence of conv output u (T, B, C, H, W) runs the compiled kernels."""
    if os.environ.get("MINCONV_COMPILE", "1") == "0" or u.device.type != "cpu":
        return False
    return u.shape[-2] * u.shape[-1] >= COMPILE_CELLS and torch.is_grad_enabled()


def _update(kind: str, gates: list[torch.Tensor]) -> torch.Tensor:
    """z = sigmoid(s) in fp32 from the update gate's maps, by the gate table's logit."""
    return torch.sigmoid(update_logit(kind, [x.float() for x in gates]))


def forward_gates(kind: str, gates: list[torch.Tensor], p: torch.Tensor):
    """(z, g(p)) in fp32 for all frames: the update gate and the candidate."""
    return _update(kind, gates), g(p.float())


def frame_grads(
    kind: str,
    gates: list[torch.Tensor],
    p: torch.Tensor,
    prev: torch.Tensor,
    grad_h: torch.Tensor,
    carry: torch.Tensor,
    z: torch.Tensor,
):
    """u's gradient for one frame (in u's dtype, the gate maps' then the candidate's) and the
    carry a_t G_t to the frame before, from h_{t-1} (`prev`), dL/dh_t and the carry from the frame
    after. `z`: the saved update gate (lstm), else unused (recomputed from the maps)."""
    if kind != "lstm":
        z = _update(kind, gates)
    keep = 1 - z
    adjoint = grad_h + carry  # G_t
    gz = adjoint * z
    pf = p.float()
    sp = torch.sigmoid(pf)
    grad_s = (torch.maximum(sp, pf + 0.5) - prev) * gz * keep
    if kind == "gru":
        parts = [grad_s]
    elif kind == "explstm":
        parts = [-grad_s, grad_s]
    else:  # s = logsigmoid(i) - logsigmoid(f): ds/df = -sigmoid(-f), ds/di = sigmoid(-i)
        f, i = (x.float() for x in gates)
        parts = [-torch.sigmoid(-f) * grad_s, torch.sigmoid(-i) * grad_s]
    grad_p = candidate_grad(sp, pf, gz)  # overwrites sp, read for the last time above
    grad_u = torch.cat([*parts, grad_p], dim=-3).to(p.dtype)
    return grad_u, keep * adjoint


def gates_from_channels_last(kind: str, gates: list[torch.Tensor], p: torch.Tensor):
    """`forward_gates` of a channels-last conv output, with z and g(p) in the standard layout, and
    u's standard-layout copy for backward (one pass reads u; the layout change costs no pass)."""
    z, cand = forward_gates(kind, gates, p)
    return z.contiguous(), cand.contiguous(), torch.cat([*gates, p], dim=-3).contiguous()


def frame_grads_to_channels_last(kind: str, gates: list[torch.Tensor], *rest: torch.Tensor):
    """`frame_grads` with u's gradient written channels-last, the layout of the conv's output."""
    grad_u, carry = frame_grads(kind, gates, *rest)
    return grad_u.contiguous(memory_format=torch.channels_last), carry


class _Kernel:
    """`fn` compiled on first use (dynamic shapes; a graph per gate kind, dtype and whether a dim
    is 1), or `fn` itself from the first failure on."""

    def __init__(self, fn: Callable):
        self.fn = fn
        self.compiled = torch.compile(fn, dynamic=True, fullgraph=True)
        self.failed = False

    def __call__(self, *args):
        if not self.failed:
            try:
                with torch._dynamo.config.patch(recompile_limit=RECOMPILE_LIMIT):
                    return self.compiled(*args)
            except Exception as error:  # noqa: BLE001 - any compiler failure: run eagerly
                self.failed = True
                warnings.warn(
                    f"torch.compile of the Min gate kernels failed, running them eagerly "
                    f"(set MINCONV_COMPILE=0 to skip compiling): {str(error).splitlines()[0]}",
                    RuntimeWarning,
                    stacklevel=2,
                )
        return self.fn(*args)


# graphs per kernel: 3 gate kinds x 2 dtypes x (one frame or several)
RECOMPILE_LIMIT = 16


compiled_forward_gates = _Kernel(forward_gates)
compiled_frame_grads = _Kernel(frame_grads)
compiled_gates_from_channels_last = _Kernel(gates_from_channels_last)
compiled_frame_grads_to_channels_last = _Kernel(frame_grads_to_channels_last)
