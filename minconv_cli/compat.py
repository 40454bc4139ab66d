"""Files of earlier releases, read as this release writes them: one small pure function over
plain dicts per shim, so that every layer may call it (this module imports only `core`).

Each says which files need it; when those files need not load any more, the function and its
one call go. `tests/test_compat.py` runs the 0.1.0 files of `tests/fixtures/` through them.
"""

from __future__ import annotations

import warnings
from typing import Any

from minconv_cli.core.errors import MinconvError

# ---------------------------------------------------------------- checkpoints

# keys that checkpoints up to 0.1.0 also stored at the top level of their meta (each is in
# `grid` or `model` as well)
OLD_CHECKPOINT_KEYS = ("time_dim", "sample_dims", "level_dim", "padding")
_GRID_DIMS = ("time_dim", "sample_dims", "level_dim")


def checkpoint_meta(meta: dict[str, Any]) -> dict[str, Any]:
    """A checkpoint's meta without the top-level copies of 0.1.0 and earlier: their dim names
    fill in a `grid` that lacks them (the grid's own win), `padding` goes (the model has it)."""
    if not any(k in meta for k in OLD_CHECKPOINT_KEYS):
        return meta
    out = {k: v for k, v in meta.items() if k not in OLD_CHECKPOINT_KEYS}
    if isinstance(out.get("grid"), dict):
        out["grid"] = {**{k: meta[k] for k in _GRID_DIMS if k in meta}, **out["grid"]}
    return out


# ---------------------------------------------------------------- training configs


def config_values(layer: dict[str, Any], source: str, note: bool = True) -> dict[str, Any]:
    """Config files and run directories from before `train.precision`: `train.amp` read as
    precision bf16 (true) or fp32 (false); with `note`, a FutureWarning saying so (for files a
    user can change, not for the configs stored in old runs)."""
    train = layer.get("train")
    if not isinstance(train, dict) or "amp" not in train:
        return layer
    train = dict(train)
    amp = train.pop("amp")
    if not isinstance(amp, bool):
        raise MinconvError(f"{source}: train.amp: expected bool, got {type(amp).__name__} {amp!r}")
    train.setdefault("precision", "bf16" if amp else "fp32")
    if note:
        warnings.warn(
            f"{source}: train.amp is deprecated, read as train.precision={train['precision']} "
            "(use train.precision: fp32, bf16 or auto)",
            FutureWarning,
            stacklevel=3,  # at `resolve_config` (called from its list comprehension)
        )
    return {**layer, "train": train}


# ---------------------------------------------------------------- forecast stores

# set on stores whose writer keeps every chunk, NaN ones too (from 0.1.0+trust on): there a
# missing chunk at a done position is damage; older stores left all-NaN chunks out
EVERY_CHUNK_ATTR = "minconv_every_chunk_stored"
# ensemble settings a store records only when they are set: stores made before they existed
# keep matching their settings on `--resume`
ADDED_ENSEMBLE_SETTINGS = ("step_noise", "recentre")


def rollout_settings(settings: dict[str, Any]) -> dict[str, Any]:
    """A store's recorded rollout settings; stores from before `--precision` were fp32 and do
    not say so."""
    return {**settings, "precision": settings.get("precision", "fp32")}


def ensemble_settings(settings: dict[str, Any]) -> dict[str, Any]:
    """The ensemble settings a store records: those of `ADDED_ENSEMBLE_SETTINGS` only when set
    (0 / False is how every store from before them was made)."""
    return {k: v for k, v in settings.items() if v or k not in ADDED_ENSEMBLE_SETTINGS}


def every_chunk_stored(attrs: dict[str, Any]) -> bool:
    """Whether a store keeps every chunk (a missing one is damage); 0.1.0 and earlier stores
    left all-NaN chunks out."""
    return bool(attrs.get(EVERY_CHUNK_ATTR))
