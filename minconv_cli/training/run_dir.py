"""The files of one training run in RUN_DIR, each written atomically (temp sibling + rename)."""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from minconv_cli.errors import MinconvError
from minconv_cli.files import atomic_write_text

RUN_FILES = ("model.pt", "last.pt", "config.yaml", "metrics.csv", "summary.json")


@dataclass(frozen=True)
class RunDir:
    """Where one run keeps its checkpoints, resolved config, per-epoch metrics and summary."""

    path: Path

    @property
    def model(self) -> Path:
        return self.path / "model.pt"

    @property
    def last(self) -> Path:
        return self.path / "last.pt"

    @property
    def config(self) -> Path:
        return self.path / "config.yaml"

    @property
    def metrics(self) -> Path:
        return self.path / "metrics.csv"

    @property
    def summary(self) -> Path:
        return self.path / "summary.json"

    def holds_run(self) -> bool:
        return any((self.path / name).exists() for name in RUN_FILES)

    def check(self, resume: bool, overwrite: bool) -> None:
        """Refuse a directory holding another run unless told; changes nothing on disk."""
        if self.path.exists() and not self.path.is_dir():
            raise MinconvError(f"--out {self.path}: exists and is not a directory")
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
        """Create the directory (clearing an old run for `overwrite`); called once the data and
        the model are known to be good, so that a bad input never costs the old run."""
        self.check(resume, overwrite)
        if not resume:
            for name in RUN_FILES:
                (self.path / name).unlink(missing_ok=True)
        self.path.mkdir(parents=True, exist_ok=True)

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
