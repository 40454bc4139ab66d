"""Convolutions whose padding follows the domain: zeros, circular (torus), cylinder (periodic in x only)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from minconv_cli.models.spec import CYLINDER_PADS, PADDINGS


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
        # back float32 in the standard layout in one copy, for the fp32 gates and recurrence.
        low = torch.get_autocast_dtype(kind)
        if self.halo and self.grid_padding != "zeros":
            x = self.pad(x.to(low)).contiguous(memory_format=torch.channels_last)
        else:
            x = x.to(low, memory_format=torch.channels_last)
        return super().forward(x).to(torch.float32, memory_format=torch.contiguous_format)

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
