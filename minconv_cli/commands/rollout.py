"""`minconv rollout`: forecasts from new initial conditions into a Zarr store."""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated

import typer

from minconv_cli.commands._common import console, print_json, progress_bar, user_errors
from minconv_cli.core.errors import MinconvError

Checkpoint = Annotated[
    str, typer.Argument(help="Checkpoint file (model.pt) written by `minconv train`.")
]
Data = Annotated[
    list[str],
    typer.Argument(
        help="NetCDF file(s), Zarr store(s) or Zarr URL(s) holding the initial conditions and their "
        "context frames. Leading .pt files are more checkpoints: an ensemble over them."
    ),
]
Steps = Annotated[int, typer.Option("--steps", "-n", help="Lead times to forecast (model steps).")]
Out = Annotated[str, typer.Option("--out", "-o", help="Forecast Zarr store to write (local).")]
InitTimes = Annotated[
    str | None,
    typer.Option(
        "--init-times",
        help="Init times: 'all', a list 'T1,T2', ranges 'START/STOP' or 'START/STOP/STRIDE' (e.g. "
        "2009-01-01/2010-12-31/7D), or numbers for numeric time. Default: all (datetime data), "
        "the first possible time (data with a trajectory/sample dim).",
    ),
]
Subset = Annotated[
    str | None,
    typer.Option(
        "--subset",
        help="Use only part of DATA, as in training splits: split=test, trajectory=150:200, "
        "or START/END times.",
    ),
]
Context = Annotated[
    int | None,
    typer.Option(
        "--context",
        "-k",
        help="Context frames ingested per init time (default: the training context).",
    ),
]
BatchSize = Annotated[int, typer.Option("--batch-size", "-b", help="Sequences forecast together.")]
ZarrFormat = Annotated[int, typer.Option("--zarr-format", help="Zarr format of the store: 2 or 3.")]
Overwrite = Annotated[
    bool,
    typer.Option("--overwrite", help="Replace an existing store (once the new one is complete)."),
]
Resume = Annotated[
    bool,
    typer.Option("--resume", help="Complete an interrupted store made with the same settings."),
]
Device = Annotated[str, typer.Option("--device", help="torch device: auto, cpu, cuda, cuda:1, ...")]
Precision = Annotated[
    str,
    typer.Option(
        "--precision",
        help="fp32, bf16 (autocast convolutions, state in fp32) or auto (bf16 where the device "
        "has native bf16, else fp32; on --resume, the store's own).",
    ),
]
Members = Annotated[
    int | None,
    typer.Option(
        "--members",
        "-m",
        help="Ensemble members (a 'number' dim in the store): member 0 of each checkpoint is its "
        "unperturbed control, the others start from perturbed context frames. Default: none "
        "(deterministic), or one per checkpoint when several are given.",
    ),
]
Perturbation = Annotated[
    float,
    typer.Option(
        "--perturbation",
        help="Ensemble perturbation: Gaussian noise on each context frame, x the training std.",
    ),
]
PerturbationSmoothing = Annotated[
    float,
    typer.Option(
        "--perturbation-smoothing",
        help="Spatial correlation of the perturbations: Gaussian smoothing over this many grid "
        "cells (0: white noise).",
    ),
]
StepNoise = Annotated[
    float,
    typer.Option(
        "--step-noise",
        help="Ensemble model error: at every lead, add this x one of the model's own one-step "
        "errors on the forecast's context frames (drawn at random; members in +- pairs; the "
        "controls get none). 0: off, 1: the model's own error size.",
    ),
]
Recentre = Annotated[
    bool,
    typer.Option(
        "--recentre",
        help="At every lead, shift each checkpoint's perturbed members so that their mean is its "
        "control: the ensemble mean is the controls' mean, the spread that of the perturbations.",
    ),
]
Seed = Annotated[int, typer.Option("--seed", help="Seed of the ensemble perturbations.")]
AllowMissingChunks = Annotated[
    bool,
    typer.Option(
        "--allow-missing-chunks",
        help="Read Zarr chunks of DATA that are not stored as NaN instead of refusing the store.",
    ),
]
Shard = Annotated[
    str | None,
    typer.Option(
        "--shard",
        help="I/N: write task I's share (from 0) of N of the rows into the one store, for job "
        "arrays whose tasks cannot talk (e.g. --shard $SLURM_ARRAY_TASK_ID/4). The first task "
        "creates the store, the last to end finishes it; the store equals a one-process run's. "
        "Under torchrun the ranks share the rows without this option.",
    ),
]
JsonOut = Annotated[bool, typer.Option("--json", help="Print a JSON summary on stdout.")]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")]


