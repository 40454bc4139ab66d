"""Convolutions whose padding follows the domain: zeros, circular (torus), cylinder (periodic in x only)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from minconv_cli.models.spec import CYLINDER_PADS, PADDINGS

# frames of at least this many grid cells run the CPU's bf16 convolution in the standard layout
# (oneDNN reorders inside; aten's layout-changing copies of the wide conv outputs cost more):
# 4-14 % faster Min steps at 64x64 and 128x128, slower MinConvGRU at 16x16 (docs/models.md)
CPU_PLAIN_LAYOUT_CELLS = 64 * 64
# without autograd (rollout) a few such frames at a time, fewer cells than this in all, run
# faster channels-last: 64x64 B4 closed-loop steps 77-82 against 85-91 frames/s (docs/models.md)
CPU_PLAIN_INFERENCE_CELLS = 16 * 64 * 64


class GridConv2d(nn.Conv2d):
    """A "same"-size 2-D convolution with `zeros`, `circular` or `cylinder` padding.

    `cylinder` is circular along the last dim (longitude) and zeros or replicate (`cylinder_pad`)
    along the one before (latitude).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        padding: str = "zeros",
        cylinder_pad: str = "zeros",
        bias: bool = True,
    ) -> None:
        if padding not in PADDINGS:
            raise ValueError(f"padding: expected one of {', '.join(PADDINGS)}, got {padding!r}")
        if cylinder_pad not in CYLINDER_PADS:
            raise ValueError(
                f"cylinder_pad: expected one of {', '.join(CYLINDER_PADS)}, got {cylinder_pad!r}"
            )
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"kernel_size: expected an odd positive integer, got {kernel_size}")
        own = kernel_size // 2 if padding == "zeros" else 0
        super().__init__(in_channels, out_channels, kernel_size, padding=own, bias=bias)
        self.grid_padding = padding
        self.cylinder_pad = cylinder_pad
        self.halo = kernel_size // 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        kind = x.device.type
        if not torch.is_autocast_enabled(kind):
            return super().forward(self.pad(x))
        # Under autocast: pad the narrow copy, run the convolution channels-last (the layout the
        # bf16 kernels of oneDNN and cuDNN use natively, so no reorders around the call) and hand
        # back float32 in the standard layout in one copy, for the fp32 gates and recurrence;
        # large frames on the CPU stay in the standard layout throughout (see above).
        if self._plain_layout(x):
            return self._plain_low(x).float()
        low = torch.get_autocast_dtype(kind)
        if self.halo and self.grid_padding != "zeros":
            x = self.pad(x.to(low)).contiguous(memory_format=torch.channels_last)
        else:
            x = x.to(low, memory_format=torch.channels_last)
        return super().forward(x).to(torch.float32, memory_format=torch.contiguous_format)

    def forward_low(self, x: torch.Tensor) -> torch.Tensor:
        """`forward`, but the CPU's plain-layout bf16 output as it is, not its fp32 copy (for a
        consumer that saves it: half the bytes, the same values); elsewhere `forward`."""
        if not (torch.is_autocast_enabled(x.device.type) and self._plain_layout(x)):
            return self(x)  # through __call__: the module's hooks see it
        return self._plain_low(x)

    def forward_channels_last(self, x: torch.Tensor) -> torch.Tensor:
        """`forward_low`, but for large CPU training frames the convolution channels-last, its
        output left so: for a consumer that reads any layout and hands its gradient back
        channels-last (the Min cells' compiled gate kernels). The bf16 input is padded in the
        standard layout and transposed in one copy, cheap in aten for 16-bit types, where
        oneDNN's own reorders of a standard-layout conv cost 20-30 % of it (docs/models.md)."""
        if not (torch.is_autocast_enabled(x.device.type) and self._plain_layout(x)):
            return self.forward_low(x)
        x = self.pad(x.to(torch.get_autocast_dtype(x.device.type)))
        return super().forward(_Transposed.apply(x, torch.channels_last, torch.contiguous_format))

    def _plain_low(self, x: torch.Tensor) -> torch.Tensor:
        """The autocast dtype's convolution of x in the standard layout, in that dtype."""
        return super().forward(self.pad(x.to(torch.get_autocast_dtype(x.device.type))))

    @staticmethod
    def _plain_layout(x: torch.Tensor) -> bool:
        """Whether a bf16 convolution of x runs in the standard layout (large CPU frames; without
        autograd, many of them)."""
        cells = x.shape[-2] * x.shape[-1]
        if x.device.type != "cpu" or cells < CPU_PLAIN_LAYOUT_CELLS:
            return False
        return torch.is_grad_enabled() or x.shape[0] * cells >= CPU_PLAIN_INFERENCE_CELLS

    def pad(self, x: torch.Tensor) -> torch.Tensor:
        """x with its halo of `grid_padding` (unchanged for `zeros`: the convolution pads those)."""
        r = self.halo
        if r and self.grid_padding == "circular":
            x = F.pad(x, (r, r, r, r), mode="circular")
        elif r and self.grid_padding == "cylinder":
            x = F.pad(x, (r, r, 0, 0), mode="circular")
            if self.cylinder_pad == "replicate":
                x = F.pad(x, (0, 0, r, r), mode="replicate")
            else:
                x = F.pad(x, (0, 0, r, r))
        return x


class _Transposed(torch.autograd.Function):
    """x in memory format `layout`, its gradient returned in `back`."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, layout, back):  # type: ignore[override]
        ctx.back = back
        return x.contiguous(memory_format=layout)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        return grad.contiguous(memory_format=ctx.back), None, None
