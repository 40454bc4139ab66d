"""NumPy input for `minconv convert`: .npy/.npz arrays become a Dataset with the dims and
coordinates the user names (`--dims`, `--coords`, `--name`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr

from minconv_cli.core.errors import MinconvError


def from_numpy(
    src: Path, dims: Sequence[str] | None, coords: Mapping[str, str] | None, name: str | None
) -> xr.Dataset:
    """NumPy array(s) as a Dataset: .npy is one variable (`name`, default the file stem); .npz has one
    variable per array with `len(dims)` dims, and 1-D arrays named like a dim become its coordinate."""
    import dask.array as dsa

    if not src.exists():
        raise MinconvError(f"{src}: no such file or directory")
    if not dims:
        raise MinconvError(f"{src}: NumPy input needs --dims (e.g. --dims trajectory,time,y,x)")
    dims = list(dims)
    try:
        if src.suffix.lower() == ".npy":
            arrays = {name or src.stem: np.load(src, mmap_mode="r", allow_pickle=False)}
        else:
            with np.load(src, allow_pickle=False) as npz:
                arrays = {k: npz[k] for k in npz.files}
    except (ValueError, OSError, EOFError) as err:
        raise MinconvError(
            f"{src}: cannot read as NumPy data ({' '.join(str(err).split())})"
        ) from None
    if name and src.suffix.lower() == ".npz":
        raise MinconvError("--name: only applies to .npy input (.npz arrays keep their names)")
    data_vars, coord_arrays = {}, {}
    for key, arr in arrays.items():
        if arr.ndim == len(dims):
            data_vars[key] = (
                dims,
                dsa.from_array(arr, chunks="auto") if arr.nbytes > 2**26 else np.asarray(arr),
            )
        elif arr.ndim == 1 and key in dims:
            coord_arrays[key] = np.asarray(arr)
        else:
            raise MinconvError(
                f"{src}: array {key!r} has shape {arr.shape}, which does not fit --dims {','.join(dims)}"
            )
    if not data_vars:
        raise MinconvError(
            f"{src}: no array with {len(dims)} dims to match --dims {','.join(dims)}"
        )
    ds = xr.Dataset(data_vars)
    sizes = ds.sizes
    for dim, values in coord_arrays.items():
        ds = ds.assign_coords({dim: _checked_len(values, dim, sizes[dim], src)})
    for dim, spec in (coords or {}).items():
        if dim not in sizes:
            raise MinconvError(f"--coords: {dim!r} is not one of --dims {','.join(dims)}")
        ds = ds.assign_coords(
            {dim: _checked_len(_coord_values(spec, sizes[dim], dim), dim, sizes[dim], src)}
        )
    return ds


def _checked_len(values: np.ndarray, dim: str, n: int, src: Path) -> np.ndarray:
    if len(values) != n:
        raise MinconvError(f"--coords {dim}: {len(values)} values for a dim of size {n} in {src}")
    return values


def _coord_values(spec: str, n: int, dim: str) -> np.ndarray:
    """Coordinate values from `START:STEP`, `START:STOP:STEP`, a datetime `START:FREQ`, or a file."""
    path = Path(spec)
    if path.suffix in (".npy", ".txt", ".csv") or path.exists():
        if not path.exists():
            raise MinconvError(f"--coords {dim}: {path}: no such file")
        return (
            np.load(path, allow_pickle=False)
            if path.suffix == ".npy"
            else np.loadtxt(path, ndmin=1)
        )
    parts = spec.split(":")
    try:
        numbers = [float(p) for p in parts]
    except ValueError:
        start, freq = spec.rsplit(":", 1) if ":" in spec else (spec, None)
        if freq is None:
            raise MinconvError(
                f"--coords {dim}: expected START:FREQ for datetimes (e.g. 2000-01-01:6h)"
            ) from None
        try:
            return pd.date_range(start, periods=n, freq=freq).values
        except (ValueError, TypeError) as err:
            raise MinconvError(
                f"--coords {dim}: cannot make datetimes from {spec!r} ({err})"
            ) from None
    if len(numbers) == 2:
        values = numbers[0] + numbers[1] * np.arange(n)
    elif len(numbers) == 3:
        values = np.arange(*numbers)
    else:
        raise MinconvError(f"--coords {dim}: expected START:STEP or START:STOP:STEP, got {spec!r}")
    if all(float(v).is_integer() for v in numbers):
        values = values.astype(np.int64)
    return values
