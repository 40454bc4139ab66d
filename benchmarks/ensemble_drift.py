"""How far the step-noise pairs' mean drifts from its control, and whether that drift carries any
information about the control's error: the diagnosis behind `rollout --recentre`.

For an ensemble store of blocks "control, then +- pairs" (benchmarks/ensemble.py writes them) and
the truth, per variable and lead:
- `drift_rms`: RMS over cases and cells of d = mean(pair) - control (area weights cos(latitude));
- `drift_systematic_rms`: the part of d that all pairs of a block share (the second-order response
  of the model to the noise, not sampling noise), from the spread of the pairs' d around their
  mean: sqrt(|mean_p d_p|^2 - var_p(d_p) / P); needs P >= 2 pairs per block;
- `corr_drift_error`: correlation of the block's mean drift with the control's error (truth -
  control): > 0 means the drift moves the mean toward the truth;
- `control_rmse`.
Prints a table and writes benchmarks/results/ensemble_drift.json.

    python benchmarks/ensemble_drift.py /tmp/ens/iberia-forecasts/single-step.zarr DATA...
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import xarray as xr

REPO = Path(__file__).resolve().parents[1]


def drift_table(store: xr.Dataset, truth: xr.Dataset) -> list[dict]:
    """The drift statistics of every (variable, lead) of `store` (see the module docstring)."""
    lat = store["latitude"] if "latitude" in store.coords else None
    weights = np.cos(np.deg2rad(lat.values))[:, None] if lat is not None else np.ones((1, 1))
    weights = weights / weights.mean()
    controls = np.flatnonzero(~store["member_perturbed"].values)
    ends = [*controls[1:], store.sizes["number"]]
    rows = []
    for v in store.data_vars:
        if "number" not in store[v].dims:
            continue
        for j, lead in enumerate(store["prediction_timedelta"].values):
            valid = store["time"].values + lead
            obs = truth[v].sel(time=valid).values
            f = store[v].isel(prediction_timedelta=j).values  # (time, number, y, x)
            d_mean, d_sys2, err = [], [], []
            for c, end in zip(controls, ends, strict=True):
                pairs = [(m, m + 1) for m in range(c + 1, end - 1, 2)]
                d = np.stack([(f[:, a] + f[:, b]) / 2 - f[:, c] for a, b in pairs])
                mean = d.mean(0)
                d_mean.append(mean)
                if len(pairs) > 1:
                    noise = ((d - mean) ** 2 * weights).mean() * len(pairs) / (len(pairs) - 1)
                    d_sys2.append((mean**2 * weights).mean() - noise / len(pairs))
                err.append(obs - f[:, c])
            d_all, e_all = np.stack(d_mean), np.stack(err)
            w = np.broadcast_to(weights, d_all.shape)
            cov = np.cov(d_all.ravel(), e_all.ravel(), aweights=w.ravel())
            rows.append(
                {
                    "variable": v,
                    "lead_hours": float(lead / np.timedelta64(1, "h")),
                    "drift_rms": float(np.sqrt((d_all**2 * weights).mean())),
                    "drift_systematic_rms": (
                        float(np.sqrt(max(np.mean(d_sys2), 0.0))) if d_sys2 else None
                    ),
                    "corr_drift_error": float(cov[0, 1] / np.sqrt(cov[0, 0] * cov[1, 1])),
                    "control_rmse": float(np.sqrt((e_all**2 * weights).mean())),
                }
            )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("store", help="ensemble store with +- pairs after each control")
    parser.add_argument("truth", nargs="+", help="truth files (NetCDF/Zarr)")
    parser.add_argument(
        "--out", default=str(REPO / "benchmarks" / "results" / "ensemble_drift.json")
    )
    args = parser.parse_args()
    store = xr.open_zarr(args.store).load()
    truth = xr.merge([xr.open_dataset(p) for p in args.truth]).load()
    rows = drift_table(store, truth)
    print(f"{'var':>5} {'lead h':>6} {'drift':>9} {'system.':>9} {'corr':>6} {'control':>9}")
    for r in rows:
        sys_rms = r["drift_systematic_rms"]
        print(
            f"{r['variable']:>5} {r['lead_hours']:>6g} {r['drift_rms']:>9.4g} "
            f"{sys_rms if sys_rms is None else format(sys_rms, '.4g'):>9} "
            f"{r['corr_drift_error']:>6.3f} {r['control_rmse']:>9.4g}"
        )
    Path(args.out).write_text(
        json.dumps(
            {
                "store": args.store,
                "command": " ".join(sys.argv),
                "attrs": store.attrs.get("ensemble"),
                "rows": rows,
            },
            indent=1,
        )
        + "\n"
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
