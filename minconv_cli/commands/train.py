"""`minconv train`: train a model on NetCDF/Zarr data (or the bundled sample) into a run directory."""

from __future__ import annotations

import math
import time
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from minconv_cli.commands._common import console, print_json, rich_progress, user_errors
from minconv_cli.commands.crop_option import Crop, CropDryKeep, crop_options
from minconv_cli.commands.transform_option import Transforms, transform_options
from minconv_cli.core.errors import MinconvError, check_apart, check_not_blank, check_unique


def _names(values: list[str] | None, option: str) -> list[str] | None:
    """Repeated and/or comma-separated names -> one list (None when not given); each name once."""
    if not values:
        return None
    names = [n.strip() for v in values for n in v.split(",") if n.strip()]
    check_unique(names, option)
    return names


def _period(value: str | None, option: str) -> str | None:
    """A period option as given; an empty or blank one is refused (an unset shell variable?)."""
    check_not_blank(value, option)
    return value


def _pace(seconds: float) -> str:
    """Seconds per step, or steps per second when a step takes under half a second."""
    if seconds >= 0.5:
        return f"{seconds:.2f} s/step"
    return f"{1 / max(seconds, 1e-9):.1f} steps/s"


class RichReporter:
    """Epoch and step bars with loss, pace (s/step), throughput and ETA on stderr; one line per
    finished epoch."""

    def __init__(self) -> None:
        self.progress = rich_progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[info]}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
        )
        self.epochs: TaskID | None = None
        self.steps: TaskID | None = None
        self.windows = 0
        self.stepped = 0
        self.since = time.monotonic()

    def note(self, message: str) -> None:
        self.progress.console.print(message)

    def begin(self, epochs: int, first_epoch: int) -> None:
        self.progress.start()
        self.epochs = self.progress.add_task("epochs", total=epochs, completed=first_epoch, info="")

    def epoch(self, epoch: int, steps: int, done: int) -> None:
        if self.steps is not None:
            self.progress.remove_task(self.steps)
        self.steps = self.progress.add_task(
            f"epoch {epoch + 1}", total=steps, completed=done, info=""
        )
        self.windows, self.stepped, self.since = 0, 0, time.monotonic()

    def step(self, loss: float, windows: int) -> None:
        self.windows += windows
        self.stepped += 1
        seconds = max(1e-9, time.monotonic() - self.since)
        self.progress.update(
            self.steps,
            advance=1,
            info=f"loss {loss:.4g}  {_pace(seconds / self.stepped)}  {self.windows / seconds:.1f} win/s",
        )

    def epoch_done(self, row: dict[str, Any]) -> None:
        self.progress.update(
            self.epochs,
            advance=1,
            info=f"val RMSE cl {row['val_rmse_cl']:.4g} (persistence {row['persistence_rmse']:.4g})",
        )
        partial = (
            f" (validated on {row['val_windows']} windows: time budget)"
            if row.get("val_partial")
            else ""
        )
        self.progress.console.print(
            f"epoch {row['epoch']}: train loss {row['train_loss']:.4g}, val RMSE tf "
            f"{row['val_rmse_tf']:.4g}, cl {row['val_rmse_cl']:.4g}, persistence "
            f"{row['persistence_rmse']:.4g}, {row['seconds']:.1f} s{partial}"
        )

    def end(self) -> None:
        self.progress.stop()


def _table(summary: dict[str, Any]) -> Table:
    table = Table(
        title=f"{summary['model']} ({summary['parameters']:,} parameters), best epoch "
        f"{summary['best_epoch']}"
    )
    for col in ("channel", "RMSE tf", "RMSE cl", "persistence cl", "skill vs persistence"):
        table.add_column(col, justify="right")
    for name, ch in summary["channels"].items():
        ratio = ch["rmse_cl"] / ch["persistence_rmse_cl"] if ch["persistence_rmse_cl"] else math.nan
        table.add_row(
            name,
            f"{ch['rmse_tf']:.4g}",
            f"{ch['rmse_cl']:.4g}",
            f"{ch['persistence_rmse_cl']:.4g}",
            f"{1 - ratio:+.1%}",
        )
    return table


