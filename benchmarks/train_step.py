"""Training-step speed and memory of the five models at matched size, and of the scan backends alone.

Median wall time of one training step (forward, MSE backward, Adam step) on the paper's
Navier-Stokes shape (4 layers, ~175k parameters, T = 25: 20 teacher-forced + 5 closed loop) at
16x16 (batch 8) and 64x64 (batch 4), plus a pure teacher-forced T = 50 case, in each precision
(fp32, bf16 autocast as `minconv train --precision`) and optionally with channels-last weights;
all variants are interleaved round-robin so that all ratios come from one run under the same load.
Each step's convolution work is counted (hooks on every conv: 2*Cin*Cout*k*k*H*W per frame, x3
for forward + both backward products) and set against the conv library's own time for exactly
those convolutions run alone (fwd+bwd, same shapes, same precision): `conv_bound_ms` is the
physical limit of a step, `efficiency` = conv_bound_ms / step time. Peak memory is
the peak resident set size (VmHWM in /proc/self/status) of a fresh child process that runs
one step of one model, minus its RSS before the first step. The share of time outside the
convolutions comes from `torch.profiler` (self CPU time of conv ops vs all ops).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Any

import torch

# the paper's widths at ~175k parameters, 4 layers (16x16 LayerNorm; at 64x64 LayerNorm adds
# 2*H*W per layer), and this process's memory, as the grid-scaling cases read it
from grid_scaling_case import PAPER_WIDTHS, peak_rss_bytes, rss_bytes  # noqa: E402
from rich.console import Console
from rich.table import Table

from minconv_cli.core.allocator import keep_freed_memory
from minconv_cli.core.precision import autocast, native_bf16, resolve_precision
from minconv_cli.models import MODEL_NAMES, count_parameters, create_model
from minconv_cli.models.gates import gated_recurrence
from minconv_cli.models.scan import linear_recurrence

MIN_MODELS = ("minconvgru", "minconvlstm", "minconvexplstm")
RESULT = Path(__file__).parent / "results" / "train_step.json"


def make_case(
    name: str,
    grid: int,
    batch: int,
    T: int,
    context: int,
    options: dict | None = None,
    precision: str = "fp32",
    channels_last: bool = False,
):
    model = create_model(
        name,
        1,
        width=PAPER_WIDTHS[name],
        layers=4,
        grid=(grid, grid),
        padding="circular",
        **(options or {}),
    )
    if channels_last:
        model = model.to(memory_format=torch.channels_last)  # the convs then run NHWC
    optimizer = torch.optim.Adam(model.parameters(), lr=5e-4)
    x = torch.randn(batch, T + 1, 1, grid, grid)
    return model, optimizer, x, context, precision


def train_step(model, optimizer, x, context, precision="fp32") -> None:
    """One step as `minconv train` takes it: model under autocast, loss in fp32."""
    optimizer.zero_grad(set_to_none=True)
    with autocast("cpu", precision):
        y = model(x[:, :-1], context)
    loss = (y.float() - x[:, 1:]).square().mean()
    loss.backward()
    optimizer.step()


def conv_calls(case) -> dict[tuple, int]:
    """Every convolution of one step's forward: (module, input shape, autocast on) -> calls."""
    model = case[0]
    calls: dict[tuple, int] = {}

    def hook(module, args, _out):
        key = (module, tuple(args[0].shape), torch.is_autocast_enabled("cpu"))
        calls[key] = calls.get(key, 0) + 1

    handles = [
        m.register_forward_hook(hook) for m in model.modules() if isinstance(m, torch.nn.Conv2d)
    ]
    try:
        train_step(*case)
    finally:
        for h in handles:
            h.remove()
    return calls


def conv_flops(module: torch.nn.Conv2d, shape: tuple) -> float:
    """Forward multiply-adds x2 of one call on an input of `shape` ("same" output size)."""
    n, c, h, w = shape
    kh, kw = module.kernel_size
    return 2.0 * n * h * w * c // module.groups * module.out_channels * kh * kw


def conv_alone_ms(module: torch.nn.Conv2d, shape: tuple, amp: bool, repeats: int) -> float:
    """Median fwd+bwd time of the library convolution alone, on the (padded) input it sees."""
    n, c, h, w = shape
    halo = getattr(module, "halo", 0) if getattr(module, "grid_padding", "zeros") != "zeros" else 0
    weight = module.weight.detach().clone().requires_grad_()
    x = torch.randn(n, c, h + 2 * halo, w + 2 * halo).requires_grad_()
    if weight.is_contiguous(memory_format=torch.channels_last):
        x = x.detach().contiguous(memory_format=torch.channels_last).requires_grad_()

    def run():
        with autocast("cpu", "bf16" if amp else "fp32"):
            y = torch.nn.functional.conv2d(x, weight, None, padding=module.padding)
        y.backward(torch.ones_like(y))

    run()
    return statistics.median(timed(run) for _ in range(repeats)) * 1000


