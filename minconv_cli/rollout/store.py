"""The forecast store: the WeatherBench 2 layout that `minconv rollout` writes and
`minconv evaluate` reads, in one place.

Dims `time` (init time), [`number` (ensemble member)], `prediction_timedelta` (lead), the data's
sample dims, [its level dim], its y and x dims; one float32 variable per predicted variable; a
bool coordinate `minconv_done` (init time, [member,] samples) marking what is written; for
calendar steps and cftime init times a 2-D `valid_time` coordinate; the rollout settings as JSON
in the global attribute `minconv_rollout` (checked by `--resume`).

Writing: `store_template` (lazy template + encoding), `open_target` (create, resume or build
beside an old store), `StoreWriter` (batches into their chunks, then their done flags),
`finish` (swap a rebuilt store in). Reading: `open_forecast` -> `ForecastStore`.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import xarray as xr

from minconv_cli.compat import EVERY_CHUNK_ATTR, rollout_settings
from minconv_cli.core.errors import MinconvError, first_line
from minconv_cli.core.files import PARTIAL, atomic_path, commit, remove, sibling, writing
from minconv_cli.data import Fields, open_dataset, timeaxis
from minconv_cli.data.dims import recognise_dims
from minconv_cli.data.integrity import missing_chunks
from minconv_cli.data.remote import as_source
from minconv_cli.data.timeaxis import CalendarStep

INIT_DIM = "time"
LEAD_DIM = "prediction_timedelta"
MEMBER_DIM = "number"  # WeatherBench 2 / ECMWF name of the ensemble member dim
VALID = "valid_time"  # 2-D (time, prediction_timedelta) coordinate of calendar-step stores
DONE = "minconv_done"
SETTINGS_ATTR = "minconv_rollout"
CALENDAR_LEADS = ("months", "years")  # `units` of integer leads of calendar-step stores
MODES = ("create", "overwrite", "resume")

if TYPE_CHECKING:
    from minconv_cli.models.checkpoint import GridOrder


# --------------------------------------------------------------------------- writing


def store_template(
    fields: Fields,
    order: GridOrder,
    init_index: np.ndarray,
    steps: int,
    step: Any,
    attrs: dict,
) -> tuple[xr.Dataset, dict]:
    """The lazy template of the whole store (coordinates, empty float32 variables, done flags)
    and its encoding (chunks of one init time and sample, NaN fill)."""
    import dask.array as dsa

    ds = fields.ds
    y, x = fields.y_dim, fields.x_dim
    coords = _time_coords(fields, init_index, steps, step)
    for d in fields.sample_dims:
        coords[d] = (
            (d, ds[d].values, dict(ds[d].attrs)) if d in ds.coords else (d, np.arange(ds.sizes[d]))
        )
    for name, c in ds.coords.items():
        if name not in ds.dims and c.dims and set(c.dims) <= set(fields.sample_dims):
            # fixed-width unicode has no Zarr v3 spec yet (zarr warns); object strings do
            values = c.values.astype(object) if c.dtype.kind == "U" else c.values
            coords[str(name)] = (c.dims, values, dict(c.attrs))
    level = fields.level_dim
    if level:
        coords[level] = (level, ds[level].values, dict(ds[level].attrs))
    for dim, flip in ((y, order.flip_y), (x, order.flip_x)):
        values = np.asarray(ds[dim].values)
        coords[dim] = (dim, values[::-1] if flip else values, dict(ds[dim].attrs))
    shape_of = {**dict(ds.sizes), INIT_DIM: len(init_index), LEAD_DIM: steps}
    sample_shape = tuple(ds.sizes[d] for d in fields.sample_dims)
    coords[DONE] = (
        (INIT_DIM, *fields.sample_dims),
        np.zeros((len(init_index), *sample_shape), dtype=bool),
        {"long_name": "forecast written (minconv rollout bookkeeping)"},
    )
    data_vars = {}
    # one flag (and one chunk of each variable) per row: no two processes of a split rollout
    # write one chunk, and each flag is written (atomically) after its row's data
    encoding: dict[str, Any] = {DONE: {"chunks": (1,) * (1 + len(sample_shape))}}
    for var in fields.variables:
        dims = (INIT_DIM, LEAD_DIM, *fields.sample_dims)
        if level and level in ds[var].dims:
            dims = (*dims, level)
        dims = (*dims, y, x)
        shape = tuple(shape_of[d] for d in dims)
        data_vars[var] = (
            dims,
            dsa.empty(shape, chunks=shape, dtype=np.float32),
            dict(ds[var].attrs),
        )
        chunks = tuple(1 if d in (INIT_DIM, *fields.sample_dims) else shape_of[d] for d in dims)
        encoding[var] = {"chunks": chunks, "_FillValue": np.float32(np.nan), "dtype": "float32"}
    attrs = {**attrs, EVERY_CHUNK_ATTR: 1}
    return xr.Dataset(data_vars, coords=coords, attrs=attrs), encoding


def _time_coords(fields: Fields, init_index: np.ndarray, steps: int, step: Any) -> dict[str, Any]:
    """The init time and lead coordinates (and `valid_time` where leads are calendar units or
    the init times cftime)."""
    coords: dict[str, Any] = {}
    init_values = fields.times[init_index]
    time_attrs = dict(fields.ds[fields.time_dim].attrs)
    if isinstance(step, CalendarStep) or timeaxis.is_cftime(init_values):
        # a month is no fixed timedelta, and cftime + timedelta64 does not broadcast: leads in
        # calendar units (climpred's convention) and the true valid times as a 2-D coordinate
        time_attrs = {k: v for k, v in time_attrs.items() if k not in ("units", "calendar")}
        leads = np.arange(1, steps + 1)
        valid = timeaxis.shift(init_values[:, None], step, leads[None, :])
        if isinstance(step, CalendarStep):
            unit = "months" if step.unit == "month" else "years"
            lead_values = (leads * step.count).astype(np.int64)
            lead_attrs = {"long_name": "lead time", "units": unit, "time_step": step.label()}
        else:
            lead_values = (leads * step).astype("timedelta64[ns]")
            lead_attrs = {"long_name": "lead time"}
        coords[VALID] = (
            (INIT_DIM, LEAD_DIM),
            valid,
            {"long_name": "valid time (init time + lead in the data's calendar)"},
        )
    elif fields.time_is_datetime:
        time_attrs = {k: v for k, v in time_attrs.items() if k not in ("units", "calendar")}
        lead_values = (np.arange(1, steps + 1) * step).astype("timedelta64[ns]")
        lead_attrs = {"long_name": "lead time"}
    else:
        lead_values = np.arange(1, steps + 1, dtype=np.float64) * float(step)
        lead_attrs = {"long_name": "lead time", **_units_of(time_attrs)}
    time_attrs["long_name"] = "initialisation time"
    coords[INIT_DIM] = (INIT_DIM, init_values, time_attrs)
    coords[LEAD_DIM] = (LEAD_DIM, lead_values, lead_attrs)
    return coords


def _units_of(attrs: dict) -> dict:
    return {"units": attrs["units"]} if "units" in attrs else {}


def create_store(template: xr.Dataset, encoding: dict, path: Path, zarr_format: int) -> None:
    """Write the store's metadata and coordinates (no forecast yet) to `path`, atomically."""
    with atomic_path(path) as tmp, warnings.catch_warnings():
        # zarr warns that consolidated metadata is not yet in the v3 spec; zarr-python and
        # xarray read it, and without it every plain xr.open_zarr of a v3 store warns instead.
        warnings.filterwarnings("ignore", message="Consolidated metadata", category=UserWarning)
        template.to_zarr(
            tmp,
            mode="w-",
            compute=False,
            zarr_format=zarr_format,
            consolidated=True,
            encoding=encoding,
        )


