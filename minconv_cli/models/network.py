"""The network every model shares: 1x1 encoder, L layers of x = norm(x + cell(x)), 1x1 decoder.

Teacher forcing runs the first `context` steps as sequences (Min cells: batched conv + scan,
in time chunks with the state carried across); the rest runs closed loop, step by step, feeding
back the model's own predictions.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from minconv_cli.core.precision import autocast, full_precision
from minconv_cli.models.cells import cell_class
from minconv_cli.models.spec import model_row

if TYPE_CHECKING:
    from minconv_cli.models.spec import ModelSpec

CHUNK_ELEMENTS = 2**22
CHUNK_FRAMES = 5  # at most; longer chunks only add peak memory (docs/models.md, grid size)


class GridNorm(nn.Module):
    """`layer`: LayerNorm over (H, W) with per-grid-cell affine parameters (as in the paper);
    `instance`: the same statistics (each channel over (H, W)) with a per-channel affine, so
    grid-agnostic; `group`: GroupNorm over `groups` groups of channels (grid-agnostic); `none`."""

    def __init__(self, kind: str, channels: int, grid: tuple[int, int] | None, groups: int = 1):
        super().__init__()
        self.kind = kind
        self.groups = groups
        if kind == "layer":
            self.weight = nn.Parameter(torch.ones(*grid))
            self.bias = nn.Parameter(torch.zeros(*grid))
        elif kind in ("instance", "group"):
            self.weight = nn.Parameter(torch.ones(channels))
            self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "layer":
            return F.layer_norm(x, self.weight.shape, self.weight, self.bias)
        if self.kind == "instance":  # GroupNorm with one group per channel
            return F.group_norm(x, x.shape[1], self.weight, self.bias)
        if self.kind == "group":
            return F.group_norm(x, self.groups, self.weight, self.bias)
        return x


class RecurrentForecaster(nn.Module):
    """A stack of recurrent conv cells between 1x1 encoder and decoder, built from a `ModelSpec`.

    `precision` (resolved: fp32 or bf16; set by whoever runs the model, not stored with it) is that
    of the convolutions: `forward` and `step` run under its autocast; the recurrence, the norms,
    the 1x1 maps, the state and the outputs stay fp32 whatever it is."""

    precision = "fp32"

    def __init__(self, spec: ModelSpec) -> None:
        """`spec` validated and resolved (`create_model` does that); it is kept as `self.spec`."""
        super().__init__()
        self.spec = spec
        name, widths, grid = spec.name, list(spec.widths), spec.grid
        grid = tuple(grid) if grid is not None else None
        self.name = name
        self.in_channels = spec.in_channels
        self.out_channels = spec.out_channels
        self.static_channels = spec.static_channels
        self.dyn_channels = spec.in_channels - spec.static_channels
        self.widths = widths
        self.grid = grid
        self.predict = spec.predict
        self.time_chunk = spec.time_chunk
        row = model_row(name)  # the model table's row: which cell (never a fallback)
        make_cell = cell_class(row.cell)
        self.encoder = nn.Conv2d(spec.in_channels, widths[0], 1)
        self.cells = nn.ModuleList()
        self.projections = nn.ModuleList()
        self.norms = nn.ModuleList()
        prev = widths[0]
        for w in widths:
            self.cells.append(make_cell.build(row, spec, prev, w))
            # the residual needs the layer's width: a 1x1 projection where widths change
            self.projections.append(nn.Identity() if prev == w else nn.Conv2d(prev, w, 1))
            self.norms.append(GridNorm(spec.norm, w, grid, spec.norm_groups))
            prev = w
        self.decoder = nn.Conv2d(prev, spec.out_channels, 1)

    @property
    def hparams(self) -> dict[str, Any]:
        """The resolved spec as a plain dict (JSON-able): `create_model(**model.hparams)` rebuilds
        the same architecture."""
        return self.spec.to_dict()

    # -- checks -------------------------------------------------------------------------------
    def _check(self, x: torch.Tensor, static: torch.Tensor | None, time_dim: bool) -> None:
        rank = 5 if time_dim else 4
        layout = "(B, T, C, H, W)" if time_dim else "(B, C, H, W)"
        if x.dim() != rank:
            raise ValueError(
                f"{self.name} input: expected a rank-{rank} tensor {layout}, got shape {tuple(x.shape)}"
            )
        c = x.shape[-3]
        if c != self.dyn_channels:
            raise ValueError(f"{self.name} input: expected {self.dyn_channels} channels, got {c}")
        grid = tuple(x.shape[-2:])
        if self.grid is not None and grid != tuple(self.grid):
            raise ValueError(f"{self.name} input: expected grid {tuple(self.grid)}, got {grid}")
        if self.static_channels:
            want = (x.shape[0], self.static_channels, *grid)
            if static is None or tuple(static.shape) != want:
                got = None if static is None else tuple(static.shape)
                raise ValueError(f"{self.name} static: expected shape {want}, got {got}")
        elif static is not None and static.shape[1] != 0:
            raise ValueError(
                f"{self.name} static: expected no static channels, got shape {tuple(static.shape)}"
            )

    # -- state ---------------------------------------------------------------------------------
    def init_state(self, batch_size: int, grid: tuple[int, int] | None = None) -> list:
        """Zero states, one per layer, on the model's device and dtype."""
        grid = grid or self.grid
        if grid is None:
            raise ValueError(
                f"{self.name} init_state: expected grid=(H, W) (the model has none), got None"
            )
        like = self.decoder.weight
        return [cell.init_state(batch_size, tuple(grid), like) for cell in self.cells]

    # -- running -------------------------------------------------------------------------------
    def _layers(
        self, frames: torch.Tensor, static: torch.Tensor | None, states: list, stepwise: bool
    ):
        """Frames (T, B, C_dyn, H, W) through encoder, layers and decoder; returns (y, states)."""
        T, B = frames.shape[:2]
        inp = frames
        if static is not None and self.static_channels:
            inp = torch.cat([frames, static.unsqueeze(0).expand(T, -1, -1, -1, -1)], dim=2)
        with full_precision(inp):  # 1x1 maps: cheap, and the fed-back prediction stays fp32
            x = self.encoder(inp.reshape(T * B, *inp.shape[2:]).float())
        new_states = []
        for cell, proj, norm, state in zip(
            self.cells, self.projections, self.norms, states, strict=True
        ):
            if stepwise:
                h, state = cell.step(x, state)
            else:
                h, state = cell.sequence(x.view(T, B, *x.shape[1:]), state)
                h = h.reshape(T * B, *h.shape[2:])
            x = norm(proj(x) + h)
            new_states.append(state)
        with full_precision(x):
            y = self.decoder(x.float()).view(T, B, self.out_channels, *x.shape[2:])
        if self.predict == "increment":
            y = y + frames
        return y, new_states

    def step(self, x_t: torch.Tensor, state: list | None, static: torch.Tensor | None = None):
        """One step: x_t (B, C_dyn, H, W) -> (prediction of the next frame (B, C_out, H, W), state)."""
        self._check(x_t, static, time_dim=False)
        states = list(state) if state is not None else [None] * len(self.cells)
        with autocast(x_t.device, self.precision):
            y, states = self._layers(x_t.unsqueeze(0), static, states, stepwise=True)
        return y[0], states

    def forward(
        self,
        x: torch.Tensor,
        context: int,
        static: torch.Tensor | None = None,
        state: list | None = None,
        return_state: bool = False,
    ):
        """Outputs (B, T, C_out, H, W), output t predicting frame t+1: teacher-forced for t < context,
        closed loop after. With `return_state`, also the state after the last step."""
        self._check(x, static, time_dim=True)
        T = x.shape[1]
        if not isinstance(context, int) or not 1 <= context <= T:
            raise ValueError(
                f"{self.name} context: expected an integer in 1..{T} (the sequence length), got {context!r}"
            )
        if context < T and self.out_channels != self.dyn_channels:
            raise ValueError(
                f"{self.name} closed loop: expected out_channels == input channels ({self.dyn_channels}), got {self.out_channels}"
            )
        states = list(state) if state is not None else [None] * len(self.cells)
        frames = x[:, :context].transpose(0, 1)
        chunk = self._chunk_length(x)
        outs = []
        with autocast(x.device, self.precision):
            for start in range(0, context, chunk):
                y, states = self._layers(frames[start : start + chunk], static, states, False)
                outs.append(y)
            prev = outs[-1][-1]
            for _ in range(context, T):
                y, states = self._layers(prev.unsqueeze(0), static, states, stepwise=True)
                prev = y[0]
                outs.append(y)
        y = torch.cat(outs).transpose(0, 1)
        return (y, states) if return_state else y

    def _chunk_length(self, x: torch.Tensor) -> int:
        """Frames per teacher-forced chunk: `time_chunk`, or (0) as many as keep a layer's
        activations near CHUNK_ELEMENTS, at most CHUNK_FRAMES (5 frames up to 64x64 batch 4,
        one at 128x128: the peak memory of whole 20-frame chunks was 12-26 % higher at 16x16
        and 32x32 and no faster; see docs/models.md, "Scaling with grid size")."""
        if self.time_chunk > 0:
            return self.time_chunk
        per_frame = x.shape[0] * max(self.widths) * x.shape[-2] * x.shape[-1]
        return max(1, min(CHUNK_FRAMES, CHUNK_ELEMENTS // per_frame))
