"""linear_recurrence: every backend equals a plain loop of h_t = a_t h_{t-1} + b_t, values and gradients."""

import pytest
import torch

from minconv_cli.models.scan import linear_recurrence

BACKENDS = ["linear", "log", "auto"]


def loop(a, b, h0=None, dim=1):
    """The reference: the recurrence written out step by step."""
    a, b = a.movedim(dim, 0), b.movedim(dim, 0)
    h = torch.zeros_like(b[0]) if h0 is None else h0
    out = []
    for t in range(b.shape[0]):
        h = a[t] * h + b[t]
        out.append(h)
    return torch.stack(out).movedim(0, dim)


def inputs(T, channels=2, dtype=torch.float64, with_h0=False, positive_b=False):
    a = torch.rand(2, T, channels, dtype=dtype).requires_grad_()
    b = torch.randn(2, T, channels, dtype=dtype)
    if positive_b:
        b = b.abs() + 0.01
    b.requires_grad_()
    h0 = torch.randn(2, channels, dtype=dtype, requires_grad=True) if with_h0 else None
    return a, b, h0


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("T", [1, 2, 17])
@pytest.mark.parametrize("with_h0", [False, True])
def test_backend_matches_loop_and_passes_gradcheck(backend, T, with_h0):
    a, b, h0 = inputs(T, with_h0=with_h0)
    torch.testing.assert_close(linear_recurrence(a, b, h0, backend=backend), loop(a, b, h0))
    args = (a, b) + ((h0,) if with_h0 else ())
    assert torch.autograd.gradcheck(
        lambda a, b, *h: linear_recurrence(a, b, *h, backend=backend), args
    )


@pytest.mark.parametrize("backend", BACKENDS)
def test_long_sequence_values_and_gradients_match_loop(backend):
    a, b, h0 = inputs(2048, channels=1, with_h0=True, positive_b=True)
    got = linear_recurrence(a, b, h0, backend=backend)
    want = loop(a, b, h0)
    torch.testing.assert_close(got, want)
    weights = torch.randn_like(want)
    grads = torch.autograd.grad((got * weights).sum(), (a, b, h0))
    want_grads = torch.autograd.grad((want * weights).sum(), (a, b, h0))
    for g, w in zip(grads, want_grads, strict=True):
        torch.testing.assert_close(g, w)


@pytest.mark.parametrize("backend", BACKENDS)
def test_other_time_dims(backend):
    a = torch.rand(3, 4, 5, dtype=torch.float64)
    b = torch.randn(3, 4, 5, dtype=torch.float64)
    for dim in (0, 2, -1):
        h0 = torch.randn(*(s for i, s in enumerate(a.shape) if i != dim % 3), dtype=torch.float64)
        torch.testing.assert_close(
            linear_recurrence(a, b, h0, dim=dim, backend=backend), loop(a, b, h0, dim=dim)
        )


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("a_value", [1e-7, 0.0, 1 - 1e-7, 1.0])
def test_extreme_decay_stays_finite_float32(backend, a_value):
    T = 1500
    a = torch.full((2, T, 3), a_value).requires_grad_()
    b = (torch.rand(2, T, 3) + 0.1).requires_grad_()
    h = linear_recurrence(a, b, backend=backend)
    assert torch.isfinite(h).all()
    ga, gb = torch.autograd.grad(h.sum(), (a, b))
    assert torch.isfinite(ga).all() and torch.isfinite(gb).all()
    # the log scan loses ~eps * |sum log a| in float32 (the Heinsen form's known cost); linear is exact
    tol = 1e-2 if backend == "log" else 1e-5
    if a_value < 0.5:  # h_t is essentially b_t
        torch.testing.assert_close(h, b.detach(), rtol=tol, atol=tol)
    else:  # h_t is essentially the running sum of b
        torch.testing.assert_close(h, b.detach().cumsum(1), rtol=2e-3, atol=1e-3)


@pytest.mark.parametrize("backend", BACKENDS)
def test_near_zero_and_one_in_float64_are_accurate(backend):
    a = torch.where(torch.rand(1, 1000, 2) < 0.5, 1e-9, 1 - 1e-9).double()
    b = torch.rand(1, 1000, 2, dtype=torch.float64) + 0.1
    torch.testing.assert_close(
        linear_recurrence(a, b, backend=backend), loop(a, b), rtol=1e-9, atol=1e-9
    )


def test_bad_arguments_say_what_was_expected():
    a = torch.rand(2, 3, 4)
    with pytest.raises(ValueError, match="backend.*got 'fast'"):
        linear_recurrence(a, a, backend="fast")
    with pytest.raises(ValueError, match="one shape"):
        linear_recurrence(a, a[:, :2])
    with pytest.raises(ValueError, match=r"h0 must have shape \(2, 4\)"):
        linear_recurrence(a, a, torch.zeros(2, 3))
