"""`rollout`: check DATA against the checkpoint(s), roll the model(s) forward and write the
forecast store batch by batch, so that an interrupted run can resume."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from minconv_cli import __version__
from minconv_cli.core.allocator import keep_freed_memory
from minconv_cli.core.errors import MinconvError, check_not_blank
from minconv_cli.core.files import Progress, output_lock, recover, resolve_device
from minconv_cli.data import Fields, Normalizer, split_fields
from minconv_cli.data.remote import as_source, is_url, local_path
from minconv_cli.data.timeaxis import CalendarStep
from minconv_cli.models.checkpoint import GridOrder, LoadedCheckpoint
from minconv_cli.rollout.forecast_loop import forecast, transform_attrs
from minconv_cli.rollout.init_times import select_init_times, time_labels
from minconv_cli.rollout.plan import ForecastPlan, Key, Row, make_plan
from minconv_cli.rollout.store import (
    MODES,
    SETTINGS_ATTR,
    StoreWriter,
    finish,
    open_target,
    resume_target,
    store_template,
    stored_precision,
)
from minconv_cli.training.memory_check import StepMemory, plan_batch, step_room


@dataclass
class RolloutResult:
    """What a rollout wrote: the store, its init times, leads and variables, and how long it took."""

    path: str
    init_times: list[Any]
    samples: int
    steps: int
    variables: list[str]
    written: int
    skipped: int
    seconds: float
    timings: dict  # seconds spent reading frames, in the model, and writing the store
    members: int | None = None  # ensemble size (None: a deterministic store)
    memory: dict | None = None  # the step-memory estimate behind the batch size
    memory_note: str | None = None  # said when the batch was shrunk to fit

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass
class Job:
    """The sequences to forecast: DATA in the checkpoint's grid order, init times, context, steps."""

    fields: Fields
    order: GridOrder
    init_index: np.ndarray
    context: int
    steps: int
    step: Any = None  # the time step (the data's own stamps for calendar steps)

    def sequences(self) -> list[tuple[int, int, tuple[int, ...]]]:
        """(init position, flat sample, store position (init, *sample)) of every sequence."""
        shape = self.fields.sample_shape
        return [
            (i, s, (i, *(int(k) for k in np.unravel_index(s, shape))) if shape else (i,))
            for i in range(len(self.init_index))
            for s in range(self.fields.n_samples)
        ]

    def context_frames(self, batch: Sequence[Row]) -> np.ndarray:
        """(B, K, C, H, W) physical frames up to and including each init time; rows of one (init,
        sample), such as ensemble members, share one read."""
        pairs = list(dict.fromkeys((i, s) for i, s, _ in batch))
        stop = self.init_index[[i for i, _ in pairs]] + 1
        read = np.stack(
            [
                self.order.orient(self.fields.frames(s, int(t) - self.context, int(t)))
                for (_, s), t in zip(pairs, stop, strict=True)
            ]
        )
        if len(pairs) == len(batch):
            return read
        where = {pair: n for n, pair in enumerate(pairs)}
        return read[[where[(i, s)] for i, s, _ in batch]]

    def keys(self, batch: Sequence[Row]) -> list[Key]:
        """(data time index of the init, flat sample, store position) of each row."""
        return [(int(self.init_index[i]), s, pos) for i, s, pos in batch]

    def static(self) -> np.ndarray | None:
        if not self.fields.static_channels:
            return None
        return self.order.orient(self.fields.static_array())


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
) -> RolloutResult:
    """Forecast `steps` leads from every (init time, sample) of DATA into the Zarr store `out`.

    `plan` (by default `make_plan` of the ensemble options: an ensemble of `members`, or of
    several checkpoints, gets a `number` dim) gives the rows, their initial frames and lead rule.
    `subset` selects part of DATA first, as `minconv train` splits do (`split=test`,
    `trajectory=150:200`, a time range `START/END`).
    mode: `create` (refuse an existing `out`), `overwrite` (replace it once the new store is
    complete) or `resume` (fill in what an interrupted run with the same settings left out).
    `precision`: fp32, bf16 or auto (bf16 where the device has native bf16; when resuming,
    auto keeps the store's own precision). Everything is checked before anything is written.
    `allow_missing_chunks`: Zarr chunks of DATA that are not stored read as NaN (else an error).
    """
    started = time.perf_counter()
    check_not_blank(subset, "--subset")
    paths = [local_path(c, "CHECKPOINT") for c in _as_list(checkpoint)]
    out, data = local_path(out, "--out"), [as_source(p) for p in data]
    with output_lock(out, command):  # one writer per store
        recover(out)  # what a killed run left beside it
        ensemble = (members, perturbation, perturbation_smoothing, seed, step_noise, recentre)
        plan = plan or make_plan(len(paths), *ensemble)
        _check_request(steps, batch_size, zarr_format, mode, out, data)
        dev = _device(device)
        precision = _precision(precision, mode, out, dev)
        loads = _load_checkpoints(paths, dev)
        context = _context(loads, context, plan)
        job = _job(loads[0], data, subset, init_times, context, steps, plan, allow_missing_chunks)
        settings, attrs = _store_settings(
            job, data, paths, plan, subset, precision, command, loads[0].meta.model.name
        )
        memory = rollout_batch(loads[0], batch_size, job, (precision, dev), step_memory)
        run = _Run(job, plan, memory.batch, dev, precision, progress)
        run.open_store(out, mode, settings, attrs | transform_attrs(loads), zarr_format)
        run.forecast(loads)
        return run.complete(out, started, memory)


