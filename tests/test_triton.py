"""The Triton gate + recurrence kernels equal the reference `gated_recurrence`, values and gradients.

On a machine without a GPU the kernels run in Triton's interpreter on CPU tensors (conftest sets
TRITON_INTERPRET=1 before Triton is imported); with a GPU they run compiled on CUDA tensors.
Small shapes: the interpreter runs every program of the grid in Python.
"""

import os
import subprocess
import sys
import textwrap

import pytest
import torch

triton = pytest.importorskip("triton")

from minconv_cli.models import create_model  # noqa: E402
from minconv_cli.models import triton_recurrence as tr  # noqa: E402
from minconv_cli.models.gates import fused_backend, gated_recurrence  # noqa: E402

CUDA = torch.cuda.is_available()
DEVICES = [
    pytest.param(
        "cpu",
        marks=pytest.mark.skipif(
            not tr.INTERPRETER, reason="Triton's interpreter is off (TRITON_INTERPRET unset)"
        ),
    ),
    pytest.param(
        "cuda", marks=[pytest.mark.cuda, pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")]
    ),
]
SHAPE = (3, 5, 7)  # batch 3, 35 elements a row: with BLOCK 16, three programs and a masked tail
BLOCK = 16


def inputs(T, dtype, device, with_h0, scale=3.0, shape=SHAPE):
    s = torch.randn(T, *shape, dtype=torch.float64) * scale
    p = torch.randn(T, *shape, dtype=torch.float64) * scale
    h0 = torch.randn(*shape, dtype=torch.float64) if with_h0 else None
    return [None if x is None else x.to(device, dtype).requires_grad_() for x in (s, p, h0)]


def reference(s, p, h0, weights):
    """The torch-op reference in float64 on the CPU, on the kernel's (rounded) inputs."""
    args = [None if x is None else x.detach().cpu().double().requires_grad_() for x in (s, p, h0)]
    h = gated_recurrence(*args)
    grads = torch.autograd.grad(
        (h * weights.cpu().double()).sum(), [x for x in args if x is not None]
    )
    return h, grads


def kernel(s, p, h0, weights, block=BLOCK):
    h = tr.gated_recurrence(s, p, h0, block=block)
    grads = torch.autograd.grad((h * weights).sum(), [x for x in (s, p, h0) if x is not None])
    return h, grads


def assert_near(got, want, rtol, atol):
    torch.testing.assert_close(got.detach().cpu().double(), want.detach(), rtol=rtol, atol=atol)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("T", [1, 2, 17])
@pytest.mark.parametrize("with_h0", [False, True])
def test_float32_values_and_gradients_match_the_reference(device, T, with_h0):
    s, p, h0 = inputs(T, torch.float32, device, with_h0)
    weights = torch.randn(s.shape, device=device)
    h, grads = kernel(s, p, h0, weights)
    h_ref, grads_ref = reference(s, p, h0, weights)
    assert h.dtype == torch.float32
    assert_near(h, h_ref, 1e-5, 1e-6)
    for got, want in zip(grads, grads_ref, strict=True):
        assert got.dtype == torch.float32
        assert_near(got, want, 1e-5, 1e-5)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_inputs_accumulate_in_float32(device, dtype):
    """Only h's rounding to the input dtype differs from the exact result: the state is carried in
    float32 across steps, so the error does not grow with T (here 40 steps, a ~ 1 - 1e-3)."""
    T = 40
    s, p, h0 = inputs(T, dtype, device, with_h0=True)
    with torch.no_grad():
        s -= 7  # z ~ 1e-3: h integrates over many steps, where a half-precision state would drift
    weights = torch.randn(s.shape, device=device, dtype=dtype)
    h, grads = kernel(s, p, h0, weights, block=64)
    h_ref, grads_ref = reference(s, p, h0, weights)
    assert h.dtype == dtype
    eps = torch.finfo(dtype).eps
    assert_near(h, h_ref, eps, 1e-6)  # within one rounding (eps/2 relative) of the exact value
    for got, want in zip(grads, grads_ref, strict=True):
        assert got.dtype == dtype
        # backward reads h_{t-1} as saved (rounded): errors of a few roundings, relative to the scale
        assert_near(got, want, 4 * eps, 4 * eps * float(want.abs().max()))


@pytest.mark.parametrize("device", DEVICES)
def test_float64_passes_gradcheck(device):
    s, p, h0 = inputs(5, torch.float64, device, with_h0=True, shape=(2, 9))
    assert torch.autograd.gradcheck(
        lambda s, p, h0: tr.gated_recurrence(s, p, h0, block=8), (s, p, h0), fast_mode=True
    )
    assert torch.autograd.gradcheck(
        lambda s, p: tr.gated_recurrence(s, p, None, block=8), (s, p), fast_mode=True
    )


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.filterwarnings("ignore:overflow encountered in exp:RuntimeWarning")  # the interpreter
def test_extreme_gates_stay_finite_and_exact(device):
    """|s|, |p| up to 1e4: exp overflows to inf, the gates saturate to exactly 0 or 1."""
    T, shape = 6, (2, 8)
    values = torch.tensor([-1e4, -100.0, -30.0, -1.0, 0.0, 1.0, 30.0, 100.0, 1e4])
    s = values[torch.randint(len(values), (T, *shape))].to(device).requires_grad_()
    p = values[torch.randint(len(values), (T, *shape))].to(device).requires_grad_()
    h0 = torch.randn(shape, device=device, requires_grad=True)
    weights = torch.randn(T, *shape, device=device)
    h, grads = kernel(s, p, h0, weights)
    h_ref, grads_ref = reference(s, p, h0, weights)
    assert torch.isfinite(h).all() and all(torch.isfinite(g).all() for g in grads)
    assert_near(h, h_ref, 1e-5, 1e-5)
    for got, want in zip(grads, grads_ref, strict=True):
        assert_near(got, want, 1e-5, 1e-5)


@pytest.mark.parametrize("device", DEVICES)
def test_strided_views_and_gradients_as_the_cells_produce_them(device):
    """s and p are channel slices of one conv output (T, B, 2C, H, W); h0 a strided slice too;
    the loss reads only some steps, so grad_h has zero rows."""
    u = torch.randn(4, 2, 6, 3, 5, device=device, requires_grad=True)
    s, p = u[:, :, :3], u[:, :, 3:]
    big = torch.randn(2, 6, 3, 5, device=device, requires_grad=True)
    h0 = big[:, ::2]
    h = tr.gated_recurrence(s, p, h0, block=BLOCK)
    loss = h[-1].square().sum() + h[1].sum()
    grads = torch.autograd.grad(loss, (u, big))
    args = [x.detach().cpu().double().requires_grad_() for x in (u, big)]
    h_ref = gated_recurrence(args[0][:, :, :3], args[0][:, :, 3:], args[1][:, ::2])
    grads_ref = torch.autograd.grad(h_ref[-1].square().sum() + h_ref[1].sum(), args)
    assert_near(h, h_ref, 1e-5, 1e-6)
    for got, want in zip(grads, grads_ref, strict=True):
        assert_near(got, want, 1e-5, 1e-5)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", ["minconvgru", "minconvlstm", "minconvexplstm"])
def test_min_models_with_triton_equal_the_fused_backend(device, name):
    """Forward and parameter gradients; time chunks of 2 carry the state between kernel calls."""
    x = torch.randn(2, 6, 2, 4, 5, device=device)
    kw = {"width": 3, "layers": 2, "grid": (4, 5), "padding": "circular", "time_chunk": 2}
    fused = create_model(name, 2, scan_backend="fused", **kw).to(device)
    model = create_model(name, 2, scan_backend="triton", **kw).to(device)
    model.load_state_dict(fused.state_dict())
    for net in (fused, model):
        net(x, 4).square().sum().backward()
    torch.testing.assert_close(model(x, 4), fused(x, 4), rtol=1e-5, atol=1e-6)
    for a, b in zip(model.parameters(), fused.parameters(), strict=True):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-4, atol=1e-5)