Data = Annotated[
    list[str] | None,
    typer.Argument(
        help="NetCDF file(s)/Zarr store(s) or Zarr URL(s) (https://, s3://, gs://), joined along "
        "time. Default: the bundled Navier-Stokes sample.",
    ),
]
ConfigFile = Annotated[Path | None, typer.Option("--config", "-c", help="YAML config file.")]
Sets = Annotated[
    list[str] | None,
    typer.Option(
        "--set",
        "-s",
        help="Config override SECTION.KEY=VALUE (repeatable), e.g. optim.weight_decay=0.01.",
    ),
]
Model = Annotated[
    str | None,
    typer.Option(
        "--model", "-m", help="minconvgru, minconvlstm, minconvexplstm, convgru or convlstm."
    ),
]
Variables = Annotated[
    list[str] | None,
    typer.Option(
        "--variables",
        "-v",
        help="Variables to predict (comma-separated or repeated). Default: all.",
    ),
]
Static = Annotated[
    list[str] | None,
    typer.Option("--static", help="Static inputs, not predicted (e.g. lsm,orography,latitude)."),
]
TrainPeriod = Annotated[
    str | None,
    typer.Option(
        "--train-period",
        help="Training split: START/END times, DIM=a:b (e.g. trajectory=0:150), a fraction 0.0:0.8 "
        "or split=NAME. Default: split=train if the data has a split coordinate, else 0.0:0.8.",
    ),
]
ValPeriod = Annotated[
    str | None,
    typer.Option(
        "--val-period",
        help="Validation split (same forms). Default: split=val, else 0.8:0.9.",
    ),
]
Context = Annotated[int | None, typer.Option("--context", help="Teacher-forced steps per window.")]
Horizon = Annotated[int | None, typer.Option("--horizon", help="Closed-loop steps per window.")]
Width = Annotated[int | None, typer.Option("--width", help="Hidden channels per layer.")]
Params = Annotated[
    int | None,
    typer.Option(
        "--params",
        help="Parameter budget: the width is chosen to match it (instead of --width).",
    ),
]
Layers = Annotated[int | None, typer.Option("--layers", help="Recurrent layers.")]
Norm = Annotated[
    str | None,
    typer.Option(
        "--norm",
        help="auto (default: layer unless its per-grid-cell parameters would outnumber the rest "
        "of the model, then instance), layer, instance, group or none.",
    ),
]
Epochs = Annotated[
    int | None, typer.Option("--epochs", help="Epochs (passes over the training windows).")
]
MaxTime = Annotated[
    float | None,
    typer.Option(
        "--max-time",
        help="Wall-clock budget in seconds: training stops a step early enough to validate "
        "(on a spread subset of windows if time is short) and save within it.",
    ),
]
BatchSize = Annotated[
    int | None, typer.Option("--batch-size", "-b", help="Windows per step (per process).")
]
Lr = Annotated[float | None, typer.Option("--lr", help="Learning rate.")]
Seed = Annotated[
    int | None, typer.Option("--seed", help="Seed of initialisation, shuffling and noise.")
]
Device = Annotated[str | None, typer.Option("--device", help="auto, cpu or cuda.")]
MemoryLimit = Annotated[
    str | None,
    typer.Option(
        "--memory-limit",
        help="Memory the data may use, e.g. 8GB: smaller data is loaded, larger is read in blocks "
        "from disk. Default: half the available memory.",
    ),
]
Precision = Annotated[
    str | None,
    typer.Option(
        "--precision",
        help="fp32, bf16 (autocast convolutions; recurrence and loss in fp32) or auto "
        "(default: bf16 where the CPU/GPU has native bf16, else fp32).",
    ),
]
Out = Annotated[
    str | None,
    typer.Option("--out", "-o", help="Run directory. Default: runs/<model>-<date>-<time>."),
]
Resume = Annotated[
    bool, typer.Option("--resume", help="Continue the run in --out from its last.pt.")
]
Overwrite = Annotated[bool, typer.Option("--overwrite", help="Replace a run already in --out.")]
JsonOut = Annotated[bool, typer.Option("--json", help="Print the summary as JSON on stdout.")]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="No progress, no table.")]
PrintConfig = Annotated[
    bool, typer.Option("--print-config", help="Print the full resolved config as YAML and exit.")
]
AllowMissingChunks = Annotated[
    bool,
    typer.Option(
        "--allow-missing-chunks",
        help="Read Zarr chunks that are not stored as NaN (zarr-python 3 leaves out chunks that "
        "are all fill value) instead of refusing the store as damaged.",
    ),
]
AllowOverlap = Annotated[
    bool,
    typer.Option(
        "--allow-overlap",
        help="Let the validation period share frames with the training period.",
    ),
]


