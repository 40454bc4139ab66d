"""Writing simulated data sets: NetCDF4 (zlib) or Zarr by the extension, atomically, never over a file unasked."""

from __future__ import annotations

from pathlib import Path

import xarray as xr

from minconv_cli.core.errors import MinconvError
from minconv_cli.core.files import SIMULATED_NETCDF_SUFFIXES, ZARR_SUFFIX, atomic_path


def output_format(path: Path) -> str:
    """'netcdf' for .nc/.nc4, 'zarr' for .zarr; anything else is an error."""
    suffix = path.suffix.lower()
    if suffix in SIMULATED_NETCDF_SUFFIXES:
        return "netcdf"
    if suffix == ZARR_SUFFIX:
        return "zarr"
    raise MinconvError(f"{path}: unknown output format (use a .nc or .zarr path)")


def check_writable(path: Path, overwrite: bool) -> None:
    """Fail before any work if `path` exists (without overwrite) or has an unknown format."""
    output_format(path)
    if path.exists() and not overwrite:
        raise MinconvError(f"{path}: already exists (pass --overwrite to replace it)")
    if not path.parent.exists():
        raise MinconvError(f"{path.parent}: output folder does not exist")


def write_dataset(ds: xr.Dataset, path: Path, overwrite: bool = False) -> Path:
    """Write `ds` (trajectory, time, y, x) chunked one trajectory per chunk, via a temporary sibling."""
    path = Path(path)
    check_writable(path, overwrite)
    fmt = output_format(path)
    sizes = ds["vorticity"].shape
    chunks = (1, *sizes[1:])
    with atomic_path(path) as tmp:
        if fmt == "netcdf":
            encoding = {
                "vorticity": {"zlib": True, "complevel": 6, "shuffle": True, "chunksizes": chunks}
            }
            ds.to_netcdf(tmp, engine="netcdf4", format="NETCDF4", encoding=encoding)
        else:
            # Variable-length strings: Zarr v3 has a specified dtype for them, not for fixed-width ones.
            ds = ds.assign_coords(
                {n: ds[n].astype(object) for n in ds.coords if ds[n].dtype.kind == "U"}
            )
            ds.to_zarr(tmp, mode="w", encoding={"vorticity": {"chunks": chunks}}, consolidated=True)
    return path