def read_done(path: Path, settings: dict, action: str = "resume") -> np.ndarray:
    """Done flags of an existing store, after checking it was made with the same settings
    (`action`: what is refused otherwise, for the message)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. a foreign store without consolidated metadata
            existing = xr.open_zarr(path, consolidated=None, decode_timedelta=True)
        old = json.loads(existing.attrs[SETTINGS_ATTR])
        if DONE not in existing.coords or not isinstance(old, dict):
            raise ValueError("no minconv_done flags")
        old = rollout_settings(old)
    except Exception as err:  # unreadable, or not made by minconv rollout
        reason = first_line(err)
        raise MinconvError(
            f"{path}: cannot {action}, not a minconv rollout store ({reason})"
        ) from None
    changed = [k for k in sorted(set(old) | set(settings)) if old.get(k) != settings.get(k)]
    if changed:
        raise MinconvError(
            f"{path}: cannot {action}, it was made with other settings ({', '.join(changed)} differ); "
            "use --overwrite to start again"
        )
    return np.asarray(existing[DONE].values, dtype=bool)


class StoreWriter:
    """Writes finished forecasts straight into their chunks (a run of neighbours in one call),
    then marks them done, so a killed run keeps every batch it finished."""

    def __init__(self, path: Path, fields: Fields, members: bool = False) -> None:
        import zarr

        # every chunk is stored, NaN ones too: a chunk missing later is damage (`verify_store`)
        with zarr.config.set({"array.write_empty_chunks": True}):
            group = zarr.open_group(str(path), mode="r+")
        self.path = path
        # store positions are (init, [member,] *sample); the lead dim follows init [and member]
        self.lead_axis = 2 if members else 1
        self.done = group[DONE]
        self.parts = []  # (zarr array, its channel range, whether it has a level dim)
        start = 0
        for var in fields.variables:
            n = sum(c.variable == var for c in fields.channels)
            has_level = fields.level_dim is not None and fields.level_dim in fields.ds[var].dims
            self.parts.append((group[var], slice(start, start + n), has_level))
            start += n

    def write(self, items: Sequence[tuple[int, ...]], values: np.ndarray) -> None:
        """values (B, N, C, H, W) for items at store positions (init, [member,] *sample)."""
        if not self.path.is_dir():  # zarr would recreate the chunks' folders of a removed store
            raise MinconvError(f"{self.path}: the store was removed while writing")
        with writing(self.path):
            self._write(items, values)

    def _write(self, items: Sequence[tuple[int, ...]], values: np.ndarray) -> None:
        runs = list(_runs(items))
        lead = self.lead_axis
        for (*fixed, last), b0, b1 in runs:
            span = slice(last, last + b1 - b0)
            for array, channels, has_level in self.parts:
                block = values[b0:b1, :, channels]
                block = block if has_level else block[:, :, 0]
                if len(fixed) >= lead:  # the run lies along a dim after the lead dim
                    index = (*fixed[:lead], slice(None), *fixed[lead:], span)
                    array[index] = np.moveaxis(block, 0, 1)
                else:  # the run lies along the last dim before the lead dim
                    array[(*fixed, span)] = block
        for (*fixed, last), b0, b1 in runs:
            self.done[(*fixed, slice(last, last + b1 - b0))] = True


def _runs(items: Sequence[tuple[int, ...]]):
    """(first position, b0, b1) for each maximal run of items whose last index counts up by one."""
    b0 = 0
    for b in range(1, len(items) + 1):
        prev = items[b - 1]
        if b == len(items) or items[b] != (*prev[:-1], prev[-1] + 1):
            yield items[b0], b0, b
            b0 = b


def open_target(
    out: Path, mode: str, template: xr.Dataset, encoding: dict, settings: dict, zarr_format: int
) -> tuple[Path, np.ndarray]:
    """Where to write and what is done there. `resume`: the store an interrupted `--overwrite`
    was building beside `out` if there is one, else `out` itself (after checking its settings).
    `overwrite` of an existing store: a new store beside it (`finish` swaps it in once complete).
    Else a new store at `out`."""
    if mode == "resume" and resume_target(out).exists():
        existing = resume_target(out)
        return existing, read_done(existing, settings)
    target = out
    if out.exists():  # overwrite: build beside it, swap in when complete
        target = sibling(out, PARTIAL, unique=False)
        remove(target)  # left by an interrupted overwrite
    with writing(target):
        create_store(template, encoding, target, zarr_format)
    return target, np.zeros(template[DONE].shape, dtype=bool)


def resume_target(out: Path) -> Path:
    """The store `--resume` continues: the one an interrupted `--overwrite` was building beside
    `out`, if there is one, else `out`."""
    partial = sibling(out, PARTIAL, unique=False)
    return partial if partial.exists() else out


def finish(target: Path, out: Path) -> None:
    """The store at `target` is complete: put it in place of `out` (if it was built beside it),
    then check that what is at `out` is complete and readable."""
    if target != out:
        with writing(out):
            commit(target, out)
    verify_store(out)


def verify_store(path: Path) -> None:
    """One line if the store at `path` is not complete: unreadable, a sequence not done, or a
    chunk missing (e.g. a folder removed or changed by another process while writing)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = xr.open_zarr(path, consolidated=None, decode_timedelta=True)
            done = np.asarray(ds[DONE].values, dtype=bool)
    except Exception as err:
        raise MinconvError(f"{path}: the store is unreadable after writing ({err})") from None
    if not done.all():
        raise MinconvError(
            f"{path}: {int((~done).sum())} of {done.size} sequences are not written after the "
            "rollout (was the store changed while writing?)"
        )
    for var in ds.data_vars:
        gone = missing_chunks(path, str(var))
        if gone:
            raise MinconvError(
                f"{path}: {len(gone)} chunk(s) of {var!r} are missing after writing (was the "
                "store changed or removed while writing?)"
            )


