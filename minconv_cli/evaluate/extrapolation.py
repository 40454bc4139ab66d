"""The extrapolation reference of nowcasting: the last observed frame advected along the motion
field that optical flow finds in the frames before it (pySTEPS: Lucas-Kanade + semi-Lagrangian).

pySTEPS is the optional extra `nowcast`. Importing it prints its configuration path on stdout,
which would corrupt `minconv evaluate --json`, so it is imported with stdout redirected.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import xarray as xr

from minconv_cli.core.errors import MinconvError
from minconv_cli.data import timeaxis
from minconv_cli.evaluate.gather import at_positions
from minconv_cli.rollout.store import INIT_DIM, LEAD_DIM

PAST_FRAMES = 3  # frames the motion is estimated from: the init time's and the two before it
PAST_DIM = "_past"  # the past frames of an init time, oldest first
RAIN_THRESHOLD = 0.1  # below this (in the field's units) is no rain for the motion estimate
NO_RAIN_DB = -15.0  # the dB value of no rain (and of NaN) in the motion estimate, as in pySTEPS
MISSING = (
    '--references extrapolation needs pySTEPS: pip install -e ".[nowcast]" '
    '(or pip install "minconv-cli[nowcast]")'
)


def _methods() -> tuple[Any, Any]:
    """pySTEPS' Lucas-Kanade motion and semi-Lagrangian extrapolation, imported quietly."""
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            import cv2  # noqa: F401  (pySTEPS' Lucas-Kanade needs OpenCV)
            from pysteps import extrapolation, motion
    except ImportError as err:
        raise MinconvError(MISSING) from err
    return motion.get_method("LK"), extrapolation.get_method("semilagrangian")


def require_pysteps() -> None:
    """Refuse `--references extrapolation`, in one line naming the extra, when pySTEPS is missing."""
    _methods()


def _decibels(frames: np.ndarray) -> np.ndarray:
    """Rain rate -> dB (10 log10 R), NO_RAIN_DB below RAIN_THRESHOLD and where NaN."""
    wet = np.nan_to_num(frames, nan=0.0) >= RAIN_THRESHOLD
    safe = np.where(wet, frames, 1.0)
    return np.where(wet, 10.0 * np.log10(safe), NO_RAIN_DB)


def motion_field(past: np.ndarray) -> np.ndarray:
    """(2, y, x) motion (x then y component, cells per time step) of frames (k >= 2, y, x)."""
    lucas_kanade, _ = _methods()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pySTEPS warns on a field without features
        return np.asarray(lucas_kanade(_decibels(np.asarray(past, dtype=np.float64))))


def advect(last: np.ndarray, velocity: np.ndarray, steps: Sequence[int]) -> np.ndarray:
    """`last` (y, x) advected `steps` time steps (each >= 0) along `velocity`: (len(steps), y, x).

    NaN where the advected field is NaN (it came from outside the domain or the coverage) and where
    `last` is NaN (coverage is fixed in space). Linear interpolation: zero stays zero and no
    value leaves the range of `last` (rain is never negative).
    """
    _, semilagrangian = _methods()
    last = np.asarray(last, dtype=np.float64)
    out = np.full((len(steps), *last.shape), np.nan)
    ahead = sorted({int(s) for s in steps if s > 0})
    if not np.isfinite(last).any():
        return out
    moved = {0: last}
    if ahead:
        fields = semilagrangian(last, velocity, ahead, allow_nonfinite_values=True)
        moved.update(zip(ahead, fields, strict=True))
    for i, s in enumerate(steps):
        out[i] = moved[int(s)]
    out[:, np.isnan(last)] = np.nan
    return out


def nowcast(past: np.ndarray, n_leads: int) -> np.ndarray:
    """Extrapolation nowcast (n_leads, y, x) of leads 1..n_leads from `past` (k >= 2, y, x),
    oldest first, in the field's units (rain rate, NaN outside coverage)."""
    past = np.asarray(past)
    if past.ndim != 3 or past.shape[0] < 2:
        raise ValueError(f"past: need (k >= 2, y, x) frames, got shape {past.shape}")
    return advect(past[-1], motion_field(past), range(1, n_leads + 1))


