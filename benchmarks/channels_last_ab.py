"""A/B of a design option for large CPU frames under bf16: the whole network channels-last.

On the CPU, `GridConv2d` runs the bf16 convolution of large frames (>= 64x64 cells) in the
standard layout, because converting a channels-last conv output back costs more than oneDNN's own
reorders. But those reorders are dear (oneDNN verbose, 49 -> 98 channels at 128x128 B4: 34 of
113 ms per forward+backward), and a conv whose input and output stay channels-last needs none.
`apply()` patches a prototype of that in (not the shipped code): the encoder's output, every
cell's conv input and output, the states and the norms channels-last; the circular pad and the
bf16 cast of a conv input in one copy (`_PadCast`); the grid LayerNorm and its residual add as
one compiled function. `apply_min_only()` patches in a narrower option: only the Min cells' conv
channels-last (a circular halo; the input cast and padded, then transposed in one bf16 copy), the
layout changes of its output folded into the compiled gate kernels (u read
channels-last, z and h written in the standard layout, u's gradient written channels-last), the
rest of the network as shipped. `apply_conv_transposed()` patches in the general one: every
conv of large frames channels-last between explicit bf16 transposes. `main()` times training steps of the variants in fresh processes,
interleaved (benchmarks/grid_scaling_case.py), prints a table and writes
benchmarks/results/channels_last_ab.json.

    python benchmarks/channels_last_ab.py --size 128 --models minconvgru,convlstm --repeats 2
    python benchmarks/channels_last_ab.py --models minconvgru --variants min_only --repeats 3 \
        --out benchmarks/results/channels_last_ab_min_only.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
from pathlib import Path

import torch
import torch.nn.functional as F
from fresh_process import run_json
from grid_scaling_case import PAPER_WIDTHS

HERE = Path(__file__).resolve().parent
RESULT = HERE / "results" / "channels_last_ab.json"
LARGE = 64 * 64  # frames of at least this many cells take the prototype (as CPU_PLAIN_LAYOUT_CELLS)
CL = torch.channels_last
CHILD = """
import json, sys
sys.path[:0] = [{bench!r}, {repo!r}]
if {variant!r} != "as_shipped":
    import channels_last_ab
    channels_last_ab.VARIANTS[{variant!r}]()
from grid_scaling_case import measure
print(json.dumps(measure("train", {model!r}, ({size}, {size}), "bf16", True, {steps})))
"""


class _PadCast(torch.autograd.Function):
    """x (B, C, H, W) -> its circular pad by `halo`, in `dtype`, channels-last, in one copy."""

    @staticmethod
    def forward(ctx, x, halo, dtype):  # type: ignore[override]
        B, C, H, W = x.shape
        k = halo
        out = torch.empty((B, C, H + 2 * k, W + 2 * k), dtype=dtype, memory_format=CL)
        out[:, :, k:-k, k:-k].copy_(x)
        out[:, :, :k, k:-k].copy_(out[:, :, H : H + k, k:-k])
        out[:, :, -k:, k:-k].copy_(out[:, :, k : 2 * k, k:-k])
        out[:, :, :, :k].copy_(out[:, :, :, W : W + k])
        out[:, :, :, -k:].copy_(out[:, :, :, k : 2 * k])
        ctx.halo, ctx.dtype = halo, x.dtype
        return out

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        k = ctx.halo
        g = grad.clone(memory_format=CL)
        H, W = g.shape[-2] - 2 * k, g.shape[-1] - 2 * k
        g[:, :, :, W : W + k] += g[:, :, :, :k]
        g[:, :, :, k : 2 * k] += g[:, :, :, -k:]
        g[:, :, H : H + k, :] += g[:, :, :k, :]
        g[:, :, k : 2 * k, :] += g[:, :, -k:, :]
        return g[:, :, k:-k, k:-k].to(ctx.dtype), None, None


def _residual_layer_norm(x, h, weight, bias):
    """LayerNorm over (H, W) of x + h, in any memory layout."""
    y = x + h
    var, mean = torch.var_mean(y, dim=(-2, -1), keepdim=True, correction=0)
    return (y - mean) * torch.rsqrt(var + 1e-5) * weight + bias


def _candidate_grad(sp, p, grad, out=None):
    """gates.candidate_grad without out= (dynamo refuses a non-contiguous out= tensor)."""
    return torch.maximum(sp * (1 - sp), torch.sign(p).add(1).clamp_max(1)) * grad


def apply() -> None:
    """Patch the prototype into this process's minconv_cli (large CPU frames under autocast)."""
    from minconv_cli.core.precision import full_precision
    from minconv_cli.models import gate_kernels, network, padding

    norm = torch.compile(_residual_layer_norm, dynamic=True)
    plain_forward, plain_low = padding.GridConv2d.forward, padding.GridConv2d.forward_low
    plain_layers = network.RecurrentForecaster._layers

    def large(x):
        return torch.is_autocast_enabled("cpu") and x.shape[-1] * x.shape[-2] >= LARGE

    def conv(self, x, low_out):
        low = torch.get_autocast_dtype("cpu")
        if self.halo and self.grid_padding == "circular":
            x = _PadCast.apply(x.contiguous(memory_format=CL), self.halo, low)
        else:
            x = self.pad(x.to(low)).contiguous(memory_format=CL)
        y = F.conv2d(x, self.weight.to(low), self.bias.to(low), 1, self.padding)
        return y if low_out else y.float()

    def forward(self, x):
        return conv(self, x, False) if large(x) else plain_forward(self, x)

    def forward_low(self, x):
        return conv(self, x, True) if large(x) else plain_low(self, x)

    def layers(self, frames, static, states, stepwise):
        # RecurrentForecaster._layers restated with two changes: the encoder's output
        # channels-last, and the residual add and grid LayerNorm as one compiled function
        if not large(frames) or static is not None and self.static_channels:
            return plain_layers(self, frames, static, states, stepwise)
        T, B = frames.shape[:2]
        with full_precision(frames):
            flat = frames.reshape(T * B, *frames.shape[2:]).float()
            x = self.encoder(flat.contiguous(memory_format=CL)).contiguous(memory_format=CL)
        new_states = []
        for cell, proj, grid_norm, state in zip(
            self.cells, self.projections, self.norms, states, strict=True
        ):
            if stepwise:
                h, state = cell.step(x, state)
            else:
                h, state = cell.sequence(x.view(T, B, *x.shape[1:]), state)
                h = h.reshape(T * B, *h.shape[2:])
            if grid_norm.kind == "layer":
                x = norm(proj(x), h, grid_norm.weight, grid_norm.bias)
            else:
                x = grid_norm(proj(x) + h)
            new_states.append(state)
        with full_precision(x):
            y = self.decoder(x.float()).view(T, B, self.out_channels, *x.shape[2:])
        if self.predict == "increment":
            y = y + frames
        return y, new_states

    padding.GridConv2d.forward, padding.GridConv2d.forward_low = forward, forward_low
    network.RecurrentForecaster._layers = layers
    gate_kernels.candidate_grad = _candidate_grad


