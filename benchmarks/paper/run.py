"""Reproduce the paper's comparison through the `minconv` commands only, and publish the results.

For each experiment, model and seed: `minconv train` → `minconv rollout` on the test split →
`minconv evaluate` (all models of one seed in one call, with persistence and climatology), then
one table per experiment and `docs/results.md` (between its generated-results markers).

    python benchmarks/paper/run.py                  # CPU scale, ~45 min on 2 cores
    python benchmarks/paper/run.py --quick          # smoke run, a few minutes
    python benchmarks/paper/run.py --full           # the paper's scale (GPU), NS data simulated first

Experiments (design.md §1 "Paper settings"):
- `ns`: Navier-Stokes vorticity at 16x16 (nu = 1e-3), 4 layers at ~175k parameters, windows of
  25 (20 teacher-forced + 5 closed loop); test: 20 teacher-forced + 30 closed loop.
- `iberia`: the real ERA-Interim z500, t850, msl over Iberia (daily) as the stand-in for
  WeatherBench Z500 (see docs/results.md for running on WeatherBench): 3 layers at ~35k parameters,
  windows of 24 (20 + 4); train 2000-2007, validate 2008, test 2009-2010.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
MODELS = ("minconvgru", "minconvlstm", "minconvexplstm", "convgru", "convlstm")
BEGIN, END = "<!-- results:begin -->", "<!-- results:end -->"


@dataclass
class Experiment:
    """One experiment of the paper, at the scale chosen on the command line."""

    name: str
    title: str
    data: list[Path]
    params: int
    layers: int
    context: int
    horizon: int
    epochs: int
    batch_size: int
    lr: float
    train_args: list[str] = field(default_factory=list)
    rollout_args: list[str] = field(default_factory=list)
    steps: int = 30
    references: str = "persistence,climatology"


def experiments(args: argparse.Namespace) -> dict[str, Experiment]:
    """The two experiments at CPU (default), quick or full scale."""
    shared = Path(args.shared)
    iberia = [shared / f"erainterim_{v}_daily_2000_2010_iberia.nc" for v in ("z500", "t850", "msl")]
    ns_data = [REPO / "sample_data" / "navier_stokes_16x16.nc"]
    if args.full:
        ns_data = [Path(args.out) / "data" / "navier_stokes_paper.nc"]
    # (NS epochs, NS window stride, Iberia epochs, Iberia window stride, batch): the CPU scale is
    # sized to finish in about 45 minutes on 2 cores with 5 models x 2 seeds.
    scale = {
        "quick": (1, 25, 2, 10, 8),
        "cpu": (4, 10, 10, 4, 8),
        "full": (30, 1, 20, 1, 1),
    }["full" if args.full else "quick" if args.quick else "cpu"]
    ns_epochs, ns_stride, ib_epochs, ib_stride, batch = scale
    common = ["--set", "optim.weight_decay=0.01", "--set", "train.noise=0.01"]
    return {
        "ns": Experiment(
            name="ns",
            title="Navier-Stokes vorticity, 16x16, nu = 1e-3",
            data=ns_data,
            params=175_000,
            layers=4,
            context=20,
            horizon=5,
            epochs=ns_epochs,
            batch_size=batch,
            lr=5e-4 if args.full else 1e-3,
            train_args=[*common, "--set", f"data.stride={ns_stride}", "--set", "data.val_stride=5"],
            rollout_args=["--subset", "split=test", "--context", "20"],
            steps=30,
            references="persistence,climatology",
        ),
        "iberia": Experiment(
            name="iberia",
            title="ERA-Interim z500, t850, msl over Iberia, daily (2.5°, 11x13)",
            data=iberia,
            params=35_000,
            layers=3,
            context=20,
            horizon=4,
            epochs=ib_epochs,
            batch_size=batch,
            lr=1e-3,
            train_args=[
                *common,
                "--train-period",
                "2000-01-01/2007-12-31",
                "--val-period",
                "2008-01-01/2008-12-31",
                "--set",
                f"data.stride={ib_stride}",
                "--set",
                "data.val_stride=3",
            ],
            rollout_args=[
                "--subset",
                "2009-01-01/2010-12-31",
                "--init-times",
                "2009-01-20/2010-12-21/5D",
                "--context",
                "20",
            ],
            steps=10,
            references="persistence,climatology",
        ),
    }


def minconv(*argv: str, log: Path) -> dict:
    """Run one `minconv` command with --json; return its JSON, or stop with its error line."""
    cmd = [sys.executable, "-m", "minconv_cli", *argv]
    with log.open("a") as f:
        f.write("$ minconv " + " ".join(argv) + "\n")
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    with log.open("a") as f:
        f.write(proc.stderr[-4000:] + "\n")
    if proc.returncode != 0:
        last = proc.stderr.strip().splitlines()[-1:] or ["(no output)"]
        raise SystemExit(f"minconv {argv[0]} failed ({proc.returncode}): {last[0]}")
    return json.loads(proc.stdout) if proc.stdout.strip() else {}


def run_experiment(exp: Experiment, models: list[str], seeds: list[int], out: Path) -> dict:
    """Train, roll out and evaluate every model and seed of one experiment; return the raw results."""
    base = out / exp.name
    base.mkdir(parents=True, exist_ok=True)
    log = base / "commands.log"
    runs: dict[str, dict[int, dict]] = {m: {} for m in models}
    scores: dict[int, list[dict]] = {}
    data = [str(p) for p in exp.data]
    for seed in seeds:
        forecasts = {}
        for model in models:
            run_dir = base / "runs" / f"{model}-seed{seed}"
            t0 = time.perf_counter()
            summary = minconv(
                "train", *data, "--model", model, "--params", str(exp.params),
                "--layers", str(exp.layers), "--context", str(exp.context),
                "--horizon", str(exp.horizon), "--epochs", str(exp.epochs),
                "--batch-size", str(exp.batch_size), "--lr", str(exp.lr), "--seed", str(seed),
                "--set", "train.max_time=null", *exp.train_args,
                "--out", str(run_dir), "--overwrite", "--json", "--quiet", log=log,
            )  # fmt: skip
            train_seconds = time.perf_counter() - t0
            forecast = base / "forecasts" / f"seed{seed}" / f"{model}.zarr"  # stem names it
            forecast.parent.mkdir(parents=True, exist_ok=True)
            rollout = minconv(
                "rollout", str(run_dir / "model.pt"), *data, "--steps", str(exp.steps),
                *exp.rollout_args, "--out", str(forecast), "--overwrite", "--json", "--quiet",
                log=log,
            )  # fmt: skip
            runs[model][seed] = {
                "train": summary,
                "train_seconds": train_seconds,
                "seconds_per_epoch": epoch_seconds(run_dir / "metrics.csv"),
                "rollout": rollout,
            }
            forecasts[model] = forecast
            print(f"  {exp.name} {model} seed {seed}: trained in {train_seconds:.0f} s", flush=True)
        first, *others = models
        compare = [arg for m in others for arg in ("--compare", f"{m}={forecasts[m]}")]
        scores[seed] = minconv(
            "evaluate", str(forecasts[first]), *data, *compare,
            "--metrics", "rmse,mae,bias,acc,rel_l2", "--references", exp.references,
            "--out", str(base / f"scores-seed{seed}"), "--overwrite", "--json", "--quiet",
            log=log,
        )  # fmt: skip
    return {"runs": runs, "scores": scores}


def epoch_seconds(metrics_csv: Path) -> float | None:
    """Median seconds of one training epoch, from the run's metrics.csv."""
    with metrics_csv.open() as f:
        seconds = [float(row["seconds"]) for row in csv.DictReader(f) if row.get("seconds")]
    return statistics.median(seconds) if seconds else None


