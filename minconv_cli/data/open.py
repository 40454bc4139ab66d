"""Opening NetCDF files and Zarr stores (one or many, joined along time) into `Fields`."""

from __future__ import annotations

import json
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from minconv_cli.core.errors import MinconvError, check_apart, check_unique, one_line
from minconv_cli.data.dims import (
    default_padding,
    is_latitude,
    is_longitude,
    recognise_dims,
)
from minconv_cli.data.fields import Channel, Fields, jsonable
from minconv_cli.data.finite import Where, check_values, checked_lazily
from minconv_cli.data.formats import detect_format
from minconv_cli.data.integrity import check_chunks
from minconv_cli.data.memory import fits_in_memory, memory_budget
from minconv_cli.data.remote import as_source, is_url, open_url
from minconv_cli.data.timeaxis import detect_step, spacings

LOAD_BELOW_BYTES: int | None = None  # a fixed load threshold (tests); None: from the memory budget


def open_dataset(path: str | Path, chunks: Any = "auto-store") -> xr.Dataset:
    """Open one NetCDF file or Zarr store lazily (dask chunks as stored); one-line errors.

    `chunks="auto-store"` keeps the store's own chunks; `None` opens without dask. A URL string
    (https://, s3://, gs://, ...) opens the Zarr store there (see `minconv_cli.data.remote`).
    """
    kw: dict[str, Any] = {"chunks": {} if chunks == "auto-store" else chunks}
    if is_url(path):
        return in_name_order(open_url(str(path), kw["chunks"]))
    p = Path(path)
    fmt = detect_format(p)
    if p.name in ("zarr.json", ".zgroup"):
        p = p.parent
    if fmt == "zarr":
        check_array_metadata(p)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if fmt == "zarr":
                ds = xr.open_zarr(p, consolidated=None, **kw)
            else:
                ds = xr.open_dataset(p, engine="netcdf4", **kw)
    except MinconvError:
        raise
    except Exception as err:  # any reader failure on a damaged file
        what = "Zarr store" if fmt == "zarr" else "NetCDF file"
        raise MinconvError(f"{p}: cannot read as a {what} ({one_line(err)})") from None
    ds.encoding["source_format"] = fmt
    return in_name_order(ds) if fmt == "zarr" else ds


def check_array_metadata(store: Path) -> None:
    """Every folder at the root of a local Zarr store is a node with readable metadata: a folder
    of chunks without its zarr.json (v3) or .zarray (v2) is an array whose metadata was lost."""
    name = "zarr.json" if (store / "zarr.json").is_file() else ".zarray"
    try:
        folders = sorted(d for d in store.iterdir() if d.is_dir() and not d.name.startswith("."))
    except OSError:
        return  # the reader says what is wrong
    for d in folders:
        found = [d / m for m in ("zarr.json", ".zarray", ".zgroup") if (d / m).is_file()]
        if not found and next(d.iterdir(), None) is not None:
            raise MinconvError(
                f"{store}: array {d.name!r} has no metadata ({d.name}/{name} is missing): "
                f"a damaged store"
            )
        for f in found:
            try:
                readable = isinstance(json.loads(f.read_bytes()), dict)
            except (OSError, ValueError):
                readable = False
            if not readable:
                raise MinconvError(
                    f"{store}: array {d.name!r} has unreadable metadata ({d.name}/{f.name} is "
                    f"not a JSON object): a damaged store"
                )


def in_name_order(ds: xr.Dataset) -> xr.Dataset:
    """The Zarr store's variables sorted by name: a Zarr v3 group without consolidated metadata
    lists its arrays in no fixed order, and the default channel order must not change between runs."""
    encoding = ds.encoding
    ds = ds[sorted(ds.data_vars, key=str)]
    ds.encoding = encoding
    return ds


