"""Checkpoints: what one holds (`CheckpointMeta`), saving it atomically and loading it without
unpickling arbitrary objects.

A checkpoint is one `torch.save`d dict: `format`, `format_version`, `state_dict` (tensors),
`meta_json` (one JSON string, `CheckpointMeta.to_dict()`), and optionally `optimizer_state` and
`extra` (plain containers of tensors and numbers, for resuming).

Two contracts live here: the model (`meta.model`, a `ModelSpec`; `create_model(meta.model)`
rebuilds it) and the data (`meta.data`, a `DataMeta`: channels, grid, time step, normalisation),
which `minconv train` writes and `minconv rollout` checks new data against (`check_against`).
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from minconv_cli import __version__
from minconv_cli.core.errors import MinconvError
from minconv_cli.core.files import atomic_torch_save
from minconv_cli.models.spec import ModelSpec

FORMAT = "minconv-checkpoint"
FORMAT_VERSION = 1
# the data part of meta, stored at its top level (as every release has)
DATA_KEYS = (
    "channels",
    "static_channels",
    "variables",
    "grid",
    "time_step",
    "time_is_datetime",
    "time_calendar",
    "normalizer",
)
REQUIRED_FOR_ROLLOUT = ("channels", "grid", "normalizer", "time_step", "time_is_datetime")
# copies that releases up to 0.1.0 also stored at the top level (each is in `grid` or `model`)
REDUNDANT_KEYS = ("time_dim", "sample_dims", "level_dim", "padding")


@dataclass
class LoadedCheckpoint:
    """A rebuilt model (eval mode, weights loaded), its meta, and the raw loaded dict."""

    model: torch.nn.Module
    meta: CheckpointMeta
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


@dataclass(frozen=True)
class GridOrder:
    """Which grid axes of the data run opposite to the checkpoint's (flipped on reading)."""

    flip_y: bool = False
    flip_x: bool = False

    def orient(self, array: np.ndarray) -> np.ndarray:
        """Frames (..., H, W) in the checkpoint's grid order."""
        if self.flip_y:
            array = array[..., ::-1, :]
        if self.flip_x:
            array = array[..., ::-1]
        return np.ascontiguousarray(array)