def _records(scores: list[dict] | dict) -> list[dict]:
    return scores["records"] if isinstance(scores, dict) and "records" in scores else scores


def mean_sd(values: list[float | None]) -> tuple[float, float]:
    values = [v for v in values if v is not None and not math.isnan(v)]
    if not values:
        return float("nan"), float("nan")
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def _per_seed(records: list[dict], forecast: str, variable: str, metric: str) -> list[float]:
    return [
        r["value"]
        for r in records
        if r["forecast"] == forecast
        and r["variable"] == variable
        and r["metric"] == metric
        and r["value"] is not None
    ]


def summarise(result: dict, models: list[str]) -> list[dict]:
    """One row per model (and reference) and variable; each number is mean and sd over seeds.

    Closed-loop RMSE over all leads is the root of the mean MSE over leads (mean first, root
    last); relative L2 and skill against persistence are means over leads.
    """
    seeds_records = {seed: _records(recs) for seed, recs in result["scores"].items()}
    variables = sorted({r["variable"] for recs in seeds_records.values() for r in recs})
    rows = []
    for name in [*models, "persistence", "climatology"]:
        for var in variables:
            cl, rel, skill = [], [], []
            for recs in seeds_records.values():
                rmse = _per_seed(recs, name, var, "rmse")
                if rmse:
                    cl.append(math.sqrt(statistics.fmean(v * v for v in rmse)))
                rel_l2 = _per_seed(recs, name, var, "rel_l2")
                rel.append(statistics.fmean(rel_l2) if rel_l2 else None)
                sk = _per_seed(recs, name, var, "skill_vs_persistence")
                skill.append(statistics.fmean(sk) if sk else None)
            if not cl:
                continue
            row = {"model": name, "variable": var, "cl_rmse": mean_sd(cl), "rel_l2": mean_sd(rel)}
            row["skill"] = mean_sd(skill)
            if name in result["runs"]:
                runs = list(result["runs"][name].values())
                channels = [r["train"].get("channels", {}).get(var, {}) for r in runs]
                row["params"] = runs[0]["train"].get("parameters")
                row["s_per_epoch"] = mean_sd([r["seconds_per_epoch"] for r in runs])
                row["tf_rmse"] = mean_sd([c.get("rmse_tf") for c in channels])
                row["val_cl_rmse"] = mean_sd([c.get("rmse_cl") for c in channels])
            rows.append(row)
    return rows


