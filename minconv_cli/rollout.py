"""Forecasts from initial conditions: check the data against a checkpoint, roll the model forward,
and write a WeatherBench 2-layout Zarr store batch by batch, so an interrupted run can resume."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from minconv_cli import __version__
from minconv_cli.checkpoint import GridOrder
from minconv_cli.data import Fields, Normalizer, split_fields, timeaxis
from minconv_cli.data.remote import as_source, is_url, local_path
from minconv_cli.data.timeaxis import CalendarStep, format_step, format_time
from minconv_cli.errors import MinconvError
from minconv_cli.files import resolve_device
from minconv_cli.store import (
    DONE,
    MODES,
    SETTINGS_ATTR,
    StoreWriter,
    finish,
    open_target,
    store_template,
    stored_precision,
)

Progress = Callable[[int, int], None]


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


# --------------------------------------------------------------------------- init times


def select_init_times(spec: str | None, fields: Fields, context: int, step: Any) -> np.ndarray:
    """Indices along DATA's time axis of the init times a SPEC names, each with `context` frames.

    SPEC: None (every possible time; for data with sample dims, the first one: index context-1),
    `all`, a comma-separated list of times, or ranges `start/stop[/stride]` (inclusive).
    """
    n = fields.n_times
    if n < context:
        raise MinconvError(
            f"{fields.path_label}: {n} time step(s), fewer than the {context} context frames"
        )
    if spec is None:
        spec = "first" if fields.sample_dims else "all"
    spec = spec.strip()
    if spec in ("all", "first"):
        candidates = range(context - 1, n) if spec == "all" else [context - 1]
        chosen = [i for i in candidates if _window_regular(fields.times, i, context, step)]
        if not chosen:
            raise MinconvError(
                f"{fields.path_label}: no time has {context} evenly spaced frames up to it"
            )
        return np.asarray(chosen, dtype=np.int64)
    indices: list[int] = []
    for part in filter(None, (p.strip() for p in spec.split(","))):
        for value in _expand(part, fields, step):
            indices.append(_time_index(fields, value))
    if not indices:
        raise MinconvError(f"--init-times: {spec!r} names no time")
    for i in sorted(set(indices)):
        if i < context - 1:
            raise MinconvError(
                f"{fields.path_label}: init time {format_time(fields.times[i])} has only {i + 1} frame(s) up to it; "
                f"the context needs {context}"
            )
        if not _window_regular(fields.times, i, context, step):
            raise MinconvError(
                f"{fields.path_label}: the {context} frames up to init time {format_time(fields.times[i])} "
                f"are not evenly spaced by {format_step(step)}"
            )
    return np.asarray(sorted(set(indices)), dtype=np.int64)


def time_labels(times: np.ndarray) -> list[Any]:
    """Init times as JSON values: ISO strings for datetimes (any calendar), numbers otherwise."""
    if timeaxis.is_cftime(times):
        return [t.isoformat() for t in times]
    if times.dtype.kind == "M":
        return [pd.Timestamp(t).isoformat() for t in times]
    return [float(t) for t in times]


def _window_regular(times: np.ndarray, i: int, context: int, step: Any) -> bool:
    window = times[i - context + 1 : i + 1]
    if len(window) < 2:
        return True
    if isinstance(step, CalendarStep) or timeaxis.is_cftime(window):
        return bool(timeaxis.regular_pairs(window, step).all())
    diffs = np.diff(window)
    if isinstance(step, np.timedelta64):
        return bool(np.all(diffs.astype("timedelta64[ns]") == step))
    return bool(np.allclose(diffs.astype(np.float64), step, rtol=1e-6, atol=0))


def _expand(part: str, fields: Fields, step: Any) -> list[Any]:
    """One list item: a single time, or the data's times in `start/stop[/stride]` (inclusive).

    A range picks the data's own times (a date alone covers its whole day), every `stride` from
    the first one in the range, so `2009-01-01/2009-12-31/7D` works on data stamped 12 UTC.
    """
    pieces = part.split("/")
    if len(pieces) == 1:
        return [_parse_time(pieces[0], fields)]
    if len(pieces) not in (2, 3):
        raise MinconvError(f"--init-times: {part!r} is not start/stop or start/stop/stride")
    start = _parse_time(pieces[0], fields)
    stop = _parse_time(pieces[1], fields, whole_day=True)
    stride = _parse_stride(pieces[2], fields) if len(pieces) == 3 else step
    if stop < start:
        raise MinconvError(f"--init-times: range {part!r} ends before it starts")
    times = timeaxis.as_axis(fields.times)
    inside = times[(times >= start) & (times <= stop)]
    if inside.size == 0:
        raise MinconvError(
            f"--init-times: no time of the data lies in {part!r} "
            f"(it covers {format_time(times[0])} to {format_time(times[-1])})"
        )
    if isinstance(stride, CalendarStep):
        keep = (
            timeaxis.month_number(inside) - timeaxis.month_number(inside[:1])
        ) % stride.months == 0
    elif timeaxis.is_cftime(inside):
        keep = timeaxis.elapsed(inside) % stride == np.timedelta64(0, "ns")
    elif fields.time_is_datetime:
        keep = (inside - inside[0]) % stride == np.timedelta64(0, "ns")
    else:
        ratio = (inside - inside[0]) / stride
        keep = np.abs(ratio - np.round(ratio)) < 1e-6
    return list(inside[keep])


def _parse_time(text: str, fields: Fields, whole_day: bool = False) -> Any:
    try:
        if fields.time_is_datetime:  # a date, month or year alone ends at its last instant
            return timeaxis.parse_time(text, fields.times, end=whole_day)
        return float(text)
    except (ValueError, TypeError):
        kind = "a date/time" if fields.time_is_datetime else "a number"
        raise MinconvError(f"--init-times: cannot read {text.strip()!r} as {kind}") from None


def _parse_stride(text: str, fields: Fields) -> Any:
    if isinstance(fields.time_step, CalendarStep):
        calendar = timeaxis.parse_stride(text)
        if calendar is not None:  # 3M, 1Y, 6MS: a number of calendar months or years
            return calendar
        raise MinconvError(
            f"--init-times: stride {text.strip()!r}: monthly/yearly data takes strides like 3M or 1Y"
        )
    try:
        if fields.time_is_datetime:
            stride = pd.Timedelta(text.strip()).to_timedelta64().astype("timedelta64[ns]")
            ok = stride > np.timedelta64(0, "ns")
        else:
            stride = float(text)
            ok = stride > 0
    except (ValueError, TypeError):
        ok = False
    if not ok:
        raise MinconvError(f"--init-times: stride {text.strip()!r} is not a positive time step")
    return stride


def _time_index(fields: Fields, value: Any) -> int:
    times = fields.times
    if timeaxis.is_cftime(times):
        hits = np.flatnonzero(times == value)
    elif fields.time_is_datetime:
        hits = np.flatnonzero(times.astype("datetime64[ns]") == value)
    else:
        scale = abs(float(fields.time_step)) if fields.time_step else 1.0
        hits = np.flatnonzero(
            np.isclose(times.astype(np.float64), value, rtol=0, atol=1e-6 * scale)
        )
    if not len(hits):
        raise MinconvError(
            f"{fields.path_label}: init time {format_time(value)} is not in the data "
            f"(it covers {format_time(times[0])} to {format_time(times[-1])})"
        )
    return int(hits[0])


# --------------------------------------------------------------------------- the model


def forecast(
    model: Any,
    normalizer: Normalizer,
    frames: np.ndarray,
    static: np.ndarray | None,
    steps: int,
    device: Any = "cpu",
    precision: str = "fp32",
    noise: tuple[np.ndarray, np.ndarray] | None = None,
) -> np.ndarray:
    """Leads 1..steps in physical units (B, steps, C, H, W) from context frames (B, K, C, H, W).

    The context is ingested in parallel mode; its last output is lead 1, then `model.step` runs
    steps-1 times carrying the state, so the cost is linear in `steps`. `precision` (resolved:
    fp32 or bf16) is that of the convolutions; state and outputs are fp32.
    `noise` = (index (B, steps), factor (B,)) from `ensemble.step_noise_draws`: every lead gets
    factor x one of the row's own one-step residuals on the second half of its context (teacher
    forced, normalised units), the model's error made on this very forecast's frames.
    """
    import torch

    from minconv_cli.ensemble import residual_count
    from minconv_cli.precision import autocast

    x, valid = normalizer.normalize(frames)
    with torch.inference_mode(), autocast(device, precision):
        xt = torch.from_numpy(np.ascontiguousarray(x)).to(device)
        st = None
        if static is not None and static.shape[0]:
            s = torch.from_numpy(np.ascontiguousarray(normalizer.normalize_static(static))).to(
                device
            )
            st = s.unsqueeze(0).expand(xt.shape[0], *s.shape).contiguous()
        y, state = model(xt, context=xt.shape[1], static=st, return_state=True)
        leads = y.new_empty(y.shape[0], steps, *y.shape[2:])  # filled in place, lead by lead
        error = None
        if noise is not None:
            n = residual_count(xt.shape[1])
            ok = torch.from_numpy(np.ascontiguousarray(valid[:, -n:])).to(device)
            pool = torch.where(ok, xt[:, -n:] - y[:, -n - 1 : -1], 0.0)  # (B, n, C, H, W)
            rows = torch.arange(pool.shape[0], device=device)[:, None]
            index = torch.from_numpy(noise[0]).to(device)
            factor = torch.from_numpy(noise[1]).to(device)[:, None, None, None]
            error = pool[rows, index] * factor[:, None]  # (B, steps, C, H, W)
        pred = leads[:, 0] = y[:, -1] if error is None else y[:, -1] + error[:, 0]
        for i in range(1, steps):
            pred, state = model.step(pred, state, static=st)
            if error is not None:
                pred = pred + error[:, i]
            leads[:, i] = pred
        out = normalizer.denormalize(leads)
        return out.float().cpu().numpy()


# --------------------------------------------------------------------------- the command


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
    """
    from minconv_cli.checkpoint import load_checkpoint
    from minconv_cli.ensemble import (
        EnsembleSpec,
        add_member_dim,
        check_same_data,
        perturb,
        residual_count,
        step_noise_draws,
    )
    from minconv_cli.precision import resolve_precision

    started = time.perf_counter()
    names = [checkpoint] if isinstance(checkpoint, (str, Path)) else list(checkpoint)
    paths = [local_path(c, "CHECKPOINT") for c in names]
    out, data = local_path(out, "--out"), [as_source(p) for p in data]
    spec = None
    if members is not None or len(paths) > 1:
        spec = EnsembleSpec(
            len(paths) if members is None else members,
            len(paths),
            perturbation,
            perturbation_smoothing,
            seed,
            step_noise,
        )
    elif step_noise:
        raise MinconvError("--step-noise: needs an ensemble (--members, or several checkpoints)")
    _check_request(steps, batch_size, zarr_format, mode, out, data)
    ckpt_path = paths[0]
    dev = resolve_device(device)
    if precision == "auto" and mode == "resume" and out.exists():
        precision = stored_precision(out)
    precision = resolve_precision(precision, dev, "--precision")
    loads = [load_checkpoint(p, map_location=dev) for p in paths]
    for each, path in zip(loads, paths, strict=True):
        each.meta.for_rollout(path)
    check_same_data([each.meta for each in loads], paths)
    loaded = loads[0]
    meta = loaded.meta
    if context is None:  # the longest training context, so that every checkpoint has its frames
        context = max(int(each.meta.context or 1) for each in loads)
    if context < 1:
        raise MinconvError(f"--context: must be at least 1, got {context}")
    if step_noise and residual_count(context) < 1:
        raise MinconvError(
            f"--step-noise: draws from the model's one-step errors on the context, so it needs "
            f"--context of at least 2, got {context}"
        )
    fields = meta.data.open_matching(data)
    if subset:
        fields = split_fields(fields, subset)
    order = meta.check_against(fields)
    if spec is not None and "number" in fields.sample_dims:
        raise MinconvError(f"{fields.path_label}: has a 'number' dim, the ensemble member dim")
    step = meta.data.step()
    if isinstance(step, CalendarStep) and isinstance(fields.time_step, CalendarStep):
        step = fields.time_step  # the data's own stamps (month start, end or middle)
    job = Job(fields, order, select_init_times(init_times, fields, context, step), context, steps)
    shas = [file_sha256(p) for p in paths]
    sha = shas[0]
    init_labels = time_labels(fields.times[job.init_index])
    settings = {
        "checkpoint_sha256": sha,
        "steps": steps,
        "context": context,
        "init_times": init_labels,
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
        "checkpoint": str(ckpt_path.resolve()),
        "checkpoint_sha256": sha,
        "command": command,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "model": meta.model.name,
        "context": context,
        "precision": precision,
        "source": ", ".join(str(p) for p in data),
        SETTINGS_ATTR: json.dumps(settings),
    }
    if spec is not None:
        attrs["checkpoints"] = json.dumps([str(p.resolve()) for p in paths])
        attrs["ensemble"] = json.dumps(spec.settings())
    clock = {"read": 0.0, "model": 0.0, "write": 0.0}
    t0 = time.perf_counter()
    template, encoding = store_template(fields, order, job.init_index, steps, step, attrs)
    if spec is not None:
        template, encoding = add_member_dim(template, encoding, spec, DONE)
    target, done = open_target(out, mode, template, encoding, settings, zarr_format)
    clock["write"] += time.perf_counter() - t0
    todo = job.sequences()
    if spec is not None:  # store positions (init, member, *sample), in store order
        todo = sorted(
            ((i, s, (pos[0], m, *pos[1:])) for i, s, pos in todo for m in range(spec.members)),
            key=lambda seq: seq[2],
        )
    pending = [seq for seq in todo if not done[seq[2]]]
    writer = StoreWriter(target, fields, members=spec is not None)
    static = job.static()
    if progress:
        progress(len(todo) - len(pending), len(todo))
    finished = len(todo) - len(pending)
    for k, each in enumerate(loads):
        model = each.model.eval()
        normalizer = Normalizer.from_dict(each.meta.data.normalizer)
        mine = [seq for seq in pending if spec is None or spec.checkpoint_of(seq[2][1]) == k]
        for start in range(0, len(mine), batch_size):
            batch = mine[start : start + batch_size]
            t0 = time.perf_counter()
            noise = None
            if spec is None:
                frames = job.context_frames(batch)
            else:  # members of one (init, sample) share their frames: read them once
                first = {
                    (i, s): n for n, (i, s) in enumerate(dict.fromkeys((i, s) for i, s, _ in batch))
                }
                read = job.context_frames([(i, s, None) for i, s in first])
                frames = read[[first[(i, s)] for i, s, _ in batch]]
                keys = [(int(job.init_index[i]), s, pos[1]) for i, s, pos in batch]
                frames = perturb(frames, normalizer.std, spec, keys)
                if spec.step_noise:
                    noise = step_noise_draws(spec, keys, steps, residual_count(context))
            t1 = time.perf_counter()
            values = forecast(model, normalizer, frames, static, steps, dev, precision, noise)
            # cells missing in the initial frame (e.g. land in SST) stay missing in the forecast
            values = np.where(np.isnan(frames[:, -1:]), np.float32(np.nan), values)
            t2 = time.perf_counter()
            writer.write([pos for _, _, pos in batch], values)
            clock["read"] += t1 - t0
            clock["model"] += t2 - t1
            clock["write"] += time.perf_counter() - t2
            finished += len(batch)
            if progress:
                progress(finished, len(todo))
    finish(target, out)
    return RolloutResult(
        path=str(out),
        init_times=init_labels,
        samples=fields.n_samples,
        steps=steps,
        members=spec.members if spec is not None else None,
        variables=fields.variables,
        written=len(pending),
        skipped=len(todo) - len(pending),
        seconds=round(time.perf_counter() - started, 3),
        timings={k: round(v, 4) for k, v in clock.items()},
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
