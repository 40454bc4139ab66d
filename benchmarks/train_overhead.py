"""Overhead of `minconv train` over pure training steps, on the bundled Navier-Stokes sample.

The command's epoch time (wall clock between epoch ends: data loading, steps, progress display,
validation, checkpoints, metrics files) is compared with the same work done bare: the same model,
config, batches and windows, with every batch pre-collated in memory, timing only the training
steps (loss, backward, clipping, optimizer, schedule) and the validation forward passes.
overhead = (command epoch - bare steps - bare validation) / command epoch; target <= 15%.
Medians over epochs 2.. (epoch 1 includes warm-up); one run.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from minconv_cli.commands.train import RichReporter
from minconv_cli.training import build_model, train_model
from minconv_cli.training.config import resolve_config
from minconv_cli.training.data import prepare_data
from minconv_cli.training.distributed import Dist, setup
from minconv_cli.training.steps import training_loss, validate

RESULT = Path(__file__).parent / "results" / "train_overhead.json"


class TimedReporter(RichReporter):
    """The command's own progress display, plus a timestamp at every epoch end."""

    def __init__(self) -> None:
        super().__init__()
        self.marks: list[float] = []

    def begin(self, epochs: int, first_epoch: int) -> None:
        super().begin(epochs, first_epoch)
        self.marks.append(time.perf_counter())

    def epoch_done(self, row: dict) -> None:
        super().epoch_done(row)
        self.marks.append(time.perf_counter())


def command_epochs(overrides: list[str], out: Path) -> tuple[list[float], dict]:
    cfg = resolve_config(overrides=overrides)
    reporter = TimedReporter()
    result = train_model(cfg, out, reporter=reporter)
    return [b - a for a, b in itertools.pairwise(reporter.marks)], result.summary


def bare_epochs(overrides: list[str], epochs: int) -> tuple[list[float], list[float]]:
    cfg = resolve_config(overrides=overrides)
    _, device = setup(cfg.train.device)
    data = prepare_data(cfg)
    torch.manual_seed(cfg.train.seed)
    model = build_model(cfg, data).to(device)
    t, o = cfg.train, cfg.optim
    opt = torch.optim.AdamW(model.parameters(), lr=o.lr, weight_decay=o.weight_decay)
    loader = torch.utils.data.DataLoader(data.train_windows, batch_size=t.batch_size, shuffle=True)
    batches = list(loader)
    val_loader = torch.utils.data.DataLoader(data.val_windows, batch_size=t.batch_size)
    val_batches = list(val_loader)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs * len(batches))
    train_s, val_s = [], []
    for _ in range(epochs):
        start = time.perf_counter()
        for batch in batches:
            opt.zero_grad(set_to_none=True)
            loss = training_loss(model, batch, t.context, t.horizon, t, device)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), t.clip_grad or math.inf)
            opt.step()
            sched.step()
        mid = time.perf_counter()
        model.eval()
        validate(model, val_batches, t.context, t.horizon, data.normalizer, device, Dist())
        model.train()
        train_s.append(mid - start)
        val_s.append(time.perf_counter() - mid)
    return train_s, val_s


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--set", dest="sets", action="append", default=[], help="config override")
    args = parser.parse_args()
    # every 10th window start keeps a run short; no time budget, so every epoch is complete
    overrides = [
        f"train.epochs={args.epochs}",
        "train.device=cpu",
        "train.max_time=null",
        "data.stride=10",
        "data.val_stride=10",
        *args.sets,
    ]
    with tempfile.TemporaryDirectory() as tmp:
        cmd, summary = command_epochs(overrides, Path(tmp) / "run")
    train_s, val_s = bare_epochs(overrides, args.epochs)
    steady = slice(1, None) if args.epochs > 1 else slice(None)
    cmd_med = statistics.median(cmd[steady])
    train_med = statistics.median(train_s[steady])
    val_med = statistics.median(val_s[steady])
    overhead = (cmd_med - train_med - val_med) / cmd_med
    result = {
        "benchmark": "train_overhead",
        "data": summary["data"],
        "model": summary["model"],
        "parameters": summary["parameters"],
        "train_windows": summary["train_windows"],
        "val_windows": summary["val_windows"],
        "overrides": overrides,
        "command_epoch_s": cmd,
        "bare_train_s": train_s,
        "bare_val_s": val_s,
        "median_command_epoch_s": cmd_med,
        "median_bare_train_s": train_med,
        "median_bare_val_s": val_med,
        "overhead_fraction": overhead,
        "target_fraction": 0.15,
        "meets_target": overhead <= 0.15,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "machine": platform.processor() or platform.machine(),
    }
    table = Table(title="minconv train: command epoch vs bare training steps (median, s)")
    for col in ("command epoch", "bare steps", "bare validation", "overhead"):
        table.add_column(col, justify="right")
    table.add_row(f"{cmd_med:.2f}", f"{train_med:.2f}", f"{val_med:.2f}", f"{overhead:.1%}")
    Console().print(table)
    RESULT.parent.mkdir(parents=True, exist_ok=True)
    RESULT.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