def _fmt(pair: tuple[float, float] | None, digits: int = 4) -> str:
    if pair is None or math.isnan(pair[0]):
        return "–"
    mean, sd = pair
    return f"{mean:.{digits}g} ± {sd:.2g}" if sd else f"{mean:.{digits}g}"


def markdown(exp: Experiment, rows: list[dict], seeds: list[int], out: Path) -> str:
    """The results of one experiment as a Markdown section (table + plot links)."""
    lines = [
        f"### {exp.title}",
        "",
        f"{exp.layers} layers at ~{exp.params:,} parameters; windows {exp.context} teacher-forced + "
        f"{exp.horizon} closed loop; {exp.epochs} epochs, batch {exp.batch_size}, lr {exp.lr}; "
        f"test: {exp.context} context frames + {exp.steps} closed-loop steps; seeds "
        f"{', '.join(map(str, seeds))} (mean ± standard deviation over seeds). RMSE in the "
        "variable's units; validation numbers from `minconv train`, test numbers from "
        "`minconv rollout` + `minconv evaluate`.",
        "",
        "| model | variable | parameters | s/epoch | RMSE teacher-forced (val) "
        "| RMSE closed loop (val) | RMSE closed loop (test) | rel. L2 (test) "
        "| skill vs persistence (test) |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        params = f"{int(row['params']):,}" if row.get("params") else "–"
        lines.append(
            f"| {row['model']} | {row['variable']} | {params} | {_fmt(row.get('s_per_epoch'), 3)} | "
            f"{_fmt(row.get('tf_rmse'))} | {_fmt(row.get('val_cl_rmse'))} | {_fmt(row['cl_rmse'])} | "
            f"{_fmt(row['rel_l2'])} | {_fmt(row['skill'], 3)} |"
        )
    for seed in seeds:
        png = out / exp.name / f"scores-seed{seed}" / "scores.png"
        if png.exists():
            rel = os.path.relpath(png, REPO / "docs")
            lines += ["", f"![{exp.name}: error against lead time, seed {seed}]({rel})"]
    return "\n".join(lines) + "\n"


def machine() -> str:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        model = re.search(r"model name\s*:\s*(.*)", Path("/proc/cpuinfo").read_text())
        cpu = model.group(1) if model else cpu
    except OSError:
        pass
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (
        f"{cpu}, {os.cpu_count()} cores, {device}; Python {platform.python_version()}, "
        f"torch {torch.__version__}, {time.strftime('%Y-%m-%d')}"
    )


def publish(text: str, docs: Path) -> None:
    """Replace the generated block of docs/results.md, keeping the hand-written reading around it."""
    old = docs.read_text() if docs.exists() else f"# Results\n\n{BEGIN}\n{END}\n"
    if BEGIN not in old:
        old = old.rstrip() + f"\n\n{BEGIN}\n{END}\n"
    head, rest = old.split(BEGIN, 1)
    tail = rest.split(END, 1)[1] if END in rest else ""
    docs.write_text(f"{head}{BEGIN}\n{text}{END}{tail}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--experiments", default="ns,iberia")
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--quick", action="store_true", help="smoke scale: 1 seed, 2 epochs")
    parser.add_argument(
        "--full",
        action="store_true",
        help="the paper's scale (simulates 1250 NS trajectories; GPU)",
    )
    parser.add_argument(
        "--shared", default=str(REPO.parent / "shared" / "data"), help="folder of the Iberia files"
    )
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "paper" / "results"))
    parser.add_argument("--docs", default=str(REPO / "docs" / "results.md"))
    args = parser.parse_args()
    if args.quick:
        args.seeds = args.seeds if "--seeds" in sys.argv else "0"
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    models = args.models.split(",")
    seeds = [int(s) for s in args.seeds.split(",")]
    exps = experiments(args)
    if args.full and "ns" in args.experiments:
        target = exps["ns"].data[0]
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            subprocess.run(
                [sys.executable, "-m", "minconv_cli.simulate", "--trajectories", "1250",
                 "--splits", "1000,50,200", "--out", str(target), "--workers", str(os.cpu_count())],
                check=True,
            )  # fmt: skip
    t0 = time.perf_counter()
    sections, raw = [], {}
    for name in args.experiments.split(","):
        exp = exps[name]
        missing = [p for p in exp.data if not p.exists()]
        if missing:
            raise SystemExit(f"{missing[0]}: data for experiment {name!r} not found (see --shared)")
        print(f"{exp.title}: {len(models)} models x {len(seeds)} seeds", flush=True)
        result = run_experiment(exp, models, seeds, out)
        rows = summarise(result, models)
        raw[name] = {
            "experiment": exp.__dict__ | {"data": [str(p) for p in exp.data]},
            "rows": rows,
            **result,
        }
        sections.append(markdown(exp, rows, seeds, out))
    minutes = (time.perf_counter() - t0) / 60
    command = "python benchmarks/paper/run.py " + " ".join(sys.argv[1:])
    header = (
        f"Generated by `{command.strip()}` in {minutes:.0f} min on: {machine()}.\n"
        f"Raw numbers: `{os.path.relpath(out / 'results.json', REPO)}`; every command run: "
        f"`commands.log` in each experiment folder.\n\n"
    )
    (out / "results.json").write_text(json.dumps(raw, indent=2, default=str))
    publish(header + "\n".join(sections), Path(args.docs))
    print(header + "\n".join(sections))


if __name__ == "__main__":
    main()