def stored_precision(path: Path) -> str:
    """The precision an existing store was made with (fp32 before it was recorded); `auto` when
    the store cannot be read (resuming then fails with its own message)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            attrs = xr.open_zarr(path, consolidated=None).attrs
        return str(rollout_settings(json.loads(attrs[SETTINGS_ATTR]))["precision"])
    except Exception:
        return "auto"


# --------------------------------------------------------------------------- reading


@dataclass
class ForecastStore:
    """One forecast store in WeatherBench 2 layout, with its dims recognised."""

    name: str
    path: str | Path  # a local path or a URL
    ds: xr.Dataset
    variables: list[str]
    y_dim: str
    x_dim: str
    level_dim: str | None
    sample_dims: tuple[str, ...]
    members: int | None = None  # an ensemble: the size of its `number` dim

    @property
    def lead_is_time(self) -> bool:
        return self.ds[LEAD_DIM].dtype.kind == "m"

    @property
    def lead_unit(self) -> str | None:
        """`months` / `years` for calendar leads (integers), else None."""
        unit = self.ds[LEAD_DIM].attrs.get("units")
        return unit if unit in CALENDAR_LEADS and self.ds[LEAD_DIM].dtype.kind in "iu" else None

    @property
    def is_dated(self) -> bool:
        """Forecasts of dated data: timedelta leads, calendar leads, or a valid_time coordinate."""
        return self.lead_is_time or self.lead_unit is not None or VALID in self.ds.coords


def open_forecast(path: str | Path, name: str | None = None) -> ForecastStore:
    """Open a forecast store lazily and check its WeatherBench 2 layout (one-line errors)."""
    path = as_source(path)
    ds = open_dataset(path)
    missing = [d for d in (INIT_DIM, LEAD_DIM) if d not in ds.dims]
    if missing:
        raise MinconvError(
            f"{path}: not a forecast in WeatherBench 2 layout: no {', '.join(map(repr, missing))} "
            f"dimension (dims: {', '.join(map(str, ds.dims)) or 'none'})"
        )
    variables = [str(v) for v in ds.data_vars if {INIT_DIM, LEAD_DIM} <= set(ds[v].dims)]
    if not variables:
        raise MinconvError(
            f"{path}: no variable has the dims ({INIT_DIM}, {LEAD_DIM}); "
            f"variables: {', '.join(map(str, ds.data_vars)) or 'none'}"
        )
    dims = [d for v in variables for d in ds[v].dims if d not in (LEAD_DIM, MEMBER_DIM)]
    roles = recognise_dims(ds, dims, str(path), {"time": INIT_DIM})
    kind = ds[LEAD_DIM].dtype.kind
    if kind not in "mfiu":
        raise MinconvError(
            f"{path}: {LEAD_DIM} must be timedelta or numeric, not {ds[LEAD_DIM].dtype}"
        )
    return ForecastStore(
        name=name or Path(path).stem,
        path=path,
        ds=ds,
        variables=variables,
        y_dim=str(roles["y"]),
        x_dim=str(roles["x"]),
        level_dim=roles["level"],
        sample_dims=tuple(roles["sample"]),
        members=int(ds.sizes[MEMBER_DIM]) if MEMBER_DIM in ds.dims else None,
    )


def add_member_dim(
    template: xr.Dataset, encoding: dict, spec: Any, done: str
) -> tuple[xr.Dataset, dict]:
    """The store template with a `number` dim after `time` on every forecast variable and on the
    done flags (one flag per init time, member and sample), plus which checkpoint runs each member."""
    import dask.array as dsa

    n = spec.members
    number = {
        MEMBER_DIM: (MEMBER_DIM, np.arange(n), {"long_name": "ensemble member"}),
        "member_checkpoint": (
            MEMBER_DIM,
            np.array([spec.checkpoint_of(m) for m in range(n)]),
            {"long_name": "index of the checkpoint (in the command) that runs each member"},
        ),
        "member_perturbed": (
            MEMBER_DIM,
            np.array([not spec.is_control(m) for m in range(n)]),
            {
                "long_name": "perturbed: context frames, step noise (False: the checkpoint's control)"
            },
        ),
    }
    flags = template[done]
    flag_dims = (flags.dims[0], MEMBER_DIM, *flags.dims[1:])
    flag_shape = (flags.shape[0], n, *flags.shape[1:])
    coords = {k: v for k, v in template.coords.items() if k != done}
    coords.update(number)
    coords[done] = (flag_dims, np.zeros(flag_shape, dtype=bool), dict(flags.attrs))
    data_vars = {}
    encoding = dict(encoding)
    encoding[done] = {"chunks": (1,) * len(flag_shape)}  # one flag per row
    for name, da in template.data_vars.items():
        dims = (da.dims[0], MEMBER_DIM, *da.dims[1:])
        shape = (da.shape[0], n, *da.shape[1:])
        data_vars[name] = (dims, dsa.empty(shape, chunks=shape, dtype=da.dtype), dict(da.attrs))
        enc = dict(encoding[name])
        enc["chunks"] = (enc["chunks"][0], 1, *enc["chunks"][1:])
        encoding[name] = enc
    return xr.Dataset(data_vars, coords=coords, attrs=template.attrs), encoding
