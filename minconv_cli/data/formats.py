"""Which format a data source is in: a URL (Zarr only), a Zarr store's layout, or a file's magic
bytes; the suffixes themselves live in `core.files`."""

from __future__ import annotations

from pathlib import Path

from minconv_cli.core.errors import MinconvError
from minconv_cli.core.files import NETCDF_SUFFIXES, ZARR_SUFFIX
from minconv_cli.data.remote import detect_url_format, is_url


def detect_format(path: str | Path) -> str:
    """`"netcdf"` or `"zarr"` from the extension, the store layout or the file's magic bytes."""
    if is_url(path):
        return detect_url_format(str(path))
    p = Path(path)
    if not p.exists():
        raise MinconvError(f"{p}: no such file or directory")
    if p.is_dir():
        if p.suffix == ZARR_SUFFIX or any(
            (p / m).exists() for m in ("zarr.json", ".zgroup", ".zattrs")
        ):
            return "zarr"
        raise MinconvError(f"{p}: a directory that is not a Zarr store (no zarr.json or .zgroup)")
    if p.name in ("zarr.json", ".zgroup"):
        return "zarr"
    with open(p, "rb") as fh:
        head = fh.read(8)
    if head.startswith((b"\x89HDF", b"CDF\x01", b"CDF\x02", b"CDF\x05")):
        return "netcdf"
    if p.suffix.lower() in NETCDF_SUFFIXES:
        raise MinconvError(f"{p}: not a readable NetCDF file (bad header)")
    raise MinconvError(f"{p}: unknown format (expected NetCDF .nc or a Zarr store .zarr)")
