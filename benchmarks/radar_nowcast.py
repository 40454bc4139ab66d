"""Radar nowcasting side by side: train MinConvGRU, MinConvLSTM and ConvLSTM on two real MeteoSwiss
radar events, forecast a third that training never saw, and score CSI and FSS against extrapolation
(pySTEPS) and persistence. Prints a table and writes benchmarks/results/radar_nowcast.json.

Needs ../shared/data/radar (see its README) and the nowcast extra (`pip install -e ".[nowcast]"`).
Run with `python benchmarks/radar_nowcast.py [--test 20160711] [--minutes 7]` on a quiet machine.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RADAR = ROOT.parent / "shared" / "data" / "radar"
RESULTS = ROOT / "benchmarks" / "results" / "radar_nowcast.json"
EVENTS = {
    "20150515": ("2015-05-15T15:45", "2015-05-15T19:00"),
    "20160711": ("2016-07-11T20:45", "2016-07-12T00:00"),
    "20170131": ("2017-01-31T09:45", "2017-01-31T13:00"),
}
MODELS = ("minconvgru", "minconvlstm", "convlstm")
CONTEXT, HORIZON = 6, 12  # 30 min in, 60 min out
VAL_FRAMES = CONTEXT + HORIZON + 1  # one validation window: the last 95 min of the second event
THRESHOLDS, SCALES = "0.1,1,5", "1,5,10"  # mm/h; cells of 2 km (5 cells = 10 km)


def run(args: list[str], log: Path) -> float:
    """Run `minconv ARGS`, its output appended to `log`; the seconds it took."""
    t0 = time.perf_counter()
    with log.open("a") as f:
        f.write(f"$ minconv {' '.join(args)}\n")
        f.flush()
        done = subprocess.run(["minconv", *args], stdout=f, stderr=f)
    if done.returncode:
        sys.exit(f"minconv {args[0]} failed (exit {done.returncode}); see {log}")
    return time.perf_counter() - t0


def prepare(work: Path, log: Path) -> dict[str, Path]:
    """The three events at 2 km (2 x 2 block means of the 1 km composites): 320 x 355 cells."""
    out = {}
    for day in EVENTS:
        dst = work / f"mch_{day}_2km.nc"
        if not dst.exists():
            run(
                [
                    "convert",
                    str(RADAR / f"mch_radar_{day}_5min.nc"),
                    str(dst),
                    "--coarsen",
                    "y=2,x=2",
                    "-q",
                ],
                log,
            )
        out[day] = dst
    return out


def periods(train: list[str]) -> tuple[str, str]:
    """Training: the first event whole and the second but its last VAL_FRAMES frames (validation)."""
    import pandas as pd

    first, second = EVENTS[train[0]], EVENTS[train[1]]
    split = pd.Timestamp(second[1]) - pd.Timedelta(minutes=5 * (VAL_FRAMES - 1))
    before = (split - pd.Timedelta(minutes=5)).isoformat()
    return f"{first[0]}/{before}", f"{split.isoformat()}/{second[1]}"


def init_times(event: str) -> str:
    """Every 15 min from the first time with CONTEXT frames before it to the last with HORIZON
    frames after it: every lead of every forecast has a truth to score against."""
    import pandas as pd

    start, end = (pd.Timestamp(t) for t in EVENTS[event])
    first = start + pd.Timedelta(minutes=5 * (CONTEXT - 1))
    last = end - pd.Timedelta(minutes=5 * HORIZON)
    return f"{first.isoformat()}/{last.isoformat()}/15min"


def train_and_forecast(model: str, files: dict, test: str, work: Path, a, log: Path) -> dict:
    train = sorted(d for d in files if d != test)
    train_period, val_period = periods(train)
    run_dir, store = work / f"run_{model}", work / f"{model}.zarr"  # named by its stem
    seconds = run(
        [
            "train",
            *(str(files[d]) for d in train),
            "--model",
            model,
            "--out",
            str(run_dir),
            "--overwrite",
            "--transform",
            "rain_rate=dbr",
            "--crop",
            str(a.crop),
            "--norm",
            a.norm,
            "--context",
            str(CONTEXT),
            "--horizon",
            str(HORIZON),
            "--params",
            str(a.params),
            "--layers",
            "3",
            "--batch-size",
            str(a.batch),
            "--max-time",
            str(a.minutes * 60),
            "--epochs",
            "1000",
            "--train-period",
            train_period,
            "--val-period",
            val_period,
            "--seed",
            "0",
            "-q",
        ],
        log,
    )
    run(
        [
            "rollout",
            str(run_dir / "model.pt"),
            str(files[test]),
            "--steps",
            str(HORIZON),
            "--out",
            str(store),
            "--overwrite",
            "--init-times",
            init_times(test),
            "-q",
        ],
        log,
    )
    summary = json.loads((run_dir / "summary.json").read_text())
    return {"store": store, "train_seconds": seconds, "summary": summary}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--test", default="20160711", choices=list(EVENTS))
    p.add_argument("--minutes", type=float, default=7.0, help="training budget per model")
    p.add_argument("--crop", type=int, default=64)
    p.add_argument("--norm", default="none", help="none: the same on a crop and the whole grid")
    p.add_argument("--params", type=int, default=60000)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--work", default="/tmp/radar_nowcast")
    a = p.parse_args()
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    log = work / "log.txt"
    files = prepare(work, log)
    runs = {m: train_and_forecast(m, files, a.test, work, a, log) for m in MODELS}
    scores = work / "scores"
    main_store, *others = (runs[m]["store"] for m in MODELS)
    run(
        [
            "evaluate",
            str(main_store),
            str(files[a.test]),
            *(
                f
                for m, s in zip(MODELS[1:], others, strict=True)
                for f in ("--compare", f"{m}={s}")
            ),
            "--references",
            "persistence,extrapolation",
            "--thresholds",
            THRESHOLDS,
            "--fss-scales",
            SCALES,
            "--out",
            str(scores),
            "--overwrite",
            "-q",
        ],
        log,
    )
    records = json.loads((scores / "scores.json").read_text())
    report(records, runs, a)


def report(records: list[dict], runs: dict, a) -> None:
    """The CSI at 1 mm/h and FSS at 1 mm/h, 10 km table by lead, printed and saved as JSON."""
    names = {"csi@1": "CSI 1 mm/h", "fss@1/s5": "FSS 1 mm/h 10 km"}
    table: dict = {}
    minutes: dict[str, float] = {}
    for r in records:
        if r["metric"] in names and r["value"] is not None:
            table.setdefault(r["metric"], {}).setdefault(r["forecast"], {})[r["lead"]] = r["value"]
            minutes[r["lead"]] = r["lead_hours"] * 60
    for metric, rows in table.items():
        leads = sorted({lead for v in rows.values() for lead in v}, key=minutes.get)
        print(f"\n{names[metric]} by lead")
        print(f"{'forecast':>14} " + " ".join(f"{lead:>7}" for lead in leads))
        for name, v in rows.items():
            print(f"{name:>14} " + " ".join(f"{v.get(lead, float('nan')):7.3f}" for lead in leads))
    out = {
        "settings": vars(a),
        "train": {
            m: {"seconds": r["train_seconds"], "summary": r["summary"]} for m, r in runs.items()
        },
        "scores": table,
    }
    RESULTS.write_text(json.dumps(out, indent=1, default=str) + "\n")
    print(f"\nwrote {RESULTS}")


if __name__ == "__main__":
    main()
