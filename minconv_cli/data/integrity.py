"""Chunks a Zarr store should have but does not.

A Zarr reader returns the fill value (NaN for our float data) for a chunk that is not stored, so a
deleted or never-written chunk reads as missing data without a word. minconv's own writers store
every chunk (`write_empty_chunks`), so a missing chunk is damage; stores written by others with
zarr-python 3's default (`write_empty_chunks=False`) leave out chunks that are all fill value, which
the commands accept with `--allow-missing-chunks`.
"""

from __future__ import annotations

import itertools
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from minconv_cli.core.errors import MinconvError
from minconv_cli.data.formats import detect_format
from minconv_cli.data.timeaxis import short_time

ALLOW_OPTION = "--allow-missing-chunks"


def _open_array(source: str | Path, variable: str) -> Any:
    """The zarr array of `variable` in the store at `source` (local path or URL), read-only."""
    import zarr

    from minconv_cli.data.remote import is_url, storage_options, store_url

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if is_url(source):
            root = store_url(str(source))
            group = zarr.open_group(root, mode="r", storage_options=storage_options(root))
        else:
            group = zarr.open_group(str(source), mode="r")
        return group[variable]


def missing_chunks(source: str | Path, variable: str) -> list[tuple[int, ...]]:
    """Chunk-grid indices (shard indices for sharded arrays) of `variable` that are not stored."""
    from zarr.core.sync import sync

    array = _open_array(source, variable)
    grid = array.cdata_shape if array.shards is None else _shard_grid(array)
    if array.nchunks_initialized == array.nchunks:
        return []
    store_path = array.store_path
    prefix = store_path.path.rstrip("/") + "/" if store_path.path else ""

    async def listed() -> set[str]:
        return {key[len(prefix) :] async for key in store_path.store.list_prefix(prefix)}

    present = sync(listed())
    return [
        index
        for index in itertools.product(*(range(n) for n in grid))
        if array.metadata.encode_chunk_key(index) not in present
    ]


def _shard_grid(array: Any) -> tuple[int, ...]:
    return tuple(-(-s // c) for s, c in zip(array.shape, array.shards, strict=True))


def chunk_region(
    ds: xr.Dataset, variable: str, index: tuple[int, ...], source: str | Path
) -> dict[str, slice]:
    """dim -> the slice of `variable` that chunk `index` covers."""
    array = _open_array(source, variable)
    size = array.chunks if array.shards is None else array.shards
    dims = ds[variable].dims
    return {
        str(d): slice(i * c, min((i + 1) * c, n))
        for d, i, c, n in zip(dims, index, size, array.shape, strict=True)
    }


def describe(ds: xr.Dataset, region: dict[str, slice]) -> str:
    """`time 2001-01-01 to 2001-01-31, latitude 0:32` for a region of `ds`."""
    parts = []
    for dim, sl in region.items():
        if sl.start == 0 and sl.stop == ds.sizes[dim] and len(region) > 1:
            continue  # the chunk spans the whole axis: nothing to say
        if dim in ds.coords and ds[dim].ndim == 1:
            values = np.asarray(ds[dim].values[sl])
            first, last = short_time(values[0]), short_time(values[-1])
            parts.append(f"{dim} {first}" if first == last else f"{dim} {first} to {last}")
        else:
            parts.append(f"{dim} {sl.start}:{sl.stop}")
    return ", ".join(parts) or "the whole array (one chunk)"


def check_chunks(
    source: str | Path, ds: xr.Dataset, variables: list[str], allow: bool = False
) -> None:
    """Raise one line naming the store, the variable and where, if a chunk of `variables` is not
    stored (unless `allow`). NetCDF files and variables that are not Zarr arrays pass."""
    if allow or ds.encoding.get("source_format", detect_format(source)) != "zarr":
        return
    for v in variables:
        try:
            gone = missing_chunks(source, v)
        except KeyError:  # e.g. a coordinate, or a variable renamed after opening
            continue
        if gone:
            where = describe(ds, chunk_region(ds, v, gone[0], source))
            raise MinconvError(
                f"{source}: variable {v!r} has {len(gone)} missing chunk(s), first at {where}; "
                f"a missing chunk reads as NaN (damaged store, or written without empty chunks: "
                f"{ALLOW_OPTION} to read them as NaN)"
            )
