"""Single process or DistributedDataParallel under torchrun: ranks, devices, threads, reductions."""

from __future__ import annotations

import gc
import importlib
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from minconv_cli.core.allocator import keep_freed_memory
from minconv_cli.core.files import resolve_device


@dataclass(frozen=True)
class Dist:
    """This process' place in the job (world 1, rank 0 when not under torchrun)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    local_world: int = 1

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def available_cores() -> int:
    """CPU cores this process may use (affinity-aware)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def setup(preference: str) -> tuple[Dist, torch.device]:
    """Join the torchrun process group if there is one (nccl on CUDA, gloo on CPU); set threads
    and the allocator."""
    keep_freed_memory()
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    info = Dist(
        rank=int(os.environ.get("RANK", "0")),
        world=world,
        local_rank=int(os.environ.get("LOCAL_RANK", "0")),
        local_world=local_world,
    )
    device = resolve_device(preference, info.local_rank)
    if device.type == "cpu":
        torch.set_num_threads(max(1, available_cores() // max(1, local_world)))
    if info.enabled and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        # Imported after the group exists, torch._dynamo (which DDP imports) keeps the group
        # alive past destroy_process_group, so its worker threads outlive teardown.
        importlib.import_module("torch._dynamo")
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return info, device


def teardown(info: Dist) -> None:
    """Leave the process group (if this process joined one) and stop its worker threads.

    Gloo's workers drop their last finished collective after the caller has moved on; one still
    alive at interpreter exit aborts the process ("terminate called without an active
    exception"). With the DDP model collected first, destroying the group joins them while
    Python still runs."""
    if info.enabled and dist.is_initialized():
        gc.collect()
        dist.destroy_process_group()


def all_reduce_sum(tensor: torch.Tensor, info: Dist) -> torch.Tensor:
    """Sum over ranks in place (a no-op in a single process)."""
    if info.enabled:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor
