"""Per-variable data transforms (`dbr`, `log1p`, `none`): pure forward/inverse functions over
numpy, dask and torch arrays alike, the spec strings that name them, and their parsing.

A model of rain rate trains in a log space (the field is zero almost everywhere and heavy-tailed
where it rains); the `Normalizer` applies the transform before its mean/std and inverts it after.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from minconv_cli.core.errors import MinconvError

SPEC_FORMS = "none, log1p, dbr or dbr:threshold=0.1,floor=-15"


def _is_torch(x: Any) -> bool:
    return type(x).__module__.startswith("torch")


def _lib(x: Any) -> Any:
    """The array's own namespace: torch for tensors, numpy (which dispatches to dask) otherwise."""
    if _is_torch(x):
        import torch

        return torch
    return np


def _where(cond: Any, value: float, x: Any) -> Any:
    """`value` where `cond`, else `x` (a Python scalar keeps the array's dtype)."""
    return _lib(x).where(cond, value, x)


def _at_least(x: Any, low: float) -> Any:
    """max(x, low) elementwise; NaN stays NaN."""
    return x.clamp(min=low) if _is_torch(x) else np.maximum(x, low)


def dbr_forward(x: Any, threshold: float, floor: float) -> Any:
    """dBR = 10 log10(R); R < threshold (zero rain) -> `floor`; NaN stays NaN."""
    db = 10 * _lib(x).log10(_at_least(x, threshold))  # no log of 0: those cells get the floor
    return _where(x < threshold, floor, db)


def dbr_inverse(x: Any, threshold: float, floor: float) -> Any:
    """R = 10^(dBR/10); values below 10 log10(threshold) -> exactly 0; NaN stays NaN."""
    return _where(x < 10 * math.log10(threshold), 0.0, 10 ** (x / 10))


def log1p_forward(x: Any) -> Any:
    """log(1 + x); NaN stays NaN."""
    return _lib(x).log1p(x)


def log1p_inverse(x: Any) -> Any:
    """exp(x) - 1, clipped at 0 (a model may undershoot below log(1 + 0) = 0)."""
    return _at_least(_lib(x).expm1(x), 0.0)


def _identity(x: Any) -> Any:
    return x


@dataclass(frozen=True)
class TransformRow:
    """One transform of the table: its pure functions and its parameters' defaults."""

    forward: Callable[..., Any]
    inverse: Callable[..., Any]
    params: tuple[str, ...]
    about: str


TRANSFORMS: dict[str, TransformRow] = {
    "none": TransformRow(_identity, _identity, (), "the values as they are"),
    "dbr": TransformRow(
        dbr_forward, dbr_inverse, ("threshold", "floor"), "10 log10(R), R < threshold -> floor"
    ),
    "log1p": TransformRow(log1p_forward, log1p_inverse, (), "log(1 + x), inverse clipped at 0"),
}


def default_floor(threshold: float) -> float:
    """The dBR given to R < threshold: 5 dB below the threshold's (-15 dBR for 0.1 mm/h)."""
    return 10 * math.log10(threshold) - 5


@dataclass(frozen=True)
class Transform:
    """A parsed spec: the table row's name and its parameter values."""

    name: str = "none"
    params: tuple[tuple[str, float], ...] = ()

    @property
    def spec(self) -> str:
        """The canonical spec string (stored in checkpoints; `parse_spec` reads it back)."""
        if not self.params:
            return self.name
        return self.name + ":" + ",".join(f"{k}={v!r}" for k, v in self.params)

    @property
    def is_identity(self) -> bool:
        return self.name == "none"

    def forward(self, x: Any) -> Any:
        """Physical values -> the space the model runs in."""
        return TRANSFORMS[self.name].forward(x, **dict(self.params))

    def inverse(self, x: Any) -> Any:
        """The model's space -> physical values."""
        return TRANSFORMS[self.name].inverse(x, **dict(self.params))


