"""Training-step speed and memory of the five models at matched size, and of the scan backends alone.

Median wall time of one training step (forward, MSE backward, Adam step) on the paper's
Navier-Stokes shape (4 layers, ~175k parameters, T = 25: 20 teacher-forced + 5 closed loop) at
16x16 (batch 8) and 64x64 (batch 4), plus a pure teacher-forced T = 50 case; the models are
interleaved round-robin so that all ratios come from one run under the same load. Peak memory is
the peak resident set size (VmHWM in /proc/self/status) of a fresh child process that runs
one step of one model, minus its RSS before the first step. The share of time outside the
convolutions comes from `torch.profiler` (self CPU time of conv ops vs all ops).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import platform
import resource
import statistics
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from minconv_cli.models import MODEL_NAMES, count_parameters, create_model
from minconv_cli.models.gates import gated_recurrence
from minconv_cli.scan import linear_recurrence

# the paper's widths at ~175k parameters, 4 layers (16x16 LayerNorm; at 64x64 LayerNorm adds 2*H*W per layer)
PAPER_WIDTHS = {
    "convgru": 28,
    "convlstm": 25,
    "minconvgru": 49,
    "minconvlstm": 40,
    "minconvexplstm": 40,
}
MIN_MODELS = ("minconvgru", "minconvlstm", "minconvexplstm")
RESULT = Path(__file__).parent / "results" / "train_step.json"


def make_case(name: str, grid: int, batch: int, T: int, context: int, options: dict | None = None):
    model = create_model(
        name,
        1,
        width=PAPER_WIDTHS[name],
        layers=4,
        grid=(grid, grid),
        padding="circular",
        **(options or {}),
    )
    optimizer = torch.optim.Adam(model.parameters(), lr=5e-4)
    x = torch.randn(batch, T + 1, 1, grid, grid)
    return model, optimizer, x, context


def train_step(model, optimizer, x, context) -> None:
    optimizer.zero_grad(set_to_none=True)
    y = model(x[:, :-1], context)
    loss = (y - x[:, 1:]).square().mean()
    loss.backward()
    optimizer.step()


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def time_models(cases: dict, repeats: int) -> dict[str, list[float]]:
    """Round-robin over the models so that load changes hit all of them alike."""
    for case in cases.values():
        train_step(*case)  # warm-up
    times = {name: [] for name in cases}
    for _ in range(repeats):
        for name, case in cases.items():
            times[name].append(timed(lambda case=case: train_step(*case)))
    return times


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def _peak_rss_bytes() -> int:
    """VmHWM: this process's peak RSS (ru_maxrss would carry the parent's peak across exec)."""
    with open("/proc/self/status") as f:
        line = next(line for line in f if line.startswith("VmHWM:"))
    return int(line.split()[1]) * 1024


def _memory_child(args, threads, queue) -> None:
    torch.manual_seed(0)
    torch.set_num_threads(threads)
    case = make_case(*args)
    before = _rss_bytes()
    train_step(*case)
    queue.put((_peak_rss_bytes(), before))


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
    parser.add_argument("--out", type=Path, default=RESULT)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    repeats = args.repeats or (2 if args.quick else 5)
    console = Console()

    cases = [("16x16 B8 T25 (20 tf + 5 cl)", 16, 8, 25, 20)]
    if not args.quick:
        cases += [
            ("64x64 B4 T25 (20 tf + 5 cl)", 64, 4, 25, 20),
            ("16x16 B8 T50 (50 tf)", 16, 8, 50, 50),
        ]
    result = {
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "machine": platform.processor() or platform.machine(),
        "repeats": repeats,
        "memory_method": "peak RSS (VmHWM) of a fresh child process running one step; increase over RSS before it",
        "cases": {},
    }
    for label, grid, batch, T, context in cases:
        built = {name: make_case(name, grid, batch, T, context) for name in MODEL_NAMES}
        times = time_models(built, repeats if grid == 16 else max(2, repeats // 2))
        conv_ref = min(statistics.median(times[n]) for n in ("convgru", "convlstm"))
        entry = {}
        for name in MODEL_NAMES:
            med = statistics.median(times[name])
            entry[name] = {
                "params": count_parameters(built[name][0]),
                "median_ms": med * 1000,
                "times_ms": [t * 1000 for t in times[name]],
                "speed_vs_best_baseline": conv_ref / med,
            }
            if not args.no_memory:
                entry[name].update(
                    peak_memory((name, grid, batch, T, context), torch.get_num_threads())
                )
        if grid == 64 or args.quick:
            for name in MIN_MODELS:
                entry[name]["profile"] = conv_share(built[name])
        result["cases"][label] = entry
        table = Table(title=f"training step, {label}")
        for col in (
            "model",
            "params",
            "median ms",
            "x best baseline",
            "peak RSS MB",
            "outside conv",
        ):
            table.add_column(col, justify="right")
        for name, e in entry.items():
            table.add_row(
                name,
                str(e["params"]),
                f"{e['median_ms']:.0f}",
                f"{e['speed_vs_best_baseline']:.2f}",
                f"{e.get('peak_rss_mb', float('nan')):.0f}",
                f"{e['profile']['outside_conv_fraction']:.0%}" if "profile" in e else "",
            )
        console.print(table)

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
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=2))
    tmp.replace(args.out)


if __name__ == "__main__":
    main()
