"""GridConv2d under bf16 autocast on the CPU: small frames run channels-last, frames of at least
`CPU_PLAIN_LAYOUT_CELLS` cells in the standard layout; both give the same numbers."""

from __future__ import annotations

import pytest
import torch

from minconv_cli.models import padding
from minconv_cli.models.padding import GridConv2d


def _run(conv: GridConv2d, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Output, input gradient and weight gradient of one bf16-autocast forward + backward."""
    x = x.clone().requires_grad_(True)
    conv.zero_grad(set_to_none=True)
    with torch.autocast("cpu", torch.bfloat16):
        y = conv(x)
    (y * torch.linspace(-1, 1, y.numel()).view_as(y)).sum().backward()
    return y.detach(), x.grad, conv.weight.grad.clone()


@pytest.mark.parametrize("mode", ["circular", "cylinder", "zeros"])
def test_plain_layout_equals_channels_last(mode: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A 64x64 frame (the standard layout) gives the channels-last path's output and gradients
    (bf16 tolerance: the two layouts may sum the products in another order); fp32 out either way."""
    torch.manual_seed(0)
    conv = GridConv2d(3, 6, 3, padding=mode)
    x = torch.randn(2, 3, 64, 64)
    assert padding.CPU_PLAIN_LAYOUT_CELLS <= 64 * 64
    plain = _run(conv, x)
    monkeypatch.setattr(padding, "CPU_PLAIN_LAYOUT_CELLS", 64 * 64 + 1)  # channels-last here
    last = _run(conv, x)
    assert plain[0].dtype == torch.float32 and plain[0].is_contiguous()
    assert plain[0].shape == (2, 6, 64, 64)
    for a, b in zip(plain, last, strict=True):
        torch.testing.assert_close(a, b, rtol=2e-2, atol=2e-2)


def test_plain_layout_matches_fp32_convolution() -> None:
    """The plain-layout bf16 path is the fp32 convolution of bf16-rounded input and weight, to
    bf16 tolerance, with the circular halo (the torus wraps)."""
    torch.manual_seed(1)
    conv = GridConv2d(2, 4, 3, padding="circular")
    x = torch.randn(1, 2, 64, 64)
    y, _, _ = _run(conv, x)
    ref = torch.nn.functional.conv2d(
        conv.pad(x.bfloat16().float()), conv.weight.bfloat16().float(), conv.bias
    )
    torch.testing.assert_close(y, ref, rtol=2e-2, atol=2e-2)


def test_the_layout_is_plain_for_large_frames_in_training_and_for_many_of_them_in_inference():
    plain = GridConv2d._plain_layout
    small, large = torch.empty(64, 3, 32, 32), torch.empty(4, 3, 64, 64)
    assert not plain(small) and plain(large)  # autograd on: by frame size
    with torch.no_grad():
        assert not plain(large)  # a rollout step of 4 frames: channels-last
        assert plain(torch.empty(16, 3, 64, 64)) and plain(torch.empty(1, 3, 256, 256))
        assert not plain(torch.empty(1000, 3, 32, 32))  # small frames never