@dataclass
class DataMeta:
    """The data contract between `minconv train` and `minconv rollout`: what the model was trained
    on. `grid` is `Fields.grid_meta()` (y/x dims and coordinates, shape, time/sample/level dims,
    default padding); `time_step` is encoded by `time_step_label` and decoded by `step()`."""

    channels: list[dict] | None = None  # name, variable, level, units, attrs
    static_channels: list[dict] = field(default_factory=list)
    variables: dict[str, dict] = field(default_factory=dict)  # name -> units and attrs
    grid: dict | None = None
    time_step: str | float | None = None  # ISO duration, calendar label (P1M, P1Y), or float
    time_is_datetime: bool | None = None
    time_calendar: str | None = None  # CF calendar; None for numeric time
    normalizer: dict | None = None  # Normalizer.to_dict()

    @classmethod
    def from_fields(cls, fields: Any, normalizer: Any) -> DataMeta:
        """From training data (`Fields`) and the `Normalizer` fitted on its training split."""
        from minconv_cli.data.timeaxis import calendar_of

        channels = [_channel_meta(c) for c in fields.channels]
        variables: dict[str, dict] = {}
        for c in channels:
            variables.setdefault(c["variable"], {"units": c["units"], "attrs": c["attrs"]})
        return cls(
            channels=channels,
            static_channels=[_channel_meta(c) for c in fields.static_channels],
            variables=variables,
            grid=fields.grid_meta(),
            time_step=time_step_label(fields.time_step),
            time_is_datetime=bool(fields.time_is_datetime),
            time_calendar=calendar_of(fields.times),
            normalizer=normalizer.to_dict(),
        )

    @classmethod
    def from_dict(cls, meta: dict) -> DataMeta:
        """From a stored meta dict of any release (older top-level dim names fill in a grid
        that lacks them)."""
        values = {k: meta[k] for k in DATA_KEYS if k in meta}
        if isinstance(values.get("grid"), dict):
            dims = {k: meta[k] for k in ("time_dim", "sample_dims", "level_dim") if k in meta}
            values["grid"] = {**dims, **values["grid"]}
        return cls(**values)

    def to_dict(self) -> dict:
        return {k: getattr(self, k) for k in DATA_KEYS}

    @property
    def time_dim(self) -> str | None:
        return (self.grid or {}).get("time_dim")

    @property
    def sample_dims(self) -> list[str]:
        return list((self.grid or {}).get("sample_dims") or [])

    @property
    def level_dim(self) -> str | None:
        return (self.grid or {}).get("level_dim")

    def missing(self) -> list[str]:
        """Keys a rollout needs that this description lacks."""
        return [k for k in REQUIRED_FOR_ROLLOUT if getattr(self, k) is None]

    def step(self) -> Any:
        """The training time step: np.timedelta64[ns], float, or a `CalendarStep` (monthly/yearly)."""
        from minconv_cli.data.timeaxis import CalendarStep

        step = self.time_step
        if step is None:
            raise MinconvError("checkpoint: no time step recorded (it cannot drive a rollout)")
        if self.time_is_datetime and CalendarStep.parse(str(step)) is not None:
            return CalendarStep.parse(str(step))
        if self.time_is_datetime:
            return pd.Timedelta(step).to_timedelta64().astype("timedelta64[ns]")
        return float(step)

    def open_matching(self, data: Sequence[Any], allow_missing_chunks: bool = False) -> Any:
        """Open DATA (`Fields`) with these variables, statics, levels and (where present) dims."""
        from minconv_cli.data import open_dataset, open_fields

        variables = list(dict.fromkeys(c["variable"] for c in self.channels))
        static = list(dict.fromkeys(c["variable"] for c in self.static_channels))
        levels = [c["level"] for c in self.channels if c.get("level") is not None]
        grid = self.grid
        named = {"time": self.time_dim, "y": grid["y_dim"], "x": grid["x_dim"]}
        named["level"] = self.level_dim
        with open_dataset(data[0]) as first:
            present = set(first.dims)
        dims: dict[str, Any] = {role: name for role, name in named.items() if name in present}
        samples = [d for d in self.sample_dims if d in present]
        if samples:
            dims["sample"] = samples
        return open_fields(
            list(data),
            variables=variables,
            static=static or None,
            dims=dims,
            levels=list(dict.fromkeys(levels)) or None,
            allow_missing_chunks=allow_missing_chunks,
        )

    def check_against(self, fields: Any) -> GridOrder:
        """Every way DATA (`Fields`) differs from what the model was trained on, as one
        MinconvError line; else which of its grid axes run reversed."""
        problems = self._channel_problems(fields)
        flips = []
        for axis, dim in (("y", fields.y_dim), ("x", fields.x_dim)):
            verdict = _compare_axis(np.asarray(fields.ds[dim].values), self.grid[axis]["values"])
            if verdict is None:
                trained = self.grid[f"{axis}_dim"]
                problems.append(f"grid {dim!r} differs from the checkpoint's {trained!r}")
            flips.append(verdict == "reversed")
        problems.extend(self._time_problems(fields))
        if problems:
            raise MinconvError(
                f"{fields.path_label}: does not match the checkpoint: " + "; ".join(problems)
            )
        return GridOrder(*flips)

    def _channel_problems(self, fields: Any) -> list[str]:
        problems = []
        want = [(c["name"], c.get("units", "")) for c in self.channels]
        have = [(c.name, c.units) for c in fields.channels]
        if [n for n, _ in want] != [n for n, _ in have]:
            problems.append(
                f"channels {[n for n, _ in have]} differ from the checkpoint's {[n for n, _ in want]}"
            )
        else:
            for (name, u_want), (_, u_have) in zip(want, have, strict=True):
                if str(u_want) != str(u_have):
                    problems.append(f"{name!r} has units {u_have!r}, the checkpoint {u_want!r}")
        want_static = [c["name"] for c in self.static_channels]
        have_static = [c.name for c in fields.static_channels]
        if want_static != have_static:
            problems.append(
                f"static inputs {have_static} differ from the checkpoint's {want_static}"
            )
        return problems

    def _time_problems(self, fields: Any) -> list[str]:
        from minconv_cli.data.timeaxis import format_step, same_step

        if bool(self.time_is_datetime) != fields.time_is_datetime:
            kind = "datetime" if self.time_is_datetime else "numeric"
            return [f"time axis is not {kind} like the checkpoint's"]
        step = self.step()
        if fields.time_step is not None and not same_step(fields.time_step, step):
            return [
                f"time step {format_step(fields.time_step)} differs from the checkpoint's "
                f"{format_step(step)}"
            ]
        return []


