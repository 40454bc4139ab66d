"""A/B of a design option for large CPU frames under bf16: the whole network channels-last.

On the CPU, `GridConv2d` runs the bf16 convolution of large frames (>= 64x64 cells) in the
standard layout, because converting a channels-last conv output back costs more than oneDNN's own
reorders. But those reorders are dear (oneDNN verbose, 49 -> 98 channels at 128x128 B4: 34 of
113 ms per forward+backward), and a conv whose input and output stay channels-last needs none.
`apply()` patches a prototype of that in (not the shipped code): the encoder's output, every
cell's conv input and output, the states and the norms channels-last; the circular pad and the
bf16 cast of a conv input in one copy (`_PadCast`); the grid LayerNorm and its residual add as
one compiled function. (A third option, the Min cells' conv alone channels-last with the layout
change inside their compiled gate kernels, was the `min_only` variant here; it is now shipped
(`GridConv2d.forward_channels_last`), and `compare_commits.py --ref 523d2e7` measures it against
the code before it.) `apply_conv_transposed()` patches in the general form: every conv of large
frames channels-last between explicit bf16 transposes. `main()` times training steps of the
variants in fresh processes, interleaved (benchmarks/grid_scaling_case.py), prints a table and writes
benchmarks/results/channels_last_ab.json.

    python benchmarks/channels_last_ab.py --size 128 --models minconvgru,convlstm --repeats 2
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


def apply_conv_transposed() -> None:
    """Patch in the general option: every `GridConv2d` of large CPU training frames runs its bf16
    conv channels-last between two bf16 transposes (`_Transposed`), the network as shipped."""
    from minconv_cli.models import padding
    from minconv_cli.models.padding import _Transposed

    shipped = padding.GridConv2d._plain_low

    def plain_low(self, x):
        if not (torch.is_grad_enabled() and x.shape[-1] * x.shape[-2] >= LARGE):
            return shipped(self, x)
        low = torch.get_autocast_dtype(x.device.type)
        x = _Transposed.apply(self.pad(x.to(low)), CL, torch.contiguous_format)
        y = torch.nn.Conv2d.forward(self, x)
        return _Transposed.apply(y, torch.contiguous_format, CL)

    padding.GridConv2d._plain_low = plain_low


VARIANTS = {
    "channels_last": apply,
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