def test_auto_is_triton_on_cuda_only():
    assert fused_backend("auto", torch.device("cpu")) == "fused"
    assert fused_backend("triton", torch.device("cpu")) == "triton"
    assert fused_backend("auto", torch.device("cuda")) == "triton"  # Triton imports here
    with pytest.raises(ValueError, match="fused backend: expected .*got 'log'"):
        fused_backend("log", torch.device("cpu"))


def run_python(code: str, **env) -> subprocess.CompletedProcess:
    environment = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"} | env
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        env=environment,
        timeout=300,
    )


def test_cpu_tensors_without_the_interpreter_say_what_is_needed():
    done = run_python(
        """
        import torch
        from minconv_cli.models.gates import fused_recurrence
        s = torch.randn(3, 2, 4)
        try:
            fused_recurrence("triton", s, s, None)
        except ValueError as error:
            print(error)
        """
    )
    assert done.returncode == 0, done.stderr
    assert "scan_backend 'triton': expected CUDA tensors, got cpu" in done.stdout
    assert "TRITON_INTERPRET=1" in done.stdout


def test_the_kernels_compile_for_hopper_without_a_gpu():
    """The compiled path (not the interpreter): both kernels lower to sm_90 machine code with the
    ptxas that Triton ships, for every input dtype, with and without h0."""
    done = run_python(
        """
        import triton, triton.language as tl
        from triton.backends.compiler import GPUTarget
        from triton.compiler import ASTSource
        from minconv_cli.models import triton_recurrence as tr

        def signature(kernel, dtype, pointers):
            names = kernel.arg_names
            kinds = {n: "constexpr" for n in ("HAS_H0", "ACC", "BLOCK")}
            return {n: f"*{dtype}" if i < pointers else kinds.get(n, "i32") for i, n in enumerate(names)}

        for dtype in ("fp32", "bf16", "fp16", "fp64"):
            acc = tl.float64 if dtype == "fp64" else tl.float32
            for has_h0 in (True, False):
                for kernel, pointers in ((tr._forward_kernel, 4), (tr._backward_kernel, 8)):
                    consts = {"HAS_H0": has_h0, "ACC": acc, "BLOCK": 1024}
                    source = ASTSource(kernel, signature(kernel, dtype, pointers), constexprs=consts)
                    compiled = triton.compile(source, target=GPUTarget("cuda", 90, 32), options={"num_warps": 8})
                    assert len(compiled.asm["cubin"]) > 1000
        print("compiled")
        """,
        TRITON_DEFAULT_FP_FUSION="1",
    )
    if "ModuleNotFoundError" in done.stderr or "ImportError" in done.stderr:
        pytest.skip(f"this Triton has no ahead-of-time compile API: {done.stderr.splitlines()[-1]}")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "compiled"