def _compare_axis(values: np.ndarray, trained: Sequence[Any]) -> str | None:
    """`"same"`, `"reversed"` (same points in opposite order) or None (another grid)."""
    trained_a = np.asarray(trained, dtype=np.float64)
    if values.shape != trained_a.shape or values.dtype.kind not in "fiu":
        return None
    span = float(np.ptp(trained_a)) if len(trained_a) > 1 else 1.0
    tol = 1e-6 * max(span, 1e-12) + 1e-9
    if np.allclose(values, trained_a, rtol=0, atol=tol):
        return "same"
    if len(values) > 1 and np.allclose(values[::-1], trained_a, rtol=0, atol=tol):
        return "reversed"
    return None


@dataclass
class CheckpointMeta:
    """What a checkpoint says besides its weights: the model spec, the data contract (None for a
    bare model) and the training run's record. Stored as one JSON object, `to_dict()` (the data
    part at its top level, `model` = `asdict(spec)`); `from_dict` reads every release's.

    `meta["key"]` / `meta.get("key")` read that stored form (for scripts and older callers)."""

    model: ModelSpec
    data: DataMeta | None = None
    minconv_version: str = __version__
    context: int | None = None  # the training context (rollout's default)
    horizon: int | None = None
    precision: str | None = None  # the training precision
    config: dict | None = None  # the resolved training config
    splits: dict | None = None
    epoch: int | None = None
    metrics: dict | None = None
    extra: dict = field(default_factory=dict)  # keys this release does not know, kept as stored

    @classmethod
    def from_dict(cls, meta: dict) -> CheckpointMeta:
        """From a stored (or caller-given) dict; ValueError when `model` is no known spec."""
        own = {f.name for f in fields(cls)} - {"model", "data", "extra"}
        known = own | set(DATA_KEYS) | set(REDUNDANT_KEYS) | {"model"}
        model = meta.get("model")
        if not isinstance(model, (dict, ModelSpec)):
            raise ValueError("no model description")
        return cls(
            model=model if isinstance(model, ModelSpec) else ModelSpec.from_dict(model),
            data=DataMeta.from_dict(meta) if any(k in meta for k in DATA_KEYS) else None,
            **{k: meta[k] for k in own if k in meta},
            extra={k: v for k, v in meta.items() if k not in known},
        )

    def to_dict(self) -> dict:
        """The stored form (JSON-able)."""
        out: dict[str, Any] = {"minconv_version": self.minconv_version}
        if self.data is not None:
            out.update(self.data.to_dict())
        out["model"] = self.model.to_dict()
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name not in ("model", "data", "extra", "minconv_version") and value is not None:
                out[f.name] = value
        return {**out, **self.extra}

    def __getitem__(self, key: str) -> Any:
        return self.to_dict()[key]

    def __contains__(self, key: object) -> bool:
        return key in self.to_dict()

    def get(self, key: str, default: Any = None) -> Any:
        return self.to_dict().get(key, default)

    def for_rollout(self, path: Path) -> DataMeta:
        """The data contract; a checkpoint without it (not written by `minconv train`) cannot
        drive a rollout."""
        missing = self.data.missing() if self.data is not None else list(REQUIRED_FOR_ROLLOUT)
        if missing:
            raise MinconvError(
                f"{path}: checkpoint lacks {', '.join(missing)} (not written by `minconv train`?)"
            )
        return self.data

    def check_against(self, fields: Any) -> GridOrder:
        """`DataMeta.check_against` of this checkpoint's data contract."""
        if self.data is None:
            raise MinconvError("checkpoint: no data description (it cannot drive a rollout)")
        return self.data.check_against(fields)


def data_meta(fields: Any, normalizer: Any) -> dict:
    """The data part of a checkpoint's meta as stored: `DataMeta.from_fields(...).to_dict()`."""
    return {"minconv_version": __version__, **DataMeta.from_fields(fields, normalizer).to_dict()}


def save_checkpoint(
    path: str | Path,
    model: torch.nn.Module,
    meta: CheckpointMeta | dict,
    optimizer_state: dict | None = None,
    extra: dict | None = None,
) -> None:
    """Write model weights and meta (plus optional optimizer/resume state) to `path` atomically.

    `meta` may be a dict of `CheckpointMeta` keys (`model` defaults to the model's spec)."""
    net = unwrap_model(model)
    if not isinstance(meta, CheckpointMeta):
        meta = CheckpointMeta.from_dict({"model": net.spec, **meta})
    try:
        meta_json = json.dumps(meta.to_dict())
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