def conv_bound(case, repeats: int) -> dict[str, float]:
    """The step's conv GFLOP (fwd + bwd = 3x fwd) and the library's time for exactly those convs."""
    calls = conv_calls(case)
    flops = sum(3 * conv_flops(m, shape) * k for (m, shape, _), k in calls.items())
    alone: dict[tuple, float] = {}
    bound = 0.0
    for (m, shape, amp), k in calls.items():
        key = (m.in_channels, m.out_channels, m.kernel_size, shape, amp)
        if key not in alone:
            alone[key] = conv_alone_ms(m, shape, amp, repeats)
        bound += alone[key] * k
    return {"conv_gflop": flops / 1e9, "conv_bound_ms": bound}


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def time_models(cases: dict, repeats: int) -> dict[Any, list[float]]:
    """Round-robin over the models so that load changes hit all of them alike."""
    for case in cases.values():
        train_step(*case)  # warm-up
    times = {name: [] for name in cases}
    for _ in range(repeats):
        for name, case in cases.items():
            times[name].append(timed(lambda case=case: train_step(*case)))
    return times


def _memory_child(args, threads, queue) -> None:
    keep_freed_memory()  # as `minconv train` does
    torch.manual_seed(0)
    torch.set_num_threads(threads)
    case = make_case(*args)
    before = rss_bytes()
    train_step(*case)
    queue.put((peak_rss_bytes(), before))


def peak_memory(args, threads: int) -> dict[str, float]:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_memory_child, args=(args, threads, queue))
    proc.start()
    peak, before = queue.get()
    proc.join()
    return {"peak_rss_mb": peak / 2**20, "step_rss_increase_mb": (peak - before) / 2**20}


CONV_OPS = ("conv",)


