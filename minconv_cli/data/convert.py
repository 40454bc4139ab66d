"""Format conversion behind `minconv convert`: NetCDF <-> Zarr (v2/v3), NumPy arrays in; select,
coarsen, rechunk and rename on the way; written to a temporary sibling and renamed into place."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import xarray as xr

from minconv_cli.core.errors import MinconvError, one_line
from minconv_cli.core.files import (
    NETCDF_OUTPUT_SUFFIXES,
    NUMPY_SUFFIXES,
    ZARR_SUFFIX,
    commit,
    dask_progress,
    discard,
    fs_cause,
    os_cause,
    output_lock,
    recover,
    sibling,
    writing,
)
from minconv_cli.data.dims import find_roles
from minconv_cli.data.formats import detect_format
from minconv_cli.data.integrity import check_chunks, missing_chunks
from minconv_cli.data.numpy_input import from_numpy
from minconv_cli.data.open import open_dataset
from minconv_cli.data.remote import as_source, is_url, local_path, zarr_format_of_url

Progress = Callable[[int, int], None]
# Encoding keys that mean the same in NetCDF and Zarr; codec/chunk settings are format-specific.
PORTABLE_ENCODING = (
    "dtype",
    "_FillValue",
    "missing_value",
    "scale_factor",
    "add_offset",
    "units",
    "calendar",
)
NETCDF_ENCODING = ("zlib", "complevel", "shuffle", "fletcher32", "contiguous", "chunksizes")
ZARR_ENCODING = ("compressors", "filters", "serializer", "chunks", "shards")


def parse_mapping(text: str | None, option: str) -> dict[str, str]:
    """`"a=1,b=2"` → {"a": "1", "b": "2"} (values may contain ':' and '/')."""
    out: dict[str, str] = {}
    for part in (text or "").split(","):
        if not part.strip():
            continue
        if "=" not in part:
            raise MinconvError(f"{option}: expected NAME=VALUE, got {part.strip()!r}")
        key, value = (s.strip() for s in part.split("=", 1))
        out[key] = value
    return out


def output_format(dst: Path, to: str | None) -> str:
    """`netcdf` or `zarr`, from `--to` or the destination's extension."""
    if to:
        if to not in ("netcdf", "zarr"):
            raise MinconvError(f"--to: expected netcdf or zarr, got {to!r}")
        return to
    suffix = dst.suffix.lower()
    if suffix == ZARR_SUFFIX:
        return "zarr"
    if suffix in NETCDF_OUTPUT_SUFFIXES:
        return "netcdf"
    raise MinconvError(
        f"{dst}: cannot tell the output format from the extension; use .nc/.zarr or --to"
    )


def convert(
    src: str | Path,
    dst: str | Path,
    *,
    to: str | None = None,
    zarr_format: int | None = None,
    variables: Sequence[str] | None = None,
    time: str | None = None,
    coarsen: Mapping[str, int] | None = None,
    chunks: Mapping[str, int] | None = None,
    rename: Mapping[str, str] | None = None,
    dims: Sequence[str] | None = None,
    coords: Mapping[str, str] | None = None,
    name: str | None = None,
    attrs: Mapping[str, str] | None = None,
    overwrite: bool = False,
    progress: Progress | None = None,
    allow_missing_chunks: bool = False,
) -> dict:
    """Convert one data file/store to NetCDF or Zarr and return a summary of what was written.

    NumPy input (.npy/.npz) needs `dims`; `coords` values are `START:STEP`, `START:STOP:STEP`,
    a datetime `START:FREQ` (e.g. `2000-01-01:6h`) or a .npy/.txt file of values.
    """
    src, dst = as_source(src), local_path(dst, "DST")
    fmt = _checked_output(dst, to, zarr_format, overwrite)
    ds, src_fmt = _open_source(src, dims, coords, name, allow_missing_chunks)
    src_zarr_format = _source_zarr_format(src, src_fmt)
    target_zarr = zarr_format or src_zarr_format or 3
    ds = _apply_attrs(ds, attrs or {}, src)
    ds = _select(ds, src, variables, time)
    if coarsen:
        ds = _coarsen(ds, src, coarsen)
    if rename:
        ds = _rename(ds, src, rename)
    same_codecs = src_fmt == fmt and (fmt == "netcdf" or src_zarr_format == target_zarr)
    ds = _set_encodings(
        ds,
        fmt,
        same_codecs,
        rechunked=bool(chunks) or bool(coarsen),
        compressed=src_fmt != "netcdf",
    )
    ds = _chunk(ds, dst, fmt, chunks or {})
    with output_lock(dst):  # one writer per output
        recover(dst)  # what a killed run left beside it
        _write_atomically(ds, dst, fmt, target_zarr, overwrite, progress)
    return summary(dst, fmt, target_zarr if fmt == "zarr" else None, ds)


