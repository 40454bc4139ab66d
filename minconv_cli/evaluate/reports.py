"""The report files: scores.json, scores.csv, scores.nc, the cases scored (overlap.json,
overlap.csv), the run summary (run.json) and the PNGs, written atomically."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import xarray as xr

from minconv_cli import __version__
from minconv_cli.core.errors import MinconvError
from minconv_cli.core.files import atomic_paths, commit, remove, sibling, writing
from minconv_cli.data.remote import is_url
from minconv_cli.evaluate.cases import REASONS
from minconv_cli.evaluate.error_maps import ERROR_MAPS_FILE, ERROR_MAPS_PNG
from minconv_cli.evaluate.events import parse_event_name
from minconv_cli.evaluate.labels import format_lead
from minconv_cli.evaluate.metrics import RANK_DIM, RANK_HISTOGRAM
from minconv_cli.evaluate.plots import plot_rank_histograms, plot_scores
from minconv_cli.evaluate.scoring import Scores

# run.json: where and how fast it ran (seconds, forecast bytes and frames per second, workers)
OUTPUT_FILES = ("scores.json", "scores.csv", "scores.nc", "overlap.json", "overlap.csv", "run.json")
PLOT_FILE = "scores.png"
RANK_PLOT_FILE = "rank_histogram.png"  # ensembles only
MAP_FILES = (ERROR_MAPS_FILE, ERROR_MAPS_PNG)  # --maps only


def default_out_dir(forecast: str | Path) -> Path:
    """`FORECAST_scores/` beside the forecast (`runs/fc.zarr` -> `runs/fc_scores`); for a URL
    forecast, `fc_scores/` in the current directory."""
    p = Path(forecast)
    return Path(f"{p.stem}_scores") if is_url(forecast) else p.parent / f"{p.stem}_scores"


def output_paths(out_dir: Path, plot: Path | None) -> list[Path]:
    """The files a report writes: scores.json, scores.csv, scores.nc, overlap.json, overlap.csv,
    run.json and the PNG."""
    return [out_dir / f for f in OUTPUT_FILES] + [plot or out_dir / PLOT_FILE]


def rank_plot_path(out_dir: Path, plot: Path | None) -> Path:
    """The rank-histogram PNG of an ensemble: beside --plot (NAME_rank_histogram.png) or in OUT."""
    return plot.with_name(f"{plot.stem}_{RANK_PLOT_FILE}") if plot else out_dir / RANK_PLOT_FILE


def check_outputs(out_dir: Path, plot: Path | None, overwrite: bool) -> None:
    """Refuse (before any work) to replace existing reports unless told to."""
    if out_dir.exists() and not out_dir.is_dir():
        raise MinconvError(f"{out_dir}: exists and is not a directory (--out)")
    if plot is not None and plot.suffix.lower() != ".png":
        raise MinconvError(f"--plot {plot}: expected a .png file name")
    if not overwrite:
        paths = [*output_paths(out_dir, plot), rank_plot_path(out_dir, plot)]
        paths += [out_dir / f for f in MAP_FILES]
        existing = [str(p) for p in paths if p.exists()]
        if existing:
            raise MinconvError(f"{existing[0]}: exists; use --overwrite to replace the scores")


def _records_csv(records: list[dict]) -> str:
    buf = io.StringIO()
    cols = ["forecast", "variable", "lead", "lead_hours", "metric", "value", "note"]
    # present when scored: sub-hourly leads in minutes, the event threshold and FSS window
    cols += [k for k in ("lead_minutes", "threshold", "scale") if records and k in records[0]]
    writer = csv.DictWriter(buf, fieldnames=cols, lineterminator="\n")
    writer.writeheader()
    for r in records:
        writer.writerow({k: "" if r[k] is None else r[k] for k in cols})
    return buf.getvalue()


def _overlap_csv(overlap: list[dict]) -> str:
    """One row per forecast: the case dims, cases scored, of all, and dropped by reason."""
    buf = io.StringIO()
    cols = ["forecast", "case", "cases", "of_cases", *REASONS]
    writer = csv.DictWriter(buf, fieldnames=cols, lineterminator="\n")
    writer.writeheader()
    for o in overlap:
        row = {"forecast": o["forecast"], "case": " ".join(o.get("case", []))}
        row.update({k: o.get(k) for k in ("cases", "of_cases")})
        row.update(o.get("dropped", {}))
        writer.writerow(row)
    return buf.getvalue()


def _table_dataset(scores: Scores) -> xr.Dataset:
    ds = _with_events(scores.table).to_dataset()
    ds["score"].attrs = {
        "long_name": "forecast scores (NaN: undefined or not scored; see notes)",
        "units_by_variable": json.dumps(scores.units),
    }
    if scores.rank_histograms:
        ds[RANK_HISTOGRAM] = _rank_table(scores)
    ds.attrs = {
        "minconv_version": __version__,
        "truth": scores.truth,
        "forecasts": json.dumps(scores.meta),
        "references": ", ".join(scores.references),
        "overlap": json.dumps(scores.overlap),
        "notes": "\n".join(scores.notes),
    }
    return ds


def _with_events(table: xr.DataArray) -> xr.DataArray:
    """The table with `threshold` and `scale` coordinates along `metric` (NaN, -1 for other
    metrics) when it holds event scores (`csi@1`, `fss@1/s5`)."""
    parsed = [parse_event_name(str(m)) for m in table["metric"].values]
    if all(t is None for _, t, _ in parsed):
        return table
    threshold = [np.nan if t is None else t for _, t, _ in parsed]
    scale = [-1 if s is None else s for _, _, s in parsed]
    return table.assign_coords(
        threshold=("metric", threshold, {"long_name": "event threshold (value >= threshold)"}),
        scale=("metric", scale, {"long_name": "FSS window size (-1: none)", "units": "grid cells"}),
    )


def _rank_table(scores: Scores) -> xr.DataArray:
    """Rank histograms as (forecast, variable, lead, rank); NaN where a pair has none."""
    keys = list(scores.rank_histograms)
    forecasts = list(dict.fromkeys(f for f, _ in keys))
    channels = list(dict.fromkeys(c for _, c in keys))
    first = scores.rank_histograms[keys[0]]
    out = xr.DataArray(
        np.full(
            (len(forecasts), len(channels), first.sizes["lead"], first.sizes[RANK_DIM]), np.nan
        ),
        dims=("forecast", "variable", "lead", RANK_DIM),
        coords={
            "forecast": forecasts,
            "variable": channels,
            "lead": first["lead"].values,
            RANK_DIM: first[RANK_DIM].values,
        },
        attrs={
            "long_name": "rank histogram: relative frequency of the truth's rank among the members"
        },
    )
    for (f, c), h in scores.rank_histograms.items():
        if h.sizes[RANK_DIM] == out.sizes[RANK_DIM]:
            out.loc[{"forecast": f, "variable": c}] = h.values
    return out


def write_reports(
    scores: Scores,
    out_dir: Path,
    plot: Path | None = None,
    draw_maps: Callable[[xr.Dataset, Path, str], object] | None = None,
) -> list[Path]:
    """Write the scores, the cases scored and the PNG(s) (`output_paths`; with error maps, also
    error_maps.nc and, drawn by `draw_maps`, error_maps.png): built beside OUT, checked, then
    swapped in as one (`commit`: a kill leaves the old or the new set, never a mix; other files in
    OUT are kept). A `--plot` outside OUT is replaced on its own, atomically."""
    targets = output_paths(out_dir, plot)
    rank_png = rank_plot_path(out_dir, plot)
    if scores.rank_histograms:
        targets.append(rank_png)
    maps = scores.error_maps
    if maps is not None:
        targets += [out_dir / f for f in MAP_FILES[: 2 if draw_maps else 1]]
    ours = {p.name for p in [*output_paths(out_dir, None), rank_plot_path(out_dir, None)]}
    ours |= set(MAP_FILES)
    stage = sibling(out_dir, "tmp")
    outside = [t for t in targets if t.parent != out_dir]
    try:
        with writing(out_dir):
            stage.mkdir(parents=True)
        with atomic_paths(outside) as temps, writing(out_dir):
            staged = [temps[outside.index(t)] if t in outside else stage / t.name for t in targets]
            staged[0].write_text(json.dumps(scores.records, indent=1) + "\n")
            staged[1].write_text(_records_csv(scores.records))
            _table_dataset(scores).to_netcdf(staged[2], engine="netcdf4")
            staged[3].write_text(json.dumps(scores.overlap, indent=1) + "\n")
            staged[4].write_text(_overlap_csv(scores.overlap))
            staged[5].write_text(json.dumps(scores.run, indent=1) + "\n")
            plot_scores(scores, staged[6])
            if scores.rank_histograms:
                leads = [format_lead(x) for x in scores.table["lead"].values]
                plot_rank_histograms(scores.rank_histograms, staged[7], leads)
            if maps is not None:
                at = targets.index(out_dir / ERROR_MAPS_FILE)
                maps.to_netcdf(staged[at], engine="netcdf4")
                if draw_maps is not None:
                    draw_maps(maps, staged[at + 1], scores.forecasts[0])
            _check_written(staged, targets)
            commit(stage, out_dir, carry=lambda name: name not in ours)
    finally:
        remove(stage)
    return targets


def _check_written(staged: list[Path], targets: list[Path]) -> None:
    """Every report file is there and reads back (JSON parses, NetCDF opens, PNGs are PNGs)."""
    for path, target in zip(staged, targets, strict=True):
        try:
            if target.suffix == ".json":
                json.loads(path.read_text())
            elif target.suffix == ".nc":
                xr.open_dataset(path, engine="netcdf4").close()
            elif target.suffix == ".png" and path.read_bytes()[:8] != b"\x89PNG\r\n\x1a\n":
                raise ValueError("not a PNG")
            elif not path.stat().st_size:
                raise ValueError("empty")
        except Exception as err:
            raise MinconvError(f"{target}: unreadable after writing ({err})") from None