def apply_min_only() -> None:
    """Patch in the Min-only option (large CPU frames under autocast, circular halo, compiled
    gate kernels): the cell's conv channels-last, the layout changes inside the gate kernels."""
    from minconv_cli.models import cells
    from minconv_cli.models.gate_kernels import _Kernel, wanted

    gates_kernel, grads_kernel = _Kernel(_gates_from_cl), _Kernel(_grads_to_cl)
    shipped = cells.MinConvCell.sequence

    def sequence(self, x, state):
        frames = x.reshape(-1, *x.shape[2:])
        if not (
            torch.is_autocast_enabled("cpu")
            and x.shape[-1] * x.shape[-2] >= LARGE
            and wanted(frames.unsqueeze(0))
            and self.kind in _MIN_KINDS
            and self.backend in ("auto", "fused")
            and self.conv.grid_padding == "circular"
        ):
            return shipped(self, x, state)
        u = F.conv2d(_pad_cast_cl(frames, self.conv.halo), self.conv.weight, self.conv.bias)
        h0 = state.float() if state is not None else None
        h = _MinChannelsLast.apply(
            u.view(*x.shape[:2], *u.shape[1:]), h0, self.kind, self.hidden, gates_kernel,
            grads_kernel,
        )  # fmt: skip
        return h, h[-1]

    cells.MinConvCell.sequence = sequence


_MIN_KINDS = ("gru", "lstm", "explstm")


def _pad_cast_cl(x, halo):
    """x's circular halo, in bf16, channels-last: cast and pad in the standard layout, then one
    transposing copy."""
    x = F.pad(x.to(torch.bfloat16), (halo,) * 4, mode="circular")
    return _Transposed.apply(x, CL, torch.contiguous_format)


def _gates_from_cl(kind, gates, p):
    """(z, g(p), u) in the standard layout from the channels-last conv output's maps."""
    from minconv_cli.models.gate_kernels import forward_gates

    z, cand = forward_gates(kind, gates, p)
    return z.contiguous(), cand.contiguous(), torch.cat([*gates, p], dim=-3).contiguous()


def _grads_to_cl(kind, gates, p, prev, grad_h, carry, z):
    """`gate_kernels.frame_grads` with u's gradient written channels-last."""
    from minconv_cli.models.gate_kernels import frame_grads

    grad_u, carry = frame_grads(kind, gates, p, prev, grad_h, carry, z)
    return grad_u.contiguous(memory_format=CL), carry


