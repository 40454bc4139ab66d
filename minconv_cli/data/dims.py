"""Which dim is time, y (latitude), x (longitude), level, or a sample dim: CF attributes first, then names."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np
import xarray as xr

from minconv_cli.core.errors import MinconvError

ROLES = ("time", "y", "x", "level")
NAMES = {
    "time": ("time", "t", "valid_time", "date", "datetime"),
    "y": ("latitude", "lat", "y", "rlat", "nav_lat"),
    "x": ("longitude", "lon", "x", "rlon", "nav_lon"),
    "level": ("level", "plev", "pressure_level", "isobaricinhpa", "lev", "z_level"),
}
AXES = {"T": "time", "Y": "y", "X": "x", "Z": "level"}
STANDARD_NAMES = {
    "time": "time",
    "latitude": "y",
    "grid_latitude": "y",
    "projection_y_coordinate": "y",
    "longitude": "x",
    "grid_longitude": "x",
    "projection_x_coordinate": "x",
    "air_pressure": "level",
    "altitude": "level",
    "height": "level",
    "model_level_number": "level",
}
LAT_UNITS = ("degrees_north", "degree_north", "degree_n", "degrees_n", "degreen", "degreesn")
LON_UNITS = ("degrees_east", "degree_east", "degree_e", "degrees_e", "degreee", "degreese")


def _cf_role(coord: xr.DataArray) -> str | None:
    """The role a coordinate claims through CF attributes or a datetime dtype."""
    attrs = coord.attrs
    axis = str(attrs.get("axis", "")).upper()
    if axis in AXES:
        return AXES[axis]
    standard = str(attrs.get("standard_name", "")).lower()
    if standard in STANDARD_NAMES:
        return STANDARD_NAMES[standard]
    units = str(attrs.get("units", "")).lower().replace(" ", "")
    if units in LAT_UNITS:
        return "y"
    if units in LON_UNITS:
        return "x"
    if " since " in str(attrs.get("units", "")) or coord.dtype.kind == "M":
        return "time"
    return None


def find_roles(
    ds: xr.Dataset, dims_in_use: Iterable[str], label: str, overrides: Mapping[str, object] | None
) -> dict[str, str]:
    """Dims found for each role (time/y/x/level) among `dims_in_use`; missing roles are left out."""
    dims = list(dict.fromkeys(map(str, dims_in_use)))
    overrides = dict(overrides or {})
    unknown = set(overrides) - {*ROLES, "sample"}
    if unknown:
        raise ValueError(f"dims: unknown role(s) {sorted(unknown)}; use {[*ROLES, 'sample']}")
    found: dict[str, str] = {}
    for role in ROLES:
        name = overrides.get(role)
        if name is not None:
            if name not in ds.dims:
                raise MinconvError(
                    f"{label}: dims {role}={name!r} is not a dimension (dims: {', '.join(map(str, ds.dims))})"
                )
            found[role] = str(name)
    taken = set(found.values())
    for dim in dims:  # CF attributes
        if dim in taken or dim not in ds.coords:
            continue
        role = _cf_role(ds[dim])
        if role and role not in found:
            found[role] = dim
            taken.add(dim)
    for role in ROLES:  # common names
        if role in found:
            continue
        for dim in dims:
            if dim not in taken and dim.lower() in NAMES[role]:
                found[role] = dim
                taken.add(dim)
                break
    return found


def recognise_dims(
    ds: xr.Dataset, dims_in_use: Iterable[str], label: str, overrides: Mapping[str, object] | None
) -> dict[str, object]:
    """Map roles time/y/x/level/sample to dim names of `dims_in_use`; `overrides` wins over everything.

    Returns {"time": str, "y": str, "x": str, "level": str | None, "sample": tuple[str, ...]}.
    """
    dims = list(dict.fromkeys(map(str, dims_in_use)))
    overrides = dict(overrides or {})
    found = find_roles(ds, dims, label, overrides)
    taken = set(found.values())
    if "time" not in found:
        raise MinconvError(
            f"{label}: no time dimension found among ({', '.join(dims)}); "
            "name it with dims={'time': ...} (or mark its coordinate with axis='T')"
        )
    for role in ("y", "x"):
        if role not in found:
            raise MinconvError(
                f"{label}: no {role} ({'latitude' if role == 'y' else 'longitude'}) dimension "
                f"found among ({', '.join(dims)}); name it with dims={{'{role}': ...}}"
            )
    rest = tuple(d for d in dims if d not in taken)
    sample = overrides.get("sample")
    if sample is not None:
        sample = (sample,) if isinstance(sample, str) else tuple(sample)
        missing = [d for d in sample if d not in rest]
        if missing:
            raise MinconvError(f"{label}: sample dim(s) {missing} not among ({', '.join(rest)})")
        rest = (*sample, *[d for d in rest if d not in sample])
    return {
        "time": found["time"],
        "y": found["y"],
        "x": found["x"],
        "level": found.get("level"),
        "sample": rest,
    }


def is_latitude(ds: xr.Dataset, dim: str) -> bool:
    """Whether the dim is a latitude (by CF attributes or name)."""
    if dim in ds.coords:
        a = ds[dim].attrs
        if str(a.get("standard_name", "")).lower() == "latitude":
            return True
        if str(a.get("units", "")).lower().replace(" ", "") in LAT_UNITS:
            return True
    return dim.lower() in ("latitude", "lat")


def is_longitude(ds: xr.Dataset, dim: str) -> bool:
    """Whether the dim is a longitude (by CF attributes or name)."""
    if dim in ds.coords:
        a = ds[dim].attrs
        if str(a.get("standard_name", "")).lower() == "longitude":
            return True
        if str(a.get("units", "")).lower().replace(" ", "") in LON_UNITS:
            return True
    return dim.lower() in ("longitude", "lon")


def spans_globe(lon: np.ndarray) -> bool:
    """Whether regularly spaced longitudes cover 360 degrees (to within one grid step)."""
    lon = np.sort(np.asarray(lon, dtype=np.float64))
    if len(lon) < 3:
        return False
    step = float(np.median(np.diff(lon)))
    return step > 0 and abs(lon[-1] - lon[0] + step - 360.0) <= step


def default_padding(ds: xr.Dataset, y: str, x: str, latlon: bool) -> str:
    """`circular` when the file says y and x are periodic, `cylinder` for a global lat/lon grid, else `zeros`."""
    periodic = str(ds.attrs.get("periodic_dims", "")).replace(",", " ").split()
    if y in periodic and x in periodic:
        return "circular"
    if latlon and x in ds.coords and spans_globe(ds[x].values):
        return "cylinder"
    return "zeros"
