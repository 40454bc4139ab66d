"""One forecast store written by several processes (see `rollout.shards`).

Torchrun ranks: rank 0 holds the store's writer lock, creates (or resumes, or builds beside the
old one) the store, sends its path to the other ranks, and finishes it once every rank is done.
Job-array tasks (`--shard I/N`) cannot talk: each holds the writer lock shared with its siblings
(a plain writer is refused) and its own shard lock (the same shard twice, or shards of another
N, are refused); under a short creation lock the first one creates the store and the others join
it after checking it was made with the same settings, and the task that finds every row done
finishes it.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from minconv_cli.core.errors import MinconvError
from minconv_cli.core.files import (
    PARTIAL,
    hold_lock,
    output_lock,
    recover,
    remove,
    sibling,
    writing,
)
from minconv_cli.rollout.shards import Shard, share_target
from minconv_cli.rollout.store import DONE, create_store, finish, open_target, read_done

_CREATE = "minconv-create"


def _shard_lock(out: Path, index: int, count: int) -> Path:
    return sibling(out, f"minconv-shard-{index}-of-{count}", unique=False)


@contextlib.contextmanager
def store_access(out: Path, command: str, shard: Shard | None) -> Iterator[None]:
    """The locks a process of a (possibly split) rollout holds while it writes `out`."""
    if shard is None or shard.leads:
        with output_lock(out, command):
            yield
    elif shard.ranks:  # rank 0 holds the store for the whole torchrun job
        yield
    else:
        shard_command = f"{command} --shard {shard.label}"
        own = _shard_lock(out, shard.index, shard.count)
        with (
            output_lock(out, shard_command, shared=True),
            hold_lock(own, out, shard_command),
        ):
            _refuse_other_splits(out, shard.count)
            yield


def _refuse_other_splits(out: Path, count: int) -> None:
    """Shards of another N cut the rows otherwise: refuse while any of them runs."""
    for lock in out.parent.glob(f".{out.name}.minconv-shard-*-of-*"):
        other = lock.name.rsplit("-of-", 1)[-1]
        if other == str(count):
            continue
        try:
            fd = os.open(lock, os.O_RDONLY)
        except OSError:
            continue  # gone meanwhile
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            raise MinconvError(
                f"{out}: shards of another split (--shard I/{other}) are writing it; give every "
                f"task the same N, or wait for them to end"
            ) from None
        finally:
            os.close(fd)


def open_shared(
    out: Path,
    mode: str,
    template: Any,
    encoding: dict,
    settings: dict,
    zarr_format: int,
    shard: Shard | None,
) -> tuple[Path, np.ndarray]:
    """(where to write, what is done there) for this process."""
    if shard is None:
        return open_target(out, mode, template, encoding, settings, zarr_format)
    if shard.ranks:
        if shard.leads:
            target, done = open_target(out, mode, template, encoding, settings, zarr_format)
            share_target(str(target), shard)
        else:
            target = Path(share_target(None, shard))
            done = read_done(target, settings, "join")
    else:
        with hold_lock(sibling(out, _CREATE, unique=False), out, wait=True):
            recover(out)
            target, done = _join_or_create(out, mode, template, encoding, settings, zarr_format)
    _check_row_chunks(target)
    return target, done


def _join_or_create(
    out: Path, mode: str, template: Any, encoding: dict, settings: dict, zarr_format: int
) -> tuple[Path, np.ndarray]:
    """The store this job-array task writes into: the one a sibling task made with the same
    settings, else a new one (at `out`, or beside an old store for `--overwrite`)."""
    partial = sibling(out, PARTIAL, unique=False)
    if mode == "resume":
        target = partial if partial.exists() else out
        if target.exists():
            return target, read_done(target, settings)
    elif mode == "overwrite":
        done = _done_if_same(partial, settings)
        if done is not None:
            return partial, done
        remove(partial)  # an interrupted overwrite with other settings
        done = _done_if_same(out, settings)
        if done is not None and not done.all():
            return out, done  # made by a sibling: there was no old store
        target = partial if out.exists() else out
        return target, _create(template, encoding, target, zarr_format)
    elif out.exists():
        return out, read_done(out, settings, "join")
    return out, _create(template, encoding, out, zarr_format)


def _create(template: Any, encoding: dict, target: Path, zarr_format: int) -> np.ndarray:
    with writing(target):
        create_store(template, encoding, target, zarr_format)
    return np.zeros(template[DONE].shape, dtype=bool)


def _done_if_same(path: Path, settings: dict) -> np.ndarray | None:
    """The done flags of the store at `path` if it was made with `settings`, else None."""
    if not path.exists():
        return None
    try:
        return read_done(path, settings)
    except MinconvError:
        return None


def _all_done(path: Path) -> bool:
    import zarr

    return bool(np.asarray(zarr.open_group(str(path), mode="r")[DONE][...]).all())


def _check_row_chunks(target: Path) -> None:
    """Refuse a store whose done flags share chunks (made before stores were split by row)."""
    import zarr

    if any(c != 1 for c in zarr.open_group(str(target), mode="r")[DONE].chunks):
        raise MinconvError(
            f"{target}: made by an older minconv, its done flags are not one chunk per sequence; "
            "complete it with one process (--resume without --shard or torchrun)"
        )


def finish_shared(target: Path, out: Path, shard: Shard | None) -> bool:
    """Put the store in place once every row is written; whether it is complete (a job-array
    task that is not the last to end leaves it to the last)."""
    if shard is None or shard.leads:
        finish(target, out)
        return True
    if shard.ranks:
        return True
    with hold_lock(sibling(out, _CREATE, unique=False), out, wait=True):
        if not target.exists():  # a sibling swapped it in
            finish(out, out)
            return True
        if not _all_done(target):
            return False
        finish(target, out)
        return True
