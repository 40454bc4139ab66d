"""Where `evaluate` runs its one dask pass: in this process (threads, within `--memory-limit`), on
a `dask.distributed` LocalCluster of `--workers N` processes, or on a running scheduler
(`--scheduler ADDRESS`); and the run summary (OUT/run.json) of how fast it went."""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import dask

from minconv_cli.core.errors import MinconvError, one_line
from minconv_cli.core.files import Progress
from minconv_cli.data.memory import IN_MEMORY_FACTOR, parse_size
from minconv_cli.evaluate.align import BLOCK_BYTES, LOAD_BELOW_BYTES
from minconv_cli.evaluate.batches import BATCH_BYTES
from minconv_cli.evaluate.reductions import Compute, compute_here
from minconv_cli.evaluate.scoring import Scores, evaluate

MISSING = (
    "--scheduler / --workers need dask.distributed, the cluster extra: "
    "pip install -e '.[cluster]' (or pip install distributed)"
)
CONNECT_TIMEOUT_S = 5.0  # to reach a --scheduler before giving up
LOAD_SHARE = 8  # a forecast under limit / LOAD_SHARE is scored in memory (several copies at peak)
# the truth is loaded into memory when it fits limit / TRUTH_SHARE (loading it peaks at about
# three times its size); a larger one is read lazily, in slabs, by the blocks that need them
# (slower, and dask keeps some slabs read ahead: a loaded truth is the lower peak when it fits)
TRUTH_SHARE = 5
# a worker process holds about 300 MB of libraries (numpy, xarray, zarr, this package) before it
# scores anything, and dask pauses it at 80 % of its limit; at 512 MB workers scoring blocks sat at
# ~420 MB, paused, and the run stalled (benchmarks/evaluate_cluster.py): refuse less than 1 GiB
MIN_WORKER_BYTES = 2**30
# Peak memory per thread of the threaded scheduler, in blocks of BLOCK_BYTES: the forecast block,
# the truth and reference blocks gathered like it, and the metrics' temporaries
# (benchmarks/evaluate_cluster.py measures the peak). Larger blocks would make a smaller graph
# (about 0.5 MB per block) but raise the peak more: dask keeps some blocks' intermediates.
BLOCKS_PER_THREAD = 16
# Under a memory limit, each dask pass scores about limit / BATCH_SHARE of forecast: its graph
# (~0.1-0.2 MB per MB of forecast: tasks, keys, partial sums) then takes a bounded share of the
# limit, whatever the store's size (`batches.py`)
BATCH_SHARE = 4


@dataclass
class Engine:
    """How the pass runs: `compute` for `evaluate`, the forecast size loaded rather than scored
    lazily (`load_below`), the truth's memory budget, and what run.json reports."""

    compute: Compute
    load_below: int
    truth_memory: int | None
    scheduler: str  # "in-process", "local cluster" or the scheduler's address
    workers: int
    threads: int
    memory_limit: int | None
    config: dict = field(default_factory=dict)  # dask settings while evaluating (threads)
    block_bytes: int = BLOCK_BYTES  # the lazy forecast's blocks of init times
    batch_bytes: int = BATCH_BYTES  # the forecast scored per dask pass

    def evaluate(self, *args: Any, **kwargs: Any) -> Scores:
        """`scoring.evaluate(*args, **kwargs)` run on this engine; its `run` record (run.json)
        completed with where it ran and how fast."""
        start = time.perf_counter()
        with dask.config.set(self.config):
            scores = evaluate(
                *args,
                **kwargs,
                compute=self.compute,
                load_below=self.load_below,
                truth_memory=self.truth_memory,
                block_bytes=self.block_bytes,
                batch_bytes=self.batch_bytes,
            )
        scores.run = self.summary(time.perf_counter() - start, scores.run)
        return scores

    def summary(self, seconds: float, read: dict) -> dict:
        """run.json: where it ran, what was read (`Scores.run`) and how fast."""
        nbytes, frames = read.get("forecast_bytes", 0), read.get("frames", 0)
        return {
            "scheduler": self.scheduler,
            "workers": self.workers,
            "threads": self.threads,
            "memory_limit_bytes": self.memory_limit,
            "seconds": round(seconds, 3),
            **read,
            "bytes_per_s": round(nbytes / seconds, 1) if seconds > 0 else None,
            "frames_per_s": round(frames / seconds, 3) if seconds > 0 else None,
        }


