"""Pick what to draw from a forecast store: one init time, member, variable, level and leads,
with the truth at their valid times (aligned by `evaluate.align`)."""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import pandas as pd

from minconv_cli.core.errors import MinconvError
from minconv_cli.data import Fields
from minconv_cli.evaluate.align import align
from minconv_cli.evaluate.labels import format_lead, label
from minconv_cli.rollout.store import INIT_DIM, LEAD_DIM, MEMBER_DIM, VALID, ForecastStore


@dataclass
class Selection:
    """The frames of one init time of one variable (and level), ready to draw."""

    store: ForecastStore
    variable: str
    units: str
    init: str
    leads: list[str]  # lead labels (ISO 8601 or numbers with the lead's units)
    valid: list[str]  # valid time labels
    forecast: np.ndarray  # (lead, [member,] y, x)
    truth: np.ndarray | None  # (lead, y, x), NaN where the truth has no frame
    members: int | None  # ensemble size when `forecast` has a member axis
    y: np.ndarray
    x: np.ndarray
    y_attrs: dict
    x_attrs: dict
    level: str | None = None


def _pick(values: np.ndarray, wanted: str, option: str, what: str) -> int:
    """Position of `wanted` among `values` (by label, number or date), or a one-line error."""
    labels = [str(label(v)) for v in values]
    if wanted in labels:
        return labels.index(wanted)
    for parse in (float, pd.Timestamp):
        try:
            target = parse(wanted)
            hits = np.flatnonzero([_same(v, target) for v in values])
        except (ValueError, TypeError):
            continue
        if hits.size:
            return int(hits[0])
    shown = f"{labels[0]} .. {labels[-1]}, {len(labels)} values" if labels else "none"
    raise MinconvError(f"{option}: {wanted!r} is not {what} (it has {shown})")


def _same(value: object, target: object) -> bool:
    if isinstance(target, pd.Timestamp):
        return bool(np.datetime64(pd.Timestamp(str(value))) == np.datetime64(target))
    return bool(np.isclose(float(value), float(target)))  # type: ignore[arg-type]


def _lead_positions(store: ForecastStore, leads: str | None) -> list[int]:
    """1-based lead steps (`1,5,10`) or lead labels (`P1D`), all leads when None."""
    values = np.asarray(store.ds[LEAD_DIM].values)
    if not leads:
        return list(range(len(values)))
    labels = [format_lead(v, store.lead_unit) for v in values]
    out = []
    for item in (s.strip() for s in leads.split(",") if s.strip()):
        if item in labels:
            out.append(labels.index(item))
        elif item.isdigit() and 1 <= int(item) <= len(values):
            out.append(int(item) - 1)
        else:
            raise MinconvError(
                f"--leads: {item!r} is not a lead of {store.path} (it has steps 1..{len(values)}: "
                f"{labels[0]} .. {labels[-1]})"
            )
    return out


def _variable_and_level(store: ForecastStore, variable: str | None, level: str | None):
    """The variable's name and the level position (None without a level dim)."""
    name = variable or store.variables[0]
    if name not in store.variables:
        raise MinconvError(
            f"--variable: {name!r} is not in {store.path} (it has {', '.join(store.variables)})"
        )
    has_level = store.level_dim is not None and store.level_dim in store.ds[name].dims
    if not has_level:
        if level is not None:
            raise MinconvError(f"--level: {store.path} has no level dimension for {name!r}")
        return name, None
    values = np.asarray(store.ds[store.level_dim].values)
    return name, 0 if level is None else _pick(values, level, "--level", f"a level of {store.path}")


def select(
    store: ForecastStore,
    truth: Fields | None = None,
    variable: str | None = None,
    level: str | None = None,
    init: str | None = None,
    member: int | None = None,
    leads: str | None = None,
) -> Selection:
    """The frames to draw; every bad choice is one line naming its option."""
    ds = store.ds
    name, level_pos = _variable_and_level(store, variable, level)
    inits = np.asarray(ds[INIT_DIM].values)
    i = 0 if init is None else _pick(inits, init, "--init", f"an init time of {store.path}")
    if member is not None:
        if not store.members:
            raise MinconvError(f"--member: {store.path} is deterministic (no {MEMBER_DIM!r} dim)")
        if not 0 <= member < store.members:
            raise MinconvError(f"--member: {member} is not in 0..{store.members - 1}")
    cols = _lead_positions(store, leads)
    pick = {INIT_DIM: [i], LEAD_DIM: cols}
    if level_pos is not None:
        pick[store.level_dim] = [level_pos]  # type: ignore[index]
    for d in store.sample_dims:
        pick[d] = [0]
    if member is not None:
        pick[MEMBER_DIM] = [member]
    sub = replace(store, ds=ds[[name]].isel(pick), variables=[name])
    sub.members = None if member is not None else store.members
    fc = sub.ds[name].load()
    tr = _truth(sub, truth, name) if truth is not None else None
    return _selection(sub, name, fc, tr, level_pos)


def _truth(sub: ForecastStore, truth: Fields, name: str) -> np.ndarray:
    """The truth at the selected leads' valid times (NaN for leads past the truth's end)."""
    aligned = align(sub, truth, with_persistence=False)
    at = aligned.truth[name].reindex({LEAD_DIM: sub.ds[LEAD_DIM].values})
    return _frames(at.load(), sub, member=False)


def _frames(da, sub: ForecastStore, member: bool) -> np.ndarray:
    """(lead, [member,] y, x) values of the one init time (and sample, level)."""
    keep = [LEAD_DIM, *([MEMBER_DIM] if member else []), sub.y_dim, sub.x_dim]
    da = da.isel({d: 0 for d in da.dims if d not in keep})
    return np.asarray(da.transpose(*keep).values, dtype=np.float64)


def _valid_labels(sub: ForecastStore) -> list[str]:
    """Valid time of each selected lead: the store's `valid_time` or init + lead."""
    ds = sub.ds
    if VALID in ds.coords:
        values = np.asarray(ds[VALID].values)[0]
    else:
        init = np.asarray(ds[INIT_DIM].values)[0]
        values = np.asarray([init + lead for lead in ds[LEAD_DIM].values])
    return [str(label(v)) for v in values]


def _selection(sub: ForecastStore, name: str, fc, truth, level_pos: int | None) -> Selection:
    ds = sub.ds
    unit = sub.lead_unit or ds[LEAD_DIM].attrs.get("units")
    leads = [format_lead(v, sub.lead_unit) for v in ds[LEAD_DIM].values]
    if unit not in (None, "", "1") and not sub.lead_unit and not sub.lead_is_time:
        leads = [f"{v} {unit}" for v in leads]
    level = None
    if level_pos is not None:
        lv = ds[sub.level_dim]
        level = f"{sub.level_dim}={label(lv.values[0])}{' ' + lv.attrs['units'] if 'units' in lv.attrs else ''}"
    return Selection(
        store=sub,
        variable=name,
        units=str(ds[name].attrs.get("units", "")),
        init=str(label(ds[INIT_DIM].values[0])),
        leads=leads,
        valid=_valid_labels(sub),
        forecast=_frames(fc, sub, member=sub.members is not None),
        truth=truth,
        members=sub.members,
        y=np.asarray(ds[sub.y_dim].values),
        x=np.asarray(ds[sub.x_dim].values),
        y_attrs=dict(ds[sub.y_dim].attrs),
        x_attrs=dict(ds[sub.x_dim].attrs),
        level=level,
    )
