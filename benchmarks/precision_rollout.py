"""How far a bf16 rollout is from the fp32 one, against the forecast's own error.

Forecasts the bundled Navier-Stokes sample's test trajectories (context 10, 20 leads) from a
checkpoint with `minconv_cli.rollout.forecast` in fp32 and in bf16, and writes, by lead, the RMSE
of the fp32 forecast against the truth and the RMS difference bf16 - fp32.

    python benchmarks/precision_rollout.py runs/sample/model.pt
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np

from minconv_cli.data import Normalizer, open_fields, split_fields
from minconv_cli.data.sample import sample_path
from minconv_cli.models.checkpoint import load_checkpoint
from minconv_cli.rollout import forecast

RESULT = Path(__file__).parent / "results" / "precision_rollout.json"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--context", type=int, default=10)
    parser.add_argument("--leads", type=int, default=20)
    parser.add_argument("--out", type=Path, default=RESULT)
    args = parser.parse_args()
    loaded = load_checkpoint(args.checkpoint)
    model, normalizer = loaded.model.eval(), Normalizer.from_dict(loaded.meta["normalizer"])
    fields = split_fields(open_fields(sample_path()), "split=test")
    K, N = args.context, args.leads
    frames = np.stack([fields.frames(s, 0, K + N) for s in range(fields.n_samples)])
    runs = {
        p: forecast(model, normalizer, frames[:, :K], None, N, "cpu", p) for p in ("fp32", "bf16")
    }
    err = np.sqrt(((runs["fp32"] - frames[:, K:]) ** 2).mean(axis=(0, 2, 3, 4)))
    diff = np.sqrt(((runs["bf16"] - runs["fp32"]) ** 2).mean(axis=(0, 2, 3, 4)))
    result = {
        "checkpoint": str(args.checkpoint),
        "trained_precision": loaded.meta.get("precision"),
        "epoch": loaded.meta.get("epoch"),
        "samples": int(fields.n_samples),
        "context": K,
        "leads": N,
        "rmse_fp32_vs_truth_by_lead": err.round(5).tolist(),
        "rms_bf16_minus_fp32_by_lead": diff.round(6).tolist(),
        "max_ratio_diff_to_error": float((diff / err).max()),
        "load_average": list(os.getloadavg()),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in ("samples", "max_ratio_diff_to_error")}))


if __name__ == "__main__":
    main()
