"""`minconv evaluate`: score forecast stores against the truth, with persistence and climatology."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from minconv_cli.commands._common import console, print_json, progress_bar, user_errors

if TYPE_CHECKING:
    from minconv_cli.evaluate import Scores


Forecast = Annotated[
    str, typer.Argument(help="Forecast Zarr store or its URL (WeatherBench 2 layout).")
]
Truth = Annotated[
    list[str],
    typer.Argument(
        help="NetCDF file(s), Zarr store(s) or Zarr URL(s) with the observed fields (joined along "
        "time).",
    ),
]
Compare = Annotated[
    list[str],
    typer.Option(
        "--compare",
        "-c",
        help="Another forecast to score: PATH or NAME=PATH (repeatable; PATH may be a URL).",
    ),
]
# the default names every row of the metric table that --metrics accepts (metric_table.choices)
Metrics = Annotated[str, typer.Option("--metrics", "-m", help="Comma-separated metrics.")]
Thresholds = Annotated[
    str | None,
    typer.Option(
        "--thresholds",
        help="Event thresholds in the variable's units (event: value >= threshold), e.g. 0.1,1,5: "
        "adds POD, FAR, CSI and ETS at each (choose with --metrics pod,far,csi,ets,fss).",
    ),
]
FssScales = Annotated[
    str | None,
    typer.Option(
        "--fss-scales",
        help="FSS window sizes in grid cells, e.g. 1,5,10: adds the fractions skill score at each "
        "threshold and window (needs --thresholds).",
    ),
]
References = Annotated[
    str,
    typer.Option(
        "--references",
        help="Reference forecasts from the truth: persistence, climatology, extrapolation "
        "(optical flow, needs the nowcast extra: pip install -e '.\\[nowcast]'), or '' for none.",
    ),
]
ClimatologyFile = Annotated[
    str | None,
    typer.Option(
        "--climatology",
        help="Climatology file or Zarr URL: per variable (dayofyear[, hour], y, x), or (y, x).",
    ),
]
ClimatologyPeriod = Annotated[
    str | None,
    typer.Option(
        "--climatology-period",
        help="START/END of the truth to build the climatology from (default: the truth before "
        "the first init time; numeric time: the whole truth).",
    ),
]
Out = Annotated[
    str | None,
    typer.Option(
        "--out", "-o", help="Directory for the scores (default: FORECAST_scores beside it)."
    ),
]
Plot = Annotated[
    str | None,
    typer.Option("--plot", help="PNG of error against lead time (default: OUT/scores.png)."),
]
Overwrite = Annotated[bool, typer.Option("--overwrite", help="Replace existing score files.")]
AllowMissingChunks = Annotated[
    bool,
    typer.Option(
        "--allow-missing-chunks",
        help="Read chunks missing from a Zarr truth, climatology or forecast store without done "
        "flags as NaN instead of refusing them (never forecast chunks flagged done).",
    ),
]
Maps = Annotated[
    bool,
    typer.Option(
        "--maps",
        help="Also write error maps: RMSE and bias per grid cell and lead over every init time "
        "(OUT/error_maps.nc and OUT/error_maps.png).",
    ),
]
Scheduler = Annotated[
    str | None,
    typer.Option(
        "--scheduler",
        help="Run on the dask.distributed scheduler at this address (e.g. tcp://host:8786; its "
        "workers must reach the files). Needs the cluster extra: pip install -e '.\\[cluster]'.",
    ),
]
Workers = Annotated[
    int | None,
    typer.Option(
        "--workers",
        help="Run on a dask.distributed LocalCluster of N worker processes, one thread each "
        "(needs the cluster extra).",
    ),
]
MemoryLimit = Annotated[
    str | None,
    typer.Option(
        "--memory-limit",
        help="Memory for scoring, e.g. 2GB: large forecasts are read in blocks so that the peak "
        "stays under it (with --workers: the workers' total, at least 512MB each).",
    ),
]
JsonOut = Annotated[bool, typer.Option("--json", help="Print the score records on stdout.")]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar or table.")]


@user_errors
def evaluate(
    forecast: Forecast,
    truth: Truth,
    compare: Compare = [],  # noqa: B006 (typer copies list defaults)
    metrics: Metrics = "rmse,mae,bias,acc,rel_l2",
    thresholds: Thresholds = None,
    fss_scales: FssScales = None,
    references: References = "persistence,climatology",
    climatology: ClimatologyFile = None,
    climatology_period: ClimatologyPeriod = None,
    out: Out = None,
    plot: Plot = None,
    overwrite: Overwrite = False,
    allow_missing_chunks: AllowMissingChunks = False,
    maps: Maps = False,
    scheduler: Scheduler = None,
    workers: Workers = None,
    memory_limit: MemoryLimit = None,
    json_out: JsonOut = False,
    quiet: Quiet = False,
) -> None:
    """Score a forecast store against observations (RMSE, MAE, bias, ACC, relative L2, skill;
    POD, FAR, CSI, ETS and FSS of rain events with --thresholds and --fss-scales)."""
    from minconv_cli.core.files import output_lock, recover
    from minconv_cli.data.remote import as_source, local_path
    from minconv_cli.evaluate import check_outputs, default_out_dir, write_reports
    from minconv_cli.evaluate.cluster import check_options, dask_engine
    from minconv_cli.evaluate.options import metric_options
    from minconv_cli.maps.error_maps import draw_error_maps

    metric_options(metrics, thresholds, fss_scales)  # a bad option: refused before anything
    limit = check_options(scheduler, workers, memory_limit)
    source = as_source(forecast)
    out_dir = local_path(out, "--out") if out else default_out_dir(source)
    plot_path = local_path(plot, "--plot") if plot else None
    with output_lock(out_dir, "minconv evaluate"):  # one writer per score folder
        recover(out_dir)  # what a killed run left beside it
        check_outputs(out_dir, plot_path, overwrite)
        bar = progress_bar("scoring", quiet)
        with dask_engine(scheduler, workers, limit) as engine, bar as report:
            scores = engine.evaluate(
                source,
                [as_source(p) for p in truth],
                compare=compare,
                metrics_=metrics,
                references=references,
                climatology=None if climatology is None else as_source(climatology),
                climatology_period=climatology_period,
                progress=report,
                allow_missing_chunks=allow_missing_chunks,
                thresholds=thresholds,
                fss_scales=fss_scales,
                maps=maps,
            )
        written = write_reports(scores, out_dir, plot_path, draw_maps=draw_error_maps)
    if json_out:
        print_json(scores.records)
    if not quiet:
        _print_summary(scores, written)


def _print_summary(scores: Scores, written: list[Path]) -> None:
    """Overlap, a short table (RMSE and ACC at up to five leads) and the notes, on stderr."""
    from minconv_cli.evaluate import format_lead
    from minconv_cli.evaluate.cases import REASONS
    from minconv_cli.evaluate.events import parse_event_name
    from minconv_cli.evaluate.metric_table import headline

    for o in scores.overlap:
        it, ld = o["init_times"], o["leads"]
        dropped = [f"{n} {REASONS[r]}" for r, n in o.get("dropped", {}).items() if n]
        console.print(
            f"{o['forecast']}: {it['count']}/{it['of']} init times ({it['first']} to {it['last']}), "
            f"{ld['count']}/{ld['of']} leads ({ld['first']} to {ld['last']}), "
            f"{o['cases']}/{o['of_cases']} ({', '.join(o.get('case', ['init', 'lead']))}) cases "
            f"scored" + (f"; dropped: {', '.join(dropped)}" if dropped else ""),
            soft_wrap=True,
        )
    table = scores.table
    metric_names = [str(m) for m in table["metric"].values]
    shown = headline(metric_names)
    shown += [m for m in metric_names if parse_event_name(m)[0] == "csi" and m not in shown]
    n = table.sizes["lead"]
    picks = sorted({round(i * (n - 1) / 4) for i in range(5)}) if n > 5 else list(range(n))
    leads = [format_lead(table["lead"].values[i], table["lead"].attrs.get("units")) for i in picks]
    t = Table(title="scores", title_justify="left")
    for col in ("forecast", "variable", "metric", *leads):
        t.add_column(col, justify="right" if col in leads else "left", no_wrap=True)
    for name in table["forecast"].values:
        for ch in table["variable"].values:
            for m in shown:
                row = table.sel(forecast=name, variable=ch, metric=m).values[picks]
                t.add_row(str(name), str(ch), m, *[f"{v:.4g}" if v == v else "-" for v in row])
    console.print(t)
    for note in scores.notes:
        console.print(f"note: {note}", soft_wrap=True)
    console.print(f"wrote {', '.join(str(p) for p in written)}")
