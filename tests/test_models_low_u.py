"""The fused Min recurrence on the conv's bf16 output as it is (what the MinConvLSTM and MinConvGRU
layers hand it under bf16 autocast on the CPU at 64x64 and above): the numbers of its fp32 copy."""

from __future__ import annotations

import pytest
import torch

from minconv_cli.models import create_model
from minconv_cli.models.gate_maps import maps_recurrence

HIDDEN = 3


@pytest.mark.parametrize("kind", ["gru", "lstm", "explstm"])
def test_bf16_u_gives_the_fp32_copys_outputs_and_gradients(kind: str) -> None:
    """h (fp32) and the gradients of u (rounded to bf16, as the conv receives it) and h0 equal
    those of the fp32 copy of u bit for bit."""
    torch.manual_seed(0)
    maps = {"gru": 2, "lstm": 3, "explstm": 3}[kind]
    low = torch.randn(4, 2, maps * HIDDEN, 5, 6).bfloat16()
    u_low, u_high = low.clone().requires_grad_(True), low.float().requires_grad_(True)
    h0 = torch.randn(2, HIDDEN, 5, 6, requires_grad=True)
    h_low = maps_recurrence(kind, u_low, HIDDEN, h0)
    h_high = maps_recurrence(kind, u_high, HIDDEN, h0)
    assert h_low.dtype == torch.float32
    torch.testing.assert_close(h_low, h_high, rtol=0, atol=0)
    weight = torch.randn(h_low.shape)
    grad_low, h0_low = torch.autograd.grad((h_low * weight).sum(), (u_low, h0))
    grad_high, h0_high = torch.autograd.grad((h_high * weight).sum(), (u_high, h0))
    assert grad_low.dtype == torch.bfloat16
    torch.testing.assert_close(grad_low, grad_high.bfloat16(), rtol=0, atol=0)
    torch.testing.assert_close(h0_low, h0_high, rtol=0, atol=0)


def test_minconvlstm_bf16_at_64x64_trains_like_fp32() -> None:
    """A MinConvLSTM at 64x64 (the bf16-u path) under bf16: loss and gradients close to fp32's
    (bf16 tolerance), all finite."""
    torch.manual_seed(0)
    model = create_model("minconvlstm", 1, width=4, layers=2, grid=(64, 64), norm="instance")
    x = torch.randn(1, 4, 1, 64, 64)
    grads = {}
    for precision in ("fp32", "bf16"):
        model.precision = precision
        model.zero_grad(set_to_none=True)
        loss = model(x, context=3).square().mean()
        loss.backward()
        grads[precision] = (loss.detach(), [p.grad.clone() for p in model.parameters()])
    torch.testing.assert_close(grads["bf16"][0], grads["fp32"][0], rtol=3e-2, atol=1e-3)
    for a, b in zip(grads["bf16"][1], grads["fp32"][1], strict=True):
        assert torch.isfinite(a).all()
        torch.testing.assert_close(a, b, rtol=1e-1, atol=3e-2)
