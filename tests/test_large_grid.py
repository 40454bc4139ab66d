"""Large grids (a 512x512 radar-like field): a model that does not grow with the grid unless asked,
and a `--max-time` that holds to within about one step, validation included."""

from __future__ import annotations

import csv
import json
import time
from pathlib import Path

import pytest
import torch
import yaml
from factories import radar_dataset
from typer.testing import CliRunner

from minconv_cli.cli import app
from minconv_cli.models import count_parameters, create_model, widths_for_params
from minconv_cli.models.checkpoint import load_checkpoint
from minconv_cli.training.budget import Budget, spread

runner = CliRunner()
# tiny everything except the grid: 1 layer of width 2, windows of 2 + 1 steps
SMALL = ["--context", 2, "--horizon", 1, "--width", 2, "--layers", 1, "--batch-size", 2]
HALVES = ["--train-period", "0.0:0.5", "--val-period", "0.5:1.0"]


def invoke(*args):
    return runner.invoke(app, ["train", *map(str, args)])


@pytest.fixture(scope="module")
def radar(tmp_path_factory) -> dict[int, Path]:
    """512x512 and 64x64 fields of 8 ten-minute steps, and a 512x512 one of 16 steps."""
    root = tmp_path_factory.mktemp("radar")
    paths = {}
    for name, n, n_time in (("r64", 64, 8), ("r512", 512, 8), ("long512", 512, 16)):
        paths[name] = root / f"{name}.nc"
        radar_dataset(n_time=n_time, n=n).to_netcdf(paths[name])
    return paths


def test_the_default_model_has_the_same_parameters_on_64x64_and_512x512(radar, tmp_path):
    counts = {}
    for name in ("r64", "r512"):
        result = invoke(
            radar[name], *SMALL, *HALVES, "--epochs", 1, "--out", tmp_path / name, "--json"
        )
        assert result.exit_code == 0, result.output
        summary = json.loads(result.stdout)
        assert summary["norm"] == "instance" and summary["status"] == "completed"
        counts[name] = summary["parameters"]
    # encoder 1->2 (4), cell conv 2->4 3x3 (76), a norm weight and bias per channel (4), decoder (3)
    assert counts["r64"] == counts["r512"] == 4 + 76 + 4 + 3
    # said once, on the console, with the numbers behind the choice
    note = (
        "norm: instance (auto: LayerNorm over the 512x512 grid would add 524,288 per-cell "
        "parameters to the model's 83; --norm layer to use it anyway)"
    )
    assert " ".join(result.stderr.split()).count(note) == 1  # (the console wraps long lines)
    assert "s/step" in result.stderr or "steps/s" in result.stderr  # the step bar's pace
    # the resolved choice is what the run records, so a resume or rollout rebuilds the same model
    run = tmp_path / "r512"
    assert yaml.safe_load((run / "config.yaml").read_text())["model"]["norm"] == "instance"
    loaded = load_checkpoint(run / "model.pt")
    assert (
        loaded.meta["model"]["norm"] == "instance"
        and loaded.meta["config"]["model"]["norm"] == "instance"
    )
    assert count_parameters(loaded.model) == counts["r512"]
    assert json.loads((run / "summary.json").read_text())["norm_note"] == note


