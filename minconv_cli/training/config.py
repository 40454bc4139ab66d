"""Training configuration: defaults, YAML files, dotted `--set` overrides and validation.

Layers, later wins: defaults < `--config FILE.yaml` < `--set section.key=value` < command-line
options. Every key is checked: unknown keys are named with a suggestion, wrong types with the
expected and the given type.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from minconv_cli.compat import config_values
from minconv_cli.core.errors import MinconvError, check_apart, check_not_blank, check_unique
from minconv_cli.core.precision import PRECISIONS
from minconv_cli.models.spec import PADDINGS, ModelSpec


def _choice(default: str, choices: tuple[str, ...]) -> Any:
    return field(default=default, metadata={"choices": choices})


@dataclass
class DataConfig:
    """Which data, which channels, which splits."""

    paths: list[str] = field(default_factory=list)  # empty: the bundled Navier-Stokes sample
    variables: list[str] | None = None  # None: every variable over (time, y, x)
    static: list[str] | None = None  # extra inputs that are not predicted
    levels: list[Any] | None = None
    dims: dict[str, Any] | None = None  # e.g. {time: valid_time, y: rlat}
    train_period: str | None = None  # None: split=train if the data has one, else 0.0:0.8
    val_period: str | None = None  # None: split=val if the data has one, else 0.8:0.9
    stride: int = 1  # between training window starts
    val_stride: int = 1
    memory_limit: int | str | None = (
        None  # e.g. 8GB: data loaded or buffered; None: half the free RAM
    )
    allow_missing_chunks: bool = False  # read Zarr chunks that are not stored as NaN
    allow_overlap: bool = False  # let the validation period share frames with the training one
    transforms: dict[str, str] | None = None  # {variable: dbr | log1p | none}, see data/transforms


class _ModelSection:
    """What the `model` section does with what the user wrote: `to_spec`."""

    def to_spec(self, default_padding: str | None = None, **from_data: Any) -> ModelSpec:
        """The `ModelSpec` of this section: `padding: auto` resolved to `default_padding` (the
        data's, `Fields.default_padding`), then the data's values (`in_channels`, `grid`, ...).
        Its choices were checked when the config was read; `create_model` checks the rest."""
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        del values["params"]
        if values["padding"] == "auto" and default_padding is not None:
            values["padding"] = default_padding
        return ModelSpec(**{**values, **from_data})


# the `model` section's own defaults and choices, where they differ from the spec's
MODEL_DEFAULTS = {"width": 24, "padding": "auto", "norm": "auto", "predict": "increment"}
MODEL_CHOICES = {"padding": ("auto", *PADDINGS)}  # auto: from the data's coordinates


def _model_keys() -> list[tuple[str, Any, Any]]:
    """Every `ModelSpec` field that is not set from the data (in the spec's order, with its
    choices), then `params`: a parameter budget that overrides `width`."""
    hints = typing.get_type_hints(ModelSpec)
    keys = []
    for f in dataclasses.fields(ModelSpec):
        if f.metadata.get("from_data"):
            continue
        metadata = {**f.metadata}
        if f.name in MODEL_CHOICES:
            metadata["choices"] = MODEL_CHOICES[f.name]
        default = MODEL_DEFAULTS.get(f.name, f.default)
        keys.append((f.name, hints[f.name], field(default=default, metadata=metadata)))
    return [*keys, ("params", int | None, field(default=None))]


# The `model` section holds what the user wrote (every spec option, `auto` padding and a budget)
# and makes the spec from it (`to_spec`); a new `ModelSpec` field is a config key at once.
ModelConfig = dataclasses.make_dataclass(
    "ModelConfig", _model_keys(), bases=(_ModelSection,), namespace={"__module__": __name__}
)


@dataclass
class TrainConfig:
    """Windows, loss, loop, stopping and hardware."""

    context: int = 10  # teacher-forced steps
    horizon: int = 5  # closed-loop steps
    epochs: int = 8
    max_time: float | None = None  # wall-clock budget in seconds
    batch_size: int = 8
    seed: int = 0
    device: str = _choice("auto", ("auto", "cpu", "cuda"))
    tf_weight: float = 1.0  # loss weight of the teacher-forced steps
    cl_weight: float = 1.0  # loss weight of the closed-loop steps
    noise: float = 0.0  # std of Gaussian noise on the inputs (normalised units; paper: 0.01)
    ensemble_members: int = 1  # >1: run each window this often with input noise, CRPS closed loop
    ensemble_noise: float = 0.1  # std of those members' input noise (normalised units)
    clip_grad: float | None = 1.0  # max gradient norm; None: no clipping
    curriculum_epochs: int = (
        0  # >0: horizon grows from curriculum_start to horizon over these epochs
    )
    curriculum_start: int = 1
    patience: int | None = None  # early stopping: epochs without a better validation
    precision: str = _choice("auto", PRECISIONS)  # auto: bf16 where the hardware has it
    compile: bool = False  # torch.compile (CUDA only)
    num_workers: int = 0  # DataLoader worker processes
    crop: list[int] | None = None  # [N] or [H, W]: train on random crops (training/crop.py)
    crop_dry_keep: float = 1.0  # chance of keeping a crop with no target cell above the threshold
    crop_wet_threshold: float = 0.1  # data units: a crop is wet where a target cell exceeds it
    step_memory: str | int | None = None  # memory a step may use; None: available less the data


@dataclass
class OptimConfig:
    """Optimizer and learning-rate schedule."""

    name: str = _choice("adamw", ("adam", "adamw"))
    lr: float = 2e-3
    weight_decay: float = 0.0
    schedule: str = _choice("cosine", ("cosine", "plateau", "none"))
    min_lr: float = 0.0
    plateau_factor: float = 0.5
    plateau_patience: int = 2


@dataclass
class Config:
    """The whole training configuration (saved to RUN_DIR/config.yaml and in checkpoints)."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)

    def to_dict(self) -> dict:
        """Plain nested dict (YAML/JSON-able) of the config keys."""
        return _as_dict(self)

    def to_yaml(self) -> str:
        """The full resolved configuration as YAML."""
        return yaml.safe_dump(self.to_dict(), sort_keys=False, default_flow_style=False)


def _keys(cls: type) -> list[dataclasses.Field]:
    """The config keys of a section: its fields less the model spec's `from_data` ones."""
    return [f for f in dataclasses.fields(cls) if not f.metadata.get("from_data")]


def _as_dict(section: Any) -> dict:
    out = {}
    for f in _keys(type(section)):
        value = getattr(section, f.name)
        out[f.name] = _as_dict(value) if dataclasses.is_dataclass(value) else copy.deepcopy(value)
    return out


# With no data given, training runs on the bundled Navier-Stokes sample (150 training trajectories
# of 50 steps): these defaults (below any file, --set or option) make that a few-minute run on 2 cores.
SAMPLE_DEFAULTS: dict = {
    "data": {"stride": 3, "val_stride": 3},
    "train": {"max_time": 240.0},
}


def _nearest(word: str, options: list[str]) -> str:
    close = difflib.get_close_matches(word, options, n=1, cutoff=0.5)
    return f" (did you mean {close[0]!r}?)" if close else f" (known: {', '.join(options)})"


def _type_name(hint: Any) -> str:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(hint))
    if hint is type(None):
        return "null"
    if hint is Any:
        return "any"
    origin = typing.get_origin(hint)
    if origin is not None:
        args = ", ".join(_type_name(a) for a in typing.get_args(hint))
        return f"{origin.__name__}[{args}]"
    return hint.__name__


def _coerce(value: Any, hint: Any) -> tuple[bool, Any]:
    """(ok, value converted to `hint`): ints and numeric strings are accepted for floats, nothing
    else is converted."""
    if hint is Any:
        return True, value
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        for arg in typing.get_args(hint):
            ok, out = _coerce(value, arg)
            if ok:
                return True, out
        return False, value
    if hint is type(None):
        return value is None, value
    origin = typing.get_origin(hint)
    if origin is list:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            value = [value]  # a single name where a list is expected
        if not isinstance(value, list):
            return False, value
        (item,) = typing.get_args(hint)
        out = [_coerce(v, item) for v in value]
        return all(ok for ok, _ in out), [v for _, v in out]
    if origin is dict:
        return isinstance(value, dict), value
    if hint is float:
        if isinstance(value, str):  # YAML 1.1 reads 3e-4 (no dot) as a string
            try:
                return True, float(value)
            except ValueError:
                return False, value
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        return ok, float(value) if ok else value
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool), value
    return isinstance(value, hint), value


def _build(cls: type, values: Any, prefix: str, source: str) -> Any:
    if not isinstance(values, dict):
        raise MinconvError(
            f"{source}: {prefix.rstrip('.') or 'config'}: expected a mapping of keys, got {type(values).__name__}"
        )
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in _keys(cls)}
    kwargs = {}
    for key, value in values.items():
        where = f"{prefix}{key}"
        if key not in fields:
            raise MinconvError(f"{source}: {where}: unknown key{_nearest(str(key), list(fields))}")
        hint = hints[key]
        if dataclasses.is_dataclass(hint):
            kwargs[key] = _build(hint, value or {}, f"{where}.", source)
            continue
        ok, converted = _coerce(value, hint)
        if not ok:
            raise MinconvError(
                f"{source}: {where}: expected {_type_name(hint)}, got {type(value).__name__} {value!r}"
            )
        choices = fields[key].metadata.get("choices")
        if choices and converted not in choices:
            close = difflib.get_close_matches(str(converted), choices, n=1, cutoff=0.5)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise MinconvError(
                f"{source}: {where}: expected one of {', '.join(choices)}, got {converted!r}{hint}"
            )
        kwargs[key] = converted
    return cls(**kwargs)