def _checked_output(dst: Path, to: str | None, zarr_format: int | None, overwrite: bool) -> str:
    """The output format, once `--zarr-format` fits it and `dst` may be written."""
    fmt = output_format(dst, to)
    if zarr_format not in (None, 2, 3):
        raise MinconvError(f"--zarr-format: expected 2 or 3, got {zarr_format}")
    if zarr_format and fmt != "zarr":
        raise MinconvError("--zarr-format: only applies to Zarr output")
    if dst.exists() and not overwrite:
        raise MinconvError(f"{dst}: already exists (use --overwrite to replace it)")
    return fmt


def _open_source(
    src: str | Path,
    dims: Sequence[str] | None,
    coords: Mapping[str, str] | None,
    name: str | None,
    allow_missing_chunks: bool,
) -> tuple[xr.Dataset, str]:
    """The input as a Dataset and its format (`numpy`, `netcdf` or `zarr`)."""
    if Path(src).suffix.lower() in NUMPY_SUFFIXES:
        if is_url(src):
            raise MinconvError(f"{src}: NumPy input must be a local file (URLs: Zarr stores only)")
        return from_numpy(src, dims, coords, name), "numpy"
    if dims or coords or name:
        raise MinconvError("--dims/--coords/--name: only apply to NumPy (.npy/.npz) input")
    ds, src_fmt = open_dataset(src), detect_format(src)
    check_chunks(src, ds, [str(v) for v in ds.data_vars], allow=allow_missing_chunks)
    return ds, src_fmt


def _source_zarr_format(src: str | Path, src_fmt: str) -> int | None:
    """The Zarr format (2 or 3) of a Zarr input; None for other inputs."""
    if src_fmt != "zarr":
        return None
    return zarr_format_of_url(src) if is_url(src) else _zarr_format_of(src)


def _rename(ds: xr.Dataset, src: Path, rename: Mapping[str, str]) -> xr.Dataset:
    missing = [k for k in rename if k not in ds.variables and k not in ds.dims]
    if missing:
        raise MinconvError(
            f"--rename: {missing} not in {src}; names: {', '.join(map(str, ds.variables))}"
        )
    return ds.rename(dict(rename))


def summary(path: Path, fmt: str, zarr_format: int | None, ds: xr.Dataset) -> dict:
    """What was written: path, format, variables with dims/shape/dtype, dim sizes, coordinates."""
    return {
        "path": str(path),
        "format": fmt,
        "zarr_format": zarr_format,
        "dims": {str(k): int(v) for k, v in ds.sizes.items()},
        "variables": {
            str(k): {"dims": list(map(str, v.dims)), "shape": list(v.shape), "dtype": str(v.dtype)}
            for k, v in ds.data_vars.items()
        },
        "coords": [str(c) for c in ds.coords],
    }


def _zarr_format_of(path: Path) -> int:
    root = path.parent if path.name in ("zarr.json", ".zgroup") else path
    return 3 if (root / "zarr.json").exists() else 2


def _apply_attrs(ds: xr.Dataset, attrs: Mapping[str, str], src: Path) -> xr.Dataset:
    """`key=value` sets an attribute on every data variable; `var.key=value` on one variable/coord."""
    ds = ds.copy()
    for key, value in attrs.items():
        target, _, attr = key.rpartition(".")
        if target and target not in ds.variables:
            raise MinconvError(
                f"--attrs: {target!r} not in {src}; names: {', '.join(map(str, ds.variables))}"
            )
        for v in [target] if target else list(ds.data_vars):
            ds[v].attrs[attr] = value
    return ds


def _select(
    ds: xr.Dataset, src: Path, variables: Sequence[str] | None, time: str | None
) -> xr.Dataset:
    if variables:
        missing = [v for v in variables if v not in ds.data_vars]
        if missing:
            raise MinconvError(
                f"{src}: variable(s) {', '.join(missing)} not found; available: {', '.join(map(str, ds.data_vars))}"
            )
        ds = ds[list(variables)]
    if time:
        tdim = find_roles(ds, ds.dims, str(src), None).get("time")
        if tdim is None:
            raise MinconvError(f"--time: {src} has no recognisable time dimension")
        if "/" not in time:
            raise MinconvError(f"--time: expected START/END, got {time!r}")
        start, end = (s.strip() or None for s in time.split("/", 1))
        if ds[tdim].dtype.kind != "M":
            try:
                start, end = (float(v) if v is not None else None for v in (start, end))
            except ValueError:
                raise MinconvError(
                    f"--time: {src} has numeric times; give numbers like 0/50"
                ) from None
        try:
            ds = ds.sel({tdim: slice(start, end)})
        except (KeyError, ValueError, TypeError) as err:
            raise MinconvError(f"--time: cannot select {time!r} in {src} ({err})") from None
        if ds.sizes[tdim] == 0:
            raise MinconvError(f"--time: no times of {src} within {time}")
    return ds


def _coarsen(ds: xr.Dataset, src: Path, factors: Mapping[str, int]) -> xr.Dataset:
    """Block means (as the paper coarsens), trimming what does not fill a block."""
    for dim, f in factors.items():
        if dim not in ds.dims:
            raise MinconvError(
                f"--coarsen: {dim!r} is not a dimension of {src} (dims: {', '.join(map(str, ds.dims))})"
            )
        if int(f) < 1 or int(f) > ds.sizes[dim]:
            raise MinconvError(f"--coarsen: factor {f} for {dim!r} must be in 1..{ds.sizes[dim]}")
    with xr.set_options(keep_attrs=True):
        out = ds.coarsen({d: int(f) for d, f in factors.items()}, boundary="trim").mean()
    for v in out.variables:
        out[v].attrs = dict(ds[v].attrs)
        if v in ds.variables:
            keep = {k: ds[v].encoding[k] for k in ("units", "calendar") if k in ds[v].encoding}
            if out[v].dtype == ds[v].dtype:
                keep.update(
                    {k: ds[v].encoding[k] for k in PORTABLE_ENCODING if k in ds[v].encoding}
                )
            out[v].encoding = keep
    return out


def _set_encodings(
    ds: xr.Dataset, fmt: str, same_codecs: bool, rechunked: bool, compressed: bool
) -> xr.Dataset:
    """Keep the portable encodings; keep codecs only within one format; compress NetCDF from Zarr."""
    own = NETCDF_ENCODING if fmt == "netcdf" else ZARR_ENCODING
    for v in ds.variables.values():
        enc = {k: val for k, val in v.encoding.items() if k in PORTABLE_ENCODING}
        if same_codecs:
            enc.update({k: val for k, val in v.encoding.items() if k in own})
        if rechunked:
            enc.pop("chunks", None)
            enc.pop("chunksizes", None)
            enc.pop("shards", None)
        if (
            fmt == "netcdf"
            and not same_codecs
            and compressed
            and v.dtype.kind in "fiu"
            and v.ndim > 0
        ):
            enc.update(zlib=True, complevel=4)
        if fmt == "netcdf" and enc.get("contiguous") and (enc.get("zlib") or enc.get("chunksizes")):
            enc.pop("contiguous")
        v.encoding = enc
    return ds