def check_options(
    scheduler: str | None, workers: int | None, memory_limit: str | None
) -> int | None:
    """Refuse bad `--scheduler` / `--workers` / `--memory-limit` in one line (before anything is
    written); the memory limit in bytes. A cluster without dask.distributed installed is refused."""
    if scheduler is not None and workers is not None:
        raise MinconvError(
            "--scheduler and --workers: give one or the other (--workers N starts "
            "a local cluster, --scheduler joins a running one)"
        )
    if workers is not None and workers < 1:
        raise MinconvError(f"--workers: must be 1 or more, got {workers}")
    if scheduler is not None and not scheduler.strip():
        raise MinconvError("--scheduler: give the scheduler's address, e.g. tcp://host:8786")
    limit = None if memory_limit is None else parse_size(memory_limit, "--memory-limit")
    if limit == 0:
        raise MinconvError(f"--memory-limit: must be more than 0, got {memory_limit!r}")
    if scheduler is not None or workers is not None:
        require_distributed()
    if workers is not None and limit is not None and limit // workers < MIN_WORKER_BYTES:
        raise MinconvError(
            f"--memory-limit {memory_limit} for --workers {workers}: "
            f"{limit / workers / 2**20:.0f} MB per worker is too small; a worker needs "
            f"{MIN_WORKER_BYTES / 2**20:.0f} MB or more (about 300 MB of libraries, and dask pauses "
            "a worker at 80 % of its limit)"
        )
    return limit


def require_distributed() -> Any:
    """The `distributed` module, or one line naming the extra that brings it."""
    try:
        import distributed
    except ImportError:
        raise MinconvError(MISSING) from None
    return distributed


@contextlib.contextmanager
def dask_engine(
    scheduler: str | None = None, workers: int | None = None, memory_limit: int | None = None
) -> Iterator[Engine]:
    """The engine of one evaluation: a Client of `scheduler`, a LocalCluster of `workers`
    processes (one thread each, `memory_limit / workers` bytes each) and its Client, both closed
    on exit (errors and Ctrl-C included), or in this process (None, None)."""
    if scheduler is None and workers is None:
        yield in_process(memory_limit)
        return
    with _client(scheduler, workers, memory_limit) as client:
        n = len(client.scheduler_info().get("workers", {}))
        threads = sum(w.get("nthreads", 1) for w in client.scheduler_info()["workers"].values())
        yield Engine(
            compute=client_compute(client),
            load_below=0,  # the workers read and score the forecast, block by block
            # a loaded truth travels to every worker with the graph: it must fit each one
            truth_memory=_truth_memory(
                memory_limit // workers if memory_limit and workers else memory_limit
            ),
            scheduler=scheduler or "local cluster",
            workers=n,
            threads=threads,
            memory_limit=memory_limit,
            batch_bytes=_batch_bytes(memory_limit),
        )


def in_process(memory_limit: int | None) -> Engine:
    """Today's engine, dask's threaded scheduler in this process; under `memory_limit`, with as
    many threads as blocks in flight fit beside what the process already holds."""
    if memory_limit is None:
        return Engine(compute_here, LOAD_BELOW_BYTES, None, "in-process", 1, _cpus(), None)
    threads = _threads(memory_limit)
    load_below, truth = _load_below(memory_limit), _truth_memory(memory_limit)
    config = {"scheduler": "threads", "num_workers": threads}
    return Engine(
        compute_here,
        load_below,
        truth,
        "in-process",
        1,
        threads,
        memory_limit,
        config,
        batch_bytes=_batch_bytes(memory_limit),
    )