CHECKPOINT_SOURCE = "checkpoint config"


def _merge(base: dict, update: dict) -> dict:
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def read_yaml(path: str | Path) -> dict:
    """A config file's contents as a nested dict (`yaml.safe_load`; empty file: {})."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as err:
        raise MinconvError(f"{path}: cannot read config ({err.strerror or err})") from None
    try:
        loaded = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise MinconvError(f"{path}: not valid YAML ({' '.join(str(err).split())})") from None
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise MinconvError(f"{path}: expected a mapping of sections, got {type(loaded).__name__}")
    return loaded


def nest(dotted: dict[str, Any]) -> dict:
    """{"optim.lr": 1e-3} -> {"optim": {"lr": 1e-3}}."""
    out: dict = {}
    for key, value in dotted.items():
        parts = key.split(".")
        node = out
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return out


PERIOD_KEYS = ("data.train_period", "data.val_period")


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """`["optim.weight_decay=0.01", ...]` -> dotted dict, values parsed as YAML scalars (nothing
    after `=` is null, except for a period: empty, which is refused; `null` means the default)."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key or any(not p for p in key.split(".")):
            raise MinconvError(f"--set {item!r}: expected SECTION.KEY=VALUE, e.g. optim.lr=0.001")
        try:
            out[key] = yaml.safe_load(text) if text.strip() else "" if key in PERIOD_KEYS else None
        except yaml.YAMLError:
            raise MinconvError(f"--set {item!r}: value is not valid YAML") from None
    return out


