"""`minconv rollout`: forecasts from new initial conditions into a Zarr store."""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from pathlib import Path

import typer

from minconv_cli.commands._common import console, print_json, progress_bar, user_errors
from minconv_cli.core.errors import MinconvError


@user_errors
def rollout(
    checkpoint: str = typer.Argument(
        ..., help="Checkpoint file (model.pt) written by `minconv train`."
    ),
    data: list[str] = typer.Argument(
        ...,
        help="NetCDF file(s), Zarr store(s) or Zarr URL(s) holding the initial conditions and their "
        "context frames. Leading .pt files are more checkpoints: an ensemble over them.",
    ),
    steps: int = typer.Option(..., "--steps", "-n", help="Lead times to forecast (model steps)."),
    out: str = typer.Option(..., "--out", "-o", help="Forecast Zarr store to write (local)."),
    init_times: str | None = typer.Option(
        None,
        "--init-times",
        help="Init times: 'all', a list 'T1,T2', ranges 'START/STOP' or 'START/STOP/STRIDE' (e.g. "
        "2009-01-01/2010-12-31/7D), or numbers for numeric time. Default: all (datetime data), "
        "the first possible time (data with a trajectory/sample dim).",
    ),
    subset: str | None = typer.Option(
        None,
        "--subset",
        help="Use only part of DATA, as in training splits: split=test, trajectory=150:200, "
        "or START/END times.",
    ),
    context: int | None = typer.Option(
        None,
        "--context",
        "-k",
        help="Context frames ingested per init time (default: the training context).",
    ),
    batch_size: int = typer.Option(16, "--batch-size", "-b", help="Sequences forecast together."),
    zarr_format: int = typer.Option(2, "--zarr-format", help="Zarr format of the store: 2 or 3."),
    overwrite: bool = typer.Option(
        False, "--overwrite", help="Replace an existing store (once the new one is complete)."
    ),
    resume: bool = typer.Option(
        False, "--resume", help="Complete an interrupted store made with the same settings."
    ),
    device: str = typer.Option(
        "auto", "--device", help="torch device: auto, cpu, cuda, cuda:1, ..."
    ),
    precision: str = typer.Option(
        "auto",
        "--precision",
        help="fp32, bf16 (autocast convolutions, state in fp32) or auto (bf16 where the device "
        "has native bf16, else fp32; on --resume, the store's own).",
    ),
    members: int | None = typer.Option(
        None,
        "--members",
        "-m",
        help="Ensemble members (a 'number' dim in the store): member 0 of each checkpoint is its "
        "unperturbed control, the others start from perturbed context frames. Default: none "
        "(deterministic), or one per checkpoint when several are given.",
    ),
    perturbation: float = typer.Option(
        0.1,
        "--perturbation",
        help="Ensemble perturbation: Gaussian noise on each context frame, x the training std.",
    ),
    perturbation_smoothing: float = typer.Option(
        0.0,
        "--perturbation-smoothing",
        help="Spatial correlation of the perturbations: Gaussian smoothing over this many grid "
        "cells (0: white noise).",
    ),
    step_noise: float = typer.Option(
        0.0,
        "--step-noise",
        help="Ensemble model error: at every lead, add this x one of the model's own one-step "
        "errors on the forecast's context frames (drawn at random; members in +- pairs; the "
        "controls get none). 0: off, 1: the model's own error size.",
    ),
    recentre: bool = typer.Option(
        False,
        "--recentre",
        help="At every lead, shift each checkpoint's perturbed members so that their mean is its "
        "control: the ensemble mean is the controls' mean, the spread that of the perturbations.",
    ),
    seed: int = typer.Option(0, "--seed", help="Seed of the ensemble perturbations."),
    allow_missing_chunks: bool = typer.Option(
        False,
        "--allow-missing-chunks",
        help="Read Zarr chunks of DATA that are not stored as NaN instead of refusing the store.",
    ),
    json_out: bool = typer.Option(False, "--json", help="Print a JSON summary on stdout."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Roll a trained model forward from initial conditions and write a WeatherBench 2-style Zarr forecast."""
    from minconv_cli.core.errors import MinconvError
    from minconv_cli.data.remote import as_source, local_path
    from minconv_cli.rollout import rollout as run_rollout

    checkpoints, data = split_checkpoints(checkpoint, data)
    checkpoint_paths = [local_path(c, "CHECKPOINT") for c in checkpoints]
    ensemble = members is not None or len(checkpoints) > 1
    out_path = local_path(out, "--out")
    sources = [as_source(p) for p in data]
    if overwrite and resume:
        raise MinconvError("--overwrite and --resume: choose one")
    mode = "overwrite" if overwrite else "resume" if resume else "create"
    words = ["minconv", "rollout", *checkpoint_paths, *sources, "--steps", steps, "--out", out_path]
    for flag, value in (("--init-times", init_times), ("--subset", subset), ("--context", context)):
        if value is not None:
            words += [flag, value]
    words += ["--batch-size", batch_size, "--zarr-format", zarr_format, "--precision", precision]
    if ensemble:
        words += ["--members", members if members is not None else len(checkpoints)]
        words += [
            "--perturbation",
            perturbation,
            "--perturbation-smoothing",
            perturbation_smoothing,
        ]
        words += ["--step-noise", step_noise] if step_noise else []
        words += ["--recentre"] if recentre else []
        words += ["--seed", seed]
    words += [f"--{mode}"] if mode != "create" else []
    words += ["--allow-missing-chunks"] if allow_missing_chunks else []
    command = shlex.join(map(str, words))  # the effective request, however it was invoked
    with progress_bar("rollout", quiet) as report:
        result = run_rollout(
            checkpoint_paths,
            sources,
            steps,
            out_path,
            init_times=init_times,
            subset=subset,
            context=context,
            batch_size=batch_size,
            zarr_format=zarr_format,
            mode=mode,
            device=device,
            precision=precision,
            command=command,
            progress=report,
            members=members,
            perturbation=perturbation,
            perturbation_smoothing=perturbation_smoothing,
            seed=seed,
            step_noise=step_noise,
            recentre=recentre,
            allow_missing_chunks=allow_missing_chunks,
        )
    if json_out:
        print_json(result.to_dict())
    elif not quiet:
        console.print(
            f"wrote {result.path}: {len(result.init_times)} init time(s) x {result.samples} sample(s)"
            + (f" x {result.members} member(s)" if result.members else "")
            + ", "
            f"{result.steps} steps, {', '.join(result.variables)} in {result.seconds:.1f} s"
        )


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