def conv_share(case) -> dict[str, float]:
    """Fraction of a training step's self CPU time spent in convolution ops (forward and backward)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        train_step(*case)
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    conv = sum(e.self_cpu_time_total for e in events if any(k in e.key.lower() for k in CONV_OPS))
    top = sorted(events, key=lambda e: -e.self_cpu_time_total)[:8]
    return {
        "conv_fraction": conv / total,
        "outside_conv_fraction": 1 - conv / total,
        "top_ops_ms": {e.key: round(e.self_cpu_time_total / 1000, 2) for e in top},
    }


def scan_backends(repeats: int, B=4, T=25, C=48, grid=64) -> dict[str, float]:
    """Forward + backward of each scan alone on (B, T, C, H, W) with a in (0, 1), b > 0."""
    s = torch.randn(B, T, C, grid, grid)
    p = torch.randn(B, T, C, grid, grid)
    a0 = torch.sigmoid(s)
    b0 = torch.rand_like(a0) + 0.1

    def run(kind):
        a = a0.clone().requires_grad_()
        b = b0.clone().requires_grad_()
        if kind == "fused gates+scan":
            st = s.transpose(0, 1).contiguous().requires_grad_()
            pt = p.transpose(0, 1).contiguous().requires_grad_()
            return lambda: gated_recurrence(st, pt, None).sum().backward()
        return lambda: linear_recurrence(a, b, backend=kind).sum().backward()

    fns = {k: run(k) for k in ("linear", "log", "fused gates+scan")}
    # the scans alone run on (B, T, ...) with dim=1; the fused path is time-major
    for fn in fns.values():
        fn()
    times = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            times[k].append(timed(fn))
    return {k: statistics.median(v) * 1000 for k, v in times.items()}


def main() -> None:
    keep_freed_memory()  # as `minconv train` does
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help="a fast smoke run (16x16 only, few repeats)"
    )
    parser.add_argument("--repeats", type=int, default=None, help="timed steps per model and case")
    parser.add_argument(
        "--no-memory", action="store_true", help="skip the per-model memory subprocesses"
    )
    parser.add_argument(
        "--threads", type=int, default=None, help="torch threads (default: torch's choice)"
    )
    parser.add_argument(
        "--precisions", default="fp32,bf16", help="comma-separated: fp32, bf16, auto"
    )
    parser.add_argument(
        "--channels-last", action="store_true", help="also the Min models with NHWC weights"
    )
    parser.add_argument("--grids", default="16,64", help="which T25 cases: 16, 64 (and T50 below)")
    parser.add_argument("--t50", action="store_true", help="also the 16x16 T50 teacher-forced case")
    parser.add_argument("--models", default=",".join(MODEL_NAMES), help="comma-separated")
    parser.add_argument(
        "--no-conv-bound", action="store_true", help="skip timing each step's convs alone"
    )
    parser.add_argument("--no-scans", action="store_true", help="skip the scan backends alone")
    parser.add_argument("--out", type=Path, default=RESULT)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    repeats = args.repeats or (2 if args.quick else 5)
    console = Console()
    precisions = [resolve_precision(p, "cpu") for p in args.precisions.split(",")]
    precisions = list(dict.fromkeys(precisions))

    shapes = {"16": ("16x16 B8 T25 (20 tf + 5 cl)", 16, 8, 25, 20)}
    shapes["64"] = ("64x64 B4 T25 (20 tf + 5 cl)", 64, 4, 25, 20)
    cases = [shapes[g] for g in (["16"] if args.quick else args.grids.split(","))]
    if args.t50 and not args.quick:
        cases.append(("16x16 B8 T50 (50 tf)", 16, 8, 50, 50))
    result = {
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "machine": platform.processor() or platform.machine(),
        "cpu_native_bf16": native_bf16("cpu"),
        "auto_precision": resolve_precision("auto", "cpu"),
        "load_average_at_start": list(os.getloadavg()),
        "repeats": repeats,
        "memory_method": "peak RSS (VmHWM) of a fresh child process running one step; increase over RSS before it",
        "conv_bound_method": "sum over the step's convolutions of the library's fwd+bwd time for that shape alone",
        "cases": {},
    }
    for label, grid, batch, T, context in cases:
        variants = {}
        for name in args.models.split(","):
            for precision in precisions:
                variants[(name, precision)] = make_case(
                    name, grid, batch, T, context, precision=precision
                )
                if args.channels_last and name in MIN_MODELS:
                    variants[(name, f"{precision}_nhwc")] = make_case(
                        name, grid, batch, T, context, precision=precision, channels_last=True
                    )
        times = time_models(variants, repeats if grid == 16 else max(2, repeats // 2))
        entry: dict[str, dict] = {}
        for (name, variant), case in variants.items():
            med = statistics.median(times[(name, variant)])
            bound = conv_bound(case, 3) if not args.no_conv_bound else {}
            entry.setdefault(name, {"params": count_parameters(case[0])})[variant] = {
                "median_ms": med * 1000,
                "times_ms": [t * 1000 for t in times[(name, variant)]],
                **bound,
            }
            if bound:
                per = entry[name][variant]
                per["conv_gflops_per_s"] = bound["conv_gflop"] / med
                per["library_gflops_per_s"] = bound["conv_gflop"] / (bound["conv_bound_ms"] / 1000)
                per["efficiency"] = bound["conv_bound_ms"] / 1000 / med
        for name, per in entry.items():
            for variant, e in per.items():
                if not isinstance(e, dict):
                    continue
                base = variant.removesuffix("_nhwc")
                baselines = [
                    entry[b][base]["median_ms"] for b in ("convgru", "convlstm") if b in entry
                ]
                best_baseline = min(baselines, default=float("nan"))
                e["speed_vs_best_baseline_same_precision"] = best_baseline / e["median_ms"]
                e["speedup_vs_fp32"] = (
                    per["fp32"]["median_ms"] / e["median_ms"] if "fp32" in per else None
                )
            if not args.no_memory:
                for precision in precisions:
                    per[precision].update(
                        peak_memory(
                            (name, grid, batch, T, context, None, precision),
                            torch.get_num_threads(),
                        )
                    )
            if (grid == 64 or args.quick) and name in MIN_MODELS:
                per[precisions[-1]]["profile"] = conv_share(variants[(name, precisions[-1])])
        result["cases"][label] = entry
        table = Table(title=f"training step, {label}")
        for col in (
            "model",
            "variant",
            "median ms",
            "x fp32",
            "x best baseline",
            "conv GFLOP/s",
            "library GFLOP/s",
            "efficiency",
            "peak RSS MB",
            "outside conv",
        ):
            table.add_column(col, justify="right")
        for name, per in entry.items():
            for variant, e in per.items():
                if not isinstance(e, dict):
                    continue
                table.add_row(
                    name,
                    variant,
                    f"{e['median_ms']:.0f}",
                    f"{e['speedup_vs_fp32']:.2f}" if e["speedup_vs_fp32"] else "",
                    f"{e['speed_vs_best_baseline_same_precision']:.2f}",
                    f"{e.get('conv_gflops_per_s', float('nan')):.1f}",
                    f"{e.get('library_gflops_per_s', float('nan')):.1f}",
                    f"{e.get('efficiency', float('nan')):.0%}",
                    f"{e.get('peak_rss_mb', float('nan')):.0f}",
                    f"{e['profile']['outside_conv_fraction']:.0%}" if "profile" in e else "",
                )
        console.print(table)

    result["load_average_at_end"] = list(os.getloadavg())
    if args.no_scans:
        _write(result, args.out)
        return
    scans = scan_backends(repeats)
    result["scan_backends_B4_T25_C48_64x64_fwd_bwd_ms"] = scans
    result["linear_speedup_over_log"] = scans["log"] / scans["linear"]
    table = Table(title="scan backends alone, B4 T25 C48 64x64, forward + backward")
    table.add_column("backend")
    table.add_column("median ms", justify="right")
    for k, v in scans.items():
        table.add_row(k, f"{v:.1f}")
    console.print(table)
    console.print(f"linear is {result['linear_speedup_over_log']:.1f}x faster than log")
    _write(result, args.out)


def _write(result: dict, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=2))
    tmp.replace(out)


if __name__ == "__main__":
    main()
