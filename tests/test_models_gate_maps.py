"""The fused Min recurrence from the conv output (`gate_maps.maps_recurrence`) equals the reference
(`gated_recurrence` of the cell's logits) in values and gradients; models on the fused backend
equal the explicit-gates scan, in fp32 and under bf16 autocast."""

import json
from pathlib import Path

import pytest
import torch

from minconv_cli.models import create_model, gate_maps
from minconv_cli.models.cells import MinConvCell
from minconv_cli.models.gate_maps import maps_recurrence
from minconv_cli.models.gates import gated_recurrence, update_logit

KINDS = ["gru", "lstm", "explstm"]
HIDDEN = 3


def reference(kind: str, u: torch.Tensor, h0):
    """The unfused path: the logits by the gate table, then `gated_recurrence`."""
    parts = list(u.split(HIDDEN, dim=2))
    return gated_recurrence(update_logit(kind, parts[:-1]), parts[-1], h0)


def maps(kind: str, T=6) -> torch.Tensor:
    n = 2 if kind == "gru" else 3
    return torch.randn(T, 2, n * HIDDEN, 4, 5, dtype=torch.float64) * 3


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("with_h0", [False, True])
@pytest.mark.parametrize("block_frames", [None, 1, 4])
def test_values_and_gradients_equal_the_reference_in_float64(
    kind, with_h0, block_frames, monkeypatch
):
    """Also with the backward run in blocks of 1 or 4 of the 6 frames (a shorter last block)."""
    if block_frames:
        monkeypatch.setattr(gate_maps, "BLOCK_ELEMENTS", block_frames * 2 * HIDDEN * 4 * 5)
    u = maps(kind).requires_grad_()
    h0 = torch.randn(2, HIDDEN, 4, 5, dtype=torch.float64, requires_grad=True) if with_h0 else None
    fused, ref = maps_recurrence(kind, u, HIDDEN, h0), reference(kind, u, h0)
    torch.testing.assert_close(fused, ref, rtol=1e-12, atol=1e-12)
    w = torch.randn_like(ref)
    inputs = (u, h0) if with_h0 else (u,)
    got = torch.autograd.grad((fused * w).sum(), inputs)
    want = torch.autograd.grad((ref * w).sum(), inputs)
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("kind", KINDS)
def test_gradcheck(kind, monkeypatch):
    monkeypatch.setattr(gate_maps, "BLOCK_ELEMENTS", 3 * 2 * HIDDEN * 4 * 5)  # blocks of 3 and 1
    u = maps(kind, T=4).requires_grad_()
    h0 = torch.randn(2, HIDDEN, 4, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda u, h0: maps_recurrence(kind, u, HIDDEN, h0), (u, h0))
    assert torch.autograd.gradcheck(lambda u: maps_recurrence(kind, u, HIDDEN, None), (u,))


def test_bad_kind_or_channel_count_says_what_was_expected():
    with pytest.raises(ValueError, match="expected one of gru, lstm, explstm, got 'rnn'"):
        maps_recurrence("rnn", maps("gru"), HIDDEN, None)
    with pytest.raises(ValueError, match=r"expected 9 channels \(3 x 3\), got 6"):
        maps_recurrence("lstm", maps("gru"), HIDDEN, None)


@pytest.mark.parametrize("name", ["minconvgru", "minconvlstm", "minconvexplstm"])
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_models_on_the_fused_backend_equal_the_explicit_gates_scan(name, precision):
    """Same weights, scan_backend fused (the fused maps path) vs linear (gates through autograd,
    then the scan): outputs agree to fp32 tolerance, parameter gradients too, or under bf16
    autocast to bf16 tolerance (both hand the conv a bf16 gradient: one rounding can flip)."""
    torch.manual_seed(0)
    kw = {"width": 4, "layers": 2, "grid": (6, 8), "padding": "circular"}
    fused = create_model(name, 1, scan_backend="fused", **kw)
    linear = create_model(name, 1, scan_backend="linear", **kw)
    linear.load_state_dict(fused.state_dict())
    x = torch.randn(2, 7, 1, 6, 8)
    got = []
    for model in (fused, linear):
        model.precision = precision
        y = model(x, context=5)
        y.square().mean().backward()
        got.append((y, [p.grad for p in model.parameters()]))
    assert isinstance(fused.cells[0], MinConvCell)
    torch.testing.assert_close(got[0][0], got[1][0], rtol=1e-5, atol=1e-6)
    tol = {"rtol": 1e-2, "atol": 1e-5} if precision == "bf16" else {"rtol": 1e-4, "atol": 1e-6}
    for a, b in zip(got[0][1], got[1][1], strict=True):
        torch.testing.assert_close(a, b, **tol)


def _allocations(fn, trace: Path) -> list[int]:
    """The byte sizes of the blocks `fn()` allocates, in order (torch's profiler trace, CPU)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    prof.export_chrome_trace(str(trace))
    events = json.loads(trace.read_text())["traceEvents"]
    memory = sorted((e for e in events if e.get("name") == "[memory]"), key=lambda e: e["ts"])
    return [e["args"]["Bytes"] for e in memory if e["args"]["Bytes"] > 0]


@pytest.mark.parametrize("kind", KINDS)
def test_the_forward_allocates_map_sized_blocks_only(kind: str, tmp_path: Path) -> None:
    """From a bf16 conv output the forward upcasts one map at a time: z and h, and at most two
    map-sized temporaries; no fp32 copy of the whole u, no logsigmoid buffers (blocks of one
    size keep a step's heap compact: 3.3 GB of holes at 128x128 before, docs/models.md)."""
    maps = 2 if kind == "gru" else 3
    u = torch.randn(1, 4, maps * 16, 32, 32).bfloat16().requires_grad_()
    one_map = 4 * 16 * 32 * 32 * 4  # an fp32 map of a frame
    sizes = [
        s
        for s in _allocations(lambda: maps_recurrence(kind, u, 16, None), tmp_path / "trace.json")
        if s >= 1024
    ]
    assert max(sizes) <= one_map
    assert sum(sizes) <= 4 * one_map