def _chunk(ds: xr.Dataset, dst: Path, fmt: str, chunks: Mapping[str, int]) -> xr.Dataset:
    """Apply `--chunks` (dask chunks, and the on-disk chunks of the output)."""
    for dim, n in chunks.items():
        if dim not in ds.dims:
            raise MinconvError(
                f"--chunks: {dim!r} is not a dimension (dims: {', '.join(map(str, ds.dims))})"
            )
        if int(n) < 1:
            raise MinconvError(f"--chunks: {dim}={n} must be >= 1")
    if chunks:
        ds = ds.chunk({d: int(n) for d, n in chunks.items()})
        for v in ds.data_vars.values():
            sizes = tuple(min(int(chunks.get(d, ds.sizes[d])), ds.sizes[d]) for d in v.dims)
            v.encoding["chunks" if fmt == "zarr" else "chunksizes"] = sizes
            v.encoding.pop("contiguous", None)
    elif fmt == "zarr":
        # dask chunks must tile the Zarr chunks: unify any irregular source chunking.
        ds = ds.unify_chunks() if any(v.chunks for v in ds.variables.values()) else ds
        for v in ds.variables.values():
            if v.chunks and "chunks" not in v.encoding:
                v.encoding["chunks"] = tuple(c[0] for c in v.chunks)
    return ds


def _write_atomically(
    ds: xr.Dataset,
    dst: Path,
    fmt: str,
    zarr_format: int,
    overwrite: bool,
    progress: Progress | None,
) -> None:
    """Write to a hidden temporary sibling, check it, then put it in place of `dst` (`commit`: a
    kill at any moment leaves the old or the new `dst`); nothing is left behind on failure.
    Call it holding `output_lock(dst)`."""
    import dask

    tmp = sibling(dst)
    try:
        if fmt == "zarr":
            job = ds.to_zarr(
                tmp,
                mode="w",
                zarr_format=zarr_format,
                consolidated=zarr_format == 2,
                compute=False,
                write_empty_chunks=True,  # every chunk stored: a missing one is damage
            )
        else:
            job = ds.to_netcdf(tmp, engine="netcdf4", compute=False)
        with dask_progress(progress):
            dask.compute(job)
        _verify(tmp, dst, ds, fmt)
        if dst.exists() and not overwrite:
            raise MinconvError(f"{dst}: already exists (use --overwrite to replace it)")
        with writing(dst):
            commit(tmp, dst)
    except MinconvError:
        discard(tmp)
        raise
    except Exception as err:  # a failed read of a damaged input or a failed write
        discard(tmp)
        cause = os_cause(err) or fs_cause(tmp)
        if cause:
            raise MinconvError(f"{dst}: cannot write ({cause})") from None
        raise MinconvError(f"{dst}: conversion failed ({one_line(err)})") from None
    except BaseException:
        discard(tmp)
        raise
    finally:
        ds.close()


def _verify(written: Path, dst: Path, ds: xr.Dataset, fmt: str) -> None:
    """The written file opens and holds every variable at its shape (and, in Zarr, every chunk)."""
    if not written.exists():
        raise MinconvError(f"{dst}: the output was removed while writing")
    try:
        back = open_dataset(written)
    except MinconvError as err:
        raise MinconvError(f"{dst}: the output is unreadable after writing ({err})") from None
    with back:
        for v in ds.data_vars:
            if v not in back.data_vars or back[v].shape != ds[v].shape:
                raise MinconvError(f"{dst}: variable {v!r} is incomplete after writing")
        if fmt == "zarr":
            for v in ds.data_vars:
                if missing_chunks(written, str(v)):
                    raise MinconvError(
                        f"{dst}: chunks of {v!r} are missing after writing (was the output "
                        "changed or removed while writing?)"
                    )