def _batch_bytes(memory_limit: int | None) -> int:
    """Forecast bytes per dask pass: a share of the limit (at most BATCH_BYTES)."""
    return BATCH_BYTES if memory_limit is None else min(BATCH_BYTES, memory_limit // BATCH_SHARE)


def _cpus() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _threads(memory_limit: int) -> int:
    """Threads whose blocks in flight fit `memory_limit` beside this process's memory now; one
    line when not even one does."""
    import psutil

    held = psutil.Process().memory_info().rss
    per_thread = BLOCKS_PER_THREAD * BLOCK_BYTES
    room = memory_limit - memory_limit // TRUTH_SHARE - held  # the truth's share beside
    if room < per_thread:
        need = (held + per_thread) / (1 - 1 / TRUTH_SHARE) / 2**20
        raise MinconvError(
            f"--memory-limit {memory_limit / 2**20:.0f} MB: too small, this process holds "
            f"{held / 2**20:.0f} MB before reading and scoring needs about {need:.0f} MB"
        )
    return max(1, min(_cpus(), room // per_thread))


def _load_below(memory_limit: int | None) -> int:
    """Forecasts smaller than this are loaded; the others are scored lazily, block by block."""
    return (
        LOAD_BELOW_BYTES
        if memory_limit is None
        else min(LOAD_BELOW_BYTES, memory_limit // LOAD_SHARE)
    )


def _truth_memory(memory_limit: int | None) -> int | None:
    """The budget `open_fields` loads the truth within: one that takes in the truth when its
    values fit limit / TRUTH_SHARE (open_fields reckons IN_MEMORY_FACTOR copies, for training)."""
    if memory_limit is None:
        return None
    return int(IN_MEMORY_FACTOR * (memory_limit // TRUTH_SHARE))


@contextlib.contextmanager
def _client(scheduler: str | None, workers: int | None, memory_limit: int | None) -> Iterator[Any]:
    """A Client of the scheduler at `scheduler`, or of a new LocalCluster; closed on exit."""
    distributed = require_distributed()
    with contextlib.ExitStack() as stack:
        stack.enter_context(_quiet_logs())
        if scheduler is not None:
            client = _connect(distributed, scheduler)
        else:
            cluster = stack.enter_context(_local_cluster(distributed, workers, memory_limit))
            client = distributed.Client(cluster, set_as_default=False)
        stack.callback(client.close)
        with client.as_current():
            yield client


def _local_cluster(distributed: Any, workers: int, memory_limit: int | None) -> Any:
    """A LocalCluster of `workers` processes, one thread and `memory_limit / workers` each."""
    per_worker = "auto" if memory_limit is None else memory_limit // workers
    try:
        return distributed.LocalCluster(
            n_workers=workers,
            threads_per_worker=1,
            processes=True,
            memory_limit=per_worker,
            dashboard_address=None,
            silence_logs=logging.ERROR,
        )
    except (OSError, RuntimeError, TimeoutError) as err:
        raise MinconvError(
            f"--workers {workers}: the local cluster did not start ({one_line(err)})"
        ) from None


def _connect(distributed: Any, address: str) -> Any:
    """A Client of the scheduler at `address`, or one line naming it (after CONNECT_TIMEOUT_S)."""
    try:
        return distributed.Client(address, timeout=CONNECT_TIMEOUT_S, set_as_default=False)
    except (OSError, TimeoutError, ValueError) as err:
        raise MinconvError(f"--scheduler {address}: cannot connect ({one_line(err)})") from None


@contextlib.contextmanager
def _quiet_logs() -> Iterator[None]:
    """distributed's own log lines (connection retries, worker start and stop) kept off stderr:
    the user sees the progress bar and one line on errors."""
    log = logging.getLogger("distributed")
    level = log.level
    log.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        log.setLevel(level)


def client_compute(client: Any) -> Compute:
    """The pass on `client`: every dask collection in the objects computed as futures, one bar
    over all their tasks (on every worker), then gathered back into the objects' shape."""

    def compute(objs: Sequence[Any], progress: Progress | None) -> tuple:
        from dask.base import unpack_collections

        collections, repack = unpack_collections(*objs)
        futures = client.compute(collections)
        if progress is not None:
            _follow(client, futures, progress)
        return repack(client.gather(futures))

    return compute


def _follow(client: Any, futures: list, report: Progress) -> None:
    """Report (done, total) tasks of `futures` and everything they depend on, as the scheduler
    sees them, until they are finished or one failed (distributed's progress plugin)."""
    from distributed.diagnostics.progressbar import TextProgressBar

    class _Bar(TextProgressBar):
        def _draw_bar(self, remaining: int, all: int, **kwargs: Any) -> None:  # noqa: A002
            report(all - remaining, all)

        def _draw_stop(self, **kwargs: Any) -> None:
            pass

    _Bar(futures, scheduler=client.scheduler.address, interval="200ms")
