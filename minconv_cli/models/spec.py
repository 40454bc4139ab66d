"""`ModelSpec`: the one description of a model (as nanoGPT's `GPTConfig`), and the model table.

Every architecture option is a field here, with its default and (for string options) its choices.
`create_model(spec)` builds it, a model keeps its resolved spec (`model.spec`; `model.hparams` is
`asdict(model.spec)`), a checkpoint stores that dict and rebuilds from it, and the training
config's `model` section (`config.ModelConfig`) holds the same options with training defaults.
Adding an option means: a field here, the code that uses it (a cell, the network, or the
convolution: a `conv` field reaches `GridConv2d` through `conv_options()`), and its test. Adding
a model means: a row in `MODELS` (and a cell class in `cells.CELLS` if no cell fits).

Fields marked `from_data` (channels, grid, per-layer widths) are set from the data when training,
never by config keys. This module imports nothing of the package: the choices of every option
live here, and the modules that use them import them from here.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class ModelRow:
    """One model of the table: its cell (a key of `cells.CELLS`), the update gate of a Min cell
    (a key of `gates.UPDATE_GATES`; None for cells that have their own gates) and a line for
    the docs (docs/models.md lists every row)."""

    cell: str
    gate: str | None = None
    about: str = ""


# name -> row: the one list of models; the spec's `name` choices, the network and the docs read it
MODELS: dict[str, ModelRow] = {
    "minconvgru": ModelRow("min", "gru", "MinConvGRU: update gate z = sigmoid(k)"),
    "minconvlstm": ModelRow("min", "lstm", "MinConvLSTM: forget and input gates, normalised"),
    "minconvexplstm": ModelRow("min", "explstm", "MinConvExpLSTM: z = 1 - sigmoid(f - i)"),
    "convgru": ModelRow("convgru", about="ConvGRU baseline, gates from conv[x, h]"),
    "convlstm": ModelRow(
        "convlstm", about="ConvLSTM baseline (Shi et al. 2015), peepholes optional"
    ),
}
MODEL_NAMES = tuple(MODELS)
PADDINGS = ("zeros", "circular", "cylinder")
CYLINDER_PADS = ("zeros", "replicate")
NORMS = ("layer", "instance", "group", "none")
NORM_CHOICES = ("auto", *NORMS)
PREDICTS = ("next", "increment")
SCAN_BACKENDS = ("auto", "fused", "triton", "linear", "log")


def model_row(name: str) -> ModelRow:
    """The table's row of model `name`; a ValueError naming the known models for any other."""
    row = MODELS.get(name)
    if row is None:
        raise ValueError(f"model: expected one of {', '.join(MODELS)}, got {name!r}")
    return row


def choice(
    default: str, choices: Collection[str], label: str | None = None, conv: bool = False
) -> Any:
    """A string field with its allowed values (checked by `ModelSpec.validated` and the config)."""
    return field(default=default, metadata={"choices": choices, "label": label, "conv": conv})


def conv_option(default: Any) -> Any:
    """A field every cell's convolution (`GridConv2d`) takes as a keyword (`conv_options()`)."""
    return field(default=default, metadata={"conv": True})


def from_data(default: Any) -> Any:
    """A field that training sets from the data (not a config key)."""
    return field(default=default, metadata={"from_data": True})


