"""The training data: open the files, split train/validation, fit the normaliser, cut windows."""

from __future__ import annotations

from dataclasses import dataclass, field

from minconv_cli.core.errors import MinconvError
from minconv_cli.data import Fields, Normalizer, WindowDataset, open_fields, split_fields
from minconv_cli.data.memory import memory_budget
from minconv_cli.data.open import float32_bytes
from minconv_cli.data.splits import describe_positions, split_overlap
from minconv_cli.data.transforms import parse_table
from minconv_cli.training.config import Config


@dataclass
class TrainingData:
    """Everything the loop needs from the data, built once per run."""

    fields: Fields
    train: Fields
    val: Fields
    train_spec: str
    val_spec: str
    normalizer: Normalizer
    train_windows: WindowDataset
    val_windows: WindowDataset
    memory: dict = field(default_factory=dict)  # in_memory, data_bytes, memory_limit_bytes


def default_splits(fields: Fields) -> tuple[str, str]:
    """`split=train` / `split=val` when the data has a `split` coordinate with both, else fractions
    0.0:0.8 / 0.8:0.9 (of the samples, or of time when there are no sample dims)."""
    if "split" in fields.ds.coords and fields.sample_dims:
        names = set(fields.ds["split"].values.astype(str).tolist())
        if {"train", "val"} <= names:
            return "split=train", "split=val"
    return "0.0:0.8", "0.8:0.9"


def check_disjoint(fields: Fields, train_spec: str, val_spec: str) -> None:
    """Refuse a validation period that shares a (sample, time) frame with the training period."""
    shared = split_overlap(fields, train_spec, val_spec)
    if shared is None:
        return
    where = ", ".join(describe_positions(fields, d, i) for d, i in shared.items()) or "every frame"
    raise MinconvError(
        f"{fields.path_label}: validation period {val_spec!r} overlaps training period "
        f"{train_spec!r} (both hold {where}); give periods that do not overlap, or "
        f"--allow-overlap (data.allow_overlap: true) to validate on training frames"
    )


def data_paths(config: Config) -> list[str]:
    """The configured data files, or the bundled Navier-Stokes sample when none are given."""
    if config.data.paths:
        return list(config.data.paths)
    from minconv_cli.data.sample import sample_path

    return [str(sample_path())]


def prepare_data(config: Config) -> TrainingData:
    """Open, split and window the data for `config` (normaliser fitted on the training split)."""
    d, t = config.data, config.train
    budget = memory_budget(d.memory_limit)
    fields = open_fields(
        data_paths(config),
        variables=d.variables,
        static=d.static,
        dims=d.dims,
        levels=d.levels,
        memory_limit=budget,
        allow_missing_chunks=d.allow_missing_chunks,
    )
    memory = {
        "in_memory": not fields.is_lazy,
        "data_bytes": float32_bytes(fields.ds[fields.variables]),
        "memory_limit_bytes": budget,
    }
    auto_train, auto_val = default_splits(fields)
    train_spec, val_spec = d.train_period or auto_train, d.val_period or auto_val
    if not d.allow_overlap:
        check_disjoint(fields, train_spec, val_spec)
    train, val = split_fields(fields, train_spec), split_fields(fields, val_spec)
    normalizer = Normalizer.fit(train, parse_table(d.transforms, "data.transforms"))
    length = t.context + t.horizon + 1
    train_windows = WindowDataset(train, length, normalizer, stride=d.stride)
    val_windows = WindowDataset(val, length, normalizer, stride=d.val_stride)
    return TrainingData(
        fields, train, val, train_spec, val_spec, normalizer, train_windows, val_windows, memory
    )
