"""The compiled gate kernels of large frames (`gate_kernels`) give the eager fused recurrence's
numbers; where compiling fails they run eagerly, with one warning."""

from __future__ import annotations

import shutil

import pytest
import torch

from minconv_cli.models import gate_kernels, gate_maps
from minconv_cli.models.gate_maps import maps_recurrence

HIDDEN = 3


def run(kind: str, u: torch.Tensor, h0: torch.Tensor, weight: torch.Tensor):
    """h and the gradients of u and h0 of `(h * weight).sum()`."""
    u = u.clone().requires_grad_(True)
    h0 = h0.clone().requires_grad_(True)
    h = maps_recurrence(kind, u, HIDDEN, h0)
    return (h, *torch.autograd.grad((h * weight).sum(), (u, h0)))


@pytest.mark.skipif(
    not (shutil.which("g++") or shutil.which("c++")), reason="inductor needs a C++ compiler"
)
@pytest.mark.parametrize("kind", ["gru", "lstm", "explstm"])
def test_compiled_kernels_give_the_eager_numbers(kind: str, monkeypatch) -> None:
    """bf16 conv output, 2 frames, a state: h (fp32) and h0's gradient to fp32 rounding, u's
    gradient (rounded to bf16, as the conv receives it) equal within one bf16 rounding."""
    monkeypatch.setattr(gate_kernels, "COMPILE_CELLS", 8 * 8)
    monkeypatch.setenv("MINCONV_COMPILE", "1")
    torch.manual_seed(0)
    maps = 2 if kind == "gru" else 3
    u = (torch.randn(2, 2, maps * HIDDEN, 8, 8) * 3).bfloat16()
    h0, weight = torch.randn(2, HIDDEN, 8, 8), torch.randn(2, 2, HIDDEN, 8, 8)
    assert gate_kernels.wanted(u)
    compiled = run(kind, u, h0, weight)
    monkeypatch.setenv("MINCONV_COMPILE", "0")
    assert not gate_kernels.wanted(u)
    eager = run(kind, u, h0, weight)
    assert not gate_kernels.compiled_frame_grads.failed
    assert not gate_kernels.compiled_forward_gates.failed
    torch.testing.assert_close(compiled[0], eager[0], rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(compiled[1].float(), eager[1].float(), rtol=1e-2, atol=1e-5)
    torch.testing.assert_close(compiled[2], eager[2], rtol=1e-5, atol=1e-6)


def test_frames_below_the_threshold_or_without_autograd_stay_eager(monkeypatch) -> None:
    monkeypatch.setenv("MINCONV_COMPILE", "1")
    cells = gate_kernels.COMPILE_CELLS
    big = torch.empty(1, 1, 2, 1, cells)
    assert gate_kernels.wanted(big)
    assert not gate_kernels.wanted(torch.empty(1, 1, 2, 1, cells - 1))
    with torch.no_grad():
        assert not gate_kernels.wanted(big)
    monkeypatch.setenv("MINCONV_COMPILE", "0")
    assert not gate_kernels.wanted(big)


def test_a_failing_compiler_falls_back_to_eager_with_one_warning() -> None:
    """A C++ compiler that does not exist: one RuntimeWarning, then the eager function's result."""
    import torch._inductor.config as inductor

    kernel = gate_kernels._Kernel(gate_kernels.forward_gates)
    gates, p = [torch.randn(1, 2, 3, 4, 4)], torch.randn(1, 2, 3, 4, 4)
    # inductor's own patch restores its config (monkeypatch's undo left it broken for later tests)
    broken = {"fx_graph_cache": False, "cpp.cxx": ("/nonexistent/c++",)}
    with inductor.patch(broken), pytest.warns(RuntimeWarning, match="running them eagerly"):
        z, cand = kernel("gru", gates, p)
    assert kernel.failed
    torch.testing.assert_close(z, torch.sigmoid(gates[0]))
    torch.testing.assert_close(cand, torch.maximum(torch.sigmoid(p), p + 0.5))


@pytest.mark.skipif(
    not (shutil.which("g++") or shutil.which("c++")), reason="inductor needs a C++ compiler"
)
def test_a_model_trains_through_the_kernels_like_eager(monkeypatch) -> None:
    """A MinConvLSTM under bf16 (teacher-forced chunks and closed-loop steps): loss and parameter
    gradients of the compiled kernels (their conv channels-last) equal the eager ones (the conv
    in the standard layout) to bf16 rounding."""
    from minconv_cli.models import create_model, padding

    monkeypatch.setattr(gate_kernels, "COMPILE_CELLS", 8 * 8)
    monkeypatch.setattr(padding, "CPU_PLAIN_LAYOUT_CELLS", 8 * 8)
    calls = []
    channels_last = gate_maps.compiled_gates_from_channels_last
    monkeypatch.setattr(
        gate_maps,
        "compiled_gates_from_channels_last",
        lambda *args: calls.append(1) or channels_last(*args),
    )
    model = create_model("minconvlstm", 1, width=4, layers=2, grid=(8, 8), time_chunk=2)
    model.precision = "bf16"
    x = torch.randn(2, 6, 1, 8, 8)
    results = []
    for flag in ("1", "0"):
        monkeypatch.setenv("MINCONV_COMPILE", flag)
        model.zero_grad(set_to_none=True)
        loss = model(x, context=4).square().mean()
        loss.backward()
        results.append((loss.detach(), [p.grad.clone() for p in model.parameters()]))
    assert len(calls) == 2 * 4  # two layers, two chunks and two closed-loop steps
    assert not gate_kernels.compiled_frame_grads_to_channels_last.failed  # the first run compiled
    assert not channels_last.failed
    torch.testing.assert_close(results[0][0], results[1][0], rtol=1e-3, atol=1e-5)
    for a, b in zip(results[0][1], results[1][1], strict=True):
        torch.testing.assert_close(a, b, rtol=2e-2, atol=1e-4)


@pytest.mark.skipif(
    not (shutil.which("g++") or shutil.which("c++")), reason="inductor needs a C++ compiler"
)
@pytest.mark.parametrize("kind", ["gru", "lstm", "explstm"])
@pytest.mark.parametrize("frames", [1, 3])
def test_a_channels_last_conv_output_gives_the_same_numbers_and_its_gradient_in_its_layout(
    kind: str, frames: int, monkeypatch
) -> None:
    """The compiled kernels read a channels-last u as they read a standard one and hand u's
    gradient back channels-last, the layout the conv's backward wants."""
    monkeypatch.setattr(gate_kernels, "COMPILE_CELLS", 8 * 8)
    monkeypatch.setenv("MINCONV_COMPILE", "1")
    torch.manual_seed(1)
    maps = 2 if kind == "gru" else 3
    u = (torch.randn(frames, 2, maps * HIDDEN, 8, 8) * 3).bfloat16()
    last = u.reshape(frames * 2, maps * HIDDEN, 8, 8).contiguous(memory_format=torch.channels_last)
    h0, weight = torch.randn(2, HIDDEN, 8, 8), torch.randn(frames, 2, HIDDEN, 8, 8)
    standard = run(kind, u, h0, weight)
    channels_last = run(kind, last.view(u.shape), h0, weight)
    assert not gate_kernels.compiled_gates_from_channels_last.failed
    assert not gate_kernels.compiled_frame_grads_to_channels_last.failed
    for a, b in zip(channels_last, standard, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert channels_last[1].stride(2) == 1  # u's gradient: channels innermost, as u


def test_the_channels_last_conv_equals_the_standard_one_and_returns_a_standard_gradient(
    monkeypatch,
) -> None:
    """`GridConv2d.forward_channels_last` of a large CPU frame under bf16 autocast: the standard
    layout's output to bf16 rounding, channels-last; the input's gradient in the input's layout."""
    from minconv_cli.models.padding import GridConv2d

    torch.manual_seed(2)
    for padding in ("circular", "cylinder", "zeros"):
        conv = GridConv2d(5, 6, 3, padding=padding)
        x = torch.randn(2, 5, 64, 64, requires_grad=True)
        grads, outs = [], []
        for method in (conv.forward_low, conv.forward_channels_last):
            with torch.autocast("cpu", dtype=torch.bfloat16):
                y = method(x)
            outs.append(y)
            grads.append(torch.autograd.grad((y.float() * y.float().detach()).sum(), x)[0])
        assert outs[1].is_contiguous(memory_format=torch.channels_last)
        assert grads[1].is_contiguous()
        torch.testing.assert_close(outs[1], outs[0], rtol=1e-2, atol=1e-2)
        torch.testing.assert_close(grads[1], grads[0], rtol=2e-2, atol=2e-2)
    with torch.autocast("cpu", dtype=torch.bfloat16), torch.no_grad():  # inference: unchanged
        assert conv.forward_channels_last(x[:1]).is_contiguous()
