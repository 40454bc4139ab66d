"""`BlockStream`: the windows of lazily read data, cut from chunk-aligned blocks of consecutive times.

Reading every window on its own reads its chunks again for each of the `length` windows that
overlap them. Instead each sample's times are cut into blocks along the store's time chunks; a block
is read once (plus the `length - 1` frames its last windows run into) and every window that starts in
it is cut out of it. An epoch's order is a function of (seed, epoch): the blocks are shuffled, and the
windows of each group of `SHUFFLE_BLOCKS` consecutive blocks are shuffled together (a shuffle buffer
across blocks). The windows served, and their values, are exactly those of the `WindowDataset`.

The epoch's window order is padded to a multiple of the ranks and cut into one contiguous piece per
DDP rank (as `DistributedSampler` pads), each rank's piece into batches, and the batches into one
contiguous run per DataLoader worker ("lane"), so that a worker reads its own blocks. The DataLoader
takes the workers' batches in turn, so the batch order is fixed by (seed, epoch, ranks, workers);
`set_epoch(epoch, skip)` leaves out the first `skip` batches of that order (resume).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from minconv_cli.data.windows import WindowDataset

SHUFFLE_BLOCKS = 8  # blocks whose windows are shuffled together
OVERLAP_FACTOR = 8  # blocks of at least this many times (length - 1): frames read ~once per epoch
BUFFER_SHARE = 2.5  # bytes held per float32 byte of a block: raw frames, normalised copy, mask


@dataclass(frozen=True)
class Block:
    """Frames `start:stop` of one sample and the windows (dataset indices) that start in them."""

    sample: int
    start: int
    stop: int
    windows: np.ndarray


def time_chunks(windows: WindowDataset) -> list[int]:
    """Chunk lengths along time of the first variable (one chunk of all times when not chunked)."""
    f = windows.fields
    da = f.ds[f.variables[0]]
    if da.chunks is None:
        return [f.n_times]
    return [int(c) for c in da.chunks[da.dims.index(f.time_dim)]]


def block_frames(windows: WindowDataset, buffer_bytes: int) -> int:
    """Target times per block: `OVERLAP_FACTOR * (length - 1)`, less when a shuffle buffer of
    `SHUFFLE_BLOCKS` such blocks would not fit `buffer_bytes`, but not below one chunk (a smaller
    block would read its chunk again for every piece); at least one."""
    f = windows.fields
    h, w = f.grid_shape
    frame = len(f.channels) * h * w * 4
    fit = int(buffer_bytes / (SHUFFLE_BLOCKS * BUFFER_SHARE * frame)) - (windows.length - 1)
    target = OVERLAP_FACTOR * max(1, windows.length - 1)
    return max(1, min(target, max(fit, min(time_chunks(windows)))))


def time_blocks(chunks: list[int], frames: int) -> list[tuple[int, int]]:
    """[a, b) time ranges along chunk boundaries: small chunks joined up to `frames` times, chunks
    longer than `frames` cut into pieces of `frames`."""
    out: list[tuple[int, int]] = []
    a = pos = 0
    for c in chunks:
        if pos > a and pos - a + c > frames:  # joining this chunk would overshoot: close the block
            out.append((a, pos))
            a = pos
        if c > frames:  # one big chunk: pieces of `frames`
            out.extend((s, min(s + frames, pos + c)) for s in range(pos, pos + c, frames))
            a = pos + c
        pos += c
    if pos > a:
        out.append((a, pos))
    return out


def plan_blocks(windows: WindowDataset, frames: int) -> list[Block]:
    """The blocks of every sample, in dataset order (sample-major, time ascending), empty ones left out."""
    starts, n_starts = windows.starts, len(windows.starts)
    out = []
    for a, b in time_blocks(time_chunks(windows), frames):
        lo, hi = np.searchsorted(starts, [a, b])
        if hi == lo:
            continue
        for s in range(windows.fields.n_samples):
            out.append(
                Block(s, a, int(starts[hi - 1]) + windows.length, s * n_starts + np.arange(lo, hi))
            )
    out.sort(key=lambda blk: (blk.sample, blk.start))
    return out


def epoch_order(
    blocks: list[Block], shuffle: bool, seed: int, epoch: int
) -> tuple[np.ndarray, np.ndarray]:
    """(window indices, their group) of one epoch: blocks shuffled and the windows of each run of
    `SHUFFLE_BLOCKS` blocks shuffled together; without `shuffle`, dataset order, a group per block."""
    if not shuffle:
        order = [blk.windows for blk in blocks]
        groups = [np.full(len(blk.windows), g) for g, blk in enumerate(blocks)]
        return np.concatenate(order), np.concatenate(groups)
    rng = np.random.default_rng([seed, epoch])
    perm = rng.permutation(len(blocks))
    order, groups = [], []
    for g, first in enumerate(range(0, len(perm), SHUFFLE_BLOCKS)):
        idx = np.concatenate([blocks[b].windows for b in perm[first : first + SHUFFLE_BLOCKS]])
        order.append(idx[rng.permutation(len(idx))])
        groups.append(np.full(len(idx), g))
    return np.concatenate(order), np.concatenate(groups)


def rank_piece(n: int, rank: int, world: int, pad: bool) -> np.ndarray:
    """Positions in the epoch order that rank `rank` serves: contiguous, the order padded by its
    first positions to `world * ceil(n / world)` when `pad` (equal steps on every rank)."""
    if not pad:
        return np.array_split(np.arange(n), world)[rank]
    per = math.ceil(n / world)
    return np.arange(rank * per, (rank + 1) * per) % n


def lanes(n: int, batch: int, n_lanes: int) -> list[tuple[int, int]]:
    """[a, b) of a rank's n positions per lane: whole batches, as even as can be, none split."""
    per = math.ceil(math.ceil(n / batch) / n_lanes) * batch
    return [(min(n, i * per), min(n, (i + 1) * per)) for i in range(n_lanes)]


