"""Where the bundled sample data lives (the repository's `sample_data/`, or $MINCONV_SAMPLE_DATA)."""

from __future__ import annotations

import os
from pathlib import Path

from minconv_cli.core.errors import MinconvError

NAVIER_STOKES = "navier_stokes_16x16.nc"
ERA5_T2M = "era5_t2m_2019-03_uk_hourly.nc"


def sample_dir() -> Path:
    """The folder holding the bundled samples."""
    override = os.environ.get("MINCONV_SAMPLE_DATA")
    return Path(override) if override else Path(__file__).resolve().parents[2] / "sample_data"


def sample_path(name: str = NAVIER_STOKES) -> Path:
    """Path of one bundled sample file; a clear error if the checkout does not have it."""
    path = sample_dir() / name
    if not path.exists():
        raise MinconvError(
            f"{path}: bundled sample data not found (run from a source checkout, or set MINCONV_SAMPLE_DATA)"
        )
    return path
