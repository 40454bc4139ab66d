"""Per-channel mean/std normalisation (NaN-aware, computed chunk-wise) and NaN filling with a mask."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from minconv_cli.core.errors import MinconvError
from minconv_cli.data.fields import Channel, Fields
from minconv_cli.data.transforms import NONE, Transform, apply_per_channel, parse_spec


def _std_floor(mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """Constant channels (std ~ 0) get std 1, so normalising only subtracts the mean."""
    tiny = 1e-6 * np.maximum(1.0, np.abs(mean))
    return np.where(np.isfinite(std) & (std > tiny), std, 1.0)


def _channel_stats(
    fields: Fields,
    channels: Sequence[Channel],
    label: str,
    transforms: Mapping[str, Transform] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Mean and std per channel over every sample, time and grid point (NaN skipped), via dask;
    a variable with a transform gets the statistics of its transformed values and, in the same
    pass, its minimum checked (a transform needs values >= 0)."""
    import dask

    if not channels:
        return np.zeros(0), np.ones(0)
    transforms = transforms or {}
    lazy = []
    for var in dict.fromkeys(c.variable for c in channels):
        da = fields.ds[var].astype(np.float64)
        keep = [fields.level_dim] if fields.level_dim in da.dims else []
        over = [d for d in da.dims if d not in keep]
        t = transforms.get(var, NONE)
        low = None if t.is_identity else da.min(skipna=True)
        if not t.is_identity:
            da = da.copy(data=t.forward(da.data))
        lazy.append((var, da.mean(over, skipna=True), da.std(over, skipna=True), low))
    computed = dask.compute(*[(m, s, low) for _, m, s, low in lazy])
    mean, std = [], []
    for (var, _, _, _), (m, s, low) in zip(lazy, computed, strict=False):
        m, s = np.atleast_1d(np.asarray(m)), np.atleast_1d(np.asarray(s))
        if not np.all(np.isfinite(m)):
            raise MinconvError(f"{label}: variable {var!r} is all NaN (in at least one channel)")
        if low is not None and float(low) < 0:
            raise MinconvError(
                f"{label}: variable {var!r} has negative values (min {float(low):g}); "
                f"--transform {transforms[var].name} needs values >= 0"
            )
        mean.extend(m.tolist())
        std.extend(s.tolist())
    mean_a = np.asarray(mean, dtype=np.float64)
    return mean_a, _std_floor(mean_a, np.asarray(std, dtype=np.float64))


