"""A rollout split over processes: torchrun ranks (which talk to each other) or `--shard I/N` tasks
of a job array (which do not).

Every process cuts the store's rows into the batches a one-process run forecasts and takes every
N-th of them from its own index, so each batch is computed exactly as one process computes it
(the store is bit for bit the same) and no two processes write one chunk (a chunk holds one row,
and so does a done flag). The split is of all rows, not of those still to do, so tasks that
start at different times, or resume with another N, agree on who writes what.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from minconv_cli.core.errors import MinconvError

T = TypeVar("T")
ROWS_KEY = "minconv_rollout_rows"  # rows written over all ranks, in the process group's store


@dataclass(frozen=True)
class Shard:
    """This process' part of a split rollout: `index` of `count`; `ranks` under torchrun."""

    index: int
    count: int
    ranks: bool = False

    @property
    def label(self) -> str:
        return f"{self.index}/{self.count}"

    @property
    def leads(self) -> bool:
        """Whether this process creates and finishes the store alone (torchrun's rank 0)."""
        return self.ranks and self.index == 0

    def take(self, batches: list[T]) -> list[T]:
        """This process' batches: every `count`-th from its `index`."""
        return batches[self.index :: self.count]


def parse_shard(spec: str) -> Shard:
    """`--shard I/N`: task I (counting from 0, as Slurm's array ids usually do) of N."""
    found = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", spec)
    if not found:
        raise MinconvError(f"--shard: expected I/N (task I of N, from 0), got {spec!r}")
    index, count = int(found[1]), int(found[2])
    if count < 1:
        raise MinconvError(f"--shard {spec}: N must be at least 1")
    if index >= count:
        raise MinconvError(f"--shard {spec}: out of range, I must be 0 to {count - 1}")
    return Shard(index, count)


def torchrun_shard() -> Shard | None:
    """This rank's part when started by torchrun with more than one process, else None."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return None
    return Shard(int(os.environ.get("RANK", "0")), world, ranks=True)


def choose_shard(spec: str | None) -> Shard | None:
    """The split this process works in: `--shard` or torchrun's ranks (not both), or None."""
    ranks = torchrun_shard()
    if spec is None:
        return ranks
    if ranks is not None:
        raise MinconvError("--shard: not under torchrun, whose ranks already split the rollout")
    return parse_shard(spec)


def share_target(target: Any, shard: Shard) -> Any:
    """Rank 0's store path, sent to every rank (rank 0 passes it, the others get it)."""
    import torch.distributed as dist

    box = [target if shard.index == 0 else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def count_rows(n: int) -> int:
    """Add `n` rows written by this rank to the count over all ranks; the count."""
    from torch.distributed import distributed_c10d

    return int(distributed_c10d._get_default_store().add(ROWS_KEY, n))


def wait_for_ranks(shard: Shard, tick: Callable[[], None]) -> None:
    """Wait until every rank has written its part; rank 0 calls `tick` (its progress) meanwhile."""
    import torch.distributed as dist

    if not shard.leads:
        dist.barrier()
        return
    work = dist.barrier(async_op=True)
    while not work.is_completed():
        tick()
        time.sleep(0.2)
    work.wait()
    tick()
