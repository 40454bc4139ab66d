"""GPU speed and memory: training step and 30-step rollout of the five models, ours against the
official code, and the fused gate + recurrence kernel against the memory-bound limit.

At matched size (the paper's widths at ~175k parameters, 4 layers, circular padding):
- training step (forward, MSE backward, Adam step): 16x16 B1 (the paper's batch) and B8, 64x64 B4,
  128x128 B4; T = 25 (20 teacher-forced + 5 closed loop) and T = 50 (teacher-forced);
- rollout: 20 context frames, then 30 closed-loop steps, no gradients;
- float32 and bf16 autocast; peak GPU memory of each (max_memory_allocated during one call,
  minus what was allocated before it: the model, optimizer state and inputs);
- ours (scan_backend auto: the Triton kernel on CUDA) and, with `--official PATH`, the models of
  the paper's code (github.com/AdaptiveAILab/minconvrnns; needs hydra-core and omegaconf),
  imported from that checkout by path, never copied into this package;
- the kernel alone (forward; forward + backward) on one layer's s and p, against torch ops that
  move the same bytes (s + p -> out: the memory-bound limit) and the other scans.

Implementations are interleaved round-robin within each case; times are medians of CUDA-event
timings after a warm-up. Targets (reported, not asserted): MinConvGRU >= 5x ConvGRU per training
step at 64x64 T=50; the kernel within 2x of the copy; no model slower than the official code's.

    python benchmarks/gpu.py [--official PATH] [--repeats N] [--quick] [--json]
    python benchmarks/gpu.py --device cpu --quick      # a smoke run of this script, on the CPU
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from minconv_cli.models import MODEL_NAMES, count_parameters, create_model
from minconv_cli.models.gates import fused_backend, g, gated_recurrence
from minconv_cli.models.scan import linear_recurrence

RESULT = Path(__file__).parent / "results" / "gpu.json"
from grid_scaling_case import PAPER_WIDTHS  # noqa: E402  (the paper's widths at ~175k parameters)

OFFICIAL_CLASSES = {
    "convgru": ("convgru", "ConvGRU"),
    "convlstm": ("convlstm", "ConvLSTM"),
    "minconvgru": ("minconvgru", "MinConvGRU"),
    "minconvlstm": ("minconvlstm", "MinConvLSTM"),
    "minconvexplstm": ("minconvexplstm", "MinConvExpLSTM"),
}
# (grid, batch, T, context): T input frames, `context` of them teacher-forced
TRAIN_CASES = [
    (16, 1, 25, 20),
    (16, 8, 25, 20),
    (64, 4, 25, 20),
    (16, 1, 50, 50),
    (16, 8, 50, 50),
    (64, 4, 50, 50),
    (128, 4, 50, 50),
]
ROLLOUT_CASES = [
    (16, 1, 20, 30),
    (16, 8, 20, 30),
    (64, 4, 20, 30),
    (128, 4, 20, 30),
]  # + context, steps
KERNEL_CASES = [(16, 1, 20), (64, 4, 50), (128, 4, 50)]  # (grid, batch, T) at MinConvGRU's width
QUICK = {"train": [(16, 1, 6, 4)], "rollout": [(16, 1, 4, 3)], "kernel": [(16, 1, 6)]}
console = Console(stderr=True)


# -- implementations ------------------------------------------------------------------------------
def ours(name: str, grid: int, batch: int, device: torch.device) -> torch.nn.Module:
    model = create_model(
        name, 1, width=PAPER_WIDTHS[name], layers=4, grid=(grid, grid), padding="circular"
    )
    return model.to(device)


def load_official(path: Path) -> tuple[dict[str, type], str | None]:
    """The official model classes that import from a checkout (its root or src/mcrnn), and a note
    naming what did not."""
    root = path / "src" / "mcrnn" if (path / "src" / "mcrnn").is_dir() else path
    if not (root / "models").is_dir():
        return {}, f"--official {path}: no models/ folder (expected a minconvrnns checkout)"
    for folder in (root, root / "utils"):  # its modules import utils.helpers (or helpers)
        if str(folder) not in sys.path:
            sys.path.insert(0, str(folder))
    classes, problems = {}, []
    for name, (folder, cls) in OFFICIAL_CLASSES.items():
        file = root / "models" / folder / f"{folder}.py"
        spec = importlib.util.spec_from_file_location(f"official_{folder}", file)
        module = importlib.util.module_from_spec(spec)
        try:
            spec.loader.exec_module(module)
            classes[name] = getattr(module, cls)
        except (ImportError, OSError, AttributeError) as error:
            kind = "ImportError" if isinstance(error, ImportError) else type(error).__name__
            problems.append(f"{name}: {kind}: {error}")
    if not problems:
        return classes, None
    hint = " (it needs hydra-core and omegaconf)" if "ImportError" in str(problems) else ""
    return classes, "official code: " + "; ".join(problems) + hint


class Official(torch.nn.Module):
    """The official model behind our call signature: forward(x, context)."""

    def __init__(self, cls: type, name: str, grid: int, batch: int, device: torch.device):
        super().__init__()
        from omegaconf import DictConfig

        norm = DictConfig({"_target_": "torch.nn.LayerNorm", "normalized_shape": [grid, grid]})
        self.net = cls(
            batch_size=batch,
            input_size=1,
            hidden_sizes=[PAPER_WIDTHS[name]] * 4,
            height=grid,
            width=grid,
            device=device,
            padding_mode="circular",
            norm=norm,
        ).to(device)

    def forward(self, x: torch.Tensor, context: int) -> torch.Tensor:
        return self.net(x, tf_steps=context)


# -- timing -----------------------------------------------------------------------------------------
def clock(device: torch.device) -> Callable[[Callable[[], None]], float]:
    """Seconds one call of fn takes: CUDA events on a GPU, a synchronised wall clock elsewhere."""

    def cuda(fn):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1000

    def wall(fn):
        start = time.perf_counter()
        fn()
        return time.perf_counter() - start

    return cuda if device.type == "cuda" else wall


def peak_mib(fn: Callable[[], None], device: torch.device) -> float | None:
    """Peak device memory one call allocates beyond what was allocated before it (MiB)."""
    if device.type != "cuda":
        fn()
        return None
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - before) / 2**20


def autocast(device: torch.device, precision: str):
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


def train_step(model, optimizer, x, context, device, precision) -> Callable[[], None]:
    def step():
        optimizer.zero_grad(set_to_none=True)
        with autocast(device, precision):
            y = model(x[:, :-1], context)
            loss = (y.float() - x[:, 1:]).square().mean()
        loss.backward()
        optimizer.step()

    return step


def rollout_call(model, x, context, device, precision) -> Callable[[], None]:
    def run():
        with torch.inference_mode(), autocast(device, precision):
            model(x, context)

    return run


def measure(calls: dict[str, Callable[[], None]], repeats: int, device) -> dict[str, dict]:
    """Per implementation: a warm-up call (compilation, cuDNN autotuning), the peak memory of a
    second, then the median of `repeats` timed calls, round-robin. Running out of memory or
    failing is recorded, not fatal."""
    timer, results, live = clock(device), {}, {}
    for key, fn in calls.items():
        try:
            fn()
            results[key] = {"peak_mib": peak_mib(fn, device)}
            live[key] = fn
        except torch.OutOfMemoryError:
            results[key] = {"oom": True}
        except Exception as error:  # one implementation's failure must not end the run
            results[key] = {"error": f"{type(error).__name__}: {error}"[:300]}
        if key not in live and device.type == "cuda":
            torch.cuda.empty_cache()
    times = {key: [] for key in live}
    for _ in range(repeats):
        for key, fn in live.items():
            times[key].append(timer(fn))
    for key, values in times.items():
        results[key]["median_ms"] = statistics.median(values) * 1000
        results[key]["times_ms"] = [round(v * 1000, 4) for v in values]
    return results


def build(kind: str, name: str, grid: int, batch: int, device, official: dict):
    if kind == "ours":
        return ours(name, grid, batch, device)
    return Official(official[name], name, grid, batch, device)


def implementations(official: dict) -> list[tuple[str, str]]:
    return [("ours", name) for name in MODEL_NAMES] + [
        ("official", name) for name in MODEL_NAMES if name in official
    ]


def train_case(case, precision, repeats, device, official) -> dict:
    grid, batch, T, context = case
    calls, params = {}, {}
    for kind, name in implementations(official):
        torch.manual_seed(0)
        model = build(kind, name, grid, batch, device, official)
        optimizer = torch.optim.Adam(model.parameters(), lr=5e-4)
        x = torch.randn(batch, T + 1, 1, grid, grid, device=device)
        calls[f"{kind}/{name}"] = train_step(model, optimizer, x, context, device, precision)
        params[f"{kind}/{name}"] = count_parameters(model)
    results = measure(calls, repeats, device)
    for key, n in params.items():
        results[key]["params"] = n
    del calls  # free this case's models before the next
    return results


def rollout_case(case, precision, repeats, device, official) -> dict:
    grid, batch, context, steps = case
    calls = {}
    for kind, name in implementations(official):
        torch.manual_seed(0)
        model = build(kind, name, grid, batch, device, official).eval()
        x = torch.randn(batch, context + steps, 1, grid, grid, device=device)
        calls[f"{kind}/{name}"] = rollout_call(model, x, context, device, precision)
    return measure(calls, repeats, device)


def kernel_case(case, dtype, repeats, device) -> dict:
    """One MinConvGRU layer's recurrence (T, B, 49, H, W): the kernels against same-bytes torch ops."""
    grid, batch, T = case
    shape = (T, batch, PAPER_WIDTHS["minconvgru"], grid, grid)
    s = torch.randn(shape, device=device, dtype=dtype)
    p = torch.randn(shape, device=device, dtype=dtype)
    h, grad = torch.empty_like(s), torch.randn_like(s)
    out2 = torch.empty_like(s)
    leaves = {k: v.clone().requires_grad_() for k, v in (("s", s), ("p", p))}

    def fwd_bwd(fn):
        def run():
            fn(leaves["s"], leaves["p"]).backward(grad)

        return run

    def explicit(kind):
        def fn(s_, p_):
            z = torch.sigmoid(s_)
            return linear_recurrence(1 - z, z * g(p_), None, dim=0, backend=kind)

        return fn

    calls = {
        "copy fwd (s + p -> h)": lambda: torch.add(s, p, out=h),
        "copy bwd (s + p, h + grad -> 2 outs)": lambda: (
            torch.add(s, p, out=h),
            torch.add(s, grad, out=out2),
        ),
        "fused torch ops fwd": lambda: gated_recurrence(s, p, None),
        "fused torch ops fwd+bwd": fwd_bwd(lambda s_, p_: gated_recurrence(s_, p_, None)),
        "log scan fwd+bwd": fwd_bwd(explicit("log")),
        "linear scan fwd+bwd": fwd_bwd(explicit("linear")),
    }
    if fused_backend("auto", device) == "triton":
        from minconv_cli.models import triton_recurrence

        calls["triton fwd"] = lambda: triton_recurrence.gated_recurrence(s, p, None)
        calls["triton fwd+bwd"] = fwd_bwd(
            lambda s_, p_: triton_recurrence.gated_recurrence(s_, p_, None)
        )
    results = measure(calls, repeats, device)
    nbytes = s.numel() * s.element_size()
    for key, moved in (("copy fwd (s + p -> h)", 3), ("copy bwd (s + p, h + grad -> 2 outs)", 6)):
        if "median_ms" in results[key]:
            results[key]["GB_per_s"] = moved * nbytes / results[key]["median_ms"] / 1e6
    return results


