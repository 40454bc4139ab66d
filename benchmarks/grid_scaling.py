"""Training-step time, rollout speed and peak memory of the five models against grid size (issue 26).

Every case (mode, grid, model, precision, allocator setting) runs in a fresh process
(`fresh_process.run_json`, benchmarks/grid_scaling_case.py): the paper widths (~175k parameters,
4 layers, norm auto), B=4, T=25 (20 teacher-forced + 5 closed loop) through
`training.steps.training_loss`, backward, clipping and AdamW; the median of `--steps` steady
steps after one warm-up, and the peak RSS increase (VmHWM) over the RSS before the first step.
`rollout` mode runs the context in parallel mode and 10 closed-loop leads in inference mode, as
`minconv rollout` does. Cases run size-major, model-minor, `--repeats` times, interleaved.

Results accumulate in benchmarks/results/grid_scaling.json: a case already there (same key and
repeat) is skipped, so a run can be resumed or extended size by size (`--fresh` starts over).
Prints a table and draws docs/images/grid_scaling.png (bf16, allocator on).

    OMP_NUM_THREADS=1 python benchmarks/grid_scaling.py --quick
    python benchmarks/grid_scaling.py --sizes 64,128 --precisions bf16 --allocator on --repeats 2
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import statistics
import sys
from pathlib import Path

from fresh_process import run_json
from grid_scaling_case import PAPER_WIDTHS

HERE = Path(__file__).resolve().parent
RESULT = HERE / "results" / "grid_scaling.json"
PICTURE = HERE.parent / "docs" / "images" / "grid_scaling.png"
SIZES = "16,32,64,128,256,64x128"
BASELINES = ("convgru", "convlstm")
CHILD = """
import json, sys
sys.path[:0] = [{bench!r}, {repo!r}]
from grid_scaling_case import measure
print(json.dumps(measure({mode!r}, {model!r}, {grid!r}, {precision!r}, {allocator!r}, {steps},
                        {chunk})))
"""


def parse_grid(text: str) -> tuple[int, int]:
    """`64` -> (64, 64); `64x128` -> (64, 128)."""
    parts = text.lower().split("x")
    if len(parts) > 2 or not all(p.strip().isdigit() and int(p) > 0 for p in parts):
        raise SystemExit(f"--sizes: expected N or HxW with positive integers, got {text!r}")
    h, w = (int(parts[0]), int(parts[-1]))
    return h, w


def choices(text: str, allowed, option: str) -> list[str]:
    """A comma-separated option, each value checked against `allowed`."""
    values = [v.strip() for v in text.split(",") if v.strip()]
    bad = [v for v in values if v not in allowed]
    if bad or not values:
        raise SystemExit(f"{option}: expected some of {', '.join(allowed)}, got {text!r}")
    return values


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", default=SIZES, help="grid sizes: N or HxW, comma-separated")
    parser.add_argument("--models", default=",".join(PAPER_WIDTHS))
    parser.add_argument("--precisions", default="fp32,bf16")
    parser.add_argument("--allocator", default="on,off", help="on, off or on,off")
    parser.add_argument("--modes", default="train,rollout", help="train, rollout or both")
    parser.add_argument(
        "--time-chunks",
        default="0",
        help="teacher-forced frames per chunk to compare (the chunk policy); 0: auto (CHUNK_ELEMENTS)",
    )
    parser.add_argument("--steps", type=int, default=3, help="timed steps per process")
    parser.add_argument("--repeats", type=int, default=1, help="fresh processes per case")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--batch", type=int, default=4, help="sequences per step (4: the issue's; less for 256x256)"
    )
    parser.add_argument("--quick", action="store_true", help="16 and 32, bf16, allocator on")
    parser.add_argument("--fresh", action="store_true", help="forget the results already stored")
    parser.add_argument("--no-plot", action="store_true")
    parser.add_argument("--out", type=Path, default=RESULT)
    parser.add_argument("--picture", type=Path, default=PICTURE)
    args = parser.parse_args(argv)
    if args.quick:
        args.sizes, args.precisions, args.allocator, args.steps = "16,32", "bf16", "on", 2
    args.grids = [parse_grid(s) for s in args.sizes.split(",") if s.strip()]
    args.model_list = choices(args.models, tuple(PAPER_WIDTHS), "--models")
    args.precision_list = choices(args.precisions, ("fp32", "bf16"), "--precisions")
    args.allocator_list = [v == "on" for v in choices(args.allocator, ("on", "off"), "--allocator")]
    args.mode_list = choices(args.modes, ("train", "rollout"), "--modes")
    try:
        args.chunk_list = [int(c) for c in args.time_chunks.split(",")]
    except ValueError:
        raise SystemExit(f"--time-chunks: expected integers, got {args.time_chunks!r}") from None
    if min(args.chunk_list) < 0 or args.steps < 1 or args.repeats < 1 or args.threads < 1:
        raise SystemExit(
            "--steps, --repeats, --threads (positive), --time-chunks (>= 0): bad value"
        )
    return args


def case_key(mode: str, grid, model: str, precision: str, allocator: bool, chunk: int = 0) -> str:
    """`mode HxW model precision allocator=on|off[ chunk=N]` (the auto chunk has no suffix)."""
    key = f"{mode} {grid[0]}x{grid[1]} {model} {precision} allocator={'on' if allocator else 'off'}"
    return f"{key} chunk={chunk}" if chunk else key


def load(path: Path, fresh: bool) -> dict:
    if fresh or not path.exists():
        return {"runs": {}}
    return json.loads(path.read_text())


def save(result: dict, path: Path) -> None:
    """Written after every case (atomically), so that an interrupted run keeps what it measured."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=1) + "\n")
    tmp.replace(path)