@user_errors
def train(
    data: Data = None,
    config_file: ConfigFile = None,
    sets: Sets = None,
    model: Model = None,
    variables: Variables = None,
    static: Static = None,
    train_period: TrainPeriod = None,
    val_period: ValPeriod = None,
    context: Context = None,
    horizon: Horizon = None,
    width: Width = None,
    params: Params = None,
    layers: Layers = None,
    norm: Norm = None,
    epochs: Epochs = None,
    max_time: MaxTime = None,
    batch_size: BatchSize = None,
    lr: Lr = None,
    seed: Seed = None,
    device: Device = None,
    memory_limit: MemoryLimit = None,
    precision: Precision = None,
    out: Out = None,
    resume: Resume = False,
    overwrite: Overwrite = False,
    json_out: JsonOut = False,
    quiet: Quiet = False,
    print_config: PrintConfig = False,
    allow_missing_chunks: AllowMissingChunks = False,
    allow_overlap: AllowOverlap = False,
    transform: Transforms = None,
    crop: Crop = None,
    crop_dry_keep: CropDryKeep = None,
) -> None:
    """Train a forecasting model; writes model.pt, last.pt, config.yaml, metrics.csv and summary.json."""
    started = time.monotonic()  # --max-time counts from here: loading torch and the data included
    from minconv_cli.data.remote import local_path
    from minconv_cli.training.config import resolve_config

    run_dir = None if out is None else local_path(out, "--out")
    _check_choices(width, params, resume, overwrite, run_dir)
    options = _data_options(
        data, variables, static, train_period, val_period, allow_missing_chunks, allow_overlap
    ) | transform_options(transform) | crop_options(crop, crop_dry_keep)
    options.update(zip(MODEL_KEYS, (model, width, params, layers, norm), strict=True))
    options.update(
        zip(TRAIN_KEYS, (context, horizon, epochs, max_time, batch_size, seed, device), strict=True)
    )
    options |= {"data.memory_limit": memory_limit, "train.precision": precision, "optim.lr": lr}
    base = _resumed_config(run_dir) if resume else None
    cfg = resolve_config(config_file, sets, options, base=base)
    if width is not None:
        cfg.model.params = None  # an explicit --width wins over a budget from the config
    if print_config:
        typer.echo(cfg.to_yaml(), nl=False)
        return
    if run_dir is None:
        run_dir = Path("runs") / f"{cfg.model.name}-{datetime.now():%Y%m%d-%H%M%S}"
    _run(cfg, run_dir, resume, overwrite, json_out, quiet, started)


