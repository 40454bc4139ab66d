"""`train_model`: the training run behind `minconv train` (single process or DDP under torchrun).

Every random choice is a function of (seed, epoch, step): the model is initialised from `seed`,
each epoch's shuffle from (seed, epoch) and each step's input noise from (seed, step). With the
position within the epoch saved in last.pt, a resumed run repeats exactly what an uninterrupted
one would have done.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from torch.utils.data import DataLoader, DistributedSampler

from minconv_cli.core.errors import MinconvError
from minconv_cli.core.files import output_lock, recover
from minconv_cli.core.precision import resolve_precision
from minconv_cli.data.stream import BlockStream
from minconv_cli.models import count_parameters
from minconv_cli.models.checkpoint import save_checkpoint
from minconv_cli.training.budget import Budget, spread
from minconv_cli.training.build import build_model, build_optimizer, build_scheduler, norm_note
from minconv_cli.training.config import Config
from minconv_cli.training.crop import make_cropper
from minconv_cli.training.data import prepare_data
from minconv_cli.training.distributed import Dist, all_reduce_sum, setup, teardown
from minconv_cli.training.memory_check import plan_training_step
from minconv_cli.training.position import Position, generator, horizon_at, stop_on_signals
from minconv_cli.training.resume import restore, run_meta, save_last
from minconv_cli.training.run_dir import RunDir
from minconv_cli.training.steps import Validation, training_loss, validate
from minconv_cli.training.summary import run_summary

__all__ = ["Reporter", "Run", "TrainResult", "build_model", "horizon_at", "train_model"]


class Reporter(Protocol):
    """Progress sink (the command's rich display); library code prints nothing itself."""

    def note(self, message: str) -> None: ...
    def begin(self, epochs: int, first_epoch: int) -> None: ...
    def epoch(self, epoch: int, steps: int, done: int) -> None: ...
    def step(self, loss: float, windows: int) -> None: ...
    def epoch_done(self, row: dict[str, Any]) -> None: ...
    def end(self) -> None: ...


@dataclass
class TrainResult:
    """How a run ended and its summary (as written to summary.json)."""

    status: str  # completed | early_stopping | time_budget | interrupted
    summary: dict[str, Any]
    run_dir: Path


class Run:
    """State of one training run (model, optimiser, schedule, data, position) and its steps."""

    def __init__(
        self,
        config: Config,
        out: Path,
        resume: bool,
        overwrite: bool,
        reporter: Reporter | None,
        info: Dist,
        device: torch.device,
        started: float | None = None,
    ) -> None:
        # the time budget counts from here (setup included), or from when the command started
        self.t0 = time.monotonic() if started is None else started
        self.config, self.info, self.device = config, info, device
        self.precision = resolve_precision(config.train.precision, device, "train.precision")
        self.run_dir = RunDir(out).resolve(resume, overwrite)
        if info.is_main:
            self.run_dir.check(resume=resume, overwrite=overwrite)
        self.reporter = reporter if info.is_main else None
        self.data = prepare_data(config)
        torch.manual_seed(config.train.seed)
        self.model = build_model(config, self.data).to(device)
        self.model.precision = self.precision
        self.cropper, self.crop_note = make_cropper(config, self.data)
        self.memory_plan = plan_training_step(
            config, self.data, self.model.hparams, self.precision, device
        )
        self.memory_plan.batch = self._agreed_batch(self.memory_plan.batch)
        config.train.batch_size = self.memory_plan.batch
        if info.is_main:  # data, model and memory are good: only now is an old run replaced
            self.run_dir.prepare(resume=resume, overwrite=overwrite)
        self._settle_norm()
        self.parameters = count_parameters(self.model)
        self.optimizer = build_optimizer(config, self.model)
        self.sampler = DistributedSampler(
            self.data.train_windows,
            num_replicas=info.world,
            rank=info.rank,
            shuffle=True,
            seed=config.train.seed,
        )
        self.steps_per_epoch = math.ceil(len(self.sampler) / config.train.batch_size)
        self.train_stream = self._stream(self.data.train_windows, shuffle=True)
        self.val_stream = self._stream(self.data.val_windows, shuffle=False)
        self.scheduler = build_scheduler(config, self.optimizer, self.steps_per_epoch)
        self.pos = restore(self) if resume else Position(history=[])
        # the budget covers every session of the run: this one's setup and the earlier ones
        self.budget = Budget(
            config.train.max_time, self.t0 - self.pos.elapsed, config.train.batch_size
        )
        if self.reporter:  # once the run is known to be valid (errors stay one line)
            self.reporter.note(self._data_note())
            for note in (self.crop_note, self.memory_plan.note):
                if note:
                    self.reporter.note(note)
        self.net = self._wrapped()

    def _agreed_batch(self, batch: int) -> int:
        """The smallest batch that fits on any rank (every rank must take as many steps)."""
        if not self.info.enabled:
            return batch
        each = torch.zeros(self.info.world, dtype=torch.float64)
        each[self.info.rank] = batch
        return int(all_reduce_sum(each, self.info).min().item())

    def _settle_norm(self) -> None:
        """Record what `norm: auto` chose (in config.yaml and the checkpoints) and say why."""
        self.hparams = self.model.hparams
        self.norm_note = norm_note(self.config.model.norm, self.model)
        self.config.model.norm = self.hparams["norm"]
        if self.cropper is not None:  # what the crop resolved `auto` padding to
            self.config.model.padding = self.hparams["padding"]
        if self.reporter and self.hparams["norm"] != "layer" and self.norm_note:
            self.reporter.note(self.norm_note)

    def _wrapped(self) -> torch.nn.Module:
        """The model as the steps call it: under DDP when distributed, compiled when asked (CUDA)."""
        net: torch.nn.Module = self.model
        if self.info.enabled:
            ids = [self.device.index] if self.device.type == "cuda" else None
            net = torch.nn.parallel.DistributedDataParallel(self.model, device_ids=ids)
        if self.config.train.compile and self.device.type == "cuda":
            net = torch.compile(net)
        return net

    # ------------------------------------------------------------------ data
    def _stream(self, windows: Any, shuffle: bool) -> BlockStream | None:
        """Lazily read windows come block by block (each chunk read about once per epoch); None
        for data in memory, whose windows are sliced from one array."""
        if not windows.fields.is_lazy:
            return None
        t = self.config.train
        lanes = max(1, t.num_workers)
        return BlockStream(
            windows,
            t.batch_size,
            shuffle=shuffle,
            seed=t.seed,
            rank=self.info.rank,
            world=self.info.world,
            workers=t.num_workers,
            buffer_bytes=self.data.memory["memory_limit_bytes"] // (2 * lanes),
        )

    def _data_note(self) -> str:
        m = self.data.memory
        size, limit = m["data_bytes"] / 2**20, m["memory_limit_bytes"] / 2**20
        if m["in_memory"]:
            return f"data: in memory ({size:,.0f} MB as float32; memory limit {limit:,.0f} MB)"
        frames = self.train_stream.frames if self.train_stream else 0
        return (
            f"data: read lazily from disk in blocks of {frames} times ({size:,.0f} MB as float32 "
            f"does not fit the memory limit of {limit:,.0f} MB; set data.memory_limit to change)"
        )

    # ------------------------------------------------------------------ loop
    def epoch_batches(self, epoch: int, skip: int) -> DataLoader:
        """This rank's batches of `epoch` (shuffled from (seed, epoch)), without the first `skip`."""
        if self.train_stream is not None:
            self.train_stream.set_epoch(epoch, skip)
            return self._loader(self.train_stream, None)
        self.sampler.set_epoch(epoch)
        order = list(self.sampler)
        size = self.config.train.batch_size
        batches = [order[i : i + size] for i in range(skip * size, len(order), size)]
        return self._loader(self.data.train_windows, batches)

    def _loader(self, dataset: Any, batches: list[list[int]] | None) -> DataLoader:
        """A loader of `batches` of a map-style dataset, or of a `BlockStream`'s own batches."""
        workers = self.config.train.num_workers
        if batches is None:
            return DataLoader(
                dataset,
                batch_size=None,
                num_workers=workers,
                pin_memory=self.device.type == "cuda",
            )
        return DataLoader(
            dataset,
            batch_sampler=batches,
            num_workers=workers,
            pin_memory=self.device.type == "cuda",
            persistent_workers=False,
        )

    def _validation_batches(self, loader: DataLoader) -> Any:
        """The validation batches within the time budget, cut to their fixed crops if cropping."""
        batches = self.budget.limit(loader)
        return batches if self.cropper is None else map(self.cropper.validation, batches)

    def validation(self) -> Validation:
        """All validation windows, or (when the time budget is short) an evenly spread subset of
        them, the same on every rank; `Validation.windows` says how many were validated."""
        t = self.config.train
        n = len(self.data.val_windows)
        count = self.budget.val_windows(n, self.info.world)
        if self.info.enabled:  # rank 0's count on every rank (the others add 0)
            shared = torch.tensor([count if self.info.is_main else 0], dtype=torch.float64)
            count = int(all_reduce_sum(shared, self.info).item())
        if self.val_stream is not None and count >= n:
            loader = self._loader(self.val_stream, None)
        else:  # in-memory data, or a partial validation: only the chosen windows are read
            mine = spread(n, count)[self.info.rank :: self.info.world]
            batches = [mine[i : i + t.batch_size] for i in range(0, len(mine), t.batch_size)]
            loader = self._loader(self.data.val_windows, batches)
        self.model.eval()
        try:
            return validate(
                self.model,
                self._validation_batches(loader),
                t.context,
                t.horizon,
                self.data.normalizer,
                self.device,
                self.info,
            )
        finally:
            self.model.train()

    def _prepared(self, batch: dict) -> tuple[dict, torch.Generator | None]:
        """This step's batch (cut to its crops with `train.crop`) and its input-noise stream."""
        t, step = self.config.train, self.pos.global_step
        if self.cropper is not None:
            batch = self.cropper.train(batch, step, self.info.rank, t.context)
        noisy = t.noise > 0 or t.ensemble_members > 1
        return batch, generator(t.seed, step, self.info.rank) if noisy else None

    def _sync(self, loss: float, signalled: bool, over_time: bool) -> tuple[float, bool, bool]:
        """Mean loss over ranks, and whether any rank got a signal or ran out of time (one
        all-reduce per step, so that every rank stops at the same step)."""
        if not self.info.enabled:
            return loss, signalled, over_time
        t = torch.tensor([loss, float(signalled), float(over_time)], dtype=torch.float64)
        all_reduce_sum(t, self.info)
        return float(t[0]) / self.info.world, bool(t[1] > 0), bool(t[2] > 0)

    def _val_windows_here(self) -> int:
        return math.ceil(len(self.data.val_windows) / self.info.world)

    def run(self, flag: dict) -> str:
        """Train until the epochs are done, patience runs out, time is up, or a signal arrives."""
        t, p = self.config.train, self.pos
        if self.reporter:
            self.reporter.begin(t.epochs, p.epoch)
        signalled = over_time = False
        while p.epoch < t.epochs:
            epoch_start = time.monotonic() - p.epoch_seconds
            horizon = horizon_at(self.config, p.epoch)
            if self.reporter:
                self.reporter.epoch(p.epoch, self.steps_per_epoch, p.step)
            tick = time.monotonic()
            for batch in self.epoch_batches(p.epoch, p.step):
                batch, noise = self._prepared(batch)
                self.optimizer.zero_grad(set_to_none=True)
                loss = training_loss(self.net, batch, t.context, horizon, t, self.device, noise)
                value = float(loss.detach())
                if math.isfinite(value):
                    loss.backward()
                    if t.clip_grad is not None:
                        torch.nn.utils.clip_grad_norm_(self.model.parameters(), t.clip_grad)
                    self.optimizer.step()
                    if isinstance(self.scheduler, torch.optim.lr_scheduler.CosineAnnealingLR):
                        self.scheduler.step()
                now = time.monotonic()
                self.budget.step_done(now - tick)
                tick = now
                over_time = self.budget.stop_training(self._val_windows_here())
                value, signalled, over_time = self._sync(
                    value, flag["signal"] is not None, over_time
                )
                if not math.isfinite(value):
                    raise MinconvError(
                        f"training diverged: loss is {value} at epoch {p.epoch + 1}, step {p.step + 1}; "
                        f"kept the last good checkpoints in {self.run_dir.path} (try a lower --lr)"
                    )
                p.step += 1
                p.global_step += 1
                p.loss_sum += value
                if self.reporter:
                    self.reporter.step(value, batch["x"].shape[0] * self.info.world)
                if signalled or over_time:
                    break
            p.epoch_seconds = time.monotonic() - epoch_start
            p.elapsed = time.monotonic() - self.budget.started
            if signalled:
                if self.info.is_main:
                    save_last(self)
                return "interrupted"
            if self._finish_epoch(horizon):
                return "early_stopping"
            if p.epoch < t.epochs and not over_time:  # room for another epoch's first step?
                stop = self.budget.stop_training(self._val_windows_here())
                over_time = self._sync(0.0, False, stop)[2]
            if over_time and p.epoch < t.epochs:
                return "time_budget"
        return "completed"

    def _finish_epoch(self, horizon: int) -> bool:
        """Validate, record, checkpoint; True when early stopping says to stop."""
        t, p = self.config.train, self.pos
        val = self.validation()
        p.elapsed = time.monotonic() - self.budget.started
        lr = self.optimizer.param_groups[0]["lr"]
        row = {
            "epoch": p.epoch + 1,
            "train_loss": p.loss_sum / max(1, p.step),
            **val.row(),
            "lr": lr,
            "seconds": round(p.epoch_seconds, 3),
            "horizon": horizon,
            "val_windows": val.windows,
            "val_partial": val.windows < len(self.data.val_windows),
        }
        p.history.append(row)
        improved = val.score < p.best_score
        if improved:
            p.best_score, p.best_epoch, p.best_detail = val.score, p.epoch + 1, val.detail()
        if isinstance(self.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            self.scheduler.step(val.score)
        p.epoch += 1
        p.step, p.loss_sum, p.epoch_seconds = 0, 0.0, 0.0
        if self.info.is_main:
            if improved:
                save_checkpoint(self.run_dir.model, self.model, run_meta(self, p.epoch, row))
            save_last(self)
            self.run_dir.write_metrics(p.history)
        if self.reporter:
            self.reporter.epoch_done(row)
        return t.patience is not None and p.epoch - p.best_epoch >= t.patience


def train_model(
    config: Config,
    out: str | Path,
    *,
    resume: bool = False,
    overwrite: bool = False,
    reporter: Reporter | None = None,
    on_setup: Callable[[Dist], None] | None = None,
    started: float | None = None,
) -> TrainResult:
    """Train `config` into the run directory `out`; returns how it ended and the summary.
    `started`: the `time.monotonic()` that `train.max_time` counts from (default: now)."""
    info, device = setup(config.train.device)
    try:
        if on_setup is not None:
            on_setup(info)
        # one writer per run directory (rank 0 writes); what a killed run left is cleared
        with output_lock(Path(out), "minconv train") if info.is_main else nullcontext():
            if info.is_main:
                recover(Path(out))
            return _train(
                Run(config, Path(out), resume, overwrite, reporter, info, device, started)
            )
    finally:
        teardown(info)


def _train(run: Run) -> TrainResult:
    """Run `run` to its end and write its summary. The run (and with it the DDP model) is dropped
    when this returns, so that teardown can take the process group down."""
    if run.info.is_main:
        run.run_dir.write_config(run.config.to_yaml())
    try:
        with stop_on_signals() as flag:
            status = run.run(flag)
    except BaseException:
        if run.info.is_main:
            run.run_dir.abandon()
        raise
    finally:
        if run.reporter:
            run.reporter.end()
    summary = run_summary(run, status)
    summary["crop"] = list(run.cropper.shape) if run.cropper else None
    summary["crop_note"] = run.crop_note
    summary["dry_crops_redrawn"] = run.cropper.redrawn if run.cropper else None
    summary["step_memory"] = run.memory_plan.summary()
    if run.info.is_main:
        if status != "interrupted" and not run.run_dir.model.exists():
            last = run.pos.history[-1] if run.pos.history else {}
            raise MinconvError(
                f"{run.run_dir.path}: no model.pt: no epoch ended with a finite validation score "
                f"(last validation RMSE {last.get('val_rmse_cl', 'none')}); the data may hold "
                "values that overflow float32 arithmetic"
            )
        run.run_dir.write_summary(summary)
        if status != "interrupted":
            run.run_dir.complete()  # checked, and swapped in when it replaces an older run
            summary["replacement_dir"] = None
    return TrainResult(status=status, summary=summary, run_dir=run.run_dir.path)
