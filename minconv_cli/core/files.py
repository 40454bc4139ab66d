"""Small shared helpers for files and devices.

- One temporary-name scheme, `.NAME.TAG-<pid>-<random>` beside the target (hidden, unique,
  recognisable), and atomic writes through it: write the sibling, then `os.replace` it onto the
  target; on any failure the sibling is removed and the target is untouched.
- `remove` (a file, a link or a directory tree); `commit` puts a completed output in place of
  the old one so that a kill at any moment leaves the old or the new one there, never neither
  (`recover` finishes or undoes a commit a kill interrupted and clears dead runs' leftovers).
- `output_lock`: one writer per output; a second is refused in one line naming the holder.
- `writing` / `write_failure`: a failed write becomes one line naming the path and the OS cause
  (no space, read-only, permission, file-size limit, folder removed).
- `dask_progress`: reports finished dask tasks as (done, total) to a progress callback.
- `resolve_device`: the torch device a `--device` option names.
- The file suffixes of each data format, in one place (`NETCDF_SUFFIXES` and the narrower sets
  that name an output's format).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import os
import shutil
import socket
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from minconv_cli.core.errors import MinconvError, one_line

Progress = Callable[[int, int], None]

# Data formats by suffix. Read as NetCDF (HDF5 or classic); the narrower sets choose an output's
# format from its name: `minconv convert` DST, and simulated data sets (`simulate --out`).
NETCDF_SUFFIXES = (".nc", ".nc4", ".netcdf", ".cdf", ".h5", ".hdf5")
NETCDF_OUTPUT_SUFFIXES = (".nc", ".nc4", ".netcdf")
SIMULATED_NETCDF_SUFFIXES = (".nc", ".nc4")
ZARR_SUFFIX = ".zarr"
NUMPY_SUFFIXES = (".npy", ".npz")


def sibling(path: Path, tag: str = "tmp", unique: bool = True) -> Path:
    """`.NAME.TAG-<pid>-<random>` beside `path` (`.NAME.TAG` when not `unique`: a fixed name that a
    later run finds and clears, e.g. what an interrupted run left)."""
    suffix = f"-{os.getpid()}-{uuid.uuid4().hex[:8]}" if unique else ""
    return path.with_name(f".{path.name}.{tag}{suffix}")


def remove(path: Path) -> None:
    """Remove a file, a link or a directory tree, if there is one."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


@contextlib.contextmanager
def atomic_paths(targets: Sequence[Path]) -> Iterator[list[Path]]:
    """Temporary siblings to write `targets` to; when the block ends without error each is put
    in place of its target with `commit`, else they are all removed. Failed writes are one line
    naming the target and the OS cause."""
    temps = [sibling(Path(t)) for t in targets]
    try:
        for t in targets:
            with writing(Path(t)):
                Path(t).parent.mkdir(parents=True, exist_ok=True)
        yield temps
        for tmp, target in zip(temps, targets, strict=True):
            with writing(Path(target)):
                commit(tmp, Path(target))
    finally:
        for tmp in temps:
            discard(tmp)


def discard(path: Path) -> None:
    """Remove what a failed write left at `path`, also what writes still in flight add just
    after the failure (zarr's event loop finishes the other chunks of a failed batch)."""
    for _ in range(3):
        if not (path.exists() or path.is_symlink()):
            return
        with contextlib.suppress(OSError):
            remove(path)
        time.sleep(0.1)


@contextlib.contextmanager
def atomic_path(target: Path) -> Iterator[Path]:
    """`atomic_paths` of one target."""
    with atomic_paths([target]) as (tmp,):
        yield tmp


def atomic_write_text(path: Path, text: str) -> None:
    """Write `text` to `path` atomically."""
    with atomic_path(path) as tmp, writing(Path(path)):
        tmp.write_text(text)


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    """`torch.save` to `path` atomically (flushed to disk before the rename)."""
    import torch

    with atomic_path(Path(path)) as tmp, writing(Path(path)), open(tmp, "wb") as fh:
        torch.save(obj, fh)
        fh.flush()
        os.fsync(fh.fileno())