def cases(args):
    """(grid, mode, precision, allocator, chunk, model): size-major, model-minor."""
    return itertools.product(
        args.grids,
        args.mode_list,
        args.precision_list,
        args.allocator_list,
        args.chunk_list,
        args.model_list,
    )


def run_cases(args, result: dict) -> None:
    """Every case once per repeat, each repeat a full pass over all cases (interleaved); cases
    already stored for that repeat are skipped."""
    runs = result["runs"]
    for repeat in range(args.repeats):
        for grid, mode, precision, allocator, chunk, model in cases(args):
            key = case_key(mode, grid, model, precision, allocator, chunk)
            key += f" batch={args.batch}" if args.batch != 4 else ""
            done = runs.setdefault(key, [])
            if len(done) > repeat:
                continue
            code = CHILD.format(
                bench=str(HERE),
                repo=str(HERE.parent),
                mode=mode,
                model=model,
                grid=tuple(grid),
                precision=precision,
                allocator=allocator,
                steps=args.steps,
                chunk=chunk,
            )
            env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
            env["GRID_SCALING_BATCH"] = str(args.batch)
            got = run_json(code, args.threads, env)
            got["load_average"] = round(os.getloadavg()[0], 2)
            done.append(got)
            save(result, args.out)
            print(f"[{repeat + 1}/{args.repeats}] {key}: {brief(got)}", flush=True)


def brief(got: dict) -> str:
    if "step_ms" in got:
        return f"{got['step_ms']:.0f} ms/step, peak +{got['peak_mb']:.0f} MB"
    return f"{got['frames_per_s']:.1f} frames/s, peak +{got['peak_mb']:.0f} MB"


def summary(result: dict) -> dict[str, dict]:
    """Per case key: the median over repeats of step_ms / frames_per_s and of peak_mb."""
    out = {}
    for key, runs in result["runs"].items():
        if not runs:
            continue
        speed = "step_ms" if "step_ms" in runs[0] else "frames_per_s"
        out[key] = {
            speed: statistics.median(r[speed] for r in runs),
            "peak_mb": statistics.median(r["peak_mb"] for r in runs),
            "repeats": len(runs),
        }
        if speed == "step_ms":
            out[key]["cpu_ms"] = statistics.median(r["cpu_ms"] for r in runs)
    return out


def print_table(args, stats: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=150)
    for mode in args.mode_list:
        speed = "step ms" if mode == "train" else "frames/s"
        table = Table(title=f"{mode}: B={4}, paper widths, {args.threads} threads")
        columns = ["grid", "precision", "allocator", "chunk", "model", speed, "x best baseline"]
        columns += ["cpu ms", "x best (cpu)"] if mode == "train" else []
        for col in [*columns, "peak MB", "mem / best baseline"]:
            table.add_column(col, justify="right")
        groups = itertools.product(
            args.grids, args.precision_list, args.allocator_list, args.chunk_list
        )
        for grid, precision, allocator, chunk in groups:
            got = {
                m: stats.get(case_key(mode, grid, m, precision, allocator, chunk))
                for m in args.model_list
            }
            label = [
                f"{grid[0]}x{grid[1]}",
                precision,
                "on" if allocator else "off",
                chunk or "auto",
            ]
            for row in table_rows(mode, {m: v for m, v in got.items() if v}):
                table.add_row(*label[:3], str(label[3]), *row)
        console.print(table)


def table_rows(mode: str, got: dict[str, dict]) -> list[list[str]]:
    """Each model's speed and memory, and their ratios to the best baseline (>1: faster; memory
    <1: less)."""
    base = [got[b] for b in BASELINES if b in got]
    rows = []
    for model, v in got.items():
        row = [model]
        if mode == "train":
            for key in ("step_ms", "cpu_ms"):
                best = min((b[key] for b in base), default=None)
                row += [f"{v[key]:.0f}", f"{best / v[key]:.2f}" if best else ""]
        else:
            best = max((b["frames_per_s"] for b in base), default=None)
            row += [f"{v['frames_per_s']:.1f}", f"{v['frames_per_s'] / best:.2f}" if best else ""]
        least = min((b["peak_mb"] for b in base), default=None)
        row += [f"{v['peak_mb']:.0f}", f"{v['peak_mb'] / least:.2f}" if least else ""]
        rows.append(row)
    return rows


def plot(stats: dict, models, path: Path) -> bool:
    """Step time and peak memory against grid cells (log-log), bf16 with the allocator on."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    drawn = False
    for model in models:
        points = []
        for key, v in stats.items():
            mode, size, name, precision, allocator, *chunk = key.split(" ")
            wanted = ("train", model, "bf16", "allocator=on", [])
            if (mode, name, precision, allocator, chunk) == wanted:
                h, w = map(int, size.split("x"))
                points.append((h * w, v["step_ms"] / 1000, v["peak_mb"]))
        if not points:
            continue
        cells, seconds, mb = zip(*sorted(points), strict=True)
        style = "--" if model in BASELINES else "-"
        left.plot(cells, seconds, style, marker="o", label=model)
        right.plot(cells, mb, style, marker="o", label=model)
        drawn = True
    if not drawn:
        plt.close(fig)
        return False
    for ax, label in ((left, "training step (s)"), (right, "peak memory increase (MB)")):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("grid cells (H x W)")
        ax.set_ylabel(label)
        ax.grid(True, which="both", alpha=0.3)
    left.legend()
    fig.suptitle("B=4, T=25 (20 tf + 5 cl), ~175k parameters, bf16, allocator on")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def main(argv=None) -> None:
    args = parse_args(argv)
    result = load(args.out, args.fresh)
    result["machine"] = platform.processor() or platform.machine()
    result["threads"] = args.threads
    result["method"] = __doc__.split("\n\n")[1].replace("\n", " ")
    run_cases(args, result)
    stats = summary(result)
    result["summary"] = stats
    save(result, args.out)
    print_table(args, stats)
    if not args.no_plot and plot(stats, args.model_list, args.picture):
        print(f"wrote {args.picture}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    sys.exit(main())