@user_errors
def rollout(
    checkpoint: Checkpoint,
    data: Data,
    steps: Steps,
    out: Out,
    init_times: InitTimes = None,
    subset: Subset = None,
    context: Context = None,
    batch_size: BatchSize = 16,
    zarr_format: ZarrFormat = 2,
    overwrite: Overwrite = False,
    resume: Resume = False,
    device: Device = "auto",
    precision: Precision = "auto",
    members: Members = None,
    perturbation: Perturbation = 0.1,
    perturbation_smoothing: PerturbationSmoothing = 0.0,
    step_noise: StepNoise = 0.0,
    recentre: Recentre = False,
    seed: Seed = 0,
    allow_missing_chunks: AllowMissingChunks = False,
    shard: Shard = None,
    json_out: JsonOut = False,
    quiet: Quiet = False,
) -> None:
    """Roll a trained model forward from initial conditions and write a WeatherBench 2-style Zarr forecast."""
    from minconv_cli.data.remote import as_source, local_path
    from minconv_cli.rollout import rollout as run_rollout

    checkpoints, data = split_checkpoints(checkpoint, data)
    checkpoint_paths = [local_path(c, "CHECKPOINT") for c in checkpoints]
    out_path = local_path(out, "--out")
    sources = [as_source(p) for p in data]
    if overwrite and resume:
        raise MinconvError("--overwrite and --resume: choose one")
    mode = "overwrite" if overwrite else "resume" if resume else "create"
    options = dict(init_times=init_times, subset=subset, context=context, batch_size=batch_size)
    options.update(zarr_format=zarr_format, mode=mode, precision=precision)
    options.update(allow_missing_chunks=allow_missing_chunks)
    ensemble = dict(members=members, perturbation=perturbation, seed=seed, recentre=recentre)
    ensemble.update(perturbation_smoothing=perturbation_smoothing, step_noise=step_noise)
    request = (checkpoint_paths, sources, steps, out_path)
    command = _command(*request, options, ensemble)
    quiet, json_out = (quiet, json_out) if _prints() else (True, False)
    with progress_bar("rollout", quiet) as report:
        run = dict(device=device, command=command, progress=report, shard_spec=shard)
        result = run_rollout(*request, **run, **options, **ensemble)
    if result.memory_note and not quiet:
        console.print(result.memory_note, soft_wrap=True)
    if json_out:
        print_json(result.to_dict())
    elif not quiet:
        console.print(
            f"wrote {result.path}: {len(result.init_times)} init time(s) x {result.samples} sample(s)"
            + (f" x {result.members} member(s)" if result.members else "")
            + ", "
            f"{result.steps} steps, {', '.join(result.variables)} in {result.seconds:.1f} s"
            + _shard_note(result)
        )


def _prints() -> bool:
    """Whether this process reports (under torchrun, rank 0 only)."""
    import os

    return os.environ.get("RANK", "0") == "0"


def _shard_note(result) -> str:
    if result.shard is None:
        return ""
    if result.complete:
        return (
            f" (shard {result.shard}: {result.written} sequence(s) written; the store is complete)"
        )
    return (
        f" (shard {result.shard}: {result.written} sequence(s) written; the store is complete when "
        "every shard has run)"
    )


def _command(
    checkpoints: list[Path], sources: list, steps: int, out: Path, options: dict, ensemble: dict
) -> str:
    """The effective request as one shell line, however it was invoked (recorded in the store)."""
    words = ["minconv", "rollout", *checkpoints, *sources, "--steps", steps, "--out", out]
    for name in ("init_times", "subset", "context"):
        if options[name] is not None:
            words += [_flag(name), options[name]]
    words += ["--batch-size", options["batch_size"], "--zarr-format", options["zarr_format"]]
    words += ["--precision", options["precision"]]
    if ensemble["members"] is not None or len(checkpoints) > 1:
        members = ensemble["members"]
        words += ["--members", members if members is not None else len(checkpoints)]
        words += ["--perturbation", ensemble["perturbation"]]
        words += ["--perturbation-smoothing", ensemble["perturbation_smoothing"]]
        words += ["--step-noise", ensemble["step_noise"]] if ensemble["step_noise"] else []
        words += ["--recentre"] if ensemble["recentre"] else []
        words += ["--seed", ensemble["seed"]]
    words += [f"--{options['mode']}"] if options["mode"] != "create" else []
    words += ["--allow-missing-chunks"] if options["allow_missing_chunks"] else []
    return shlex.join(map(str, words))


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def is_checkpoint_path(path: str | Path) -> bool:
    """A `.pt`/`.pth` file: a checkpoint written by `minconv train`, not data."""
    return Path(path).suffix.lower() in (".pt", ".pth")


def split_checkpoints(
    checkpoint: str | Path, data: Sequence[str | Path]
) -> tuple[list[str | Path], list[str | Path]]:
    """`rollout A.pt [B.pt ...] DATA...`: the leading checkpoint files, then the data (as given)."""
    ckpts, rest = [checkpoint], list(data)
    while rest and is_checkpoint_path(rest[0]):
        ckpts.append(rest.pop(0))
    late = [str(p) for p in rest if is_checkpoint_path(p)]
    if late:
        raise MinconvError(f"{late[0]}: checkpoints must come before the data files")
    return ckpts, rest
