"""Calibration of `models/memory.step_bytes`: the peak resident memory of one training step
(forward + backward, fp32, CPU) of each cell kind, measured in a fresh process, against the
estimate. The measured activation bytes are the peak RSS (VmHWM) after the step less the RSS
before it; `ratio` = estimate / measured should stay between 1 and 2 (an estimate that errs high).

    OMP_NUM_THREADS=2 python benchmarks/memory_estimate.py            # full table
    python benchmarks/memory_estimate.py --quick                      # one size, to check it works
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fresh_process import run_json  # noqa: E402

CASE = """
import json, torch
from minconv_cli.models import create_model
def rss(key):
    for line in open('/proc/self/status'):
        if line.startswith(key):
            return int(line.split()[1]) * 1024
torch.manual_seed(0)
m = create_model({name!r}, 1, widths={widths}, norm='instance', predict='increment')
m.precision = {precision!r}
x = torch.randn({batch}, {frames} + 1, 1, {h}, {w})
y = m(x[:, :1], 1)  # warm the kernels on a tiny input
base = rss('VmRSS')
if {training}:
    y = m(x[:, :-1], {context})
    ((y.float() - x[:, 1:]) ** 2).mean().backward()
else:
    with torch.no_grad():
        y = m(x[:, :-1], {frames})
print(json.dumps({{"measured": rss('VmHWM') - base, "hparams": m.hparams}}))
"""

SIZES = [(2, 6, 48, 48), (4, 6, 64, 64), (2, 12, 96, 64)]
MODELS = [("minconvgru", [16, 16]), ("convgru", [16, 16]), ("convlstm", [16, 16])]


def measure(
    name: str,
    widths: list[int],
    size: tuple[int, int, int, int],
    training: bool = True,
    precision: str = "fp32",
) -> dict:
    """One step's measured peak activation bytes and the estimate, in a fresh process (a
    training step, or a no-grad forward over all frames as rollout's context)."""
    from minconv_cli.models.memory import step_bytes

    batch, frames, h, w = size
    code = CASE.format(
        name=name,
        widths=widths,
        batch=batch,
        frames=frames,
        h=h,
        w=w,
        context=frames // 2,
        training=training,
        precision=precision,
    )
    got = run_json(code, threads=2)
    estimate = step_bytes(got["hparams"], batch, frames, (h, w), precision, training)
    return {
        "model": name,
        "step": ("train" if training else "no-grad") + ("" if precision == "fp32" else "-bf16"),
        "widths": widths,
        "batch": batch,
        "frames": frames,
        "grid": [h, w],
        "measured_mb": round(got["measured"] / 2**20, 1),
        "estimate_mb": round(estimate / 2**20, 1),
        "ratio": round(estimate / max(got["measured"], 1), 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one size per model")
    args = parser.parse_args()
    sizes = SIZES[:1] if args.quick else SIZES
    rows = [measure(n, w, s, t) for t in (True, False) for n, w in MODELS for s in sizes]
    rows += [measure(n, w, s, True, "bf16") for n, w in MODELS[:1] for s in sizes]
    print(
        f"{'model':<12} {'step':<10} {'B':>2} {'T':>3} {'grid':>7} {'measured MB':>12} {'estimate MB':>12} ratio"
    )
    for r in rows:
        grid = "x".join(map(str, r["grid"]))
        print(
            f"{r['model']:<12} {r['step']:<10} {r['batch']:>2} {r['frames']:>3} {grid:>7} "
            f"{r['measured_mb']:>12} {r['estimate_mb']:>12} {r['ratio']:>5}"
        )
    if not args.quick:
        out = Path(__file__).resolve().parent / "results" / "memory_estimate.json"
        out.write_text(json.dumps({"rows": rows}, indent=1) + "\n")
        print(f"wrote {out}")


if __name__ == "__main__":
    main()