class Normalizer:
    """Per-channel statistics: `normalize` to zero mean and unit std, fill NaN with 0, return the
    mask. A channel with a transform (`dbr`, `log1p`) is transformed first, its statistics are
    those of the transformed values, and `denormalize` inverts it last."""

    def __init__(
        self,
        channels: Sequence[str],
        mean: Sequence[float],
        std: Sequence[float],
        static_channels: Sequence[str] = (),
        static_mean: Sequence[float] = (),
        static_std: Sequence[float] = (),
        transforms: Sequence[str] | None = None,
    ) -> None:
        self.channels = list(channels)
        self.mean = np.asarray(mean, dtype=np.float64)
        self.std = np.asarray(std, dtype=np.float64)
        self.static_channels = list(static_channels)
        self.static_mean = np.asarray(static_mean, dtype=np.float64)
        self.static_std = np.asarray(static_std, dtype=np.float64)
        if not (len(self.channels) == len(self.mean) == len(self.std)):
            raise ValueError("Normalizer: channels, mean and std differ in length")
        if not (len(self.static_channels) == len(self.static_mean) == len(self.static_std)):
            raise ValueError("Normalizer: static channels, mean and std differ in length")
        specs = list(transforms) if transforms is not None else ["none"] * len(self.channels)
        if len(specs) != len(self.channels):
            raise ValueError("Normalizer: channels and transforms differ in length")
        self.transforms = [parse_spec(s, "normalizer transform") for s in specs]

    @classmethod
    def fit(cls, fields: Fields, transforms: Mapping[str, Transform] | None = None) -> Normalizer:
        """Statistics of the fields given (pass the training split), read chunk by chunk;
        `transforms` {variable: Transform} for predicted variables (statics get none)."""
        transforms = dict(transforms or {})
        _check_transformed(fields, transforms)
        mean, std = _channel_stats(fields, fields.channels, fields.path_label, transforms)
        smean, sstd = _static_stats(fields)
        return cls(
            [c.name for c in fields.channels],
            mean,
            std,
            [c.name for c in fields.static_channels],
            smean,
            sstd,
            [transforms.get(c.variable, NONE).spec for c in fields.channels],
        )

    def normalize(self, frames: Any) -> tuple[Any, Any]:
        """(x, mask) for frames (..., C, H, W) (numpy or torch): x float32 normalised with NaN -> 0."""
        if frames.shape[-3] == len(self.transforms):
            frames = apply_per_channel(frames, self.transforms)
        return _normalize(frames, self.mean, self.std)

    def denormalize(self, x: Any) -> Any:
        """Back to physical units (numpy or torch, channel axis -3): std * x + mean, then each
        channel's inverse transform."""
        mean, std = _shaped(x, self.mean), _shaped(x, self.std)
        return apply_per_channel(x * std + mean, self.transforms, inverse=True)

    def in_model_space(self, frames: np.ndarray, change: Callable[[np.ndarray], np.ndarray]):
        """`change` (e.g. an ensemble's perturbation of x std) applied to physical `frames` where
        the statistics were fitted: after each channel's transform, inverted after."""
        if not self.transform_specs():
            return change(frames)
        moved = change(apply_per_channel(frames, self.transforms))
        return apply_per_channel(moved, self.transforms, inverse=True)

    def transform_specs(self) -> dict[str, str]:
        """{channel: spec} of the channels with a transform (empty when none has one)."""
        pairs = zip(self.channels, self.transforms, strict=True)
        return {c: t.spec for c, t in pairs if not t.is_identity}

    def normalize_static(self, static: Any) -> Any:
        """Statics (S, H, W) normalised, NaN filled with 0."""
        x, _ = _normalize(static, self.static_mean, self.static_std)
        return x

    def to_dict(self) -> dict:
        """JSON-able form, stored in checkpoints (`transforms` only when a channel has one, so
        runs without them store what earlier releases stored)."""
        out = {
            "channels": self.channels,
            "mean": self.mean.tolist(),
            "std": self.std.tolist(),
            "static_channels": self.static_channels,
            "static_mean": self.static_mean.tolist(),
            "static_std": self.static_std.tolist(),
        }
        if self.transform_specs():
            out["transforms"] = [t.spec for t in self.transforms]
        return out

    @classmethod
    def from_dict(cls, d: dict) -> Normalizer:
        """From `to_dict`; checkpoints without `transforms` (all earlier ones) have none."""
        return cls(
            d["channels"],
            d["mean"],
            d["std"],
            d.get("static_channels", ()),
            d.get("static_mean", ()),
            d.get("static_std", ()),
            d.get("transforms"),
        )


def _check_transformed(fields: Fields, transforms: Mapping[str, Transform]) -> None:
    """Every transformed variable is one the model predicts (statics get no transform)."""
    predicted = list(dict.fromkeys(c.variable for c in fields.channels))
    for var in transforms:
        if var not in predicted:
            kind = "a static input" if var in fields.ds.data_vars else "not in the data"
            raise MinconvError(
                f"{fields.path_label}: data.transforms: {var!r} is {kind}; transforms apply to "
                f"the predicted variables ({', '.join(predicted)})"
            )


def _static_stats(fields: Fields) -> tuple[np.ndarray, np.ndarray]:
    static = fields.static_array()
    if not len(static):
        return np.zeros(0), np.ones(0)
    flat = static.reshape(len(static), -1).astype(np.float64)
    for ch, row in zip(fields.static_channels, flat, strict=False):
        if not np.isfinite(row).any():
            raise MinconvError(f"{fields.path_label}: static {ch.variable!r} is all NaN")
    mean = np.nanmean(flat, axis=1)
    return mean, _std_floor(mean, np.nanstd(flat, axis=1))


def _shaped(like: Any, stat: np.ndarray) -> Any:
    """`stat` (C,) as (C, 1, 1) in the array type, dtype and device of `like`."""
    if isinstance(like, np.ndarray):
        return stat.astype(np.float32)[:, None, None]
    import torch

    return torch.as_tensor(stat, dtype=like.dtype, device=like.device)[:, None, None]


def _normalize(frames: Any, mean: np.ndarray, std: np.ndarray) -> tuple[Any, Any]:
    if frames.shape[-3] != len(mean):
        raise ValueError(
            f"normalize: {frames.shape[-3]} channels given, statistics for {len(mean)}"
        )
    if isinstance(frames, np.ndarray):
        frames = frames.astype(np.float32, copy=False)
        mask = np.isfinite(frames)
        x = (frames - _shaped(frames, mean)) / _shaped(frames, std)
        return np.where(mask, x, np.float32(0)).astype(np.float32, copy=False), mask
    import torch

    frames = frames.float()
    mask = torch.isfinite(frames)
    x = (frames - _shaped(frames, mean)) / _shaped(frames, std)
    return torch.where(mask, x, torch.zeros((), dtype=x.dtype, device=x.device)), mask
