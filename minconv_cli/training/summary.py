"""The summary of a run (summary.json and `minconv train --json`): how it ended, the data and
model it used, timings, and the best epoch's scores per channel."""

from __future__ import annotations

import math
import time
from typing import Any

from minconv_cli.training.data import data_paths

# `run` below is a `training.loop.Run` (not imported: the loop imports this module).


def run_summary(run: Any, status: str) -> dict[str, Any]:
    """Everything summary.json records about `run`, which ended with `status`."""
    p, t, d = run.pos, run.config.train, run.data
    best = next((r for r in p.history if r["epoch"] == p.best_epoch), {})
    beats = None
    if best and not math.isnan(best.get("val_rmse_cl", math.nan)):
        beats = all(v["rmse_cl"] < v["persistence_rmse_cl"] for v in (p.best_detail or {}).values())
    last = p.history[-1] if p.history else {}
    steps = run.budget.step_seconds
    return {
        "status": status,
        "run_dir": str(run.run_dir.path),
        "checkpoint": str(run.run_dir.path / "model.pt") if run.run_dir.model.exists() else None,
        # an unfinished replacement of an older run: where it is (the old run is kept)
        "replacement_dir": str(run.run_dir.work) if run.run_dir.replacing else None,
        "model": run.hparams["name"],
        "parameters": run.parameters,
        "widths": run.hparams["widths"],
        "norm": run.hparams["norm"],
        "norm_note": run.norm_note,
        "context": t.context,
        "horizon": t.horizon,
        "data": data_paths(run.config),
        "train_split": d.train_spec,
        "val_split": d.val_spec,
        "train_windows": len(d.train_windows),
        "val_windows": len(d.val_windows),
        "data_memory": d.memory,
        "epochs_completed": p.epoch,
        "steps": p.global_step,
        "seconds": round(time.monotonic() - run.budget.started, 2),
        "max_time": t.max_time,
        "seconds_per_step": round(sum(steps) / len(steps), 4) if steps else None,
        "longest_step_seconds": round(max(steps), 4) if steps else None,
        "last_validation": {
            "windows": last.get("val_windows"),
            "of": len(d.val_windows),
            "partial": last.get("val_partial"),
            "seconds": round(run.budget.validation_seconds, 3),
        },
        "device": str(run.device),
        "precision": run.precision,
        "world_size": run.info.world,
        "best_epoch": p.best_epoch,
        "best": best,
        "beats_persistence": beats,
        "channels": p.best_detail or {},
    }