class _MinChannelsLast(torch.autograd.Function):
    """`gate_maps._MapsRecurrence` (compiled kernels) for a channels-last u: the same lerp
    recurrence; saves u's standard-layout copy, returns u's gradient in u's layout."""

    @staticmethod
    def forward(ctx, u, h0, kind, hidden, gates_kernel, grads_kernel):  # type: ignore[override]
        maps = u.split(hidden, dim=2)
        z, h, u_plain = gates_kernel(kind, list(maps[:-1]), maps[-1])
        if h0 is None:
            h[0].mul_(z[0])
        else:
            torch.lerp(h0, h[0], z[0], out=h[0])
        for t in range(1, h.shape[0]):
            torch.lerp(h[t - 1], h[t], z[t], out=h[t])
        ctx.kind, ctx.hidden, ctx.has_h0, ctx.kernel = kind, hidden, h0 is not None, grads_kernel
        ctx.geometry = (u.shape, u.stride())
        ctx.save_for_backward(u_plain, h, h0 if h0 is not None else h, z if kind == "lstm" else h)
        return h

    @staticmethod
    def backward(ctx, grad_h):  # type: ignore[override]
        u, h, h0, z = ctx.saved_tensors
        maps = u.split(ctx.hidden, dim=2)
        zeros = torch.zeros_like(h[0])
        carry = zeros
        grad_u = torch.empty_strided(*ctx.geometry, dtype=u.dtype)
        for t in reversed(range(h.shape[0])):
            prev = h[t - 1] if t else (h0 if ctx.has_h0 else zeros)
            frame, carry = ctx.kernel(
                ctx.kind, [m[t] for m in maps[:-1]], maps[-1][t], prev, grad_h[t], carry, z[t]
            )
            grad_u[t].copy_(frame)
        return grad_u, carry if ctx.has_h0 else None, None, None, None, None


def apply_conv_transposed() -> None:
    """Patch in the general option: every `GridConv2d` of large CPU training frames runs its bf16
    conv channels-last between two bf16 transposes (`_Transposed`), the network as shipped."""
    from minconv_cli.models import padding

    shipped = padding.GridConv2d._plain_low

    def plain_low(self, x):
        if not (torch.is_grad_enabled() and x.shape[-1] * x.shape[-2] >= LARGE):
            return shipped(self, x)
        low = torch.get_autocast_dtype(x.device.type)
        x = _Transposed.apply(self.pad(x.to(low)), CL, torch.contiguous_format)
        y = torch.nn.Conv2d.forward(self, x)
        return _Transposed.apply(y, torch.contiguous_format, CL)

    padding.GridConv2d._plain_low = plain_low


class _Transposed(torch.autograd.Function):
    """x in memory format `layout`, its gradient in `back` (aten's bf16 transposes are fast
    copies: 0.9-1.6 ms for 49 channels of 4 x 130 x 130; fp32, or fused into a compiled pad: 5-9)."""

    @staticmethod
    def forward(ctx, x, layout, back):  # type: ignore[override]
        ctx.back = back
        return x.contiguous(memory_format=layout)

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        return grad.contiguous(memory_format=ctx.back), None, None


VARIANTS = {
    "channels_last": apply,
    "min_only": apply_min_only,
    "conv_transposed": apply_conv_transposed,
}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--models", default=",".join(PAPER_WIDTHS))
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--variants", default=",".join(VARIANTS), help="beside as_shipped")
    parser.add_argument("--out", type=Path, default=RESULT)
    args = parser.parse_args(argv)
    variants = ["as_shipped", *args.variants.split(",")]
    runs: dict[str, list[dict]] = {}
    for _ in range(args.repeats):
        for model in args.models.split(","):
            for variant in variants:
                code = CHILD.format(
                    bench=str(HERE),
                    repo=str(HERE.parent),
                    variant=variant,
                    model=model,
                    size=args.size,
                    steps=args.steps,
                )
                got = run_json(code, args.threads)
                runs.setdefault(f"{model} {variant}", []).append(got)
                print(f"{model} {variant}: {got['step_ms']:.0f} ms, +{got['peak_mb']:.0f} MB")
    summary = {
        key: {
            "step_ms": statistics.median(r["step_ms"] for r in got),
            "peak_mb": statistics.median(r["peak_mb"] for r in got),
        }
        for key, got in runs.items()
    }
    for model in args.models.split(","):
        a = summary[f"{model} as_shipped"]
        for variant in variants[1:]:
            b = summary[f"{model} {variant}"]
            print(
                f"{model:16s} {variant:14s} {a['step_ms']:8.0f} -> {b['step_ms']:8.0f} ms "
                f"({a['step_ms'] / b['step_ms']:.2f}x), "
                f"peak {a['peak_mb']:.0f} -> {b['peak_mb']:.0f} MB"
            )
    result = {
        "machine": platform.processor() or platform.machine(),
        "threads": args.threads,
        "grid": [args.size, args.size],
        "method": __doc__.split("\n\n")[1].replace("\n", " "),
        "runs": runs,
        "summary": summary,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