def validate(config: Config, source: str = "config") -> Config:
    """Checks across keys and ranges that the types alone do not express."""
    t, m, o = config.train, config.model, config.optim
    rules = [
        (t.context >= 1, "train.context", "must be at least 1"),
        (t.horizon >= 0, "train.horizon", "must be 0 or more"),
        (t.epochs >= 1, "train.epochs", "must be at least 1"),
        (t.batch_size >= 1, "train.batch_size", "must be at least 1"),
        (t.max_time is None or t.max_time > 0, "train.max_time", "must be positive seconds"),
        (t.noise >= 0, "train.noise", "must be 0 or more"),
        (t.ensemble_members >= 1, "train.ensemble_members", "must be at least 1"),
        (t.ensemble_noise >= 0, "train.ensemble_noise", "must be 0 or more"),
        (t.tf_weight >= 0 and t.cl_weight >= 0, "train.tf_weight/cl_weight", "must be >= 0"),
        (t.tf_weight + t.cl_weight > 0, "train.tf_weight/cl_weight", "cannot both be 0"),
        (t.clip_grad is None or t.clip_grad > 0, "train.clip_grad", "must be positive or null"),
        (t.curriculum_epochs >= 0, "train.curriculum_epochs", "must be 0 or more"),
        (
            0 <= t.curriculum_start <= max(t.horizon, 0),
            "train.curriculum_start",
            "must be between 0 and train.horizon",
        ),
        (t.patience is None or t.patience >= 1, "train.patience", "must be at least 1 or null"),
        (t.num_workers >= 0, "train.num_workers", "must be 0 or more"),
        (m.width >= 1, "model.width", "must be at least 1"),
        (m.params is None or m.params >= 1, "model.params", "must be positive or null"),
        (m.layers >= 1, "model.layers", "must be at least 1"),
        (m.kernel_size >= 1 and m.kernel_size % 2 == 1, "model.kernel_size", "must be odd"),
        (o.lr > 0, "optim.lr", "must be positive"),
        (o.weight_decay >= 0, "optim.weight_decay", "must be 0 or more"),
        (0 < o.plateau_factor < 1, "optim.plateau_factor", "must be between 0 and 1"),
        (config.data.stride >= 1 and config.data.val_stride >= 1, "data.stride", "must be >= 1"),
    ]
    for ok, key, message in rules:
        if not ok:
            raise MinconvError(f"{source}: {key}: {message}")
    for key in ("variables", "static"):
        check_unique(getattr(config.data, key) or [], f"{source}: data.{key}")
    check_apart(
        config.data.variables or [],
        config.data.static or [],
        f"{source}: data.variables and data.static",
    )
    from minconv_cli.data.transforms import parse_table

    parse_table(config.data.transforms, f"{source}: data.transforms")
    from minconv_cli.training.crop_keys import check_train_options

    check_train_options(config.train, source)
    if config.data.memory_limit is not None:
        from minconv_cli.data.memory import parse_size

        parse_size(config.data.memory_limit, f"{source}: data.memory_limit")
    return config


def resolve_config(
    config_file: str | Path | None = None,
    overrides: list[str] | None = None,
    options: dict[str, Any] | None = None,
    base: dict | None = None,
) -> Config:
    """Defaults (or `base`, e.g. a resumed run's config), then the YAML file, then `--set`
    overrides, then command-line options (dotted keys; None means "not given"), each layer
    validated with its source named in errors."""
    layers: list[tuple[str, dict]] = []
    if config_file is not None:
        layers.append((str(config_file), read_yaml(config_file)))
    if overrides:
        layers.append(("--set", nest(parse_overrides(overrides))))
    given = {k: v for k, v in (options or {}).items() if v is not None}
    if given:
        layers.append(("command line", nest(given)))
    if base is not None:
        layers.insert(0, (CHECKPOINT_SOURCE, base))
    layers = [
        (source, config_values(layer, source, note=source != CHECKPOINT_SOURCE))
        for source, layer in layers
    ]
    merged: dict = Config().to_dict()
    for source, layer in layers:
        _build(Config, layer, "", source)  # name the layer that holds a bad key
        if source != CHECKPOINT_SOURCE:  # runs made before periods were checked still resume
            _check_periods(layer, source)
        merged = _merge(merged, layer)
    if not merged["data"]["paths"] and base is None:  # the bundled sample: its own defaults
        merged = Config().to_dict()
        for layer in [SAMPLE_DEFAULTS, *(layer for _, layer in layers)]:
            merged = _merge(merged, layer)
    return validate(_build(Config, merged, "", "config"))


def _check_periods(layer: dict, source: str) -> None:
    """An empty or blank period is refused (an unset shell variable?); null means the default."""
    data = layer.get("data") or {}
    for key in ("train_period", "val_period"):
        check_not_blank(data.get(key), f"{source}: data.{key}")


def config_from_dict(values: dict, source: str = "config") -> Config:
    """A validated Config from a (possibly partial) nested dict, e.g. one stored in a checkpoint."""
    values = config_values(values, CHECKPOINT_SOURCE, note=False)
    return validate(_build(Config, _merge(Config().to_dict(), values), "", source), source)
