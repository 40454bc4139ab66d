"""`gates.candidate_grad`: the candidate activation's gradient without where(), bit for bit."""

from __future__ import annotations

import torch

from minconv_cli.models.gates import candidate_grad, g


def test_candidate_grad_equals_the_branch_form_bit_for_bit() -> None:
    """grad * g'(p) equals where(p >= 0, grad, sp (1 - sp) grad) exactly, at the kink (+-0),
    denormals, large |p| and NaN too, into a strided `out` as the fused backward writes it."""
    torch.manual_seed(0)
    p = torch.randn(3, 2, 5, 7) * 4
    p.view(-1)[:6] = torch.tensor([0.0, -0.0, -1e-45, 1e-45, 90.0, -90.0])
    p.view(-1)[6] = float("nan")
    grad = torch.randn_like(p)
    sp = torch.sigmoid(p)
    want = torch.where(p >= 0, grad, sp.clone().addcmul_(sp, sp, value=-1).mul_(grad))
    out = torch.empty(3, 2, 10, 7)[:, :, 5:]
    candidate_grad(sp.clone(), p, grad, out=out)
    torch.testing.assert_close(out, want, rtol=0, atol=0, equal_nan=True)
    torch.testing.assert_close(
        candidate_grad(sp.clone(), p, grad), want, rtol=0, atol=0, equal_nan=True
    )


def test_candidate_grad_is_the_derivative_of_g() -> None:
    """Against autograd through g = max(sigmoid(p), p + 0.5) away from the kink."""
    p = torch.linspace(-6, 6, 101, dtype=torch.float64)
    p = p[p.abs() > 1e-3].requires_grad_(True)
    g(p).sum().backward()
    got = candidate_grad(torch.sigmoid(p.detach()), p.detach(), torch.ones_like(p))
    torch.testing.assert_close(got, p.grad)
