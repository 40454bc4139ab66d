"""Training-step time of this tree against an earlier commit, side by side in one run.

Each (commit, model, case, precision) runs in a fresh process importing that commit's
`minconv_cli` (extracted with `git archive`); the processes alternate round-robin so that both
trees see the same machine load, and each reports the wall time of `--steps` training steps
(after one warm-up step) as built by benchmarks/train_step.py. Prints the medians and the ratio
of the reference's fp32 step to each of this tree's, and writes JSON.

    python benchmarks/compare_commits.py --ref 5341570 --rounds 3
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
from train_step import make_case, train_step
from minconv_cli.core.precision import resolve_precision
torch.set_num_threads({threads})
try:  # this tree sets the allocator as the CLI does; trees before it had no such module
    from minconv_cli.core.allocator import keep_freed_memory
    keep_freed_memory()
except ImportError:
    pass
precision = resolve_precision({precision!r}, "cpu")
case = make_case({model!r}, {grid}, {batch}, 25, 20, precision=precision)
train_step(*case)
times = []
for _ in range({steps}):
    t = time.perf_counter(); train_step(*case); times.append(time.perf_counter() - t)
print(json.dumps({{"precision": precision, "ms": [1000 * t for t in times]}}))
"""


def extract(commit: str, into: Path) -> Path:
    """`minconv_cli` of `commit`, unpacked under `into`."""
    blob = subprocess.run(
        ["git", "-C", str(REPO), "archive", commit, "minconv_cli"], capture_output=True, check=True
    ).stdout
    with tarfile.open(fileobj=BytesIO(blob)) as tar:
        tar.extractall(into, filter="data")
    return into


def step_ms(tree: Path, model: str, grid: str, precision: str, args) -> dict:
    size, batch = CASES[grid]
    code = CHILD.format(
        bench=str(REPO / "benchmarks"),
        threads=args.threads,
        precision=precision,
        model=model,
        grid=size,
        batch=batch,
        steps=args.steps,
    )
    return run_json(code, args.threads, {**os.environ, "PYTHONPATH": str(tree)})


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--ref", required=True, help="the earlier commit")
    parser.add_argument("--models", default="minconvgru,minconvlstm,minconvexplstm")
    parser.add_argument("--grids", default="16,64")
    parser.add_argument("--precisions", default="fp32,auto", help="of this tree")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=2, help="timed steps per process")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=RESULT)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        trees = {"ref": extract(args.ref, Path(tmp)), "this": REPO}
        runs = [("ref", "fp32")] + [("this", p) for p in args.precisions.split(",")]
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
                    }
                )
                print(
                    f"{model:>15} {grid}x{grid} {rows[-1]['tree']:>8} {precision:>5}"
                    f" ({entry['resolved']}) {med:8.1f} ms  x{ref / med:.2f} vs ref fp32"
                )
    load = os.getloadavg()
    args.out.write_text(
        json.dumps(
            {"ref": args.ref, "threads": args.threads, "load_average_at_end": load, "rows": rows},
            indent=1,
        )
        + "\n"
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