def _run(
    cfg: Any,
    run_dir: Path,
    resume: bool,
    overwrite: bool,
    json_out: bool,
    quiet: bool,
    started: float,
) -> None:
    """Train `cfg` into `run_dir`, then report on the main process (the only one under torchrun)."""
    from minconv_cli.training import train_model

    holder: dict[str, Any] = {}

    def on_setup(info: Any) -> None:
        holder["main"] = info.is_main

    reporter = None if quiet else RichReporter()
    result = train_model(
        cfg,
        run_dir,
        resume=resume,
        overwrite=overwrite,
        reporter=reporter,
        on_setup=on_setup,
        started=started,
    )
    if holder.get("main", True):
        _report(result, run_dir, json_out, quiet)


# Config keys that options set as given (None: the config's value stands).
MODEL_KEYS = tuple(f"model.{k}" for k in ("name", "width", "params", "layers", "norm"))
TRAIN_KEYS = tuple(
    f"train.{k}"
    for k in ("context", "horizon", "epochs", "max_time", "batch_size", "seed", "device")
)


def _data_options(
    data: list[str] | None,
    variables: list[str] | None,
    static: list[str] | None,
    train_period: str | None,
    val_period: str | None,
    allow_missing_chunks: bool,
    allow_overlap: bool,
) -> dict[str, Any]:
    """The `data.*` config overrides the options give (names checked, URLs kept as given)."""
    from minconv_cli.data.remote import as_source

    names, statics = _names(variables, "--variables"), _names(static, "--static")
    check_apart(names or [], statics or [], "--variables and --static")
    return {
        "data.paths": [str(as_source(p)) for p in data] if data else None,
        "data.variables": names,
        "data.static": statics,
        "data.train_period": _period(train_period, "--train-period"),
        "data.val_period": _period(val_period, "--val-period"),
        "data.allow_missing_chunks": True if allow_missing_chunks else None,
        "data.allow_overlap": True if allow_overlap else None,
    }


def _check_choices(
    width: int | None, params: int | None, resume: bool, overwrite: bool, out: Path | None
) -> None:
    """Refuse options that exclude each other, and --resume without the run to continue."""
    if width is not None and params is not None:
        raise MinconvError("--width and --params: give one of them")
    if resume and overwrite:
        raise MinconvError("--resume and --overwrite: choose one")
    if resume and out is None:
        raise MinconvError("--resume: needs --out RUN_DIR (the run to continue)")


def _resumed_config(out: Path) -> dict[str, Any]:
    """The config stored in the run's last.pt, which `--resume` starts from."""
    from minconv_cli.models.checkpoint import read_checkpoint
    from minconv_cli.training.run_dir import RunDir

    last = RunDir(out).resolve(resume=True, overwrite=False).last
    if not last.is_file():
        raise MinconvError(f"--resume: {last} not found (nothing to resume)")
    _, meta = read_checkpoint(last)
    return meta.config


def _report(result: Any, out: Path, json_out: bool, quiet: bool) -> None:
    """How the run ended: the summary as JSON and/or the table and closing line (exit 130 when
    interrupted, after saying how to continue)."""
    summary = result.summary
    if result.status == "interrupted":
        replacement = summary.get("replacement_dir")
        kept = f" (the old run in {out} is kept until this one completes)" if replacement else ""
        console.print(
            f"[yellow]interrupted[/]: saved {Path(replacement or out) / 'last.pt'} at epoch "
            f"{summary['epochs_completed'] + 1}, step {summary['steps']}{kept}; continue with: "
            f"minconv train --out {out} --resume"
        )
        if json_out:
            print_json(summary)
        raise typer.Exit(130)
    if json_out:
        print_json(summary)
    if not quiet:
        if summary["channels"]:
            console.print(_table(summary))
        last = summary["last_validation"]
        partial = (
            f" (last validation on {last['windows']} of {last['of']} windows)"
            if last["partial"]
            else ""
        )
        console.print(
            f"{result.status.replace('_', ' ')}: {summary['epochs_completed']} epoch(s) in "
            f"{summary['seconds']:.1f} s{partial}; best model {summary['checkpoint']}"
        )