def open_fields(
    paths: str | Path | Sequence[str | Path],
    variables: Sequence[str] | None = None,
    static: Sequence[str] | None = None,
    dims: Mapping[str, Any] | None = None,
    levels: Sequence[Any] | None = None,
    memory_limit: Any = None,
    allow_missing_chunks: bool = False,
) -> Fields:
    """Open, recognise, check and join data files into `Fields`: loaded into memory when the
    selected variables fit the memory budget (`memory_limit`, default half the available memory),
    else lazy (dask, read from disk when needed).

    Refused with one line: a Zarr chunk that is not stored (unless `allow_missing_chunks`: it
    reads as NaN), and ±inf or values beyond float32 arithmetic (`data.finite`), checked here for
    data in memory and block by block as lazy data is read.
    """
    if isinstance(paths, (str, Path)):
        paths = [paths]
    paths = [as_source(p) for p in paths]
    if not paths:
        raise ValueError("open_fields: no paths given")
    raw = [(p, open_dataset(p)) for p in paths]
    opened = _merge_variable_files(raw)
    first_path, first = opened[0]
    static = list(static or [])
    _check_unique(variables, static)
    selected = _select_variables(first, first_path, variables, static, dims)
    role = recognise_dims(first, _dims_of(first, selected), str(first_path), dims)
    time_dim = role["time"]
    keep = [*selected, *[s for s in static if s in first.data_vars]]
    checked = _check_files(opened, keep, time_dim)
    _check_stored_chunks(raw, keep, allow_missing_chunks)
    label = _label(paths)
    ds = _join([ds[keep] for _, ds in _in_time_order(checked, role)], time_dim)
    level_dim = role["level"]
    if levels is not None:
        ds = _select_levels(ds, levels, level_dim, label)
    sample_dims, y_dim, x_dim = role["sample"], role["y"], role["x"]
    order = (*sample_dims, time_dim, *((level_dim,) if level_dim else ()), y_dim, x_dim)
    ds = ds.transpose(*order, ..., missing_dims="ignore")
    if _load_into_memory(ds[selected], memory_limit):
        ds = ds.load()
    ds = _check_values(ds, selected, static, time_dim, raw, label)
    latlon = is_latitude(ds, y_dim) and is_longitude(ds, x_dim)
    step = _regular_step(ds[time_dim].values, label)
    return Fields(
        ds=ds,
        path_label=label,
        time_dim=time_dim,
        y_dim=y_dim,
        x_dim=x_dim,
        sample_dims=tuple(sample_dims),
        level_dim=level_dim,
        channels=_channels(ds, selected, level_dim),
        static_channels=_static_channels(ds, static, label, level_dim, (y_dim, x_dim)),
        time_step=step,
        is_latlon=latlon,
        default_padding=default_padding(ds, y_dim, x_dim, latlon),
    )


def _check_files(
    opened: Sequence[tuple[Path, xr.Dataset]], keep: Sequence[str], time_dim: str
) -> list[tuple[Path, xr.Dataset]]:
    """Each (merged) file holds the variables in `keep` and a time dim whose times increase."""
    for p, ds in opened:
        for v in keep:
            if v not in ds.data_vars:
                raise MinconvError(
                    f"{p}: variable {v!r} not found; available: {', '.join(map(str, ds.data_vars))}"
                )
        if time_dim not in ds.dims:
            raise MinconvError(
                f"{p}: no time dimension {time_dim!r} (dims: {', '.join(map(str, ds.dims))})"
            )
        _check_times(p, ds[time_dim].values)
    return list(opened)


def _check_stored_chunks(
    raw: Sequence[tuple[Path, xr.Dataset]], keep: Sequence[str], allow: bool
) -> None:
    """Every Zarr chunk of the kept variables is stored, file by file (see `data.integrity`)."""
    for p, one in raw:
        wanted = [v for v in keep if v in one.data_vars]
        store = p.parent if isinstance(p, Path) and p.name in ("zarr.json", ".zgroup") else p
        check_chunks(store, one, wanted, allow=allow)


def _in_time_order(
    checked: list[tuple[Path, xr.Dataset]], role: Mapping[str, Any]
) -> list[tuple[Path, xr.Dataset]]:
    """The files sorted by their first time; neighbours share the grid and do not overlap."""
    time_dim = role["time"]
    checked.sort(key=lambda item: item[1][time_dim].values[0])
    for (pa, a), (pb, b) in zip(checked[:-1], checked[1:], strict=False):
        _check_same_grid(pa, a, pb, b, role)
        if a[time_dim].values[-1] >= b[time_dim].values[0]:
            raise MinconvError(
                f"{pb}: times overlap with {pa} ({b[time_dim].values[0]} <= {a[time_dim].values[-1]})"
            )
    return checked