def _load_failure(err: BaseException) -> str:
    """Why torch could not load a file, without torch's advice to load it unsafely."""
    text = str(err).strip()
    if "weights_only" in text or "Weights only load failed" in text:
        return "it holds pickled Python objects, which minconv never loads"
    if isinstance(err, OSError):
        return err.strerror or type(err).__name__
    first = text.splitlines()[0] if text else type(err).__name__
    return first[:200] if len(first) > 3 else f"not a PyTorch file: {type(err).__name__} {first}"


def read_checkpoint(path: str | Path, map_location: Any = "cpu") -> tuple[dict, CheckpointMeta]:
    """The raw checkpoint dict and its meta, after checking it is a minconv checkpoint."""
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
        raise MinconvError(
            f"{path}: not a readable minconv checkpoint ({_load_failure(err)})"
        ) from None
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        raise MinconvError(f"{path}: not a minconv checkpoint")
    version = raw.get("format_version")
    if version != FORMAT_VERSION:
        raise MinconvError(
            f"{path}: checkpoint format version {version!r}, this minconv ({__version__}) reads "
            f"version {FORMAT_VERSION}"
        )
    try:
        stored = json.loads(raw["meta_json"])
        if not isinstance(stored, dict) or not isinstance(stored.get("model"), dict):
            raise ValueError("no model description")
        if not isinstance(raw.get("state_dict"), dict):
            raise ValueError("no weights")
    except (KeyError, TypeError, ValueError) as err:
        raise MinconvError(f"{path}: damaged minconv checkpoint ({err})") from None
    try:
        meta = CheckpointMeta.from_dict(stored)
    except (TypeError, ValueError) as err:
        raise MinconvError(
            f"{path}: written by minconv {stored.get('minconv_version')}, its model or meta is "
            f"not one this minconv ({__version__}) knows ({str(err)[:200]})"
        ) from None
    return raw, meta


def load_checkpoint(path: str | Path, map_location: Any = "cpu") -> LoadedCheckpoint:
    """Load a checkpoint safely (`weights_only=True`) and rebuild its model: `create_model(meta.model)`."""
    from minconv_cli.models import create_model

    raw, meta = read_checkpoint(path, map_location)
    try:
        model = create_model(meta.model)
        model.load_state_dict(raw["state_dict"])
    except (TypeError, ValueError, RuntimeError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise MinconvError(
            f"{path}: the weights do not fit the model it describes ({first[:200]})"
        ) from None
    model.to(map_location)
    model.eval()
    return LoadedCheckpoint(model=model, meta=meta, raw=raw)


def check_same_data(metas: Sequence[dict], paths: Sequence[Path]) -> None:
    """Every checkpoint must have been trained on the same data contract as the first: channels,
    units, static inputs, grid and time step (normalisation may differ)."""
    first = metas[0]
    for meta, path in zip(metas[1:], paths[1:], strict=True):
        problems = []
        for key, what in (("channels", "channels"), ("static_channels", "static inputs")):
            a = [(c["name"], str(c.get("units", ""))) for c in first.get(key, [])]
            b = [(c["name"], str(c.get("units", ""))) for c in meta.get(key, [])]
            if a != b:
                problems.append(f"{what} {b} differ from {a}")
        ga, gb = first["grid"], meta["grid"]
        for axis in ("y", "x"):
            va, vb = np.asarray(ga[axis]["values"]), np.asarray(gb[axis]["values"])
            same = ga.get(f"{axis}_dim") == gb.get(f"{axis}_dim") and va.shape == vb.shape
            if not (same and np.allclose(va, vb, rtol=0, atol=1e-6 * (np.ptp(va) or 1.0))):
                problems.append(f"grid {gb.get(f'{axis}_dim')!r} differs")
        if bool(first.get("time_is_datetime")) != bool(meta.get("time_is_datetime")) or str(
            first.get("time_step")
        ) != str(meta.get("time_step")):
            problems.append(
                f"time step {meta.get('time_step')} differs from {first.get('time_step')}"
            )
        if problems:
            raise MinconvError(
                f"{path}: not trained on the same data as {paths[0]}: " + "; ".join(problems)
            )