def test_norm_layer_asked_for_gives_the_papers_grid_dependent_model(radar, tmp_path):
    result = invoke(
        radar["r512"],
        *SMALL,
        *HALVES,
        "--epochs",
        1,
        "--norm",
        "layer",
        "--out",
        tmp_path / "l",
        "--json",
        "-q",
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["norm"] == "layer" and summary["norm_note"] is None
    assert summary["parameters"] == 83 + 2 * 512 * 512  # a weight and a bias per grid cell


def test_bad_norm_and_budgets_below_the_grid_norm_are_one_line_errors(radar, tmp_path):
    result = invoke(radar["r64"], *SMALL, "--norm", "lyer", "--out", tmp_path / "a")
    assert result.exit_code == 1
    assert result.stderr.strip().splitlines() == [
        "error: command line: model.norm: expected one of auto, layer, instance, group, none, "
        "got 'lyer' (did you mean 'layer'?)"
    ]
    result = invoke(
        radar["r512"],
        *SMALL[:4],
        "--layers",
        1,
        *HALVES,
        "--norm",
        "layer",
        "--params",
        5000,
        "--out",
        tmp_path / "b",
    )
    assert result.exit_code == 1
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("error: config: model: params: expected at least 524,312 (the smallest")
    assert "LayerNorm's per-cell parameters over the 512x512 grid" in line and "got 5,000" in line
    assert not (tmp_path / "b" / "model.pt").exists()


def test_auto_keeps_layernorm_on_the_papers_grids_and_budgets():
    def built(grid, norm="auto", **kw):
        with torch.device("meta"):
            return create_model("minconvgru", 1, width=24, layers=2, grid=grid, norm=norm, **kw)

    # the default model on the paper's 16x16 and 16x32 problems: LayerNorm, as before
    for grid in ((16, 16), (16, 32), (32, 64)):
        assert built(grid).hparams["norm"] == "layer"
        assert count_parameters(built(grid)) == count_parameters(built(grid, "layer"))
    big = built((512, 512))
    assert big.hparams["norm"] == "instance"  # 1,048,576 per-cell parameters vs 20,905
    assert count_parameters(big) == count_parameters(built((16, 16), "instance")) == 21_001
    assert count_parameters(built((512, 512), "layer")) == 1_069_481  # the count
    assert create_model(**big.hparams).hparams == big.hparams  # hparams hold the resolved kind
    # parameter budgets count what the chosen norm costs: the paper's width at 16x16, and the same
    # width on a 512x512 grid, where LayerNorm alone would be 12x the budget
    assert widths_for_params("minconvgru", 175_000, 1, 4, (16, 16), norm="auto") == [49] * 4
    assert widths_for_params("minconvgru", 175_000, 1, 4, (512, 512), norm="auto") == [49] * 4


def test_a_budget_shorter_than_one_step_runs_one_step_and_one_validation_batch(radar, tmp_path):
    out = tmp_path / "t"
    result = invoke(
        radar["long512"], *SMALL, *HALVES, "--epochs", 3, "--max-time", 0.01, "--out", out,
        "--json", "-q",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    # 8 frames per split, windows of 4: 5 training windows (3 steps of 2) and 5 validation windows
    assert summary["train_windows"] == summary["val_windows"] == 5
    assert summary["status"] == "time_budget" and summary["steps"] == 1
    assert summary["epochs_completed"] == 1
    assert summary["last_validation"]["windows"] == 2  # one batch, flagged as partial
    assert summary["last_validation"]["of"] == 5 and summary["last_validation"]["partial"] is True
    (row,) = csv.DictReader((out / "metrics.csv").open())
    assert row["val_windows"] == "2" and row["val_partial"] == "True"
    assert (out / "model.pt").exists()  # validated (partly) and saved: rollout can use it


def test_max_time_holds_to_within_a_step_and_a_validation_batch(radar, tmp_path):
    budget = 3.0
    began = time.monotonic()
    result = invoke(
        radar["long512"], *SMALL, *HALVES, "--batch-size", 1, "--epochs", 1000,
        "--max-time", budget, "--out", tmp_path / "m", "--json", "-q",
    )  # fmt: skip
    wall = time.monotonic() - began
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["status"] == "time_budget" and summary["steps"] >= 1
    last = summary["last_validation"]
    assert 1 <= last["windows"] <= last["of"] == 5
    # the overrun is bounded by the run's own step and validation-batch times, not by the epoch
    # (5 steps) or the 1000 epochs asked for; 2 s for the final checkpoint and summary writes
    one_step = summary["longest_step_seconds"]
    assert summary["seconds"] <= budget + one_step + last["seconds"] + 2.0
    assert wall <= budget + one_step + last["seconds"] + 3.0


def test_budget_arithmetic_and_the_spread_of_a_partial_validation():
    assert spread(10, 3) == [0, 3, 6] and spread(5, 9) == spread(5, 5) == [0, 1, 2, 3, 4]
    now = time.monotonic()
    # no budget: never stop, validate everything
    free = Budget(None, now, batch_size=2, step_seconds=[5.0])
    assert not free.stop_training(100) and free.val_windows(7, world=1) == 7
    # 1 s left, steps of 0.2 s, validation 0.3 s per window: 10 windows would need 3 s, but at
    # most 25% of the 100 s budget is held back, so training stops now
    tight = Budget(100.0, now - 99.0, batch_size=2, step_seconds=[0.2], window_seconds=0.3)
    assert tight.stop_training(10)
    assert not tight.stop_training(2)  # 0.2 + 0.6 s fit in the second left
    assert tight.val_windows(10, world=1) == 3  # floor(1 s / 0.3 s)
    assert tight.val_windows(10, world=2) == 6  # two ranks validate side by side
    late = Budget(1.0, now - 5.0, batch_size=2, step_seconds=[0.2], window_seconds=0.3)
    assert late.val_windows(10, world=2) == 4  # out of time: still one batch per rank
    # before any validation, a window is estimated at half a training step's share of one
    assert Budget(10.0, now, batch_size=4, step_seconds=[2.0]).val_window_seconds() == 0.25