# -- report -----------------------------------------------------------------------------------------
def label(case, section: str = "train") -> str:
    if section == "rollout":
        grid, batch, context, steps = case
        return f"{grid}x{grid} B{batch} {context} context + {steps} steps"
    if len(case) == 4:
        grid, batch, T, context = case
        steps = f"T{T} ({context} tf + {T - context} cl)" if context < T else f"T{T} (tf)"
        return f"{grid}x{grid} B{batch} {steps}"
    if len(case) == 3:
        grid, batch, T = case
        return f"{grid}x{grid} B{batch} T{T}"


def ms(entry: dict) -> str:
    if "median_ms" in entry:
        return f"{entry['median_ms']:.2f}"
    return "OOM" if entry.get("oom") else "error"


def mib(entry: dict) -> str:
    value = entry.get("peak_mib")
    return "" if value is None else f"{value:.0f}"


def model_table(title: str, cases: dict) -> Table:
    table = Table(title=title)
    for col in ("case", "precision", "impl/model", "ms", "x convgru (ours)", "peak MiB"):
        table.add_column(col, justify="right")
    for key, entry in cases.items():
        case, precision = key.rsplit(" | ", 1)
        base = entry.get("ours/convgru", {}).get("median_ms")
        for impl, e in entry.items():
            speed = f"{base / e['median_ms']:.2f}" if base and "median_ms" in e else ""
            table.add_row(case, precision, impl, ms(e), speed, mib(e))
    return table