@dataclass
class ModelSpec:
    """A model: which cell, its sizes and options. Unresolved fields: `out_channels=None` (the
    dynamic input channels), `widths=None` (`layers` x `width`), `norm="auto"` (see `auto_norm`);
    `model.spec` always holds them resolved."""

    name: str = choice("minconvgru", MODELS, label="model")  # the live table
    in_channels: int = from_data(0)  # inputs per frame, static channels included
    out_channels: int | None = from_data(None)
    width: int = 32
    layers: int = 2
    kernel_size: int = conv_option(3)
    padding: str = choice("zeros", PADDINGS, conv=True)
    norm: str = choice("layer", NORM_CHOICES)
    grid: list[int] | None = from_data(None)  # (H, W); needed by norm="layer" and peepholes
    widths: list[int] | None = from_data(None)  # per layer; overrides width and layers
    predict: str = choice("next", PREDICTS)  # increment: the output is added to the input frame
    static_channels: int = from_data(0)  # inputs that are not predicted
    scan_backend: str = choice("auto", SCAN_BACKENDS)  # Min cells' recurrence
    peepholes: bool = False  # convlstm
    cylinder_pad: str = choice("zeros", CYLINDER_PADS, conv=True)  # cylinder padding at the poles
    norm_groups: int = 1  # norm="group"
    time_chunk: int = 0  # teacher-forced frames per conv+scan chunk; 0: sized to the cache

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> ModelSpec:
        """A spec from a dict (a checkpoint's `model`, `create_model(**hparams)`); unknown keys
        are a ValueError naming them."""
        known = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise ValueError(
                f"create_model options: expected some of {', '.join(known)}, got {', '.join(unknown)}"
            )
        return cls(**values)

    def conv_options(self) -> dict[str, Any]:
        """The keywords of every cell's convolution: the fields marked `conv`."""
        return {
            f.name: getattr(self, f.name)
            for f in dataclasses.fields(self)
            if f.metadata.get("conv")
        }

    def to_dict(self) -> dict[str, Any]:
        """JSON-able: what checkpoints store as `model` (and what `model.hparams` is)."""
        return dataclasses.asdict(self)

    def validated(self) -> ModelSpec:
        """This spec checked (ValueError naming the field, expected and got) and resolved, except
        `norm="auto"` (which needs the parameter count: `create_model` resolves it)."""
        for f in dataclasses.fields(self):
            choices = f.metadata.get("choices")
            value = getattr(self, f.name)
            if choices and value not in choices:
                raise ValueError(
                    f"{f.metadata.get('label') or f.name}: expected one of {', '.join(choices)}, got {value!r}"
                )
        in_channels, static = int(self.in_channels), int(self.static_channels)
        if in_channels < 1:
            raise ValueError(f"in_channels: expected a positive number, got {in_channels}")
        if not 0 <= static < in_channels:
            raise ValueError(
                f"static_channels: expected 0..{in_channels - 1} (fewer than in_channels), got {static}"
            )
        dynamic = in_channels - static
        out = dynamic if self.out_channels is None else int(self.out_channels)
        if self.predict == "increment" and out != dynamic:
            raise ValueError(
                f"predict='increment': expected out_channels == dynamic input channels ({dynamic}), got {out}"
            )
        widths = [int(w) for w in self.widths] if self.widths is not None else None
        widths = widths if widths is not None else [int(self.width)] * int(self.layers)
        if not widths or min(widths) < 1:
            raise ValueError(f"widths: expected at least one positive width, got {widths}")
        grid = [int(n) for n in self.grid] if self.grid is not None else None
        if grid is not None and (len(grid) != 2 or min(grid) < 1):
            raise ValueError(f"grid: expected (H, W) with positive sizes, got {tuple(grid)}")
        if self.norm == "layer" and grid is None:
            raise ValueError(
                "norm='layer': expected grid=(H, W) (LayerNorm over the grid has per-cell parameters), got None"
            )
        if self.norm == "group" and any(w % int(self.norm_groups) for w in widths):
            raise ValueError(
                f"norm_groups: expected a divisor of every width {widths}, got {self.norm_groups}"
            )
        if int(self.time_chunk) < 0:
            raise ValueError(
                f"time_chunk: expected 0 (auto) or a positive number of frames, got {self.time_chunk}"
            )
        return dataclasses.replace(
            self,
            in_channels=in_channels,
            out_channels=out,
            width=widths[0],
            layers=len(widths),
            kernel_size=int(self.kernel_size),
            grid=grid,
            widths=widths,
            static_channels=static,
            peepholes=bool(self.peepholes),
            norm_groups=int(self.norm_groups),
            time_chunk=int(self.time_chunk),
        )
