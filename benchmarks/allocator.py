"""Training-step time and page faults with and without `minconv_cli.core.allocator.keep_freed_memory`.

The setting is process-wide, so each (setting, case, chunk length) runs in a fresh process; the
processes alternate round-robin so both settings see the same machine load. Each reports the
median wall time of `--steps` training steps (after one warm-up step, as benchmarks/train_step.py
builds them, `--precision auto`) and the minor page faults per step (`getrusage`). Prints a table
and writes benchmarks/results/allocator.json.

    python benchmarks/allocator.py --rounds 2
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
from pathlib import Path

from fresh_process import run_json

REPO = Path(__file__).resolve().parents[1]
RESULT = Path(__file__).parent / "results" / "allocator.json"
CASES = {  # name: (model, grid, batch, teacher-forced chunk lengths)
    "minconvlstm 64x64 B4": ("minconvlstm", 64, 4, (1, 4, 20)),
    "minconvgru 16x16 B8": ("minconvgru", 16, 8, (5, 20)),
}
CHILD = """
import json, resource, statistics, sys, time, torch
sys.path.insert(0, {bench!r})
from train_step import make_case, train_step
from minconv_cli.core.allocator import keep_freed_memory
from minconv_cli.core.precision import resolve_precision
applied = keep_freed_memory() if {keep} else False
torch.set_num_threads({threads})
case = make_case({model!r}, {grid}, {batch}, 25, 20, {{"time_chunk": {chunk}}},
                 precision=resolve_precision("auto", "cpu"))
train_step(*case)
faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
times = []
for _ in range({steps}):
    t = time.perf_counter(); train_step(*case); times.append(time.perf_counter() - t)
faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults) / {steps}
print(json.dumps({{"applied": applied, "ms": [1000 * t for t in times], "faults": faults}}))
"""


def run_child(model: str, grid: int, batch: int, chunk: int, keep: bool, args) -> dict:
    code = CHILD.format(
        bench=str(REPO / "benchmarks"),
        keep=keep,
        threads=args.threads,
        model=model,
        grid=grid,
        batch=batch,
        chunk=chunk,
        steps=args.steps,
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    return run_json(code, args.threads, env)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--steps", type=int, default=3, help="timed steps per process")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=RESULT)
    args = parser.parse_args()
    got: dict = {}
    for r in range(args.rounds):
        for case, (model, grid, batch, chunks) in CASES.items():
            for chunk in chunks:
                for keep in (False, True):
                    res = run_child(model, grid, batch, chunk, keep, args)
                    entry = got.setdefault((case, chunk, keep), {"ms": [], "faults": []})
                    entry["ms"] += res["ms"]
                    entry["faults"].append(res["faults"])
        print(f"round {r + 1}/{args.rounds} done", flush=True)
    rows = []
    print(
        f"{'case':>22} {'chunk':>5} {'default ms':>11} {'kept ms':>8} {'x':>5} {'faults/step':>20}"
    )
    for case, (_, _, _, chunks) in CASES.items():
        for chunk in chunks:
            off, on = got[(case, chunk, False)], got[(case, chunk, True)]
            ms_off, ms_on = statistics.median(off["ms"]), statistics.median(on["ms"])
            f_off, f_on = statistics.median(off["faults"]), statistics.median(on["faults"])
            rows.append(
                {
                    "case": case,
                    "time_chunk": chunk,
                    "default_ms": round(ms_off, 1),
                    "kept_ms": round(ms_on, 1),
                    "speedup": round(ms_off / ms_on, 3),
                    "default_faults_per_step": round(f_off),
                    "kept_faults_per_step": round(f_on),
                }
            )
            print(
                f"{case:>22} {chunk:>5} {ms_off:>11.0f} {ms_on:>8.0f} {ms_off / ms_on:>5.2f}"
                f" {f_off:>10.0f} -> {f_on:<8.0f}"
            )
    out = {"threads": args.threads, "steps": args.steps, "rounds": args.rounds, "rows": rows}
    out["load_average_at_end"] = os.getloadavg()
    args.out.write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