def targets(result: dict) -> dict:
    """The issue's three speed targets, from the measurements (None where not measured)."""
    out = {}
    case = result["train"].get(f"{label((64, 4, 50, 50))} | fp32", {})
    if "median_ms" in case.get("ours/minconvgru", {}) and "median_ms" in case.get(
        "ours/convgru", {}
    ):
        ratio = case["ours/convgru"]["median_ms"] / case["ours/minconvgru"]["median_ms"]
        out["minconvgru_vs_convgru_64x64_T50"] = {
            "speedup": ratio,
            "target": 5.0,
            "met": ratio >= 5,
        }
    kernels = result["kernel"].get(f"{label((64, 4, 50))} | float32", {})
    if "median_ms" in kernels.get("triton fwd", {}):
        ratio = kernels["triton fwd"]["median_ms"] / kernels["copy fwd (s + p -> h)"]["median_ms"]
        out["triton_fwd_vs_copy_64x64_T50"] = {"ratio": ratio, "target": 2.0, "met": ratio <= 2}
    worst = None
    for section in ("train", "rollout"):
        for key, entry in result[section].items():
            for name in MODEL_NAMES:
                a, b = entry.get(f"ours/{name}", {}), entry.get(f"official/{name}", {})
                if "median_ms" in a and "median_ms" in b:
                    ratio = a["median_ms"] / b["median_ms"]
                    if worst is None or ratio > worst["ratio"]:
                        worst = {"ratio": ratio, "case": f"{section} {key}", "model": name}
    if worst is not None:
        out["slowest_ours_vs_official"] = worst | {"target": 1.0, "met": worst["ratio"] <= 1}
    return out


