"""Recurrent cells: the Min family (MinConvGRU/LSTM/ExpLSTM) and the ConvGRU/ConvLSTM baselines.

Every cell works on time-major sequences (T, B, C, H, W) and single frames (B, C, H, W):
`sequence(x, state) -> (h, state)`, `step(x, state) -> (h, state)` (a state of None means zeros)
and `init_state(batch, grid, like)`; `build(row, spec, in_channels, hidden)` makes one layer's
cell for a model row. `CELLS` (at the end) names them for the model table (`spec.MODELS`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from minconv_cli.models.gate_kernels import wanted
from minconv_cli.models.gate_maps import KINDS as MAPS_KINDS
from minconv_cli.models.gate_maps import maps_recurrence
from minconv_cli.models.gates import FUSED_BACKENDS, fused_backend, fused_recurrence, g, update_gate
from minconv_cli.models.padding import GridConv2d
from minconv_cli.models.scan import linear_recurrence
from minconv_cli.models.spec import SCAN_BACKENDS

if TYPE_CHECKING:
    from minconv_cli.models.spec import ModelRow, ModelSpec


# Min kinds whose fused recurrence keeps the conv's bf16 output (CPU, plain layout), measured:
# peak -7..-9 % for MinConvLSTM and MinConvGRU at no clear cost in time; MinConvExpLSTM's peak
# (-14..-17 %) is well within the baselines' without it, and its steps were 2-5 % slower with it
LOW_U_KINDS = ("lstm", "gru")


class MinConvCell(nn.Module):
    """h_t = (1 - z_t) h_{t-1} + z_t g(p_t), gates from one conv of the input x_t only.

    Teacher-forced sequences: one batched conv over all T*B frames, then the scan (`fused`: one
    autograd function for gates + recurrence; `triton`: the same as Triton kernels;
    `linear`/`log`: explicit a, b through `linear_recurrence`). `auto` is `triton` on CUDA where
    Triton is installed, else `fused`.
    """

    def __init__(
        self, kind: str, in_channels: int, hidden: int, conv_kwargs: dict, backend: str = "auto"
    ):
        super().__init__()
        if backend not in SCAN_BACKENDS:
            raise ValueError(
                f"scan_backend: expected one of {', '.join(SCAN_BACKENDS)}, got {backend!r}"
            )
        self.kind = kind
        self.update = update_gate(kind)
        self.hidden = hidden
        self.backend = backend
        n_maps = self.update.maps + 1  # the update gate's maps, then the candidate's
        self.conv = GridConv2d(in_channels, n_maps * hidden, **conv_kwargs)

    @classmethod
    def build(cls, row: ModelRow, spec: ModelSpec, in_channels: int, hidden: int) -> MinConvCell:
        return cls(row.gate, in_channels, hidden, spec.conv_options(), spec.scan_backend)

    def logits(self, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(s, p) from the conv output u (..., n_maps*hidden, H, W): z = sigmoid(s), candidate g(p)."""
        parts = list(u.split(self.hidden, dim=-3))
        return self.update.logit(parts[:-1]), parts[-1]

    def gates(self, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The recurrence coefficients (a, b) from the conv output: h_t = a h_{t-1} + b."""
        s, p = self.logits(u)
        z = torch.sigmoid(s)
        return 1 - z, z * g(p)

    def sequence(
        self, x: torch.Tensor, state: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        T, B = x.shape[:2]
        frames = x.reshape(T * B, *x.shape[2:])
        fused = self.backend in FUSED_BACKENDS
        maps = (
            fused and self.kind in MAPS_KINDS and fused_backend(self.backend, x.device) == "fused"
        )
        # fp32 also under autocast (GridConv2d); for the fused maps of LOW_U_KINDS the bf16 output
        # as it is (the function saves u: in half the bytes, the same values); for the compiled
        # kernels of large frames channels-last, which they read and write back as it is
        conv = self.conv.forward_low if maps and self.kind in LOW_U_KINDS else self.conv
        if maps and wanted(frames):
            conv = self.conv.forward_channels_last
        u = conv(frames)
        u = u.view(T, B, *u.shape[1:])
        if maps:  # the gate logits, too, in the fused function
            h = maps_recurrence(self.kind, u, self.hidden, state)
        elif not fused:
            a, b = self.gates(u)
            h = linear_recurrence(a, b, state, dim=0, backend=self.backend)
        else:
            h = fused_recurrence(self.backend, *self.logits(u), state)
        return h, h[-1]

    def step(
        self, x: torch.Tensor, state: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if torch.is_grad_enabled():  # closed-loop training: a sequence of one (the fused backward)
            h, _ = self.sequence(x.unsqueeze(0), state)
            return h[0], h[0]
        # inference: the gates in place in the conv output, one new tensor (h) per step
        s, p = self.logits(self.conv(x))
        z = s.sigmoid_()
        cand = torch.maximum(torch.sigmoid(p), p.add_(0.5), out=p)
        h = cand.mul_(z) if state is None else torch.lerp(state, cand, z)
        return h, h

    def init_state(self, batch: int, grid: tuple[int, int], like: torch.Tensor) -> torch.Tensor:
        return like.new_zeros(batch, self.hidden, *grid)


class _StepwiseCell(nn.Module):
    """Baselines run step by step also under teacher forcing (their gates see h)."""

    hidden: int

    def sequence(self, x: torch.Tensor, state):
        outs = []
        for t in range(x.shape[0]):
            h, state = self.step(x[t], state)
            outs.append(h)
        return torch.stack(outs), state


class ConvGRUCell(_StepwiseCell):
    """ConvGRU: z, r = sigmoid(conv[x, h]); h~ = tanh(conv[x, r h]); h = (1 - z) h + z h~."""

    def __init__(self, in_channels: int, hidden: int, conv_kwargs: dict):
        super().__init__()
        self.hidden = hidden
        self.gates_conv = GridConv2d(in_channels + hidden, 2 * hidden, **conv_kwargs)
        self.cand_conv = GridConv2d(in_channels + hidden, hidden, **conv_kwargs)

    @classmethod
    def build(cls, row: ModelRow, spec: ModelSpec, in_channels: int, hidden: int) -> ConvGRUCell:
        return cls(in_channels, hidden, spec.conv_options())

    def step(self, x: torch.Tensor, state: torch.Tensor | None):
        h = state if state is not None else x.new_zeros(x.shape[0], self.hidden, *x.shape[2:])
        z, r = torch.sigmoid(self.gates_conv(torch.cat([x, h], dim=1))).chunk(2, dim=1)
        cand = torch.tanh(self.cand_conv(torch.cat([x, r * h], dim=1)))
        h = torch.lerp(h, cand, z)
        return h, h

    def init_state(self, batch: int, grid: tuple[int, int], like: torch.Tensor) -> torch.Tensor:
        return like.new_zeros(batch, self.hidden, *grid)


class ConvLSTMCell(_StepwiseCell):
    """ConvLSTM (Shi et al. 2015): i, f, o, c~ from conv[x, h]; optional peepholes on c (per grid cell)."""

    def __init__(
        self, in_channels: int, hidden: int, conv_kwargs: dict, peepholes: bool = False, grid=None
    ):
        super().__init__()
        self.hidden = hidden
        self.conv = GridConv2d(in_channels + hidden, 4 * hidden, **conv_kwargs)
        if peepholes:
            if grid is None:
                raise ValueError(
                    "peepholes: expected grid=(H, W) (peephole weights are per grid cell), got None"
                )
            self.peep = nn.Parameter(torch.zeros(3, hidden, *grid))
        else:
            self.register_parameter("peep", None)

    @classmethod
    def build(cls, row: ModelRow, spec: ModelSpec, in_channels: int, hidden: int) -> ConvLSTMCell:
        grid = tuple(spec.grid) if spec.grid is not None else None
        return cls(in_channels, hidden, spec.conv_options(), peepholes=spec.peepholes, grid=grid)

    def step(self, x: torch.Tensor, state):
        if state is None:
            zeros = x.new_zeros(x.shape[0], self.hidden, *x.shape[2:])
            state = (zeros, zeros)
        h, c = state
        i, f, o, cand = self.conv(torch.cat([x, h], dim=1)).chunk(4, dim=1)
        if self.peep is not None:
            i = i + self.peep[0] * c
            f = f + self.peep[1] * c
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(cand)
        if self.peep is not None:
            o = o + self.peep[2] * c
        h = torch.sigmoid(o) * torch.tanh(c)
        return h, (h, c)

    def init_state(self, batch: int, grid: tuple[int, int], like: torch.Tensor):
        zeros = like.new_zeros(batch, self.hidden, *grid)
        return (zeros, zeros.clone())


# a model row's `cell` -> its class
CELLS: dict[str, type[nn.Module]] = {
    "min": MinConvCell,
    "convgru": ConvGRUCell,
    "convlstm": ConvLSTMCell,
}


def cell_class(kind: str) -> type[nn.Module]:
    """The cell class of a model row's `cell`; a ValueError naming the known cells otherwise."""
    cls = CELLS.get(kind)
    if cls is None:
        raise ValueError(f"cell: expected one of {', '.join(CELLS)}, got {kind!r}")
    return cls
