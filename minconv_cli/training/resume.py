"""A run's checkpoints: the metadata each carries, last.pt (model, optimiser, schedule, position
and RNG, so that `--resume` repeats exactly what an uninterrupted run would do) and reading it back."""

from __future__ import annotations

import json
from typing import Any

import torch

from minconv_cli import __version__
from minconv_cli.core.errors import MinconvError
from minconv_cli.models.checkpoint import CheckpointMeta, DataMeta, read_checkpoint, save_checkpoint
from minconv_cli.training.data import data_paths
from minconv_cli.training.position import Position

# `run` below is a `training.loop.Run` (not imported: the loop imports this module).


def run_meta(run: Any, epoch: int, metrics: dict) -> CheckpointMeta:
    """What a checkpoint of `run` says about itself: model, data, config, splits, epoch, metrics."""
    d = run.data
    return CheckpointMeta(
        model=run.model.spec,
        data=DataMeta.from_fields(d.fields, d.normalizer),
        context=run.config.train.context,
        horizon=run.config.train.horizon,
        config=run.config.to_dict(),
        precision=run.precision,
        splits={"train": d.train_spec, "val": d.val_spec, "paths": data_paths(run.config)},
        epoch=epoch,
        metrics=metrics,
    )


def save_last(run: Any) -> None:
    """Write last.pt: the model and everything `--resume` needs to continue the run."""
    p = run.pos
    extra = {
        "position": json.dumps({k: v for k, v in vars(p).items()}, default=float, allow_nan=True),
        "scheduler": run.scheduler.state_dict() if run.scheduler is not None else {},
        "torch_rng": torch.get_rng_state(),
    }
    last = p.history[-1] if p.history else {}
    save_checkpoint(
        run.run_dir.last,
        run.model,
        run_meta(run, p.epoch, last),
        optimizer_state=run.optimizer.state_dict(),
        extra=extra,
    )


def restore(run: Any) -> Position:
    """Load last.pt into `run` (same version, model and data, else one line) and return where
    the run was."""
    path = run.run_dir.last
    raw, meta = read_checkpoint(path)
    if meta.minconv_version != __version__:
        raise MinconvError(
            f"--resume: {path} was written by minconv {meta.minconv_version}, this is {__version__}"
        )
    if meta.model != run.model.spec:
        stored = meta.model.to_dict()
        diff = sorted(k for k in stored if stored[k] != run.hparams.get(k))
        raise MinconvError(
            f"--resume: {path} holds another model (differs in {', '.join(diff)}); "
            "resume with the run's own settings or start a new run"
        )
    if meta.data is None or meta.data.normalizer != run.data.normalizer.to_dict():
        raise MinconvError(f"--resume: {path} was trained on other data (normalisation differs)")
    extra = raw.get("extra") or {}
    try:
        run.model.load_state_dict(raw["state_dict"])
        run.optimizer.load_state_dict(raw["optimizer_state"])
        if run.scheduler is not None and extra.get("scheduler"):
            run.scheduler.load_state_dict(extra["scheduler"])
        pos = Position(**json.loads(extra["position"]))
    except (KeyError, TypeError, ValueError, RuntimeError) as err:
        raise MinconvError(f"--resume: {path} cannot be resumed ({err})") from None
    if "torch_rng" in extra:
        torch.set_rng_state(extra["torch_rng"])
    return pos
