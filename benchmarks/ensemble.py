"""Ensembles against the deterministic forecast, through the `minconv` commands only.

For each experiment (the paper protocol of benchmarks/paper/run.py, MinConvGRU): train N
deterministic models that differ only in their seed (and, with --crps, one with the ensemble
training option `train.ensemble_members=2`), unless their run directories already hold a
model.pt. Then
0. with --select K: roll out every seed over the validation period and keep the K whose RMSE at
   the longest lead is lowest (relative to the seeds' median, mean over the variables); the best
   of them is "the deterministic forecast" (det = the model a user would deploy). Without it the
   K = N seeds are all kept and det is seed 0;
1. calibrate: roll out the K-checkpoint ensemble (3 members each: the control and one +- pair of
   step noise) over the validation period for each `--step-noise` S of --noise-grid and keep the S
   whose spread/skill ratio at the longest lead (mean over the variables) is closest to 1;
2. test: roll out on the test period the deterministic forecast of every seed and the ensembles
   below, score each with `minconv evaluate` against the truth with every seed's deterministic
   forecast as `--compare`; print a table and write
   benchmarks/results/ensemble.json (plots under benchmarks/results/ensemble/).

Ensembles: `step` (K checkpoints x 3 members, step noise S: the proposed one), `recentred` (the
same with `--recentre`, its own S from the same calibration), `seeds` (the K
controls only: model averaging alone), `single-step` (det's seed alone, 11 members, step noise
S), `ic0.3` (det's seed alone, 10 members, context perturbation 0.3: the first method), and with --crps
`crps-ic0.1` (the CRPS-trained model, 10 members, context perturbation 0.1 as in its training).

    python benchmarks/ensemble.py --runs /tmp/ens --seeds 5
    python benchmarks/ensemble.py --runs /tmp/ens --experiments ns --seeds 10 --select 4
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = Path("/work/shared/data")
IBERIA = [SHARED / f"erainterim_{v}_daily_2000_2010_iberia.nc" for v in ("z500", "t850", "msl")]
NS = [REPO / "sample_data" / "navier_stokes_16x16.nc"]
COMMON = ["--model", "minconvgru", "--batch-size", "8", "--lr", "0.001"]
COMMON += ["--set", "optim.weight_decay=0.01", "--set", "train.noise=0.01"]
EXPERIMENTS = {
    "ns": {
        "data": NS,
        "train": [*COMMON, "--params", "175000", "--layers", "4", "--context", "20"]
        + ["--horizon", "5", "--epochs", "4", "--set", "data.stride=10"]
        + ["--set", "data.val_stride=5"],
        "val": ["--subset", "split=val", "--context", "20", "--steps", "30"],
        "test": ["--subset", "split=test", "--context", "20", "--steps", "30"],
        "evaluate": [],
        "beyond": 15.0,  # the mean must beat the deterministic forecast beyond this lead (steps)
        "lead": "number",
    },
    "iberia": {
        "data": IBERIA,
        "train": [*COMMON, "--params", "35000", "--layers", "3", "--context", "20"]
        + ["--horizon", "4", "--epochs", "10", "--train-period", "2000-01-01/2007-12-31"]
        + ["--val-period", "2008-01-01/2008-12-31", "--set", "data.stride=4"]
        + ["--set", "data.val_stride=3"],
        "val": ["--subset", "2007-12-01/2008-12-31", "--init-times", "2008-01-01/2008-12-21/5D"]
        + ["--context", "20", "--steps", "10"],
        "test": ["--subset", "2009-01-01/2010-12-31", "--init-times", "2009-01-20/2010-12-21/5D"]
        + ["--context", "20", "--steps", "10"],
        "evaluate": ["--climatology-period", "2000-01-01/2008-12-31"],
        "beyond": 72.0,  # hours
        "lead": "hours",
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


def train(exp: dict, run: Path, extra: list[object]) -> Path:
    if not (run / "model.pt").exists():
        minconv("train", *exp["data"], *exp["train"], *extra, "--out", run, "--overwrite", "-q")
    return run / "model.pt"


def rollout(exp: dict, period: str, ckpts: list[Path], out: Path, *extra: object) -> Path:
    minconv(
        "rollout", *ckpts, *exp["data"], *exp[period], *extra, "--out", out, "--overwrite", "-q"
    )
    return out


def evaluate(
    exp: dict, store: Path, out: Path, compare: dict[str, Path], name: str = "ens"
) -> list[dict]:
    pairs = [w for name, path in compare.items() for w in ("--compare", f"{name}={path}")]
    minconv("evaluate", store, *exp["data"], *pairs, *exp["evaluate"], "--out", out, "--overwrite")
    records = json.loads((out / "scores.json").read_text())
    for r in records:  # the forecast under test is named after its store: call it `name`
        if r["forecast"] == store.stem:
            r["forecast"] = name
    return records


def lead_of(r: dict, kind: str) -> float:
    return r["lead_hours"] if kind == "hours" else float(r["lead"])


def table(records: list[dict], kind: str) -> dict:
    """{(forecast, metric, variable): {lead: value}}."""
    out: dict = {}
    for r in records:
        if r["value"] is not None:
            out.setdefault((r["forecast"], r["metric"], r["variable"]), {})[lead_of(r, kind)] = r[
                "value"
            ]
    return out


def spread_skill_last(records: list[dict], kind: str) -> float:
    """Spread/skill of the ensemble at the longest lead, geometric mean over the variables."""
    t = table(records, kind)
    ratios = [
        by_lead[max(by_lead)]
        for (f, m, _), by_lead in t.items()
        if f == "ens" and m == "spread_skill"
    ]
    return math.exp(sum(math.log(r) for r in ratios) / len(ratios))


def summarise(records: list[dict], exp: dict, seeds: int, det: int = 0) -> dict:
    """Per variable: the ensemble mean's RMSE against seed `det`'s deterministic forecast (and seed
    0's) and against the best single seed at each lead beyond `beyond`, and the ensemble scores at
    the longest lead."""
    t, out = table(records, exp["lead"]), {}
    for v in sorted({r["variable"] for r in records}):
        mean = t[("ens", "rmse", v)]
        dets = [t[(f"det{k}", "rmse", v)] for k in range(seeds)]
        late = [lead for lead in sorted(mean) if lead > exp["beyond"]]
        last = max(mean)
        out[v] = {
            "last_lead": last,
            "det_seed": det,
            "rmse_det_last": dets[det][last],
            "rmse_seed0_last": dets[0][last],
            "rmse_best_seed_last": min(d[last] for d in dets),
            "rmse_mean_last": mean[last],
            "mean_beats_det_beyond": f"{sum(mean[x] < dets[det][x] for x in late)}/{len(late)}",
            "mean_beats_seed0_beyond": f"{sum(mean[x] < dets[0][x] for x in late)}/{len(late)}",
            "mean_beats_every_seed_beyond": (
                f"{sum(mean[x] < min(d[x] for d in dets) for x in late)}/{len(late)}"
            ),
            "mean_vs_det_beyond_pct": [round(100 * (mean[x] / dets[det][x] - 1), 2) for x in late],
            "spread_skill": {str(x): round(t[("ens", "spread_skill", v)][x], 3) for x in mean},
            "spread_skill_last": t[("ens", "spread_skill", v)][last],
            "crps_fair_last": t[("ens", "crps_fair", v)][last],
            "rmse_climatology_last": t.get(("climatology", "rmse", v), {}).get(last),
        }
    return out


def calibrate(
    exp: dict, name: str, seeds: list[Path], fc: Path, grid: list[float], *extra: object
) -> dict:
    """Spread/skill at the longest lead on the validation period for each step-noise size."""
    found, tag = {}, "".join(str(e).strip("-") for e in extra)
    for s in grid:
        args = [*member_args(len(seeds), s), *extra]
        store = rollout(exp, "val", seeds, fc / f"val-s{s}{tag}.zarr", *args)
        records = evaluate(exp, store, fc / f"val-s{s}{tag}-scores", {})
        found[s] = spread_skill_last(records, exp["lead"])
        print(
            f"{name}: step noise {s} {tag}: validation spread/skill at the longest lead {found[s]:.3f}"
        )
    return found


def closest_to_one(found: dict) -> float:
    """The step-noise size whose validation spread/skill is closest to 1 (in ratio)."""
    return min(found, key=lambda s: abs(math.log(found[s])))


def select_seeds(exp: dict, name: str, seeds: list[Path], fc: Path, keep: int) -> list[int]:
    """Indices of the `keep` seeds with the lowest validation RMSE at the longest lead (each
    variable relative to the seeds' median, then averaged), best first."""
    stores = {
        f"det{k}": rollout(exp, "val", [c], fc / f"val-det{k}.zarr") for k, c in enumerate(seeds)
    }
    first = stores.pop("det0")
    t = table(evaluate(exp, first, fc / "val-dets-scores", stores, name="det0"), exp["lead"])
    variables = sorted({v for (_, m, v) in t if m == "rmse"})
    last = {v: [t[(f"det{k}", "rmse", v)] for k in range(len(seeds))] for v in variables}
    last = {v: [by[max(by)] for by in rows] for v, rows in last.items()}
    score = [
        sum(last[v][k] / statistics.median(last[v]) for v in variables) / len(variables)
        for k in range(len(seeds))
    ]
    order = sorted(range(len(seeds)), key=score.__getitem__)
    for k in order:
        print(f"{name}: seed {k}: validation RMSE at the longest lead / median {score[k]:.3f}")
    return order[:keep]


def member_args(checkpoints: int, step: float) -> list[object]:
    """At least 10 members: per checkpoint its control and whole +- pairs of step noise."""
    per = 3
    while per * checkpoints < 10:
        per += 2
    return ["--members", per * checkpoints, "--perturbation", 0, "--step-noise", step]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--experiments", default="ns,iberia")
    parser.add_argument("--runs", default=str(REPO / "runs"), help="run and forecast directory")
    parser.add_argument("--max-time", type=float, default=900, help="training budget per run, s")
    parser.add_argument("--seeds", type=int, default=5, help="deterministic models (seeds 0..)")
    parser.add_argument(
        "--select", type=int, help="keep this many seeds, the best on the validation period"
    )
    parser.add_argument("--noise-grid", default="0.5,0.75,1.0", help="step-noise sizes to try")
    parser.add_argument("--crps", action="store_true", help="also train and score the CRPS option")
    parser.add_argument("--step-noise", type=float, help="skip the calibration, use this size")
    parser.add_argument("--variants", help="comma-separated subset of the ensembles to score")
    args = parser.parse_args()
    runs = Path(args.runs)
    plots = REPO / "benchmarks" / "results" / "ensemble"
    plots.mkdir(parents=True, exist_ok=True)
    results: dict = {"experiments": {}}
    for name in args.experiments.split(","):
        exp, started = EXPERIMENTS[name], time.perf_counter()
        budget = ["--max-time", args.max_time]
        trained = [
            train(exp, runs / f"{name}-det-s{k}", ["--seed", k, *budget]) for k in range(args.seeds)
        ]
        fc = runs / f"{name}-forecasts"
        fc.mkdir(exist_ok=True)
        chosen = list(range(args.seeds))
        if args.select:
            chosen = select_seeds(exp, name, trained, fc, args.select)
        seeds, det = [trained[k] for k in chosen], chosen[0]
        if args.step_noise is None:
            grid = [float(s) for s in args.noise_grid.split(",")]
            found = calibrate(exp, name, seeds, fc, grid)
            found_rc = calibrate(exp, name, seeds, fc, grid, "--recentre")
            step, step_rc = closest_to_one(found), closest_to_one(found_rc)
        else:
            found, found_rc, step = {}, {}, args.step_noise
            step_rc = step
        dets = {
            f"det{k}": rollout(exp, "test", [c], fc / f"det{k}.zarr") for k, c in enumerate(trained)
        }
        variants = {
            "step": (seeds, member_args(len(seeds), step)),
            "recentred": (seeds, [*member_args(len(seeds), step_rc), "--recentre"]),
            "seeds": (seeds, []),
            "single-step": (
                seeds[:1],
                ["--members", 11, "--perturbation", 0, "--step-noise", step],
            ),
            "ic0.3": (seeds[:1], ["--members", 10, "--perturbation", 0.3]),
        }
        if args.crps:
            crps = train(exp, runs / f"{name}-crps", ["--seed", 0, *CRPS_TRAIN, *budget])
            variants["crps-ic0.1"] = ([crps], ["--members", 10, "--perturbation", 0.1])
        if args.variants:
            variants = {k: v for k, v in variants.items() if k in args.variants.split(",")}
        exp_out: dict = {}
        for key, (ckpts, extra) in variants.items():
            store = rollout(exp, "test", ckpts, fc / f"{key}.zarr", *extra)
            records = evaluate(exp, store, fc / f"scores-{key}", dets)
            exp_out[key] = summarise(records, exp, len(trained), det)
            for png in ("scores.png", "rank_histogram.png") if key in ("step", "recentred") else ():
                shutil.copy(fc / f"scores-{key}" / png, plots / f"{name}-{key}-{png}")
        results["experiments"][name] = {
            "seeds": args.seeds,
            "chosen_seeds": chosen,
            "validation_spread_skill": {str(s): round(r, 3) for s, r in found.items()},
            "validation_spread_skill_recentred": {str(s): round(r, 3) for s, r in found_rc.items()},
            "step_noise": step,
            "step_noise_recentred": step_rc,
            "variants": exp_out,
            "seconds": round(time.perf_counter() - started),
        }
        print(f"\n{name} (seeds {chosen}, step noise {step}): ensemble mean vs det (seed {det})")
        head = f"{'variant':>12} {'var':>6} {'det':>9} {'best':>9} {'mean':>9} {'wins':>6}"
        print(head + f" {'wins*':>6} {'ss':>5} {'crps_f':>9}")
        for key, per in exp_out.items():
            for v, s in per.items():
                print(
                    f"{key:>12} {v:>6} {s['rmse_det_last']:>9.4g} {s['rmse_best_seed_last']:>9.4g}"
                    f" {s['rmse_mean_last']:>9.4g} {s['mean_beats_det_beyond']:>6}"
                    f" {s['mean_beats_every_seed_beyond']:>6} {s['spread_skill_last']:>5.2f}"
                    f" {s['crps_fair_last']:>9.4g}"
                )
    out = REPO / "benchmarks" / "results" / "ensemble.json"
    if out.exists():  # other experiments and variants of earlier runs stay
        old = json.loads(out.read_text()).get("experiments", {})
        for name, exp_out in results["experiments"].items():
            kept = old.get(name, {}).get("variants", {})
            exp_out["variants"] = {**kept, **exp_out["variants"]}
            for key in ("validation_spread_skill", "validation_spread_skill_recentred"):
                if not exp_out[key]:
                    exp_out[key] = old.get(name, {}).get(key, {})
        results["experiments"] = {**old, **results["experiments"]}
    out.write_text(json.dumps(results, indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