def describe(device: torch.device) -> dict:
    info = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
        "fused_backend_auto": fused_backend("auto", device),
        "date": time.strftime("%Y-%m-%d"),
    }
    try:
        import triton

        info["triton"] = triton.__version__
    except ImportError:
        info["triton"] = None
    return info


def save(result: dict, path: Path | None) -> None:
    """Write the results JSON atomically (nowhere when `path` is None)."""
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=2))
    tmp.replace(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--device", default="cuda", help="cuda (default), cuda:N, or cpu (a smoke run)"
    )
    parser.add_argument("--official", type=Path, default=None, help="a minconvrnns checkout")
    parser.add_argument(
        "--repeats", type=int, default=None, help="timed calls per case (default 10)"
    )
    parser.add_argument("--quick", action="store_true", help="one small case of each kind")
    parser.add_argument("--skip", nargs="*", default=[], choices=["train", "rollout", "kernel"])
    parser.add_argument(
        "--out", type=Path, default=None, help=f"results JSON (default on CUDA: {RESULT})"
    )
    parser.add_argument("--json", action="store_true", help="print the results JSON to stdout")
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("benchmarks/gpu.py: no CUDA device here (--device cpu --quick runs a smoke test)")
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    repeats = args.repeats or (1 if args.quick else 10)
    official, note = {}, "no --official PATH given: official rows skipped"
    if args.official is not None:
        official, note = load_official(args.official)
        note = note or f"official code from {args.official}"
    console.print(note)
    path = args.out or (RESULT if device.type == "cuda" else None)
    result = describe(device) | {"repeats": repeats, "official": note}
    plans = {
        "kernel": [
            (c, d)
            for c in (QUICK["kernel"] if args.quick else KERNEL_CASES)
            for d in (torch.float32, torch.bfloat16)
        ],
        "train": [
            (c, p)
            for c in (QUICK["train"] if args.quick else TRAIN_CASES)
            for p in ("fp32", "bf16")
        ],
        "rollout": [
            (c, p)
            for c in (QUICK["rollout"] if args.quick else ROLLOUT_CASES)
            for p in ("fp32", "bf16")
        ],
    }
    with Progress(console=console, transient=True) as progress:
        total = sum(len(v) for k, v in plans.items() if k not in args.skip)
        task = progress.add_task("benchmarking", total=total)
        for section, plan in plans.items():
            result[section] = {}
            if section in args.skip:
                continue
            for case, variant in plan:
                progress.update(task, description=f"{section} {label(case, section)} {variant}")
                if section == "kernel":
                    entry = kernel_case(case, variant, repeats, device)
                    key = f"{label(case)} | {str(variant).removeprefix('torch.')}"
                else:
                    run = train_case if section == "train" else rollout_case
                    entry = run(case, variant, repeats, device, official)
                    key = f"{label(case, section)} | {variant}"
                result[section][key] = entry
                save(result, path)  # what is measured survives a time limit
                progress.advance(task)
    result["targets"] = targets(result)
    out = console if args.json else Console(width=160)
    out.print(f"device: {result['device']} (torch {result['torch']}, triton {result['triton']})")
    if result["train"]:
        out.print(model_table("training step (forward, backward, Adam)", result["train"]))
    if result["rollout"]:
        out.print(model_table("rollout (no gradients)", result["rollout"]))
    if result["kernel"]:
        table = Table(title="one MinConvGRU layer's recurrence (C=49)")
        for col in ("case", "dtype", "op", "ms", "GB/s", "peak MiB"):
            table.add_column(col, justify="right")
        for key, entry in result["kernel"].items():
            case, dtype = key.rsplit(" | ", 1)
            for op, e in entry.items():
                rate = f"{e['GB_per_s']:.0f}" if "GB_per_s" in e else ""
                table.add_row(case, dtype, op, ms(e), rate, mib(e))
        out.print(table)
    for name, t in result["targets"].items():
        out.print(f"target {name}: {json.dumps(t)}")
    save(result, path)
    if path is not None:
        console.print(f"wrote {path}")
    if args.json:
        print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