NONE = Transform()


def parse_spec(spec: Any, where: str) -> Transform:
    """`dbr`, `dbr:threshold=0.1,floor=-15`, `log1p` or `none` -> a Transform; a bad spec is
    one MinconvError line starting with `where` (the option or config key)."""
    if not isinstance(spec, str) or not spec.strip():
        raise MinconvError(f"{where}: expected a transform ({SPEC_FORMS}), got {spec!r}")
    name, _, rest = spec.strip().partition(":")
    name = name.strip().lower()
    if name not in TRANSFORMS:
        raise MinconvError(f"{where}: unknown transform {name!r} (known: {', '.join(TRANSFORMS)})")
    given = _parse_params(rest, TRANSFORMS[name].params, where)
    if name != "dbr":
        return Transform(name)
    threshold = given.get("threshold", 0.1)
    if not (math.isfinite(threshold) and threshold > 0):
        raise MinconvError(f"{where}: dbr threshold must be a positive number, got {threshold}")
    floor = given.get("floor", default_floor(threshold))
    if not (math.isfinite(floor) and floor < 10 * math.log10(threshold)):
        raise MinconvError(
            f"{where}: dbr floor must be below 10 log10(threshold) = "
            f"{10 * math.log10(threshold):g} dBR (so zero rain comes back as 0), got {floor}"
        )
    return Transform("dbr", (("threshold", float(threshold)), ("floor", float(floor))))


def _parse_params(text: str, known: Sequence[str], where: str) -> dict[str, float]:
    """`k=v,k=v` -> {k: float(v)}, each key one of `known`."""
    out: dict[str, float] = {}
    for item in filter(None, (p.strip() for p in text.split(","))):
        key, sep, value = (s.strip() for s in item.partition("="))
        if not sep or key not in known or key in out:
            allowed = ", ".join(known) if known else "no parameters"
            raise MinconvError(f"{where}: bad transform parameter {item!r} ({allowed})")
        try:
            out[key] = float(value)
        except ValueError:
            raise MinconvError(f"{where}: {key}={value!r} is not a number") from None
    return out


def parse_assignments(items: Sequence[str] | None, option: str) -> dict[str, str] | None:
    """`["rain_rate=dbr", ...]` (a CLI option, repeatable) -> {variable: canonical spec}."""
    if not items:
        return None
    out: dict[str, str] = {}
    for item in items:
        var, sep, spec = item.partition("=")
        if not sep or not var.strip():
            raise MinconvError(
                f"{option} {item!r}: expected VARIABLE=TRANSFORM, e.g. rain_rate=dbr"
            )
        if var.strip() in out:
            raise MinconvError(f"{option}: {var.strip()!r} is given twice")
        out[var.strip()] = parse_spec(spec, f"{option} {item!r}").spec
    return out


def parse_table(table: Mapping[str, Any] | None, where: str) -> dict[str, Transform]:
    """A config's `data.transforms` {variable: spec} -> {variable: Transform}."""
    return {str(var): parse_spec(spec, f"{where}.{var}") for var, spec in (table or {}).items()}


def apply_per_channel(x: Any, transforms: Sequence[Transform], inverse: bool = False) -> Any:
    """Each channel (axis -3) of `x` through its transform (or its inverse); `x` itself when all
    are identities (no arithmetic, so the bits stay)."""
    if all(t.is_identity for t in transforms):
        return x
    if x.shape[-3] != len(transforms):
        raise ValueError(
            f"transforms: {x.shape[-3]} channels given, transforms for {len(transforms)}"
        )
    if _is_torch(x):
        out = x.clone() if x.is_floating_point() else x.float()
    else:
        out = np.array(x, dtype=np.result_type(x.dtype, np.float32))  # a float copy
    for c, t in enumerate(transforms):
        if not t.is_identity:
            out[..., c, :, :] = (t.inverse if inverse else t.forward)(x[..., c, :, :])
    return out