def _device(device: str) -> Any:
    """The torch device `device` resolves to, with freed memory kept in the heap (allocator)."""
    dev = resolve_device(device)
    keep_freed_memory()
    return dev


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


def _open_store(
    job: Job,
    plan: ForecastPlan,
    out: Path,
    mode: str,
    settings: dict,
    attrs: dict,
    zarr_format: int,
) -> tuple[Path, list[Row], list[Row]]:
    """(where to write, every row in store order, those not done yet)."""
    template, encoding = store_template(
        job.fields, job.order, job.init_index, job.steps, job.step, attrs
    )
    template, encoding = plan.template(template, encoding)
    target, done = open_target(out, mode, template, encoding, settings, zarr_format)
    rows = plan.rows(job.sequences())
    return target, rows, plan.pending(rows, done)


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


@dataclass
class _Run:
    """The forecast loop over the pending rows: checkpoint by checkpoint, batch by batch, each
    batch asking the plan for its initial frames and its lead rule."""

    job: Job
    plan: ForecastPlan
    batch_size: int
    dev: Any
    precision: str
    progress: Progress | None
    clock: dict = field(default_factory=lambda: {"read": 0.0, "model": 0.0, "write": 0.0})
    target: Path = Path()
    writer: StoreWriter | None = None
    todo: list[Row] = field(default_factory=list)
    pending: list[Row] = field(default_factory=list)
    finished: int = 0

    def open_store(
        self, out: Path, mode: str, settings: dict, attrs: dict, zarr_format: int
    ) -> None:
        t0 = time.perf_counter()
        opened = _open_store(self.job, self.plan, out, mode, settings, attrs, zarr_format)
        self.target, self.todo, self.pending = opened
        self.clock["write"] += time.perf_counter() - t0
        self.writer = StoreWriter(
            self.target, self.job.fields, members=self.plan.members is not None
        )
        self.finished = len(self.todo) - len(self.pending)
        if self.progress:
            self.progress(self.finished, len(self.todo))

    def forecast(self, loads: list[LoadedCheckpoint]) -> None:
        static = self.job.static()
        for k, each in enumerate(loads):
            model = each.model.eval()
            model.precision = self.precision
            normalizer = Normalizer.from_dict(each.meta.data.normalizer)
            mine = [row for row in self.pending if self.plan.checkpoint_of(row) == k]
            for batch in self.plan.batches(mine, self.batch_size):
                self._batch(model, normalizer, static, batch)

    def _batch(
        self, model: Any, normalizer: Normalizer, static: np.ndarray | None, batch: list[Row]
    ) -> None:
        job, plan, clock = self.job, self.plan, self.clock
        t0 = time.perf_counter()
        keys = job.keys(batch)
        frames = job.context_frames(batch)
        if plan.members is not None:  # perturbed where the std was fitted (dBR with a transform)
            frames = normalizer.in_model_space(
                frames, lambda f: plan.initial(f, keys, normalizer.std)
            )
        leads = plan.leads(keys, job.steps, job.context)
        t1 = time.perf_counter()
        values = forecast(model, normalizer, frames, static, job.steps, self.dev, leads)
        # cells missing in the initial frame (e.g. land in SST) stay missing in the forecast
        values = np.where(np.isnan(frames[:, -1:]), np.float32(np.nan), values)
        t2 = time.perf_counter()
        self.writer.write([pos for _, _, pos in batch], values)
        clock["read"] += t1 - t0
        clock["model"] += t2 - t1
        clock["write"] += time.perf_counter() - t2
        self.finished += len(batch)
        if self.progress:
            self.progress(self.finished, len(self.todo))

    def complete(self, out: Path, started: float, memory: StepMemory) -> RolloutResult:
        """The store moved into place, and what was written."""
        finish(self.target, out)
        fields = self.job.fields
        return RolloutResult(
            path=str(out),
            init_times=time_labels(fields.times[self.job.init_index]),
            samples=fields.n_samples,
            steps=self.job.steps,
            members=self.plan.members,
            variables=fields.variables,
            written=len(self.pending),
            skipped=len(self.todo) - len(self.pending),
            seconds=round(time.perf_counter() - started, 3),
            timings={k: round(v, 4) for k, v in self.clock.items()},
            memory=memory.summary(),
            memory_note=memory.note,
        )


def _check_request(
    steps: int,
    batch_size: int,
    zarr_format: int,
    mode: str,
    out: Path,
    data: Sequence[str | Path],
) -> None:
    """Option values and the output path, before anything is opened."""
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
    if out.exists() and mode == "create":
        raise MinconvError(
            f"{out}: already exists; use --overwrite to replace it or --resume to complete it"
        )
    if any(out.resolve() == p.resolve() for p in data if isinstance(p, Path)):
        raise MinconvError(f"{out}: is also an input file")