@pytest.mark.cuda
@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
@pytest.mark.parametrize(
    "name", ["minconvgru", "minconvlstm", "minconvexplstm", "convgru", "convlstm"]
)
def test_parallel_equals_step_mode_on_cuda(name):
    torch.backends.cudnn.allow_tf32 = False
    model = create_model(name, 2, width=8, layers=2, grid=(16, 16), padding="circular").cuda()
    x = torch.randn(2, 9, 2, 16, 16, device="cuda")
    y = model(x, 6)
    state, prev, outs = None, None, []
    for t in range(9):
        prev, state = model.step(x[:, t] if t < 6 else prev, state)
        outs.append(prev)
    torch.testing.assert_close(y, torch.stack(outs, 1), rtol=1e-4, atol=1e-5)


@pytest.mark.cuda
@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
@pytest.mark.parametrize("name", ["minconvgru", "minconvlstm"])
def test_bf16_autocast_trains_close_to_float32_on_cuda(name):
    model = create_model(name, 1, width=16, layers=2, grid=(32, 32), padding="circular").cuda()
    x = torch.randn(4, 11, 1, 32, 32, device="cuda")
    y32 = model(x[:, :-1], 8)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        y16 = model(x[:, :-1], 8)
        loss = (y16.float() - x[:, 1:]).square().mean()
    loss.backward()
    assert all(torch.isfinite(q.grad).all() for q in model.parameters())
    error = (y16.float() - y32).norm() / y32.norm()
    assert error < 2e-2, f"bf16 vs float32 relative error {error:.2e}"
