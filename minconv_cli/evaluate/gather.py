"""Lazy gathers along the truth's time axis (or a climatology's key axis) at given positions per
case, as dask graphs with one task per block of cases: each task reads only the slabs of the
source its positions fall in, so a store larger than memory is aligned within bounded memory and
the graph grows with the number of blocks, not of cases (a vectorised `isel` makes a task per
case and, on a lazy source of few chunks, reads the whole source in every one of them)."""

from __future__ import annotations

import itertools
from collections.abc import Hashable, Mapping

import dask.array as dsa
import numpy as np
import xarray as xr
from dask.base import tokenize
from dask.highlevelgraph import HighLevelGraph

SLAB_BYTES = 8 * 2**20  # the source is read in slabs of about this many bytes along its axis


def gather(
    src: xr.DataArray,
    axis: Hashable,
    pos: xr.DataArray,
    mask: xr.DataArray | None,
    chunks: Mapping[Hashable, tuple[int, ...]],
) -> xr.DataArray:
    """`src` at the positions `pos` along `axis`: dims (*pos.dims, *the other dims of `src`),
    NaN where `mask` is False; lazy, chunked like `chunks` along pos's dims and whole along the
    others."""
    other = [d for d in src.dims if d != axis]
    source = _slabs(src.transpose(axis, *other).data)
    p = np.asarray(pos.values, dtype=np.int64)
    m = np.ones(p.shape, bool) if mask is None else np.asarray(mask.transpose(*pos.dims), bool)
    case_chunks = tuple(chunks.get(d, (p.shape[i],)) for i, d in enumerate(pos.dims))
    data = _gather_array(source, p, m & (p >= 0), case_chunks)
    coords = {k: c for k, c in src.coords.items() if axis not in c.dims}
    coords.update({d: pos[d] for d in pos.dims if d in pos.coords})
    return xr.DataArray(data, dims=(*pos.dims, *other), coords=coords, attrs=src.attrs)


def at_positions(
    src: xr.DataArray,
    axis: Hashable,
    pos: xr.DataArray,
    mask: xr.DataArray | None,
    like: xr.DataArray,
) -> xr.DataArray:
    """`src` at the positions `pos` along `axis` (NaN off `mask`): gathered block by block like
    `like` when it is lazy (dask), else in memory."""
    if like.chunks is not None:
        return gather(src, axis, pos, mask, dict(zip(like.dims, like.chunks, strict=True)))
    at = src.isel({axis: pos}).drop_vars(str(axis), errors="ignore")
    return at if mask is None else at.where(mask)


def _slabs(data: object) -> dsa.Array:
    """The source as a dask array in slabs along its first axis, whole along the others; an
    array in memory is sliced into views, not copied (`dask.array.from_array` copies it)."""
    frame = max(1, int(np.prod(np.shape(data)[1:])) * np.dtype(data.dtype).itemsize)
    slab = max(1, SLAB_BYTES // frame)
    whole = {i: -1 for i in range(1, np.ndim(data))}
    if isinstance(data, dsa.Array):
        return data.rechunk({0: slab, **whole} if max(data.chunks[0]) > slab else whole)
    data = np.asarray(data)
    name = "slabs-" + tokenize(data)
    zeros = (0,) * (data.ndim - 1)
    starts = range(0, len(data), slab)
    dsk = {(name, i, *zeros): data[a : a + slab] for i, a in enumerate(starts)}
    sizes = tuple(len(v) for v in dsk.values()) or (0,)
    return dsa.Array(dsk, name, (sizes, *((n,) for n in data.shape[1:])), dtype=data.dtype)


def _gather_array(
    source: dsa.Array, pos: np.ndarray, mask: np.ndarray, case_chunks: tuple[tuple[int, ...], ...]
) -> dsa.Array:
    """The dask array of `source[pos]` (NaN off `mask`): one task per block of `case_chunks`,
    depending on the slabs of `source` that hold the block's positions."""
    dtype = source.dtype if source.dtype.kind in "fc" else np.dtype(np.float64)
    rest = source.shape[1:]
    starts = np.cumsum((0, *source.chunks[0]))
    name = "gather-" + tokenize(source.name, pos, mask, case_chunks)
    zeros = (0,) * len(rest)
    bounds = [np.cumsum((0, *c)) for c in case_chunks]
    dsk = {}
    for index in itertools.product(*(range(len(c)) for c in case_chunks)):
        block = tuple(slice(b[i], b[i + 1]) for b, i in zip(bounds, index, strict=True))
        p, m = pos[block], mask[block]
        used = np.unique(np.searchsorted(starts, p[m], side="right") - 1)
        slabs = [(source.name, int(s), *zeros) for s in used]
        dsk[(name, *index, *zeros)] = (_take, p, m, starts[used], rest, dtype, slabs)
    graph = HighLevelGraph.from_collections(name, dsk, dependencies=[source])
    chunks = (*case_chunks, *((n,) for n in rest))
    return dsa.Array(graph, name, chunks, dtype=dtype)


def _take(
    pos: np.ndarray,
    mask: np.ndarray,
    starts: np.ndarray,
    rest: tuple[int, ...],
    dtype: np.dtype,
    slabs: list[np.ndarray],
) -> np.ndarray:
    """One block: the slabs (first positions `starts`) at `pos` where `mask`, NaN elsewhere."""
    out = np.full((*pos.shape, *rest), np.nan, dtype=dtype)
    for start, slab in zip(starts, slabs, strict=True):
        sel = mask & (pos >= start) & (pos < start + len(slab))
        out[sel] = slab[pos[sel] - start]
    return out
