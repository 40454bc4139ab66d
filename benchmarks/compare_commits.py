"""Training-step and rollout time of this tree against an earlier commit, side by side in one run.

Each (commit, model, case, precision) runs in a fresh process importing that commit's
`minconv_cli` and its own `benchmarks/train_step.py` (both extracted with `git archive`, so a
tree whose modules moved is measured with its own harness); the processes alternate round-robin
so that both trees see the same machine load. A train case reports the wall time of `--steps`
training steps (after one warm-up step); a rollout case (`--rollout`) the wall time of whole
`minconv_cli.rollout.rollout` calls, deterministic and a 4-member ensemble with step noise and
recentring, on one checkpoint and data file shared by both trees. Prints the medians and the
ratio of the reference's fp32 time to each of this tree's, and writes JSON.

    python benchmarks/compare_commits.py --ref 5341570 --rounds 3
    python benchmarks/compare_commits.py --ref 3d03e0b --rounds 5 --rollout --grids 16
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import tarfile
import tempfile
from io import BytesIO
from pathlib import Path

from fresh_process import run_json

REPO = Path(__file__).resolve().parents[1]
RESULT = Path(__file__).parent / "results" / "compare_commits.json"
CASES = {"16": (16, 8), "64": (64, 4)}  # grid: (size, batch), T = 25 (20 teacher-forced + 5)
CHILD = """
import json, sys, time, torch
sys.path.insert(0, {bench!r})
import train_step as harness  # the tree's own harness, importing the tree's own modules
from train_step import make_case, train_step
torch.set_num_threads({threads})
if hasattr(harness, "keep_freed_memory"):  # trees that set the allocator as the CLI does
    harness.keep_freed_memory()
precision = harness.resolve_precision({precision!r}, "cpu")
case = make_case({model!r}, {grid}, {batch}, 25, 20, precision=precision)
train_step(*case)
times = []
for _ in range({steps}):
    t = time.perf_counter(); train_step(*case); times.append(time.perf_counter() - t)
print(json.dumps({{"precision": precision, "ms": [1000 * t for t in times]}}))
"""


ROLLOUT_CHILD = """
import json, statistics, sys, time, torch
from minconv_cli.rollout import rollout
torch.set_num_threads({threads})
kwargs = dict(batch_size=16, mode="overwrite", device="cpu", precision="fp32")
ensemble = dict(members=4, step_noise=0.05, recentre=True, perturbation=0.01, seed=7)
out = {{}}
for name, extra in (("deterministic", {{}}), ("ensemble", ensemble)):
    rollout({ckpt!r}, [{data!r}], {steps}, {store!r}, **kwargs, **extra)  # warm-up
    times = []
    for _ in range({repeats}):
        t = time.perf_counter()
        rollout({ckpt!r}, [{data!r}], {steps}, {store!r}, **kwargs, **extra)
        times.append(time.perf_counter() - t)
    out[name] = [1000 * t for t in times]
