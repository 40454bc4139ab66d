"""What a checkpoint holds, saving it atomically and loading it without unpickling arbitrary objects.

A checkpoint is one `torch.save`d dict: `format`, `format_version`, `state_dict` (tensors),
`meta_json` (one JSON string: model hparams, channels, grid, normalisation, config, ...), and
optionally `optimizer_state` and `extra` (plain containers of tensors and numbers, for resuming).
"""

from __future__ import annotations

import json
import os
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from minconv_cli import __version__
from minconv_cli.errors import MinconvError

FORMAT = "minconv-checkpoint"
FORMAT_VERSION = 1


@dataclass
class LoadedCheckpoint:
    """A rebuilt model (eval mode, weights loaded), its meta dict, and the raw loaded dict."""

    model: torch.nn.Module
    meta: dict
    raw: dict


def unwrap_model(model: torch.nn.Module) -> torch.nn.Module:
    """The plain model inside DistributedDataParallel and/or torch.compile wrappers."""
    while True:
        if hasattr(model, "module") and isinstance(model.module, torch.nn.Module):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model


def _channel_meta(channel: Any) -> dict:
    from minconv_cli.data.fields import jsonable

    return {
        "name": channel.name,
        "variable": channel.variable,
        "level": jsonable(channel.level),
        "units": channel.units,
        "attrs": jsonable(dict(channel.attrs)),
    }


def time_step_label(step: Any) -> str | float | None:
    """The time step as stored in meta: an ISO 8601 duration for timedelta64, a calendar step's
    label (`P1M`, `P1M mid`, `P1Y`, ...) for monthly/yearly data, else a float."""
    from minconv_cli.data.timeaxis import CalendarStep

    if step is None:
        return None
    if isinstance(step, CalendarStep):
        return step.label()
    if isinstance(step, (np.timedelta64, pd.Timedelta)):
        return pd.Timedelta(step).isoformat()
    return float(step)


def data_meta(fields: Any, normalizer: Any) -> dict:
    """The data part of a checkpoint's meta (channels, grid, time, normalisation) from training data.

    `fields` is a `minconv_cli.data.Fields`, `normalizer` the `Normalizer` fitted on its training
    split; `minconv train` writes this and `minconv rollout` checks new data against it.
    """
    from minconv_cli.data.timeaxis import calendar_of

    channels = [_channel_meta(c) for c in fields.channels]
    variables: dict[str, dict] = {}
    for c in channels:
        variables.setdefault(c["variable"], {"units": c["units"], "attrs": c["attrs"]})
    return {
        "minconv_version": __version__,
        "channels": channels,
        "static_channels": [_channel_meta(c) for c in fields.static_channels],
        "variables": variables,
        "grid": fields.grid_meta(),
        "time_dim": fields.time_dim,
        "sample_dims": list(fields.sample_dims),
        "level_dim": fields.level_dim,
        "time_step": time_step_label(fields.time_step),
        "time_is_datetime": bool(fields.time_is_datetime),
        "time_calendar": calendar_of(fields.times),
        "normalizer": normalizer.to_dict(),
        "padding": fields.default_padding,
    }


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    """`torch.save` to a temporary sibling, then rename into place (never a half-written file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            torch.save(obj, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_checkpoint(
    path: str | Path,
    model: torch.nn.Module,
    meta: dict,
    optimizer_state: dict | None = None,
    extra: dict | None = None,
) -> None:
    """Write model weights and meta (plus optional optimizer/resume state) to `path` atomically."""
    net = unwrap_model(model)
    meta = {"minconv_version": __version__, **meta}
    if "model" not in meta:
        meta["model"] = net.hparams
    try:
        meta_json = json.dumps(meta)
    except (TypeError, ValueError) as err:
        raise ValueError(f"checkpoint meta: not JSON-able ({err})") from err
    payload: dict[str, Any] = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "state_dict": {k: v.detach().cpu() for k, v in net.state_dict().items()},
        "meta_json": meta_json,
    }
    if optimizer_state is not None:
        payload["optimizer_state"] = optimizer_state
    if extra is not None:
        payload["extra"] = extra
    atomic_torch_save(payload, path)


def read_checkpoint(path: str | Path, map_location: Any = "cpu") -> tuple[dict, dict]:
    """The raw checkpoint dict and its parsed meta, after checking it is a minconv checkpoint."""
    path = Path(path)
    if not path.is_file():
        raise MinconvError(f"{path}: checkpoint not found")
    try:
        with (
            warnings.catch_warnings()
        ):  # torch warns about foreign pickle protocols; we refuse them anyway
            warnings.simplefilter("ignore", UserWarning)
            raw = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # corrupt zip, pickled objects refused by weights_only, ...
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise MinconvError(f"{path}: not a readable minconv checkpoint ({reason[:200]})") from None
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        raise MinconvError(f"{path}: not a minconv checkpoint")
    version = raw.get("format_version")
    if version != FORMAT_VERSION:
        raise MinconvError(
            f"{path}: checkpoint format version {version!r}, this minconv ({__version__}) reads "
            f"version {FORMAT_VERSION}"
        )
    try:
        meta = json.loads(raw["meta_json"])
        if not isinstance(meta, dict) or not isinstance(meta.get("model"), dict):
            raise ValueError("no model description")
        if not isinstance(raw.get("state_dict"), dict):
            raise ValueError("no weights")
    except (KeyError, TypeError, ValueError) as err:
        raise MinconvError(f"{path}: damaged minconv checkpoint ({err})") from None
    return raw, meta


def load_checkpoint(path: str | Path, map_location: Any = "cpu") -> LoadedCheckpoint:
    """Load a checkpoint safely (`weights_only=True`) and rebuild its model with `create_model`."""
    from minconv_cli.models import create_model

    raw, meta = read_checkpoint(path, map_location)
    try:
        model = create_model(**meta["model"])
        model.load_state_dict(raw["state_dict"])
    except (TypeError, ValueError, RuntimeError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise MinconvError(
            f"{path}: the weights do not fit the model it describes ({first[:200]})"
        ) from None
    model.to(map_location)
    model.eval()
    return LoadedCheckpoint(model=model, meta=meta, raw=raw)
