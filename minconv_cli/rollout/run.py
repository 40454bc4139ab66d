"""`rollout`: check DATA against the checkpoint(s), roll the model(s) forward and write the
forecast store batch by batch, so that an interrupted run can resume; alone, or as one of several
processes (torchrun ranks or `--shard I/N` tasks, see `rollout.shards`) writing one store."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from minconv_cli import __version__
from minconv_cli.core.allocator import keep_freed_memory
from minconv_cli.core.errors import MinconvError, check_not_blank
from minconv_cli.core.files import Progress, recover, resolve_device
from minconv_cli.data import split_fields
from minconv_cli.data.remote import as_source, is_url, local_path
from minconv_cli.data.timeaxis import CalendarStep
from minconv_cli.models.checkpoint import LoadedCheckpoint
from minconv_cli.rollout.batch_loop import BatchLoop, RolloutResult
from minconv_cli.rollout.forecast_loop import transform_attrs
from minconv_cli.rollout.init_times import select_init_times, time_labels
from minconv_cli.rollout.job import Job, file_sha256
from minconv_cli.rollout.plan import ForecastPlan, make_plan
from minconv_cli.rollout.shard_store import store_access
from minconv_cli.rollout.shards import Shard, choose_shard
from minconv_cli.rollout.store import MODES, SETTINGS_ATTR, resume_target, stored_precision
from minconv_cli.training.memory_check import StepMemory, plan_batch, step_room

__all__ = ["Job", "RolloutResult", "file_sha256", "rollout"]


def rollout(
    checkpoint: str | Path | Sequence[str | Path],
    data: Sequence[str | Path],
    steps: int,
    out: str | Path,
    *,
    init_times: str | None = None,
    subset: str | None = None,
    context: int | None = None,
    batch_size: int = 16,
    zarr_format: int = 2,
    mode: str = "create",
    device: str = "auto",
    precision: str = "auto",
    command: str = "",
    progress: Progress | None = None,
    members: int | None = None,
    perturbation: float = 0.1,
    perturbation_smoothing: float = 0.0,
    seed: int = 0,
    step_noise: float = 0.0,
    recentre: bool = False,
    allow_missing_chunks: bool = False,
    plan: ForecastPlan | None = None,
    step_memory: int | None = None,
    shard_spec: str | None = None,
) -> RolloutResult:
    """Forecast `steps` leads from every (init time, sample) of DATA into the Zarr store `out`.

    `plan` (default: `make_plan` of the ensemble options) gives the rows and their lead rule.
    `subset` selects part of DATA first, as `minconv train` splits do (`split=test`, a time range).
    mode: `create` (refuse an existing `out`), `overwrite` (replace it once the new store is
    complete) or `resume` (fill in what an interrupted run with the same settings left out).
    `precision`: fp32, bf16 or auto (bf16 where the device has native bf16; on resume the store's).
    `allow_missing_chunks`: Zarr chunks of DATA that are not stored read as NaN (else an error).
    `shard_spec`: `I/N`, this job-array task's share (torchrun ranks share without it).
    """
    started = time.perf_counter()
    paths = [local_path(c, "CHECKPOINT") for c in _as_list(checkpoint)]
    out, data = local_path(out, "--out"), [as_source(p) for p in data]
    shard = choose_shard(shard_spec)
    with _process(device, shard) as dev, store_access(out, command, shard):
        if shard is None or shard.leads:
            recover(out)  # what a killed run left beside it
        plan = plan or make_plan(
            len(paths), members, perturbation, perturbation_smoothing, seed, step_noise, recentre
        )
        _check_request(steps, batch_size, zarr_format, mode, out, data, shard, subset)
        precision = _precision(precision, mode, out, dev)
        loads = _load_checkpoints(paths, dev)
        context = _context(loads, context, plan)
        job = _job(loads[0], data, subset, init_times, context, steps, plan, allow_missing_chunks)
        settings, attrs = _store_settings(
            job, data, paths, plan, subset, precision, command, loads[0].meta.model.name
        )
        memory = rollout_batch(loads[0], batch_size, job, (precision, dev), step_memory)
        run = BatchLoop(job, plan, memory.batch, dev, precision, progress, shard)
        run.open_store(out, mode, settings, attrs | transform_attrs(loads), zarr_format)
        run.forecast(loads)
        return run.complete(out, started, memory)


@contextlib.contextmanager
def _process(device: str, shard: Shard | None) -> Iterator[Any]:
    """The torch device `device` resolves to, with freed memory kept in the heap (allocator);
    under torchrun this rank's, inside the process group (left at the end)."""
    if shard is None or not shard.ranks:
        dev = resolve_device(device)
        keep_freed_memory()
        yield dev
        return
    from minconv_cli.training.distributed import setup, teardown

    info, dev = setup(device)
    try:
        yield dev
    finally:
        teardown(info)


def rollout_batch(
    load: LoadedCheckpoint, batch_size: int, job: Job, run_on: tuple[str, Any], room: int | None
) -> StepMemory:
    """The batch of sequences whose no-grad whole-grid step fits in `room` bytes (`rollout`'s
    `step_memory`; None: the available memory): `batch_size`, halved until it fits (with a
    note), or a one-line error before anything is written when one sequence does not fit."""
    precision, dev = run_on  # the precision and the device it runs on
    limit = step_room(None, 0, dev) if room is None else (int(room), "step_memory")
    return plan_batch(
        load.model.hparams,
        batch_size,
        max(1, job.context),
        tuple(job.fields.grid_shape),
        precision,
        limit,
        what="rollout step",
        offer="use a machine with more memory (this grid does not fit one sequence)",
        training=False,
    )


def _as_list(checkpoint: str | Path | Sequence[str | Path]) -> list[str | Path]:
    return [checkpoint] if isinstance(checkpoint, (str, Path)) else list(checkpoint)


def _precision(precision: str, mode: str, out: Path, dev: Any) -> str:
    """`--precision` resolved for `dev`; `auto` on `--resume` keeps the store's own."""
    from minconv_cli.core.precision import resolve_precision

    if precision == "auto" and mode == "resume" and resume_target(out).exists():
        precision = stored_precision(resume_target(out))
    return resolve_precision(precision, dev, "--precision")


def _load_checkpoints(paths: list[Path], dev: Any) -> list[LoadedCheckpoint]:
    """The checkpoints, each able to drive a rollout, all trained on the same data contract."""
    from minconv_cli.models.checkpoint import check_same_data, load_checkpoint

    loads = [load_checkpoint(p, map_location=dev) for p in paths]
    for each, path in zip(loads, paths, strict=True):
        each.meta.for_rollout(path)
    check_same_data([each.meta for each in loads], paths)
    return loads


def _context(loads: list[LoadedCheckpoint], context: int | None, plan: ForecastPlan) -> int:
    """`--context`, by default the longest training context (every checkpoint has its frames)."""
    if context is None:
        context = max(int(each.meta.context or 1) for each in loads)
    if context < 1:
        raise MinconvError(f"--context: must be at least 1, got {context}")
    plan.check_context(context)
    return context


def _job(
    loaded: LoadedCheckpoint,
    data: list[Any],
    subset: str | None,
    init_times: str | None,
    context: int,
    steps: int,
    plan: ForecastPlan,
    allow_missing_chunks: bool = False,
) -> Job:
    """DATA opened and checked against the checkpoint's data contract, and the init times."""
    meta = loaded.meta
    fields = meta.data.open_matching(data, allow_missing_chunks=allow_missing_chunks)
    if subset:
        fields = split_fields(fields, subset)
    order = meta.check_against(fields)
    plan.check_data(fields)
    step = meta.data.step()
    if isinstance(step, CalendarStep) and isinstance(fields.time_step, CalendarStep):
        step = fields.time_step  # the data's own stamps (month start, end or middle)
    init_index = select_init_times(init_times, fields, context, step)
    return Job(fields, order, init_index, context, steps, step)


def _store_settings(
    job: Job,
    data: list[Any],
    paths: list[Path],
    plan: ForecastPlan,
    subset: str | None,
    precision: str,
    command: str,
    model_name: str,
) -> tuple[dict, dict]:
    """(settings checked by --resume, the store's global attrs)."""
    fields = job.fields
    shas = [file_sha256(p) for p in paths]
    sha = shas[0]
    settings = {
        "checkpoint_sha256": sha,
        "steps": job.steps,
        "context": job.context,
        "init_times": time_labels(fields.times[job.init_index]),
        "sample_dims": list(fields.sample_dims),
        "samples": fields.n_samples,
        "subset": subset,
        "variables": fields.variables,
        "data": [p if is_url(p) else str(p.resolve()) for p in data],
        "precision": precision,
    }
    settings.update(plan.settings(shas))  # deterministic stores record nothing more
    attrs = {
        "minconv_version": __version__,
        "checkpoint": str(paths[0].resolve()),
        "checkpoint_sha256": sha,
        "command": command,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "model": model_name,
        "context": job.context,
        "precision": precision,
        "source": ", ".join(str(p) for p in data),
        SETTINGS_ATTR: json.dumps(settings),
    }
    attrs.update(plan.attrs([str(p.resolve()) for p in paths]))
    return settings, attrs


def _check_request(
    steps: int,
    batch_size: int,
    zarr_format: int,
    mode: str,
    out: Path,
    data: Sequence[str | Path],
    shard: Shard | None = None,
    subset: str | None = None,
) -> None:
    """Option values and the output path, before anything is opened (a process that joins a
    store its siblings make may find it there)."""
    check_not_blank(subset, "--subset")
    if mode not in MODES:
        raise ValueError(f"rollout mode: expected create, overwrite or resume, got {mode!r}")
    if steps < 1:
        raise MinconvError(f"--steps: must be at least 1, got {steps}")
    if batch_size < 1:
        raise MinconvError(f"--batch-size: must be at least 1, got {batch_size}")
    if zarr_format not in (2, 3):
        raise MinconvError(f"--zarr-format: must be 2 or 3, got {zarr_format}")
    if not data:
        raise MinconvError("DATA: no initial-condition files given")
    if out.exists() and mode == "create" and (shard is None or shard.leads):
        raise MinconvError(
            f"{out}: already exists; use --overwrite to replace it or --resume to complete it"
        )
    if any(out.resolve() == p.resolve() for p in data if isinstance(p, Path)):
        raise MinconvError(f"{out}: is also an input file")
