"""The files of one training run in RUN_DIR, each written atomically (temp sibling + rename)."""

from __future__ import annotations

import contextlib
import csv
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from minconv_cli.core.errors import MinconvError
from minconv_cli.core.files import PARTIAL, atomic_write_text, commit, remove, sibling, writing

RUN_FILES = ("model.pt", "last.pt", "config.yaml", "metrics.csv", "summary.json")


@dataclass
class RunDir:
    """Where one run keeps its checkpoints, resolved config, per-epoch metrics and summary.

    `path` is the run directory; `work` is where this session writes: `path` itself, or, when
    `--overwrite` replaces a run already there (or `--resume` continues such a replacement), a
    sibling `.NAME.minconv-partial` that `complete` swaps in once the new run has ended, so that
    a kill at any moment leaves the old run or the new one."""

    path: Path
    work: Path | None = None

    def __post_init__(self) -> None:
        self.path = Path(self.path)
        if self.work is None:
            self.work = self.path

    @property
    def partial(self) -> Path:
        return sibling(self.path, PARTIAL, unique=False)

    @property
    def replacing(self) -> bool:
        """Whether this run is built beside an older one that it replaces when complete."""
        return self.work != self.path

    @property
    def model(self) -> Path:
        return self.work / "model.pt"

    @property
    def last(self) -> Path:
        return self.work / "last.pt"

    @property
    def config(self) -> Path:
        return self.work / "config.yaml"

    @property
    def metrics(self) -> Path:
        return self.work / "metrics.csv"

    @property
    def summary(self) -> Path:
        return self.work / "summary.json"

    def holds_run(self) -> bool:
        return any((self.path / name).exists() for name in RUN_FILES)

    def resolve(self, resume: bool, overwrite: bool) -> RunDir:
        """Set `work`: the interrupted replacement when resuming one, a new one beside an existing
        run for `overwrite`, else the run directory itself. Reads the disk, changes nothing."""
        resuming_partial = resume and (self.partial / "last.pt").is_file()
        replacing = overwrite and not resume and self.holds_run()
        self.work = self.partial if resuming_partial or replacing else self.path
        return self

    def check(self, resume: bool, overwrite: bool) -> None:
        """Refuse a directory holding another run unless told; changes nothing on disk."""
        if self.path.exists() and not self.path.is_dir():
            raise MinconvError(f"--out {self.path}: exists and is not a directory")
        self.resolve(resume, overwrite)
        if resume:
            if not self.last.is_file():
                raise MinconvError(f"--resume: {self.last} not found (nothing to resume)")
            return
        if self.holds_run() and not overwrite:
            raise MinconvError(
                f"--out {self.path}: holds another run (use --resume to continue it or "
                "--overwrite to replace it)"
            )

    def prepare(self, resume: bool, overwrite: bool) -> None:
        """Create the directory the run writes to (a fresh one beside an old run it replaces);
        called once the data and the model are known to be good. The old run is untouched."""
        self.check(resume, overwrite)
        with writing(self.work):
            if self.replacing and not resume:
                remove(self.work)  # an earlier, interrupted replacement
            self.work.mkdir(parents=True, exist_ok=True)

    def abandon(self) -> None:
        """A run that fails before its first checkpoint leaves nothing behind: the files it wrote
        go, and so does its folder when that is left empty. A run with a last.pt is kept (resumable)."""
        if self.last.exists():
            return
        for name in RUN_FILES:
            (self.work / name).unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            self.work.rmdir()  # only when empty

    def complete(self) -> None:
        """The run has ended: check its files read back, then (when it replaces an older run) swap
        it in, keeping files of the old directory that are not the run's (e.g. a forecast)."""
        from minconv_cli.models.checkpoint import read_checkpoint

        read_checkpoint(self.model)
        read_checkpoint(self.last)
        try:
            json.loads(self.summary.read_text())
        except (OSError, ValueError) as err:
            raise MinconvError(f"{self.summary}: unreadable after writing ({err})") from None
        if self.replacing:
            with writing(self.path):
                commit(self.work, self.path, carry=lambda name: name not in RUN_FILES)
            self.work = self.path

    def write_metrics(self, rows: list[dict[str, Any]]) -> None:
        """The whole per-epoch table (rewritten each epoch, so a resumed run has no stale rows)."""
        if not rows:
            return
        columns = list(dict.fromkeys(k for row in rows for k in row))
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        atomic_write_text(self.metrics, buf.getvalue())

    def write_summary(self, summary: dict[str, Any]) -> None:
        atomic_write_text(self.summary, json.dumps(summary, indent=2) + "\n")

    def write_config(self, yaml_text: str) -> None:
        atomic_write_text(self.config, yaml_text)
