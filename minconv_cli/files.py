"""Small shared helpers for files and devices.

- One temporary-name scheme, `.NAME.TAG-<pid>-<random>` beside the target (hidden, unique,
  recognisable), and atomic writes through it: write the sibling, then `os.replace` it onto the
  target; on any failure the sibling is removed and the target is untouched.
- `remove` (a file, a link or a directory tree), `swap_in` (replace a directory by a completed one).
- `dask_progress`: reports finished dask tasks as (done, total) to a progress callback.
- `resolve_device`: the torch device a `--device` option names.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from minconv_cli.errors import MinconvError

Progress = Callable[[int, int], None]


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
def atomic_paths(targets: Sequence[Path], replace_existing: bool = True) -> Iterator[list[Path]]:
    """Temporary siblings to write `targets` to; when the block ends without error each is renamed
    onto its target (an existing directory is removed first), else they are all removed."""
    temps = [sibling(Path(t)) for t in targets]
    for t in targets:
        Path(t).parent.mkdir(parents=True, exist_ok=True)
    try:
        yield temps
        for tmp, target in zip(temps, targets, strict=True):
            target = Path(target)
            if replace_existing and target.is_dir() and not target.is_symlink():
                remove(target)
            os.replace(tmp, target)
    finally:
        for tmp in temps:
            with contextlib.suppress(OSError):
                remove(tmp)


@contextlib.contextmanager
def atomic_path(target: Path) -> Iterator[Path]:
    """`atomic_paths` of one target."""
    with atomic_paths([target]) as (tmp,):
        yield tmp


def atomic_write_text(path: Path, text: str) -> None:
    """Write `text` to `path` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    """`torch.save` to `path` atomically (flushed to disk before the rename)."""
    import torch

    with atomic_path(Path(path)) as tmp, open(tmp, "wb") as fh:
        torch.save(obj, fh)
        fh.flush()
        os.fsync(fh.fileno())


def swap_in(new: Path, out: Path) -> None:
    """Replace `out` by the completed `new` (the old one is removed only afterwards)."""
    old = sibling(out, "minconv-old", unique=False)
    remove(old)
    os.replace(out, old)
    os.replace(new, out)
    remove(old)


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