PARTIAL = "minconv-partial"  # an output being rebuilt beside the old one (kept for --resume)
_SWAP, _OLD, _LOCK = "minconv-swap", "minconv-old", "minconv-lock"


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one atomic step (Linux `renameat2(RENAME_EXCHANGE)`); False where the
    system or the file system cannot."""
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    renameat2.argtypes = [
        ctypes.c_int,
        ctypes.c_char_p,
        ctypes.c_int,
        ctypes.c_char_p,
        ctypes.c_uint,
    ]
    at_cwd, rename_exchange = -100, 2
    if renameat2(at_cwd, os.fsencode(a), at_cwd, os.fsencode(b), rename_exchange) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(code, os.strerror(code), str(b))


def commit(new: Path, out: Path, carry: Callable[[str], bool] | None = None) -> None:
    """Put the completed `new` in place of `out`. A file replaces a file atomically; a directory
    is swapped in with one atomic exchange and the old one removed afterwards, so a kill at any
    moment leaves the old or the new output at `out` (`recover` clears what it leaves beside).
    `carry(name)`: entries of an old directory that are not part of the output (e.g. a user's
    forecast inside a run directory); they are hard-linked into the new one before the swap."""
    new, out = Path(new), Path(out)
    if not out.exists() and not out.is_symlink():
        os.replace(new, out)
        return
    if not (new.is_dir() and out.is_dir() and not out.is_symlink()):
        if out.is_dir() and not out.is_symlink():
            remove(out)
        os.replace(new, out)
        return
    if carry is not None:
        for entry in out.iterdir():
            if carry(entry.name) and not (new / entry.name).exists():
                _link_tree(entry, new / entry.name)
    swap = sibling(out, _SWAP, unique=False)
    remove(swap)
    os.replace(new, swap)
    if _exchange(swap, out):
        remove(swap)  # the old output
        return
    old = sibling(out, _OLD, unique=False)  # no atomic exchange here: two renames, see `recover`
    remove(old)
    os.replace(out, old)
    os.replace(swap, out)
    remove(old)


def _link_tree(src: Path, dst: Path) -> None:
    """`dst` as a copy of `src` made of hard links (copies where links are not possible)."""
    if src.is_dir() and not src.is_symlink():
        dst.mkdir()
        for entry in src.iterdir():
            _link_tree(entry, dst / entry.name)
        return
    try:
        os.link(src, dst, follow_symlinks=False)
    except OSError:
        shutil.copy2(src, dst, follow_symlinks=False)


def recover(out: Path) -> list[Path]:
    """Finish or undo a `commit` that a kill interrupted, and remove what killed runs left beside
    `out` (temporary siblings, and inside a directory `out` temporary files); the paths removed.
    Call it while holding `output_lock(out)`."""
    out = Path(out)
    swap, old = sibling(out, _SWAP, unique=False), sibling(out, _OLD, unique=False)
    if not out.exists():  # killed between the two renames of a commit without exchange
        for candidate in (swap, old):  # the swap holds the complete new output
            if candidate.exists():
                os.replace(candidate, out)
                break
    removed = [p for p in (swap, old) if p.exists()]
    places = [(out.parent, f".{out.name}.tmp-")]
    if out.is_dir() and not out.is_symlink():
        places.append((out, "."))
    for folder, prefix in places:
        with contextlib.suppress(OSError):
            removed += [
                p
                for p in folder.iterdir()
                if p.name.startswith(prefix) and ".tmp-" in p.name and not _owner_alive(p.name)
            ]
    for p in removed:
        with contextlib.suppress(OSError):
            remove(p)
    return removed


def _owner_alive(name: str) -> bool:
    """Whether the process that made the temporary `.NAME.TAG-<pid>-<random>` still runs."""
    try:
        pid = int(name.rsplit("-", 2)[-2])
    except (ValueError, IndexError):
        return False
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextlib.contextmanager
def output_lock(out: Path, command: str = "", shared: bool = False) -> Iterator[None]:
    """Hold the writer's lock of `out` (a file `.NAME.minconv-lock` beside it, `flock`ed): a second
    writer is refused in one line naming the holder. `shared`: one of several cooperating writers
    (rollout shards), which exclude a plain writer but not each other. The kernel drops the lock
    of a killed process, so a lock file left by one is stale and taken over."""
    out = Path(out)
    with hold_lock(sibling(out, _LOCK, unique=False), out, command, shared=shared):
        yield


@contextlib.contextmanager
def hold_lock(
    lock: Path, out: Path, command: str = "", shared: bool = False, wait: bool = False
) -> Iterator[None]:
    """Hold the `flock` on the file `lock` for a write to `out`, recording who holds it; refused in
    one line naming the holder when it is taken (`wait`: block until it is free instead). The last
    holder removes the file."""
    with writing(lock):
        lock.parent.mkdir(parents=True, exist_ok=True)
    fd = _acquire(lock, out, shared, wait)
    try:
        holder = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "since": time.strftime("%Y-%m-%d %H:%M:%S"),
            "command": command,
        }
        with contextlib.suppress(OSError):  # who holds it is for messages only (disk full?)
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(holder).encode(), 0)
        yield
    finally:
        _release(lock, fd, shared)


def _release(lock: Path, fd: int, shared: bool) -> None:
    """Drop the lock; its file goes with the last holder (a shared holder checks it is the last)."""
    import fcntl

    try:
        if shared:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with contextlib.suppress(OSError):
            os.unlink(lock)
    except BlockingIOError:
        pass  # other shared holders remain
    finally:
        os.close(fd)


def _acquire(lock: Path, out: Path, shared: bool = False, wait: bool = False) -> int:
    import fcntl

    mode = (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | (0 if wait else fcntl.LOCK_NB)
    # a shared holder that is leaving holds the lock exclusively for a moment: retry for 1 s
    tries = 20 if shared else 1
    while True:
        with writing(lock):
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, mode)
        except BlockingIOError:
            holder = _holder(fd)
            os.close(fd)
            tries -= 1
            if tries > 0:
                time.sleep(0.05)
                continue
            raise MinconvError(
                f"{out}: another minconv command is writing it ({holder}); wait for it to end"
            ) from None
        try:  # the previous holder may have removed the file between our open and flock
            if os.stat(lock).st_ino == os.fstat(fd).st_ino:
                return fd
        except FileNotFoundError:
            pass
        os.close(fd)


def _holder(fd: int) -> str:
    try:
        info = json.loads(os.pread(fd, 4096, 0).decode() or "{}")
    except (OSError, ValueError):
        info = {}
    if not info:
        return "its lock is held"
    text = f"pid {info.get('pid')} on {info.get('host')} since {info.get('since')}"
    return f"{text}: {info['command']}" if info.get("command") else text


# --------------------------------------------------------------------------- write failures

_CAUSES = {
    errno.ENOSPC: "no space left on device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EROFS: "read-only file system",
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
    errno.EFBIG: "file too large (the file-size limit, ulimit -f, was reached)",
    errno.ENOENT: "no such file or directory (was its folder removed while writing?)",
    errno.ENOTDIR: "a path component is not a directory",
    errno.EISDIR: "is a directory",
    errno.EIO: "input/output error",
}


def os_cause(err: BaseException) -> str | None:
    """The OS cause of `err` or of an error it was raised from, in words (None if none)."""
    seen: set[int] = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, OSError) and err.errno is not None:
            return _CAUSES.get(err.errno, (err.strerror or "").lower() or None)
        err = err.__cause__ or err.__context__  # type: ignore[assignment]
    return None


def fs_cause(path: Path) -> str | None:
    """Why writing under `path` fails, read off the file system (for libraries that lose errno,
    e.g. `NetCDF: HDF error`)."""
    folder = Path(path).parent
    if not folder.exists():
        return "its folder was removed while writing"
    try:
        st = os.statvfs(folder)
    except OSError:
        return None
    if st.f_flag & os.ST_RDONLY:
        return _CAUSES[errno.EROFS]
    if not os.access(folder, os.W_OK):
        return _CAUSES[errno.EACCES]
    if st.f_bavail * st.f_frsize < 2**20:
        return _CAUSES[errno.ENOSPC]
    import resource

    soft, _ = resource.getrlimit(resource.RLIMIT_FSIZE)
    if soft != resource.RLIM_INFINITY:
        return f"file too large (the file-size limit, ulimit -f, is {soft:,} bytes)"
    return None


def write_failure(path: Path, err: BaseException) -> MinconvError:
    """One line for a failed write to `path`, naming the OS cause where it can be told."""
    cause = os_cause(err) or fs_cause(Path(path)) or one_line(err, 200)
    return MinconvError(f"{path}: cannot write ({cause})")


@contextlib.contextmanager
def writing(path: Path) -> Iterator[None]:
    """Turn a failed write in the block into `write_failure(path, ...)`: an OSError, or any error
    of a library that lost the OS error on the way (`NetCDF: HDF error`, torch's `file write
    failed`) when the file system tells why. Other errors pass unchanged."""
    try:
        yield
    except MinconvError:
        raise
    except OSError as err:
        raise write_failure(path, err) from None
    except Exception as err:
        if os_cause(err) or fs_cause(Path(path)):
            raise write_failure(path, err) from None
        raise


def dask_progress(report: Progress | None, every: int = 1) -> contextlib.AbstractContextManager:
    """A context in which dask computations report (done, total) finished tasks to `report`: at
    the start, every `every` tasks and at the end. A no-op without `report`."""
    if report is None:
        return contextlib.nullcontext()
    from dask.callbacks import Callback

    class _Tasks(Callback):
        def __init__(self) -> None:
            super().__init__()
            self.done, self.total = 0, 0

        def _start_state(self, dsk: Any, state: dict) -> None:
            self.total += sum(len(state[k]) for k in ("ready", "waiting", "running", "finished"))
            report(self.done, self.total)

        def _posttask(self, key: Any, result: Any, dsk: Any, state: dict, worker_id: Any) -> None:
            self.done += 1
            if self.done % every == 0 or self.done == self.total:
                report(self.done, self.total)

    return _Tasks()


def resolve_device(preference: str, local_rank: int = 0) -> Any:
    """The torch device `--device` names: `auto` is CUDA when available (under torchrun the
    `local_rank`-th GPU), else the CPU; `cpu`, `cuda`, `cuda:1`, ... as torch reads them, where
    a bare `cuda` is also the `local_rank`-th GPU. CUDA without a GPU is an error."""
    import torch

    if preference == "auto":
        preference = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(preference)
    except RuntimeError as err:
        raise MinconvError(f"--device: {err}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise MinconvError(f"--device {preference}: no CUDA device is available")
    if dev.type == "cuda" and dev.index is None:
        return torch.device("cuda", local_rank % torch.cuda.device_count())
    return dev