def lane_skips(counts: list[int], skip: int) -> tuple[list[int], int]:
    """Batches each lane leaves out, and the lane that comes first, when the first `skip` batches of
    the round-robin order (lane 0, 1, ... in turn; an exhausted lane drops out) are done."""
    done = [0] * len(counts)
    order = [
        (k, lane) for k in range(max(counts, default=0)) for lane, c in enumerate(counts) if k < c
    ]
    for _, lane in order[:skip]:
        done[lane] += 1
    first = order[skip][1] if skip < len(order) else 0
    return done, first


class BlockStream(IterableDataset):
    """Batches of windows (the dicts a DataLoader would collate from `WindowDataset` items), read
    block by block; use with `DataLoader(stream, batch_size=None, num_workers=n_lanes or 0)`."""

    def __init__(
        self,
        windows: WindowDataset,
        batch_size: int,
        *,
        shuffle: bool,
        seed: int = 0,
        rank: int = 0,
        world: int = 1,
        workers: int = 0,
        buffer_bytes: int = 256 * 2**20,
    ) -> None:
        self.windows = windows
        self.batch_size = int(batch_size)
        self.shuffle, self.seed = shuffle, int(seed)
        self.rank, self.world = int(rank), int(world)
        self.n_lanes = max(1, int(workers))
        self.frames = block_frames(windows, buffer_bytes)
        self.blocks = plan_blocks(windows, self.frames)
        self.block_of = np.empty(len(windows), np.int64)
        for b, blk in enumerate(self.blocks):
            self.block_of[blk.windows] = b
        self.set_epoch(0)

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        """Serve `epoch` (its order from (seed, epoch)) without its first `skip` batches."""
        order, groups = epoch_order(self.blocks, self.shuffle, self.seed, epoch)
        mine = rank_piece(len(order), self.rank, self.world, pad=self.shuffle)
        self._order, self._groups = order[mine], groups[mine]
        self._lanes = lanes(len(mine), self.batch_size, self.n_lanes)
        counts = [math.ceil((b - a) / self.batch_size) for a, b in self._lanes]
        self._skips, self._first = lane_skips(counts, skip)

    def __len__(self) -> int:
        """Batches left in the epoch on this rank."""
        total = sum(math.ceil((b - a) / self.batch_size) for a, b in self._lanes)
        return total - sum(self._skips)

    def __iter__(self):
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        if workers != self.n_lanes:
            raise RuntimeError(
                f"BlockStream planned for {self.n_lanes} worker(s), iterated by {workers}"
            )
        lane = (self._first + worker) % self.n_lanes
        a, b = self._lanes[lane]
        a = min(b, a + self._skips[lane] * self.batch_size)
        return self._batches(self._order[a:b], self._groups[a:b])

    def _batches(self, order: np.ndarray, groups: np.ndarray):
        """Read the blocks of each run of one group once, then cut its windows into batches."""
        pending: list[int] = []
        loaded: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        edges = np.flatnonzero(np.diff(groups)) + 1
        for run in np.split(order, edges) if len(order) else []:
            # windows still pending from the last run keep their blocks
            needed = np.unique(
                self.block_of[np.concatenate([run, np.asarray(pending, np.int64)])]
            ).tolist()
            loaded = {b: loaded[b] for b in needed if b in loaded}  # the rest freed first
            for b in needed:
                if b not in loaded:
                    loaded[b] = self._read(b)
            for i in run.tolist():
                pending.append(i)
                if len(pending) == self.batch_size:
                    yield self._collate(pending, loaded)
                    pending = []
        if pending:
            yield self._collate(pending, loaded)

    def _read(self, b: int) -> tuple[np.ndarray, np.ndarray]:
        blk = self.blocks[b]
        frames = self.windows.fields.frames(blk.sample, blk.start, blk.stop)
        return self.windows.normalizer.normalize(frames)

    def _collate(self, items: list[int], loaded: dict) -> dict[str, Any]:
        xs, masks, samples, starts = [], [], [], []
        length = self.windows.length
        for i in items:
            sample, start = self.windows.locate(i)
            blk = self.blocks[int(self.block_of[i])]
            x, mask = loaded[int(self.block_of[i])]
            k = start - blk.start
            xs.append(x[k : k + length])
            masks.append(mask[k : k + length])
            samples.append(sample)
            starts.append(start)
        static = self.windows.static
        return {
            "x": torch.from_numpy(np.stack(xs)),
            "mask": torch.from_numpy(np.stack(masks)),
            "static": static.unsqueeze(0).expand(len(items), *static.shape).clone(),
            "sample": torch.tensor(samples, dtype=torch.int64),
            "start": torch.tensor(starts, dtype=torch.int64),
        }