print(json.dumps(out))
"""


def extract(commit: str, into: Path) -> Path:
    """`minconv_cli` and `benchmarks` of `commit`, unpacked under `into`."""
    blob = subprocess.run(
        ["git", "-C", str(REPO), "archive", commit, "minconv_cli", "benchmarks"],
        capture_output=True,
        check=True,
    ).stdout
    with tarfile.open(fileobj=BytesIO(blob)) as tar:
        tar.extractall(into, filter="data")
    return into


def step_ms(tree: Path, model: str, grid: str, precision: str, args) -> dict:
    size, batch = CASES[grid]
    code = CHILD.format(
        bench=str(tree / "benchmarks"),
        threads=args.threads,
        precision=precision,
        model=model,
        grid=size,
        batch=batch,
        steps=args.steps,
    )
    return run_json(code, args.threads, {**os.environ, "PYTHONPATH": str(tree)})


def rollout_ms(tree: Path, case: tuple, args) -> dict:
    """Wall times (ms) of `args.rollout_repeats` rollouts of `case` by `tree`, per kind."""
    data, ckpt, store = case
    code = ROLLOUT_CHILD.format(
        threads=args.threads,
        ckpt=str(ckpt),
        data=str(data),
        store=str(store),
        steps=args.rollout_steps,
        repeats=args.rollout_repeats,
    )
    return run_json(code, args.threads, {**os.environ, "PYTHONPATH": str(tree)})


def rollout_cases(tmp: Path, args) -> dict:
    """One checkpoint and data file per (model, grid), shared by both trees (made by this tree)."""
    from rollout import make_case

    cases = {}
    for model in args.models.split(","):
        for grid in args.rollout_grids.split(","):
            data, ckpt, _ = make_case(tmp, model, int(grid), 175_000, 4, 10, 16)
            cases[(model, grid)] = (data, ckpt, tmp / f"{model}_{grid}.zarr")
    return cases


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--ref", required=True, help="the earlier commit")
    parser.add_argument("--models", default="minconvgru,minconvlstm,minconvexplstm")
    parser.add_argument("--grids", default="16,64")
    parser.add_argument("--precisions", default="fp32,auto", help="of this tree")
    parser.add_argument("--ref-precisions", default="fp32", help="of the reference")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=2, help="timed steps per process")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rollout", action="store_true", help="also time rollouts")
    parser.add_argument("--rollout-steps", type=int, default=20, help="leads per rollout")
    parser.add_argument("--rollout-grids", default="16", help="grids of the rollout cases")
    parser.add_argument("--rollout-repeats", type=int, default=2, help="timed rollouts per process")
    parser.add_argument("--out", type=Path, default=RESULT)
    return parser.parse_args()


def time_rollouts(trees: dict, tmp: Path, args) -> list[dict]:
    """Rollout rows: per (model, grid, kind), the median ms of each tree and this/ref's speedup."""
    cases = rollout_cases(tmp, args)
    times: dict = {}
    for r in range(args.rounds):
        for key, case in cases.items():
            for tree in ("ref", "this"):
                for kind, ms in rollout_ms(trees[tree], case, args).items():
                    times.setdefault((*key, kind, tree), []).extend(ms)
        print(f"rollout round {r + 1}/{args.rounds} done", flush=True)
    rows = []
    for model, grid, kind in sorted({k[:3] for k in times}):
        ref = statistics.median(times[(model, grid, kind, "ref")])
        this = statistics.median(times[(model, grid, kind, "this")])
        rows.append(
            {
                "model": model,
                "grid": f"{grid}x{grid}",
                "rollout": kind,
                "ref_median_ms": round(ref, 1),
                "this_median_ms": round(this, 1),
                "speedup_vs_ref": round(ref / this, 3),
            }
        )
        print(
            f"{model:>15} {grid}x{grid} rollout {kind:>13} ref {ref:8.1f} ms  this {this:8.1f} ms"
            f"  x{ref / this:.2f}"
        )
    return rows


def main() -> None:
    args = parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        trees = {"ref": extract(args.ref, Path(tmp)), "this": REPO}
        rollout_rows = time_rollouts(trees, Path(tmp), args) if args.rollout else []
        runs = [("ref", p) for p in args.ref_precisions.split(",")]
        runs += [("this", p) for p in args.precisions.split(",")]
        times: dict = {}
        for r in range(args.rounds):
            for model in args.models.split(","):
                for grid in args.grids.split(","):
                    for tree, precision in runs:
                        got = step_ms(trees[tree], model, grid, precision, args)
                        key = f"{model} {grid}x{grid} {tree} {precision}"
                        times.setdefault(key, {"resolved": got["precision"], "ms": []})
                        times[key]["ms"] += got["ms"]
            print(f"round {r + 1}/{args.rounds} done", flush=True)
    rows = []
    for model in args.models.split(","):
        for grid in args.grids.split(","):
            ref = statistics.median(times[f"{model} {grid}x{grid} ref fp32"]["ms"])
            for tree, precision in runs:
                entry = times[f"{model} {grid}x{grid} {tree} {precision}"]
                med = statistics.median(entry["ms"])
                same = times.get(f"{model} {grid}x{grid} ref {precision}")
                same = statistics.median(same["ms"]) / med if same else None
                rows.append(
                    {
                        "model": model,
                        "grid": f"{grid}x{grid}",
                        "tree": args.ref if tree == "ref" else "this",
                        "precision": precision,
                        "resolved": entry["resolved"],
                        "median_ms": round(med, 1),
                        "ms": [round(t, 1) for t in entry["ms"]],
                        "speedup_vs_ref_fp32": round(ref / med, 3),
                        "speedup_vs_ref_same_precision": same and round(same, 3),
                    }
                )
                print(
                    f"{model:>15} {grid}x{grid} {rows[-1]['tree']:>8} {precision:>5}"
                    f" ({entry['resolved']}) {med:8.1f} ms  x{ref / med:.2f} vs ref fp32"
                    + (f", x{same:.2f} vs ref {precision}" if same else "")
                )
    load = os.getloadavg()
    args.out.write_text(
        json.dumps(
            {
                "ref": args.ref,
                "threads": args.threads,
                "load_average_at_end": load,
                "rows": rows,
                "rollout_rows": rollout_rows,
            },
            indent=1,
        )
        + "\n"
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