def lead_steps(leads: np.ndarray, step: Any) -> np.ndarray:
    """Each lead as a whole number (>= 0) of truth time steps; an error names the first that is not."""
    if isinstance(step, timeaxis.CalendarStep):
        raise MinconvError(
            f"--references extrapolation: the truth's time step {step} is a calendar step; "
            "extrapolation needs a fixed one"
        )
    if np.asarray(leads).dtype.kind == "m":
        ratio = np.asarray(leads, "timedelta64[ns]") / np.timedelta64(step, "ns")
    else:
        ratio = np.asarray(leads, dtype=np.float64) / float(step)
    whole = np.round(ratio)
    bad = (np.abs(ratio - whole) > 1e-6) | (whole < 0)
    if bad.any():
        first = np.asarray(leads)[np.flatnonzero(bad)[0]]
        raise MinconvError(
            f"--references extrapolation: lead {first} is not a whole number (>= 0) of the "
            f"truth's time steps ({timeaxis.format_step(step)})"
        )
    return whole.astype(np.int64)


def has_past(times: np.ndarray, init_pos: np.ndarray, step: Any) -> np.ndarray:
    """Per init position: the truth holds PAST_FRAMES frames at regular steps up to it."""
    ok = np.zeros(len(init_pos), dtype=bool)
    for i, p in enumerate(init_pos):
        if p - PAST_FRAMES + 1 >= 0:
            ok[i] = bool(timeaxis.regular_pairs(times[p - PAST_FRAMES + 1 : p + 1], step).all())
    return ok


def extrapolated(
    src: xr.DataArray,
    time_dim: str,
    space: tuple[str, str],
    init_pos: np.ndarray,
    cases: tuple[xr.DataArray, xr.DataArray],
    steps: tuple[np.ndarray, Any],
    like: xr.DataArray | None = None,
) -> tuple[xr.DataArray, int]:
    """The extrapolation reference (init, lead, *other dims of `src`, y, x) from the truth `src`
    on the forecast grid, and the number of init times left NaN; lazy, one task per block of init
    times like `like` when that is lazy (dask), else computed in memory.

    `cases`: the init and lead coordinates; `steps`: the truth's times and time step. Each other
    dim (level, sample) is extrapolated on its own; an init time without PAST_FRAMES regular frames
    up to it in the truth is NaN at every lead.
    """
    inits, leads = cases
    times, step = steps
    n_steps = lead_steps(leads.values, step)
    ready = has_past(times, init_pos, step)
    other = [d for d in src.dims if d != time_dim and d not in space]
    back = np.arange(1 - PAST_FRAMES, 1)
    pos = xr.DataArray(
        init_pos[:, None] + back, dims=(INIT_DIM, PAST_DIM), coords={INIT_DIM: inits}
    )
    mask = xr.DataArray(ready[:, None] & (pos.values >= 0), dims=pos.dims)
    in_memory = xr.DataArray(0.0)
    past = at_positions(src, time_dim, pos, mask, in_memory if like is None else like).transpose(
        INIT_DIM, PAST_DIM, *other, *space
    )
    dtype = np.result_type(src.dtype, np.float32)
    if past.chunks is None:
        data = _nowcasts(past.values, n_steps, dtype)
    else:
        chunks = (past.chunks[0], (len(n_steps),), *past.chunks[2:])
        data = past.data.map_blocks(_nowcasts, n_steps, dtype, chunks=chunks, dtype=dtype)
    coords = {d: src[d] for d in (*other, *space) if d in src.coords}
    coords.update({INIT_DIM: inits, LEAD_DIM: leads})
    out = xr.DataArray(data, dims=(INIT_DIM, LEAD_DIM, *other, *space), coords=coords)
    return out.assign_attrs(src.attrs), int((~ready).sum())


def _nowcasts(past: np.ndarray, n_steps: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Nowcasts (init, lead, *other, y, x) from the past frames (init, PAST_FRAMES, *other, y, x)
    (NaN frames where an init time has no past: NaN at every lead)."""
    out = np.full((past.shape[0], len(n_steps), *past.shape[2:]), np.nan, dtype=dtype)
    for i in range(past.shape[0]):
        for idx in np.ndindex(*past.shape[2:-2]):
            frames = past[(i, slice(None), *idx)]
            if np.isfinite(frames[-1]).any():
                out[(i, slice(None), *idx)] = advect(frames[-1], motion_field(frames), n_steps)
    return out


def missing_note(n_missing: int, n_inits: int) -> str:
    """The note on init times the extrapolation reference has no past frames for."""
    return (
        f"extrapolation: {n_missing} of {n_inits} init times lack {PAST_FRAMES} frames at regular "
        "steps up to them in the truth; NaN there, so their cases are not scored"
    )
