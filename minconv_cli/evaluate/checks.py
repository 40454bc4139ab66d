"""What evaluate checks before scoring: units that agree, and forecast stores whose done flags
are true to their data (no chunk missing where a forecast is flagged written)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import xarray as xr

from minconv_cli.compat import every_chunk_stored
from minconv_cli.core.errors import MinconvError
from minconv_cli.data.formats import detect_format
from minconv_cli.data.integrity import check_chunks, chunk_region, missing_chunks
from minconv_cli.evaluate.labels import label
from minconv_cli.rollout.store import DONE, INIT_DIM, MEMBER_DIM, ForecastStore


def units_of(attrs: Mapping[str, Any]) -> str:
    """The `units` attribute as compared: text with runs of spaces made one ('' if none)."""
    return " ".join(str(attrs.get("units", "")).split())


def check_units(
    forecasts: Sequence[ForecastStore],
    others: Sequence[tuple[str, Mapping[str, xr.DataArray]]],
    variables: Sequence[str],
    notes: list[str],
) -> None:
    """One line if a forecast, the truth or a climatology file (`others`: label, variables) gives a
    variable in other units than the first forecast that gives any; a note where one side has none."""
    for v in variables:
        stores = [(str(s.path), units_of(s.ds[v].attrs)) for s in forecasts if v in s.variables]
        sources = [(str(lbl), units_of(ds[v].attrs)) for lbl, ds in others if v in ds]
        ref = next(((lbl, u) for lbl, u in stores if u), None)
        if ref is None:
            given = [lbl for lbl, u in sources if u]
            if given:
                notes.append(f"units of {v!r} not checked: no forecast gives any ({given[0]} does)")
            continue
        for lbl, u in [*stores, *sources]:
            if u and u != ref[1]:
                raise MinconvError(
                    f"{lbl}: variable {v!r} is in {u!r} but the forecast {ref[0]} is in {ref[1]!r}"
                )
            if not u:
                notes.append(f"units of {v!r} not checked: {lbl} gives none ({ref[0]}: {ref[1]!r})")


_OLDER = (
    "; stores of earlier releases left all-NaN chunks out: --allow-missing-chunks reads them as NaN"
)


def verify_done_chunks(store: ForecastStore, allow_missing: bool = False) -> None:
    """Raise one line if a Zarr chunk of a forecast is missing where `minconv_done` says it was
    written (a damaged store; never allowed). A missing chunk where it is not done is unfinished.
    A store without done flags has its missing chunks refused unless `allow_missing`, and so has
    a store of an earlier release (which left all-NaN chunks out) at done positions."""
    if store.ds.encoding.get("source_format", detect_format(store.path)) != "zarr":
        return
    if DONE not in store.ds.coords:
        check_chunks(store.path, store.ds, store.variables, allow_missing)
        return
    if allow_missing and not every_chunk_stored(store.ds.attrs):
        return  # an older release's store: all-NaN chunks were left out, read as NaN
    done = store.ds[DONE].load()
    for v in store.variables:
        try:
            gone = missing_chunks(store.path, v)
        except KeyError:  # not a zarr array under that name
            continue
        if not gone:
            continue
        damaged = _done_chunks(store, v, done, np.asarray(gone))
        if len(damaged):
            where = _where(store, v, done, tuple(int(i) for i in damaged[0]))
            raise MinconvError(
                f"{store.path}: damaged store: {len(damaged)} chunk(s) of variable {v!r} are "
                f"missing where {DONE} says the forecast was written, first at {where} (a missing "
                "chunk reads as NaN; roll those forecasts out again"
                + ("" if every_chunk_stored(store.ds.attrs) else _OLDER)
                + ")"
            )


def _done_chunks(
    store: ForecastStore, variable: str, done: xr.DataArray, gone: np.ndarray
) -> np.ndarray:
    """The rows of `gone` (chunk indices of `variable`) whose region holds a done position."""
    dims = list(store.ds[variable].dims)
    size = _chunk_sizes(store, variable)
    flags = np.asarray(done.values, dtype=bool)
    for axis, d in enumerate(done.dims):  # done by chunk: any done position within each chunk
        c = size[dims.index(d)] if d in dims else flags.shape[axis]
        n = -(-flags.shape[axis] // c)
        pad = [(0, 0)] * flags.ndim
        pad[axis] = (0, n * c - flags.shape[axis])
        flags = np.pad(flags, pad)
        flags = flags.reshape(*flags.shape[:axis], n, c, *flags.shape[axis + 1 :]).any(axis + 1)
    index = tuple(gone[:, dims.index(d)] if d in dims else 0 for d in done.dims)
    return gone[flags[index]]


def _chunk_sizes(store: ForecastStore, variable: str) -> list[int]:
    """The chunk (or shard) size along each dim of `variable` in its store."""
    first = chunk_region(store.ds, variable, (0,) * store.ds[variable].ndim, store.path)
    return [max(1, sl.stop - sl.start) for sl in first.values()]


def _where(store: ForecastStore, variable: str, done: xr.DataArray, index: tuple[int, ...]) -> str:
    """`init time 2000-01-11T00:00:00, member 1, trajectory 3` for the first done position of a chunk."""
    region = chunk_region(store.ds, variable, index, store.path)
    part = done.isel({d: region[d] for d in done.dims if d in region})
    at = np.argwhere(np.asarray(part.values, dtype=bool))[0]
    words = []
    for d, i in zip(done.dims, at, strict=True):
        value = part[d].values[i] if d in part.coords else region[d].start + i
        name = {INIT_DIM: "init time", MEMBER_DIM: "member"}.get(str(d), str(d))
        words.append(f"{name} {label(value)}")
    return ", ".join(words)
