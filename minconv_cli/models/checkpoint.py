"""Checkpoints: what one holds (`CheckpointMeta`), saving it atomically and loading it without
unpickling arbitrary objects.

A checkpoint is one `torch.save`d dict: `format`, `format_version`, `state_dict` (tensors),
`meta_json` (one JSON string, `CheckpointMeta.to_dict()`), and optionally `optimizer_state` and
`extra` (plain containers of tensors and numbers, for resuming).

A checkpoint's meta holds two contracts: the model (`meta.model`, a `ModelSpec`;
`create_model(meta.model)` rebuilds it) and the data (`meta.data`, a `DataMeta`, in
`data_contract.py`), which `minconv train` writes and `minconv rollout` checks new data and the
other checkpoints of an ensemble against (`check_against`, `check_same_data`). Files of earlier
releases are read through `compat.checkpoint_meta`.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import torch

from minconv_cli import __version__
from minconv_cli.compat import checkpoint_meta
from minconv_cli.core.errors import MinconvError, first_line
from minconv_cli.core.files import atomic_torch_save
from minconv_cli.models.create import create_model
from minconv_cli.models.data_contract import (
    DATA_KEYS,
    REQUIRED_FOR_ROLLOUT,
    DataMeta,
    GridOrder,
    time_step_label,
)
from minconv_cli.models.spec import ModelSpec

__all__ = ["DataMeta", "GridOrder", "time_step_label"]  # the data contract, read with the meta
FORMAT = "minconv-checkpoint"
FORMAT_VERSION = 1


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
        meta = checkpoint_meta(meta)
        own = {f.name for f in fields(cls)} - {"model", "data", "extra"}
        known = own | set(DATA_KEYS) | {"model"}
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
    first = first_line(err)
    return first if len(first) > 3 else f"not a PyTorch file: {type(err).__name__} {first}"


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
    raw, meta = read_checkpoint(path, map_location)
    try:
        model = create_model(meta.model)
        model.load_state_dict(raw["state_dict"])
    except (TypeError, ValueError, RuntimeError) as err:
        raise MinconvError(
            f"{path}: the weights do not fit the model it describes ({first_line(err)})"
        ) from None
    model.to(map_location)
    model.eval()
    return LoadedCheckpoint(model=model, meta=meta, raw=raw)


def check_same_data(metas: Sequence[CheckpointMeta], paths: Sequence[Path]) -> None:
    """Every checkpoint must have been trained on the same data contract as the first
    (`DataMeta.differences`: channels, units, static inputs, grid and time step)."""
    first = metas[0].data
    for meta, path in zip(metas[1:], paths[1:], strict=True):
        problems = first.differences(meta.data)
        if problems:
            raise MinconvError(
                f"{path}: not trained on the same data as {paths[0]}: " + "; ".join(problems)
            )
