"""The forecast loop of a rollout: the store opened (alone or shared with other processes), its
rows forecast checkpoint by checkpoint and batch by batch, and the store finished."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from minconv_cli.core.files import Progress
from minconv_cli.data import Normalizer
from minconv_cli.models.checkpoint import LoadedCheckpoint
from minconv_cli.rollout.forecast_loop import forecast
from minconv_cli.rollout.init_times import time_labels
from minconv_cli.rollout.job import Job
from minconv_cli.rollout.plan import ForecastPlan, Row
from minconv_cli.rollout.shard_store import finish_shared, open_shared
from minconv_cli.rollout.shards import Shard, count_rows, wait_for_ranks
from minconv_cli.rollout.store import StoreWriter, store_template
from minconv_cli.training.memory_check import StepMemory


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
    shard: str | None = None  # I/N of a split rollout (torchrun rank or --shard task)
    complete: bool = True  # False: a --shard task ended before its siblings
    frames_per_second: float = 0.0  # forecast fields (one lead of one row) written per second
    bytes_per_second: float = 0.0  # forecast bytes written per second

    def to_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass
class BatchLoop:
    """The forecast loop over this process' pending rows, each batch asking the plan for its
    initial frames and its lead rule. Batches are cut from all rows as one process cuts them,
    whatever is done, so that a split or resumed run computes every batch the same way."""

    job: Job
    plan: ForecastPlan
    batch_size: int
    dev: Any
    precision: str
    progress: Progress | None
    shard: Shard | None = None
    clock: dict = field(default_factory=lambda: {"read": 0.0, "model": 0.0, "write": 0.0})
    target: Path = Path()
    writer: StoreWriter | None = None
    todo: list[Row] = field(default_factory=list)  # every row of the store
    pending: set = field(default_factory=set)  # store positions still to write
    batches: list = field(default_factory=list)  # (checkpoint, pending rows) of this process
    mine: int = 0  # rows of this process' batches (all rows when not split)
    mine_done: int = 0  # of which were done before this run
    written: int = 0

    def open_store(
        self, out: Path, mode: str, settings: dict, attrs: dict, zarr_format: int
    ) -> None:
        t0 = time.perf_counter()
        job, plan = self.job, self.plan
        template, encoding = store_template(
            job.fields, job.order, job.init_index, job.steps, job.step, attrs
        )
        template, encoding = plan.template(template, encoding)
        opened = open_shared(out, mode, template, encoding, settings, zarr_format, self.shard)
        self.target, done = opened
        self.todo = plan.rows(job.sequences())
        self.pending = {row[2] for row in plan.pending(self.todo, done)}
        self.clock["write"] += time.perf_counter() - t0
        self.writer = StoreWriter(self.target, job.fields, members=plan.members is not None)
        mine = self._my_batches()
        self.batches = [(k, [r for r in b if r[2] in self.pending]) for k, b in mine]
        self.batches = [(k, b) for k, b in self.batches if b]
        self.mine = sum(len(b) for _, b in mine)
        self.mine_done = self.mine - sum(len(b) for _, b in self.batches)
        self._report(0)

    def _my_batches(self) -> list[tuple[int, list[Row]]]:
        """(checkpoint, batch) of this process, in order, done rows included."""
        by_checkpoint: dict[int, list[Row]] = {}
        for row in self.todo:
            by_checkpoint.setdefault(self.plan.checkpoint_of(row), []).append(row)
        out = []
        for k in sorted(by_checkpoint):
            batches = self.plan.batches(by_checkpoint[k], self.batch_size)
            out += [(k, b) for b in (self.shard.take(batches) if self.shard else batches)]
        return out

    def _report(self, n: int) -> None:
        """Count `n` rows written; the progress bar (over all ranks on torchrun's rank 0)."""
        self.written += n
        shard = self.shard
        if shard is not None and shard.ranks:
            done = count_rows(n) + len(self.todo) - len(self.pending)
            if self.progress and shard.leads:
                self.progress(done, len(self.todo))
        elif self.progress:
            self.progress(self.mine_done + self.written, self.mine)

    def forecast(self, loads: list[LoadedCheckpoint]) -> None:
        static = self.job.static()
        models = {}
        for k, batch in self.batches:
            if k not in models:
                model = loads[k].model.eval()
                model.precision = self.precision
                models[k] = (model, Normalizer.from_dict(loads[k].meta.data.normalizer))
            self._batch(*models[k], static, batch)

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
        self._report(len(batch))

    def complete(self, out: Path, started: float, memory: StepMemory) -> RolloutResult:
        """The store moved into place (when every row is written), and what was written."""
        shard, written = self.shard, self.written
        if shard is not None and shard.ranks:
            wait_for_ranks(shard, lambda: self._report(0))
            written = count_rows(0) if shard.leads else written
        complete = finish_shared(self.target, out, shard)
        return self._result(out, started, memory, written, complete)

    def _result(
        self, out: Path, started: float, memory: StepMemory, written: int, complete: bool
    ) -> RolloutResult:
        fields, steps = self.job.fields, self.job.steps
        seconds = time.perf_counter() - started
        frames = written * steps
        frame_bytes = 4 * len(fields.channels) * int(np.prod(fields.grid_shape))
        whole = self.shard is None or self.shard.ranks
        return RolloutResult(
            path=str(out),
            init_times=time_labels(fields.times[self.job.init_index]),
            samples=fields.n_samples,
            steps=steps,
            members=self.plan.members,
            variables=fields.variables,
            written=written,
            skipped=(len(self.todo) if whole else self.mine) - written,
            seconds=round(seconds, 3),
            timings={k: round(v, 4) for k, v in self.clock.items()},
            memory=memory.summary(),
            memory_note=memory.note,
            shard=self.shard.label if self.shard else None,
            complete=complete,
            frames_per_second=round(frames / seconds, 3),
            bytes_per_second=round(frames * frame_bytes / seconds, 1),
        )
