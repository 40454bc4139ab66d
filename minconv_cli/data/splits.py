"""`split_fields`: a subset of `Fields` by time range, sample index range, fraction or named split."""

from __future__ import annotations

import re
from typing import Any

import numpy as np

import minconv_cli.data.timeaxis as timeaxis
from minconv_cli.core.errors import MinconvError, check_not_blank
from minconv_cli.data.fields import Fields

_FRACTION = re.compile(r"^\s*(\d*\.?\d*)\s*:\s*(\d*\.?\d*)\s*$")


def split_fields(fields: Fields, spec: str) -> Fields:
    """Subset by `"START/END"` (times, inclusive), `"dim=a:b"` (sample positions), `"0.0:0.8"`
    (fraction of samples, or of time without sample dims) or `"coord=value"` (e.g. `split=train`)."""
    spec = str(spec).strip()
    dim, index = split_selection(fields, spec)
    return fields.with_ds(fields.ds.isel({dim: index}), f"{fields.path_label} [{spec}]")


def split_selection(fields: Fields, spec: str) -> tuple[str, np.ndarray | slice]:
    """(dim, the positions or slice along it) that the split `spec` keeps of `fields`."""
    spec = str(spec).strip()
    check_not_blank(spec, "split ''")
    if "/" in spec:
        return fields.time_dim, _time_range(fields, spec)
    if "=" in spec:
        name, value = (s.strip() for s in spec.split("=", 1))
        if name in fields.sample_dims:
            n = fields.ds.sizes[name]
            return name, _index_slice(fields, spec, value, n)
        return _named_split(fields, spec, name, value)
    if _FRACTION.match(spec):
        return _fraction(fields, spec)
    raise MinconvError(
        f"split {spec!r}: expected START/END times, DIM=a:b, a fraction range like 0.0:0.8, or split=NAME"
    )


def split_overlap(fields: Fields, a: str, b: str) -> dict[str, np.ndarray] | None:
    """The (sample, time) frames that splits `a` and `b` both keep, as positions per dim they
    restrict (empty dict: every frame); None when they share none."""
    keep: dict[str, np.ndarray] = {}
    for spec in (a, b):
        dim, index = split_selection(fields, spec)
        if isinstance(index, slice):
            index = np.arange(fields.ds.sizes[dim])[index]
        keep[dim] = np.intersect1d(keep[dim], index) if dim in keep else index
    if any(len(index) == 0 for index in keep.values()):
        return None
    return keep


def describe_positions(fields: Fields, dim: str, index: np.ndarray) -> str:
    """`9 time values from 2000-01-20 to 2000-01-28`: positions along `dim`, by coordinate value
    where it has one."""
    from minconv_cli.data.timeaxis import short_time

    values = fields.ds[dim].values[index] if dim in fields.ds.coords else index
    first, last = short_time(values[0]), short_time(values[-1])
    if len(index) == 1:
        return f"{dim} {first}"
    return f"{len(index)} {dim} values from {first} to {last}"


def read_time(fields: Fields, text: str, what: str, end: bool = False) -> Any:
    """A time on the data's axis: a date/time in its calendar (`end`: a date, month or year alone
    stands for its last instant) or a number. MinconvError `WHAT: cannot read ...` otherwise."""
    try:
        if fields.time_is_datetime:
            return timeaxis.parse_time(text, fields.times, end=end)
        return float(text)
    except (ValueError, TypeError):
        kind = "a date/time" if fields.time_is_datetime else "a number"
        raise MinconvError(f"{what}: cannot read {text.strip()!r} as {kind}") from None


def time_range(fields: Fields, start: str | None, stop: str | None, what: str) -> np.ndarray:
    """Positions of the data's times in START/STOP (inclusive; an empty side is open)."""
    times = timeaxis.as_axis(fields.times)
    keep = np.ones(len(times), dtype=bool)
    if start:
        keep &= times >= read_time(fields, start, what)
    if stop:
        keep &= times <= read_time(fields, stop, what, end=True)
    return np.flatnonzero(keep)


def _time_range(fields: Fields, spec: str) -> np.ndarray:
    start, end = (s.strip() or None for s in spec.split("/", 1))
    if not fields.time_is_datetime:
        try:
            [float(t) for t in (start, end) if t is not None]
        except ValueError:
            raise MinconvError(
                f"split {spec!r}: {fields.path_label} has numeric times; give numbers like 10/40"
            ) from None
    index = time_range(fields, start, end, f"split {spec!r}")
    if index.size == 0:
        raise MinconvError(
            f"split {spec!r}: no times of {fields.path_label} in range "
            f"(data covers {fields.times[0]} to {fields.times[-1]})"
        )
    return index


def _index_slice(fields: Fields, spec: str, value: str, n: int) -> slice:
    try:
        if ":" in value:
            a, b = (int(s) if s.strip() else None for s in value.split(":", 1))
            sl = slice(a, b)
        else:
            i = int(value)
            sl = slice(i, i + 1)
    except ValueError:
        raise MinconvError(f"split {spec!r}: expected integer positions like 0:800") from None
    if len(range(n)[sl]) == 0:
        raise MinconvError(f"split {spec!r}: selects nothing of {n} entries in {fields.path_label}")
    return sl


def _named_split(fields: Fields, spec: str, name: str, value: str) -> tuple[str, np.ndarray]:
    if name not in fields.ds.coords:
        raise MinconvError(
            f"split {spec!r}: {fields.path_label} has no sample dim or coordinate {name!r} "
            f"(sample dims: {', '.join(fields.sample_dims) or 'none'})"
        )
    coord = fields.ds[name]
    if coord.ndim != 1 or coord.dims[0] not in fields.sample_dims:
        raise MinconvError(f"split {spec!r}: coordinate {name!r} does not run along a sample dim")
    hits = np.flatnonzero(coord.values.astype(str) == value)
    if len(hits) == 0:
        found = sorted(set(coord.values.astype(str).tolist()))
        raise MinconvError(f"split {spec!r}: no {name} == {value!r} (values: {', '.join(found)})")
    return str(coord.dims[0]), hits


def _fraction(fields: Fields, spec: str) -> tuple[str, slice]:
    m = _FRACTION.match(spec)
    a = float(m.group(1) or 0.0)
    b = float(m.group(2) or 1.0)
    if not 0.0 <= a < b <= 1.0:
        raise MinconvError(f"split {spec!r}: fractions must satisfy 0 <= start < end <= 1")
    dim = fields.sample_dims[0] if fields.sample_dims else fields.time_dim
    n = fields.ds.sizes[dim]
    lo, hi = int(round(a * n)), int(round(b * n))
    if hi <= lo:
        raise MinconvError(f"split {spec!r}: selects nothing of {n} entries along {dim!r}")
    return dim, slice(lo, hi)