def _label(paths: Sequence[str | Path]) -> str:
    """How messages name the data: up to three paths, else the first and a count."""
    if len(paths) <= 3:
        return ", ".join(str(p) for p in paths)
    return f"{paths[0]} (+{len(paths) - 1} files)"


def _join(parts: list[xr.Dataset], time_dim: str) -> xr.Dataset:
    """The parts (in time order) joined along time; one part as it is."""
    if len(parts) == 1:
        return parts[0]
    return xr.concat(
        parts,
        dim=time_dim,
        data_vars="minimal",
        coords="minimal",
        compat="override",
        join="override",
        combine_attrs="override",
    )


def _select_levels(
    ds: xr.Dataset, levels: Sequence[Any], level_dim: str | None, label: str
) -> xr.Dataset:
    """The requested levels (each must exist) of the level dim."""
    if level_dim is None:
        raise MinconvError(f"{label}: levels given but the data has no level dimension")
    missing = [lv for lv in levels if lv not in ds[level_dim].values]
    if missing:
        raise MinconvError(
            f"{label}: level(s) {missing} not found; available: "
            f"{', '.join(str(v) for v in ds[level_dim].values.tolist())}"
        )
    return ds.sel({level_dim: list(levels)})


def _regular_step(times: np.ndarray, label: str) -> Any:
    """The time step: a fixed one or a calendar one (month, year); an irregular axis is refused."""
    fit = detect_step(times)
    if not fit.regular:
        raise MinconvError(
            f"{label}: irregular time axis: no fixed step and no calendar step (month, year) "
            f"fits even half of its {fit.pairs} spacings (most common: {fit.summary})"
        )
    return fit.step


def _check_unique(variables: Sequence[str] | None, static: Sequence[str]) -> None:
    """Each name once: in `variables`, in `static`, and not in both."""
    for what, names in (("variables", variables or []), ("static", static)):
        check_unique(names, what)
    check_apart(variables or [], static, "variables and static")


def _check_values(
    ds: xr.Dataset,
    selected: Sequence[str],
    static: Sequence[str],
    time_dim: str,
    raw: Sequence[tuple[Path, xr.Dataset]],
    label: str,
) -> xr.Dataset:
    """`ds` with ±inf and values beyond float32 arithmetic refused: now for data in memory (one
    vectorised pass per variable), block by block as they are read for lazy data; and a variable
    that is all NaN (in memory) refused."""
    times = np.asarray(ds[time_dim].values)
    for v in [*selected, *static]:
        da = ds[v]
        if da.dtype.kind != "f":
            continue
        files = sorted(
            (int(np.searchsorted(times, one[time_dim].values[0])), str(p))
            for p, one in raw
            if v in one.variables and time_dim in one.dims
        ) or [(0, label)]
        where = Where(v, "variable" if v in selected else "static", times, files)
        if da.chunks is not None and v in ds.data_vars:
            ds[v] = checked_lazily(da, where, time_dim)
            continue
        axis = da.dims.index(time_dim) if time_dim in da.dims else None
        if not check_values(np.asarray(da.values), where, axis) and v in selected:
            raise MinconvError(f"{label}: variable {v!r} is all NaN")
    return ds


def float32_bytes(ds: xr.Dataset) -> int:
    """Size of the variables of `ds` as float32 (how training holds them)."""
    return int(sum(ds[v].size for v in ds.data_vars)) * 4


def _load_into_memory(ds: xr.Dataset, memory_limit: Any) -> bool:
    if LOAD_BELOW_BYTES is not None:
        return ds.nbytes < LOAD_BELOW_BYTES
    return fits_in_memory(float32_bytes(ds), memory_budget(memory_limit))


def _merge_variable_files(opened: list[tuple[Path, xr.Dataset]]) -> list[tuple[Path, xr.Dataset]]:
    """Files holding different variables on the same coordinates become one dataset.

    So `z500.nc t850.nc msl.nc` are channels of one problem, a static file (land-sea mask on the
    same grid) joins every period, and `z_2000.nc t_2000.nc z_2001.nc t_2001.nc` still joins along time.
    """
    groups: list[tuple[Path, xr.Dataset]] = []
    for path, ds in opened:
        for i, (first, group) in enumerate(groups):
            if not set(group.data_vars) & set(ds.data_vars) and _same_coords(group, ds):
                merged = xr.merge(
                    [group, ds], compat="override", join="exact", combine_attrs="drop_conflicts"
                )
                groups[i] = (first, merged)
                break
        else:
            groups.append((path, ds))
    return groups


