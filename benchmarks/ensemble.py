"""Ensembles against the deterministic forecast, through the `minconv` commands only.

For each experiment (the paper protocol of benchmarks/paper/run.py, MinConvGRU, seed 0): train a
deterministic model and one with the ensemble training option (`train.ensemble_members=2`, fair CRPS
in the closed loop), unless their run directories already hold a model.pt; roll out the
deterministic forecast and 10-member ensembles at several perturbation sizes; score each ensemble
with the deterministic forecast as `--compare`; print a table and write
benchmarks/results/ensemble.json (plus the plots under benchmarks/results/ensemble/).

    python benchmarks/ensemble.py --runs runs --max-time 600
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = Path("/work/shared/data")
IBERIA = [SHARED / f"erainterim_{v}_daily_2000_2010_iberia.nc" for v in ("z500", "t850", "msl")]
NS = [REPO / "sample_data" / "navier_stokes_16x16.nc"]
COMMON = ["--model", "minconvgru", "--batch-size", "8", "--lr", "0.001", "--seed", "0"]
COMMON += ["--set", "optim.weight_decay=0.01", "--set", "train.noise=0.01"]
EXPERIMENTS = {
    "ns": {
        "data": NS,
        "train": [*COMMON, "--params", "175000", "--layers", "4", "--context", "20"]
        + [
            "--horizon",
            "5",
            "--epochs",
            "4",
            "--set",
            "data.stride=10",
            "--set",
            "data.val_stride=5",
        ],
        "rollout": ["--subset", "split=test", "--context", "20", "--steps", "30"],
        "beyond": 15.0,  # the mean must beat the deterministic forecast beyond this lead
    },
    "iberia": {
        "data": IBERIA,
        "train": [
            *COMMON,
            "--params",
            "35000",
            "--layers",
            "3",
            "--context",
            "20",
            "--horizon",
            "4",
        ]
        + ["--epochs", "10", "--train-period", "2000-01-01/2007-12-31"]
        + ["--val-period", "2008-01-01/2008-12-31", "--set", "data.stride=4"]
        + ["--set", "data.val_stride=3"],
        "rollout": ["--subset", "2009-01-01/2010-12-31", "--init-times", "2009-01-20/2010-12-21/5D"]
        + ["--context", "20", "--steps", "10"],
        "beyond": 72.0,  # hours
    },
}
CRPS_TRAIN = ["--set", "train.ensemble_members=2", "--set", "train.ensemble_noise=0.1"]


def minconv(*argv: object) -> str:
    cmd = [sys.executable, "-m", "minconv_cli", *map(str, argv)]
    print("$", " ".join(cmd[2:]), flush=True)
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"failed: {' '.join(cmd)}\n{done.stderr}")
    return done.stdout


def train(exp: dict, run: Path, extra: list[str], max_time: float) -> Path:
    if not (run / "model.pt").exists():
        minconv("train", *exp["data"], *exp["train"], *extra, "--max-time", max_time)
    return run / "model.pt"


def summarise(records: list[dict], beyond: float, lead_key: str) -> dict:
    """Per variable: the ensemble mean's RMSE against the deterministic one beyond `beyond`, and
    the ensemble scores at the longest lead."""
    out: dict = {}
    by = {}
    for r in records:
        by[(r["forecast"], r["metric"], r["variable"], r["lead"])] = r
    variables = sorted({r["variable"] for r in records})
    for v in variables:
        leads = [
            r
            for r in records
            if r["forecast"] == "ens" and r["metric"] == "rmse" and r["variable"] == v
        ]
        key = (lambda r: r["lead_hours"]) if lead_key == "hours" else (lambda r: float(r["lead"]))
        leads.sort(key=key)
        late = [r for r in leads if key(r) > beyond]
        wins = [
            by[("ens", "rmse", v, r["lead"])]["value"] < by[("det", "rmse", v, r["lead"])]["value"]
            for r in late
        ]
        last = leads[-1]["lead"]

        def at(f: str, m: str, lead: str = last, v: str = v) -> float | None:
            rec = by.get((f, m, v, lead))
            return None if rec is None else rec["value"]

        out[v] = {
            "last_lead": last,
            "rmse_det_last": at("det", "rmse"),
            "rmse_mean_last": at("ens", "rmse"),
            "mean_beats_det_beyond": f"{sum(wins)}/{len(wins)}",
            "spread_skill_last": at("ens", "spread_skill"),
            "crps_fair_last": at("ens", "crps_fair"),
            "rmse_crps_control_last": at("crps_control", "rmse"),
            "rmse_climatology_last": at("climatology", "rmse"),
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--experiments", default="ns,iberia")
    parser.add_argument("--runs", default=str(REPO / "runs"), help="run and forecast directory")
    parser.add_argument("--max-time", type=float, default=600, help="training budget per run, s")
    parser.add_argument("--members", type=int, default=10)
    parser.add_argument("--perturbations", default="0.1,0.3,1.0")
    args = parser.parse_args()
    runs = Path(args.runs)
    plots = REPO / "benchmarks" / "results" / "ensemble"
    plots.mkdir(parents=True, exist_ok=True)
    results: dict = {"members": args.members, "experiments": {}}
    for name in args.experiments.split(","):
        exp = EXPERIMENTS[name]
        started = time.perf_counter()
        det = train(
            exp,
            runs / f"{name}-det",
            ["--out", runs / f"{name}-det", "--overwrite", "-q"],
            args.max_time,
        )
        crps = train(
            exp,
            runs / f"{name}-crps",
            [*CRPS_TRAIN, "--out", runs / f"{name}-crps", "--overwrite", "-q"],
            args.max_time,
        )
        fc = runs / f"{name}-forecasts"
        fc.mkdir(exist_ok=True)
        variants = {"det": (det, None)}
        for p in args.perturbations.split(","):
            variants[f"ens-p{p}"] = (det, float(p))
            variants[f"crps-p{p}"] = (crps, float(p))
        variants["crps-det"] = (crps, None)
        for key, (ckpt, p) in variants.items():
            extra = [] if p is None else ["--members", args.members, "--perturbation", p]
            minconv(
                "rollout",
                ckpt,
                *exp["data"],
                *exp["rollout"],
                *extra,
                "--out",
                fc / f"{key}.zarr",
                "--overwrite",
                "-q",
            )
        lead_key = "hours" if name == "iberia" else "number"
        exp_out: dict = {}
        for key, (_, p) in variants.items():
            if p is None:
                continue
            score_dir = fc / f"scores-{key}"
            minconv(
                "evaluate",
                fc / f"{key}.zarr",
                *exp["data"],
                "--compare",
                f"det={fc / 'det.zarr'}",
                "--compare",
                f"crps_control={fc / 'crps-det.zarr'}",
                "--out",
                score_dir,
                "--overwrite",
                "-q",
                *(["--climatology-period", "2000-01-01/2008-12-31"] if name == "iberia" else []),
            )
            records = json.loads((score_dir / "scores.json").read_text())
            # the forecast under test is named after its store: rename it "ens"
            for r in records:
                if r["forecast"] == key:
                    r["forecast"] = "ens"
            exp_out[key] = summarise(records, exp["beyond"], lead_key)
            for png in ("scores.png", "rank_histogram.png"):
                shutil.copy(score_dir / png, plots / f"{name}-{key}-{png}")
        results["experiments"][name] = {
            "variants": exp_out,
            "seconds": round(time.perf_counter() - started),
        }
        print(f"\n{name}: member ensemble mean vs deterministic at the longest lead")
        print(
            f"{'variant':>12} {'variable':>10} {'det':>10} {'mean':>10} {'wins':>6} {'ss':>6} {'crps_f':>10}"
        )
        for key, per in exp_out.items():
            for v, s in per.items():
                print(
                    f"{key:>12} {v:>10} {s['rmse_det_last']:>10.4g} {s['rmse_mean_last']:>10.4g} "
                    f"{s['mean_beats_det_beyond']:>6} {s['spread_skill_last']:>6.2f} {s['crps_fair_last']:>10.4g}"
                )
    out = REPO / "benchmarks" / "results" / "ensemble.json"
    out.write_text(json.dumps(results, indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
