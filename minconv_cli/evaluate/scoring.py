"""Scoring: open the forecasts and the truth, align them, build the references, reduce the
metrics chunk-wise with dask, and assemble the records and the score table."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import dask
import numpy as np
import xarray as xr

from minconv_cli.core.errors import MinconvError
from minconv_cli.core.files import Progress
from minconv_cli.data import Fields, open_fields
from minconv_cli.data.remote import as_source
from minconv_cli.evaluate.align import (
    BLOCK_BYTES,
    LOAD_BELOW_BYTES,
    Aligned,
    align,
    like,
    onto,
    to_forecast_grid,
)
from minconv_cli.evaluate.batches import BATCH_BYTES
from minconv_cli.evaluate.cases import REASONS, common_cases
from minconv_cli.evaluate.checks import check_units, verify_done_chunks
from minconv_cli.evaluate.climatology import (
    Climatology,
    ClimatologyGap,
    climatology_at,
    climatology_from_file,
    climatology_from_truth,
)
from minconv_cli.evaluate.error_maps import error_map_dataset
from minconv_cli.evaluate.events import Events
from minconv_cli.evaluate.extrapolation import require_pysteps
from minconv_cli.evaluate.labels import lead_hours, sub_hourly
from minconv_cli.evaluate.metric_table import METRICS, event_names, member_names, reference_names
from minconv_cli.evaluate.metrics import RANK_DIM, RANK_HISTOGRAM
from minconv_cli.evaluate.options import Listed, check_scales, metric_options, parse_list
from minconv_cli.evaluate.records import fill, per_channel
from minconv_cli.evaluate.reductions import Compute, reduce_all
from minconv_cli.rollout.store import INIT_DIM, LEAD_DIM, ForecastStore, open_forecast

REFERENCES = ("persistence", "climatology", "extrapolation")  # extrapolation: the nowcast extra
DEFAULT_REFERENCES = ("persistence", "climatology")


@dataclass
class Scores:
    """Every score: the records, the table (forecast x metric x variable x lead) and what was scored."""

    records: list[dict]
    table: xr.DataArray
    overlap: list[dict]
    notes: list[str]
    units: dict[str, str]
    forecasts: list[str]
    references: list[str]
    lead_is_time: bool
    truth: str
    meta: dict = field(default_factory=dict)
    # (forecast, variable) -> relative frequency over (lead, rank), for ensemble forecasts
    rank_histograms: dict = field(default_factory=dict)
    # `--maps`: RMSE and bias per grid cell and lead of every forecast (error_maps.error_map_dataset)
    error_maps: xr.Dataset | None = None
    # what was read and how fast (OUT/run.json): forecast bytes and frames, plus the command's timing
    run: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"records": self.records, "overlap": self.overlap, "notes": self.notes}


def parse_compare(spec: str) -> tuple[str, str | Path]:
    """`NAME=PATH` or `PATH` (named by the file's stem) of a `--compare` forecast; PATH may be a URL."""
    name, sep, path = spec.partition("=")
    if sep and name and "/" not in name and os.sep not in name:
        return name, as_source(path)
    return Path(spec).stem, as_source(spec)


def _options(
    metrics_: Sequence[str] | str | None,
    references: Sequence[str] | str,
    climatology: str | Path | None,
    climatology_period: str | None,
    thresholds: Listed = None,
    fss_scales: Listed = None,
) -> tuple[list[str], list[str], Events | None]:
    """The metrics (any chosen row of the table; default all), the references and the events
    (`--thresholds`, `--fss-scales`) asked for."""
    wanted, events = metric_options(metrics_, thresholds, fss_scales)
    refs = parse_list(references, REFERENCES, "--references")
    if climatology is not None and climatology_period is not None:
        raise MinconvError("--climatology and --climatology-period: give one or the other")
    if "extrapolation" in refs:
        require_pysteps()  # before anything is read
    return wanted, refs, events


def evaluate(
    forecast: str | Path,
    truth: str | Path | Sequence[str | Path],
    compare: Sequence[str] = (),
    metrics_: Sequence[str] | str | None = None,
    references: Sequence[str] | str = DEFAULT_REFERENCES,
    climatology: str | Path | None = None,
    climatology_period: str | None = None,
    progress: Progress | None = None,
    load_below: int = LOAD_BELOW_BYTES,
    allow_missing_chunks: bool = False,
    thresholds: Listed = None,
    fss_scales: Listed = None,
    maps: bool = False,
    compute: Compute | None = None,
    truth_memory: int | None = None,
    block_bytes: int = BLOCK_BYTES,
    batch_bytes: int = BATCH_BYTES,
) -> Scores:
    """Score FORECAST (and `--compare` forecasts) against TRUTH with the references; `metrics_`
    (rows of the metric table), `thresholds`, `fss_scales`, `maps`: as the options; `compute`: the
    pass (`compute_here`); `truth_memory`: the truth's budget; `block_bytes`: lazy blocks' size."""
    wanted, refs, events = _options(
        metrics_, references, climatology, climatology_period, thresholds, fss_scales
    )
    stores = _open_stores(forecast, compare)
    main = stores[0]
    check_scales(events, (main.ds.sizes[main.y_dim], main.ds.sizes[main.x_dim]), str(main.path))
    for s in stores:
        verify_done_chunks(s, allow_missing_chunks)
    fields = _open_truth(truth, main.variables, truth_memory, allow_missing_chunks)
    use_clim = "climatology" in refs or any(METRICS[m].needs_climatology for m in wanted)
    clim_file = _clim_file(climatology if use_clim else None, main, fields, allow_missing_chunks)
    notes: list[str] = []
    others = [(fields.path_label, fields.ds)]
    if clim_file is not None:
        others.append((clim_file.source, clim_file.fields))
    check_units(stores, others, main.variables, notes)
    first = align(
        main, fields, "persistence" in refs, load_below, "extrapolation" in refs, block_bytes
    )
    aligned = [first, *(onto(first, s, fields, load_below) for s in stores[1:])]
    notes += [f"{a.store.name}: {n}" for a in aligned for n in a.overlap.pop("notes")]
    clim = _climatology(fields, main, clim_file, climatology_period, notes) if use_clim else None
    clim_at = _climatology_at(first, clim, notes)
    cases = common_cases(aligned, _references(first, clim_at, refs), clim_at)
    results, sums, batches = reduce_all(
        aligned, cases, clim_at, wanted, progress, events, maps, compute, batch_bytes
    )
    if not any(a.overlap["cases"] for a in aligned):
        raise MinconvError(_nothing_scored(aligned, fields))
    used_refs = list(dict.fromkeys(ref for ref, _ in cases.references))
    wanted = event_names(wanted, events)
    scores = _assemble(results, stores, used_refs, wanted, fields, notes, aligned)
    scores.run["batches"] = batches
    if maps:
        units = {v: str(fields.ds[v].attrs.get("units", "")) for v in main.variables}
        space = (main.y_dim, main.x_dim)
        scores.error_maps = error_map_dataset(sums, units, main.lead_unit, space)
    return scores


def _open_truth(
    truth: str | Path | Sequence[str | Path],
    variables: Sequence[str],
    memory: int | None,
    allow_missing: bool,
) -> Fields:
    """The truth, loaded within `memory` by this process's threads (on a cluster too: a worker
    would gather the whole truth into one task), else lazy."""
    with dask.config.set(scheduler="threads"):
        return open_fields(
            truth, variables, memory_limit=memory, allow_missing_chunks=allow_missing
        )


def _clim_file(
    climatology: str | Path | None, main: ForecastStore, fields: Fields, allow_missing: bool
) -> Climatology | None:
    """The `--climatology` file when one is given and used, else None."""
    if climatology is None:
        return None
    source = as_source(climatology)
    return climatology_from_file(source, main.variables, fields.time_is_datetime, allow_missing)


def _nothing_scored(aligned: list[Aligned], fields: Fields) -> str:
    """The one line when no case is left to score: what dropped them."""
    o = aligned[0].overlap
    why = ", ".join(f"{n} {REASONS[r]}" for r, n in o["dropped"].items() if n)
    return f"{aligned[0].store.path} vs {fields.path_label}: no case left to score ({why})"


def _references(
    main: Aligned, clim_at: dict[str, xr.DataArray] | None, refs: list[str]
) -> dict[str, dict[str, xr.DataArray]]:
    """The reference forecasts in use (persistence, climatology, extrapolation), broadcast like
    the truth."""
    out: dict[str, dict[str, xr.DataArray]] = {}
    sources = {"persistence": main.persistence, "extrapolation": main.extrapolation}
    for ref in refs:
        source = sources.get(ref, clim_at)
        if source is None:
            continue
        out[ref] = {
            v: like(source[v].broadcast_like(main.truth[v]), main.truth[v])
            for v in main.store.variables
        }
    return out


def _open_stores(forecast: str | Path, compare: Sequence[str]) -> list[ForecastStore]:
    """FORECAST and the `--compare` forecasts, under distinct names."""
    stores = [open_forecast(forecast)]
    for spec in compare:
        name, path = parse_compare(spec)
        stores.append(open_forecast(path, name))
    names = [s.name for s in stores]
    clash = sorted({n for n in names if names.count(n) > 1} | (set(names) & set(REFERENCES)))
    if clash:
        raise MinconvError(f"--compare: forecast name(s) {clash} used twice; name them NAME=PATH")
    return stores


def _climatology(
    fields: Fields,
    main: ForecastStore,
    clim_file: Climatology | None,
    period: str | None,
    notes: list[str],
) -> Climatology | None:
    """The climatology from a file, else from the truth (None, with a note, when it has none)."""
    if clim_file is not None:
        clim = clim_file
    else:
        first_init = main.ds[INIT_DIM].values.min()
        clim = climatology_from_truth(fields, main.variables, period, first_init)
        if clim is None:
            notes.append(
                "no climatology: the truth has no times before the first init time; "
                "climatology and ACC left out (give --climatology-period or --climatology)"
            )
    if clim is not None:
        notes.append(f"climatology: {clim.source}")
    return clim


def _climatology_at(
    main: Aligned, clim: Climatology | None, notes: list[str]
) -> dict[str, xr.DataArray] | None:
    """The climatology at the main forecast's valid times, per variable (None without one)."""
    if clim is None:
        return None
    grid = to_forecast_grid(xr.Dataset(clim.fields), clim.roles, main.store, f"{clim.source}")
    try:
        return {
            v: climatology_at(grid[v], main.valid_times, clim.source, main.forecast[v])
            for v in main.store.variables
        }
    except ClimatologyGap as gap:
        if clim.explicit:
            raise
        notes.append(f"climatology and ACC left out: {gap}")
        return None


def _assemble(
    results: dict[tuple[str, str], xr.Dataset],
    stores: list[ForecastStore],
    refs: list[str],
    wanted: list[str],
    fields: Fields,
    notes: list[str],
    aligned: list[Aligned],
) -> Scores:
    """Computed reductions -> skill scores, the (forecast, metric, variable, lead) table and records."""
    main = stores[0]
    leads = np.unique(np.concatenate([r[LEAD_DIM].values for r in results.values()]))
    names = [s.name for s in stores] + refs
    per, units = per_channel(results, main, fields, leads)
    channels = list(dict.fromkeys(ch for _, ch in per))
    metric_names = [*wanted, *reference_names(refs)]
    if any(s.members for s in stores):
        metric_names += [m for m in member_names() if any(m in ds for ds in per.values())]
    rank_hists = {
        key: ds[RANK_HISTOGRAM].rename({LEAD_DIM: "lead"}).transpose("lead", RANK_DIM)
        for key, ds in per.items()
        if RANK_HISTOGRAM in ds
    }
    per_reference = [row for row in METRICS.values() if row.per_reference]
    for (name, ch), ds in per.items():
        for row in per_reference:
            for r in refs:
                if r != name and (r, ch) in per:
                    ds[f"{row.name}_vs_{r}"] = row.derive(ds, per[(r, ch)])
    table = xr.DataArray(
        np.full((len(names), len(metric_names), len(channels), len(leads)), np.nan),
        dims=("forecast", "metric", "variable", "lead"),
        coords={"forecast": names, "metric": metric_names, "variable": channels, "lead": leads},
        name="score",
    )
    extra = (main.lead_is_time and sub_hourly(leads), any("@" in m for m in metric_names))
    records = fill(table, per, metric_names, leads, main.lead_unit, notes, extra)
    if main.lead_unit:
        table["lead"].attrs["units"] = main.lead_unit
    if main.lead_is_time:
        table = table.assign_coords(
            lead_hours=("lead", [lead_hours(x) for x in leads], {"units": "hours"})
        )
    return Scores(
        records=records,
        table=table,
        overlap=[a.overlap for a in aligned],
        notes=notes,
        units=units,
        forecasts=[s.name for s in stores],
        references=refs,
        lead_is_time=main.lead_is_time,
        truth=fields.path_label,
        meta={s.name: str(s.path) for s in stores},
        rank_histograms=rank_hists,
        run=_volume(aligned),
    )


def _volume(aligned: list[Aligned]) -> dict:
    """How much forecast was scored: bytes (as read, before any mask) and 2-D frames, and whether
    it was scored lazily in blocks of init times (dask) or loaded into memory; `batches`: its
    dask passes (added by `evaluate`)."""
    arrays = [a.forecast[v] for a in aligned for v in a.forecast]
    y, x = aligned[0].store.y_dim, aligned[0].store.x_dim
    return {
        "forecast_bytes": int(sum(da.nbytes for da in arrays)),
        "frames": int(sum(da.size // max(1, da.sizes[y] * da.sizes[x]) for da in arrays)),
        "lazy": any(da.chunks is not None for da in arrays),
    }
