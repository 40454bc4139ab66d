"""Precision: what `auto` picks, and a model under bf16 autocast (convs in bf16, the rest fp32)."""

from __future__ import annotations

import platform
from pathlib import Path

import pytest
import torch

from minconv_cli.core.errors import MinconvError
from minconv_cli.core.precision import autocast, resolve_precision
from minconv_cli.models import MODEL_NAMES, create_model


def cpu_has_native_bf16() -> bool:
    cpuinfo = Path("/proc/cpuinfo")
    if platform.system() != "Linux" or not cpuinfo.exists():
        return False
    flags = next((ln for ln in cpuinfo.read_text().splitlines() if ln.startswith("flags")), "")
    return bool({"avx512_bf16", "amx_bf16"} & set(flags.split()))


def test_auto_is_bf16_exactly_where_the_cpu_reports_native_bf16():
    assert resolve_precision("auto", "cpu") == ("bf16" if cpu_has_native_bf16() else "fp32")
    assert resolve_precision("fp32", "cpu") == "fp32"
    assert resolve_precision("bf16", "cpu") == "bf16"
    with pytest.raises(MinconvError, match="--precision: expected one of fp32, bf16, auto"):
        resolve_precision("half", "cpu", "--precision")


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_bf16_runs_the_convolutions_in_bf16_and_keeps_outputs_states_and_grads_fp32(name):
    model = create_model(name, 2, width=8, layers=2, grid=(8, 8), padding="circular")
    x = torch.randn(3, 6, 2, 8, 8)
    conv_dtypes = []
    hooks = [
        m.register_forward_hook(lambda m, a, out: conv_dtypes.append((m.kernel_size, out)))
        for m in model.modules()
        if isinstance(m, torch.nn.Conv2d)
    ]
    reference = model(x, context=4)
    conv_dtypes.clear()
    with autocast("cpu", "bf16"):
        y, state = model(x, context=4, return_state=True)
        y_step, _ = model.step(x[:, 0], state)
    for h in hooks:
        h.remove()
    # the 3x3 convolutions compute (and round) in bf16 and hand back fp32 for the gates
    three = [out for k, out in conv_dtypes if k == (3, 3)]
    assert three and all(out.dtype == torch.float32 for out in three)
    assert all(torch.equal(out, out.bfloat16().float()) for out in three)
    ones = [out for k, out in conv_dtypes if k == (1, 1)]  # encoder/decoder: fp32 throughout
    assert all(out.dtype == torch.float32 for out in ones)
    assert not any(torch.equal(out, out.bfloat16().float()) for out in ones)
    assert y.dtype == y_step.dtype == torch.float32
    flat = [t for s in state for t in (s if isinstance(s, tuple) else (s,))]
    assert all(t.dtype == torch.float32 for t in flat)
    err = (y - reference).abs().max() / reference.abs().max()
    assert 0 < err < 0.05  # rounded to bf16 in the convolutions, no more
    y.square().mean().backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and g.dtype == torch.float32 and g.isfinite().all() for g in grads)


@pytest.mark.parametrize("name", ["minconvgru", "minconvlstm", "minconvexplstm"])
def test_the_in_place_inference_step_gives_the_same_numbers_as_the_autograd_step(name):
    model = create_model(name, 2, width=6, layers=2, grid=(8, 8), padding="circular")
    x = torch.randn(3, 7, 2, 8, 8)
    with_grad = model(x, context=3)  # closed loop through `step` with autograd
    with torch.inference_mode():
        in_place = model(x, context=3)  # the same steps, gates computed in place
    assert torch.equal(with_grad.detach(), in_place)


@pytest.mark.parametrize("name", ["minconvgru", "convlstm"])
def test_a_model_runs_in_its_own_precision_as_under_an_outer_autocast(name):
    """Precision is set once on the model (trainer, rollout); nothing around it needs autocast."""
    model = create_model(name, 2, width=8, layers=2, grid=(8, 8), padding="circular")
    x = torch.randn(2, 5, 2, 8, 8)
    with autocast("cpu", "bf16"):
        outer, outer_state = model(x, context=3, return_state=True)
        outer_step, _ = model.step(x[:, 0], outer_state)
    model.precision = "bf16"
    own, own_state = model(x, context=3, return_state=True)
    own_step, _ = model.step(x[:, 0], own_state)
    assert torch.equal(own, outer) and torch.equal(own_step, outer_step)
    model.precision = "fp32"
    assert not torch.equal(model(x, context=3), own)
