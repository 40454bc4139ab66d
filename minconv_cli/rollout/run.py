"""`rollout`: check DATA against the checkpoint(s), roll the model(s) forward and write the
forecast store batch by batch, so that an interrupted run can resume."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
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
from minconv_cli.rollout.forecast_loop import forecast
from minconv_cli.rollout.init_times import select_init_times, time_labels
from minconv_cli.rollout.store import (
    DONE,
    MODES,
    SETTINGS_ATTR,
    StoreWriter,
    finish,
    open_target,
    resume_target,
    store_template,
    stored_precision,
)


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

    def context_frames(self, batch: Sequence[tuple[int, int, Any]]) -> np.ndarray:
        """(B, K, C, H, W) physical frames up to and including each init time."""
        stop = self.init_index[[i for i, _, _ in batch]] + 1
        return np.stack(
            [
                self.order.orient(self.fields.frames(s, int(t) - self.context, int(t)))
                for (_, s, _), t in zip(batch, stop, strict=True)
            ]
        )

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
) -> RolloutResult:
    """Forecast `steps` leads from every (init time, sample) of DATA into the Zarr store `out`.

    An ensemble (`members`, or several checkpoints) gets a `number` dim; see `EnsembleSpec` for
    how members are spread over the checkpoints and perturbed. Without it the store has none.

    `subset` selects part of DATA first, as `minconv train` splits do (`split=test`,
    `trajectory=150:200`, a time range `START/END`).
    mode: `create` (refuse an existing `out`), `overwrite` (replace it once the new store is
    complete) or `resume` (fill in what an interrupted run with the same settings left out).
    `precision`: fp32, bf16 or auto (bf16 where the device has native bf16; when resuming,
    auto keeps the store's own precision). Everything is checked before anything is written.
    `allow_missing_chunks`: Zarr chunks of DATA that are not stored read as NaN (else an error).
    """
    from minconv_cli.core.precision import resolve_precision

    started = time.perf_counter()
    check_not_blank(subset, "--subset")
    names = [checkpoint] if isinstance(checkpoint, (str, Path)) else list(checkpoint)
    paths = [local_path(c, "CHECKPOINT") for c in names]
    out, data = local_path(out, "--out"), [as_source(p) for p in data]
    with output_lock(out, command):  # one writer per store
        recover(out)  # what a killed run left beside it
        spec = _ensemble_spec(
            len(paths), members, perturbation, perturbation_smoothing, seed, step_noise, recentre
        )
        _check_request(steps, batch_size, zarr_format, mode, out, data)
        dev = resolve_device(device)
        keep_freed_memory()
        if precision == "auto" and mode == "resume" and resume_target(out).exists():
            precision = stored_precision(resume_target(out))
        precision = resolve_precision(precision, dev, "--precision")
        loads = _load_checkpoints(paths, dev)
        context = _context(loads, context, step_noise)
        job = _job(loads[0], data, subset, init_times, context, steps, spec, allow_missing_chunks)
        model_name = loads[0].meta.model.name
        settings, attrs = _store_settings(
            job, data, paths, spec, subset, precision, command, model_name
        )
        clock = {"read": 0.0, "model": 0.0, "write": 0.0}
        t0 = time.perf_counter()
        target, todo, pending = _open_store(job, spec, out, mode, settings, attrs, zarr_format)
        clock["write"] += time.perf_counter() - t0
        writer = StoreWriter(target, job.fields, members=spec is not None)
        if progress:
            progress(len(todo) - len(pending), len(todo))
        run = _Run(job, spec, writer, batch_size, dev, precision, clock, progress, len(todo))
        run.forecast(loads, pending)
        finish(target, out)
        return RolloutResult(
            path=str(out),
            init_times=time_labels(job.fields.times[job.init_index]),
            samples=job.fields.n_samples,
            steps=steps,
            members=spec.members if spec is not None else None,
            variables=job.fields.variables,
            written=len(pending),
            skipped=len(todo) - len(pending),
            seconds=round(time.perf_counter() - started, 3),
            timings={k: round(v, 4) for k, v in clock.items()},
        )


def _open_store(
    job: Job, spec: Any, out: Path, mode: str, settings: dict, attrs: dict, zarr_format: int
) -> tuple[Path, list, list]:
    """(where to write, every sequence in store order, those not done yet)."""
    from minconv_cli.rollout.store import add_member_dim

    template, encoding = store_template(
        job.fields, job.order, job.init_index, job.steps, job.step, attrs
    )
    if spec is not None:
        template, encoding = add_member_dim(template, encoding, spec, DONE)
    target, done = open_target(out, mode, template, encoding, settings, zarr_format)
    todo = job.sequences()
    if spec is not None:  # store positions (init, member, *sample), in store order
        todo = sorted(
            ((i, s, (pos[0], m, *pos[1:])) for i, s, pos in todo for m in range(spec.members)),
            key=lambda seq: seq[2],
        )
    if spec is not None and spec.recentre:  # a block is recentred on its control: redo it whole
        open_blocks = {_block(spec, seq) for seq in todo if not done[seq[2]]}
        return target, todo, [seq for seq in todo if _block(spec, seq) in open_blocks]
    return target, todo, [seq for seq in todo if not done[seq[2]]]


def _block(spec: Any, seq: tuple) -> tuple:
    """The ensemble block of a sequence (init, sample, store position): init, sample, checkpoint."""
    i, s, pos = seq
    return (i, s, spec.checkpoint_of(pos[1]))


def _batches(spec: Any, seqs: list, batch_size: int) -> list[list]:
    """`seqs` cut into batches of `batch_size`; with recentring, of whole blocks (at least one)."""
    if spec is None or not spec.recentre:
        return [seqs[start : start + batch_size] for start in range(0, len(seqs), batch_size)]
    blocks: dict[tuple, list] = {}
    for seq in seqs:
        blocks.setdefault(_block(spec, seq), []).append(seq)
    out: list[list] = []
    for block in blocks.values():
        if out and len(out[-1]) + len(block) <= batch_size:
            out[-1].extend(block)
        else:
            out.append(list(block))
    return out


def _ensemble_spec(
    n_checkpoints: int,
    members: int | None,
    perturbation: float,
    perturbation_smoothing: float,
    seed: int,
    step_noise: float,
    recentre: bool = False,
) -> Any:
    """The `EnsembleSpec` of an ensemble (`members`, or several checkpoints), else None."""
    from minconv_cli.rollout.plan import EnsembleSpec

    if members is not None or n_checkpoints > 1:
        return EnsembleSpec(
            n_checkpoints if members is None else members,
            n_checkpoints,
            perturbation,
            perturbation_smoothing,
            seed,
            step_noise,
            recentre,
        )
    if recentre:
        raise MinconvError("--recentre: needs an ensemble (--members, or several checkpoints)")
    if step_noise:
        raise MinconvError("--step-noise: needs an ensemble (--members, or several checkpoints)")
    return None


def _load_checkpoints(paths: list[Path], dev: Any) -> list[LoadedCheckpoint]:
    """The checkpoints, each able to drive a rollout, all trained on the same data contract."""
    from minconv_cli.models.checkpoint import check_same_data, load_checkpoint

    loads = [load_checkpoint(p, map_location=dev) for p in paths]
    for each, path in zip(loads, paths, strict=True):
        each.meta.for_rollout(path)
    check_same_data([each.meta for each in loads], paths)
    return loads


def _context(loads: list[LoadedCheckpoint], context: int | None, step_noise: float) -> int:
    """`--context`, by default the longest training context (every checkpoint has its frames)."""
    from minconv_cli.rollout.plan import residual_count

    if context is None:
        context = max(int(each.meta.context or 1) for each in loads)
    if context < 1:
        raise MinconvError(f"--context: must be at least 1, got {context}")
    if step_noise and residual_count(context) < 1:
        raise MinconvError(
            f"--step-noise: draws from the model's one-step errors on the context, so it needs "
            f"--context of at least 2, got {context}"
        )
    return context


def _job(
    loaded: LoadedCheckpoint,
    data: list[Any],
    subset: str | None,
    init_times: str | None,
    context: int,
    steps: int,
    spec: Any,
    allow_missing_chunks: bool = False,
) -> Job:
    """DATA opened and checked against the checkpoint's data contract, and the init times."""
    meta = loaded.meta
    fields = meta.data.open_matching(data, allow_missing_chunks=allow_missing_chunks)
    if subset:
        fields = split_fields(fields, subset)
    order = meta.check_against(fields)
    if spec is not None and "number" in fields.sample_dims:
        raise MinconvError(f"{fields.path_label}: has a 'number' dim, the ensemble member dim")
    step = meta.data.step()
    if isinstance(step, CalendarStep) and isinstance(fields.time_step, CalendarStep):
        step = fields.time_step  # the data's own stamps (month start, end or middle)
    init_index = select_init_times(init_times, fields, context, step)
    return Job(fields, order, init_index, context, steps, step)


def _store_settings(
    job: Job,
    data: list[Any],
    paths: list[Path],
    spec: Any,
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
    if spec is not None:  # only ensembles record these: deterministic stores stay as they were
        settings["ensemble"] = {**spec.settings(), "checkpoints_sha256": shas}
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
    if spec is not None:
        attrs["checkpoints"] = json.dumps([str(p.resolve()) for p in paths])
        attrs["ensemble"] = json.dumps(spec.settings())
    return settings, attrs


@dataclass
class _Run:
    """The forecast loop over the pending sequences: checkpoint by checkpoint, batch by batch."""

    job: Job
    spec: Any
    writer: StoreWriter
    batch_size: int
    dev: Any
    precision: str
    clock: dict
    progress: Progress | None
    total: int

    def forecast(self, loads: list[LoadedCheckpoint], pending: list) -> None:
        from minconv_cli.rollout.plan import (
            perturb,
            recentre_matrix,
            residual_count,
            step_noise_draws,
        )

        job, spec, writer, batch_size = self.job, self.spec, self.writer, self.batch_size
        dev, precision, clock, progress = self.dev, self.precision, self.clock, self.progress
        steps, context = job.steps, job.context
        static = job.static()
        finished = self.total - len(pending)
        for k, each in enumerate(loads):
            model = each.model.eval()
            normalizer = Normalizer.from_dict(each.meta.data.normalizer)
            mine = [seq for seq in pending if spec is None or spec.checkpoint_of(seq[2][1]) == k]
            for batch in _batches(spec, mine, batch_size):
                t0 = time.perf_counter()
                noise = mix = None
                if spec is None:
                    frames = job.context_frames(batch)
                else:  # members of one (init, sample) share their frames: read them once
                    first = {
                        (i, s): n
                        for n, (i, s) in enumerate(dict.fromkeys((i, s) for i, s, _ in batch))
                    }
                    read = job.context_frames([(i, s, None) for i, s in first])
                    frames = read[[first[(i, s)] for i, s, _ in batch]]
                    keys = [(int(job.init_index[i]), s, pos[1]) for i, s, pos in batch]
                    frames = perturb(frames, normalizer.std, spec, keys)
                    if spec.step_noise:
                        noise = step_noise_draws(spec, keys, steps, residual_count(context))
                    if spec.recentre:
                        blocks = [_block(spec, seq) for seq in batch]
                        mix = recentre_matrix(spec, [pos[1] for _, _, pos in batch], blocks)
                t1 = time.perf_counter()
                values = forecast(
                    model, normalizer, frames, static, steps, dev, precision, noise, mix
                )
                # cells missing in the initial frame (e.g. land in SST) stay missing in the forecast
                values = np.where(np.isnan(frames[:, -1:]), np.float32(np.nan), values)
                t2 = time.perf_counter()
                writer.write([pos for _, _, pos in batch], values)
                clock["read"] += t1 - t0
                clock["model"] += t2 - t1
                clock["write"] += time.perf_counter() - t2
                finished += len(batch)
                if progress:
                    progress(finished, self.total)


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