def _same_coords(a: xr.Dataset, b: xr.Dataset) -> bool:
    """True when a and b share at least one coordinate and agree on every one they share."""
    shared = set(a.coords) & set(b.coords)
    return bool(shared) and all(
        a[c].shape == b[c].shape and bool((a[c].values == b[c].values).all()) for c in shared
    )


def _select_variables(
    ds: xr.Dataset,
    path: Path,
    variables: Sequence[str] | None,
    static: Sequence[str],
    dims: Mapping[str, Any] | None,
) -> list[str]:
    """The requested variables (each must exist), or every variable with time, y and x dims."""
    available = [str(v) for v in ds.data_vars]
    for v in [*(variables or []), *static]:
        if v not in ds.data_vars and v not in ds.coords:
            raise MinconvError(
                f"{path}: variable {v!r} not found; available: {', '.join(available)}"
            )
    if variables:
        return list(variables)
    role = recognise_dims(ds, ds.dims, str(path), dims)
    wanted = {role["time"], role["y"], role["x"]}
    chosen = [v for v in available if wanted <= set(ds[v].dims) and v not in static]
    if not chosen:
        raise MinconvError(
            f"{path}: no variable has the dims ({role['time']}, {role['y']}, {role['x']}); "
            f"variables: {', '.join(available)}"
        )
    return chosen


def _dims_of(ds: xr.Dataset, names: Sequence[str]) -> list[str]:
    return [str(d) for v in names for d in ds[v].dims]


def _check_times(path: Path, times: np.ndarray) -> None:
    if len(times) > 1:
        diffs = spacings(times)
        zero = np.zeros((), diffs.dtype)
        bad = np.flatnonzero(diffs <= zero)
        if len(bad):
            i = int(bad[0])
            kind = "duplicate" if diffs[i] == zero else "non-monotonic"
            raise MinconvError(
                f"{path}: {kind} times at index {i + 1} ({times[i]} then {times[i + 1]}); times must increase"
            )


def _check_same_grid(pa: Path, a: xr.Dataset, pb: Path, b: xr.Dataset, role: Mapping) -> None:
    """Files joined along time must share y, x, level and sample coordinates."""
    for key in ("y", "x", "level", *[None]):
        dim = role.get(key) if key else None
        if dim is None:
            continue
        na, nb = a.sizes.get(dim), b.sizes.get(dim)
        same = na == nb
        if same and dim in a.coords and dim in b.coords:
            va, vb = a[dim].values, b[dim].values
            same = (
                np.allclose(va, vb, equal_nan=True)
                if va.dtype.kind in "fiu" and vb.dtype.kind in "fiu"
                else bool(np.array_equal(va, vb))
            )
        if not same:
            raise MinconvError(
                f"{pb}: grid differs from {pa} along {dim!r} ({nb} vs {na} points or other values)"
            )
    for dim in role["sample"]:
        if a.sizes.get(dim) != b.sizes.get(dim):
            raise MinconvError(
                f"{pb}: {dim!r} has {b.sizes.get(dim)} entries but {pa} has {a.sizes.get(dim)}"
            )


def _level_name(level: Any) -> str:
    return f"{level:g}" if isinstance(level, float) else str(level)


def _channels(ds: xr.Dataset, names: Sequence[str], level_dim: str | None) -> list[Channel]:
    out = []
    for v in names:
        attrs = jsonable(dict(ds[v].attrs))
        units = str(ds[v].attrs.get("units", ""))
        if level_dim and level_dim in ds[v].dims:
            for level in ds[level_dim].values.tolist():
                out.append(Channel(f"{v}_{_level_name(level)}", v, level, units, attrs))
        else:
            out.append(Channel(str(v), str(v), None, units, attrs))
    return out


def _static_channels(
    ds: xr.Dataset,
    names: Sequence[str],
    label: str,
    level_dim: str | None,
    grid_dims: tuple[str, str],
) -> list[Channel]:
    """Static inputs: fields over (y, x) (the first time and sample are used if they have more)."""
    for v in names:
        if not set(ds[v].dims) & set(grid_dims):
            raise MinconvError(f"{label}: static {v!r} has neither of the grid dims {grid_dims}")
    return _channels(ds, names, level_dim)
