"""The activation-memory estimate of a step, and what train and rollout do with it: a smaller
batch said once, or a one-line refusal naming --crop / --batch-size, never an OOM kill."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import xarray as xr
from factories import radar_dataset
from typer.testing import CliRunner

from minconv_cli.cli import app
from minconv_cli.core.errors import MinconvError
from minconv_cli.models import create_model
from minconv_cli.models.memory import step_bytes
from minconv_cli.rollout import rollout

runner = CliRunner()
TINY = ["--context", "3", "--horizon", "2", "--epochs", "1", "--width", "4"]
HPARAMS = {"name": "minconvgru", "in_channels": 1, "out_channels": 1, "widths": [16, 16]}

MEASURE = """
import json, torch
from minconv_cli.models import create_model
def rss(key):
    for line in open('/proc/self/status'):
        if line.startswith(key):
            return int(line.split()[1]) * 1024
m = create_model('{name}', 1, widths=[16, 16], norm='instance')
x = torch.randn(4, 7, 1, 64, 64)
m(x[:, :1], 1)
base = rss('VmRSS')
y = m(x[:, :-1], 3)
((y - x[:, 1:]) ** 2).mean().backward()
print(json.dumps(rss('VmHWM') - base))
"""


@pytest.fixture(scope="module")
def radar(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("data") / "radar.nc"
    radar_dataset(n_time=60, n=24, blobs=3).isel(x=slice(0, 20)).to_netcdf(path)
    return path


def error_line(result) -> str:
    assert result.exit_code == 1, result.output
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), result.stderr
    return lines[0]


def test_the_estimate_is_linear_in_batch_frames_and_grid_cells():
    one = step_bytes(HPARAMS, 1, 4, (32, 32))
    assert step_bytes(HPARAMS, 3, 4, (32, 32)) == pytest.approx(3 * one, rel=1e-6)
    assert step_bytes(HPARAMS, 1, 12, (32, 32)) == pytest.approx(3 * one, rel=1e-6)
    assert step_bytes(HPARAMS, 1, 4, (64, 48)) == pytest.approx(3 * one, rel=1e-6)
    assert step_bytes(HPARAMS, 1, 4, (32, 32), training=False) < one
    assert step_bytes(HPARAMS, 1, 4, (32, 32), precision="bf16") < one
    wider = {**HPARAMS, "widths": [32, 32]}
    assert step_bytes(wider, 1, 4, (32, 32)) > 1.8 * one


@pytest.mark.parametrize("name", ["minconvgru", "convlstm"])
def test_the_estimate_is_above_the_measured_peak_and_within_twice_it(name):
    done = subprocess.run(
        [sys.executable, "-c", MEASURE.format(name=name)],
        capture_output=True,
        text=True,
        check=True,
        env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"},
    )
    measured = json.loads(done.stdout.strip().splitlines()[-1])
    hparams = create_model(name, 1, widths=[16, 16], norm="instance").hparams
    estimate = step_bytes(hparams, 4, 6, (64, 64))
    assert measured < estimate < 2 * measured


def test_train_halves_the_batch_to_fit_and_says_so_once(radar, tmp_path):
    out = tmp_path / "run"
    args = ["train", str(radar), *TINY, "--batch-size", "8", "--out", str(out)]
    result = runner.invoke(app, [*args, "--set", "train.step_memory=1MB"])
    assert result.exit_code == 0, result.output
    said = " ".join(result.stderr.split())
    assert said.count("batch 8 -> ") == 1 and "--batch-size or --crop" in said
    summary = json.loads((out / "summary.json").read_text())
    memory = summary["step_memory"]
    assert memory["requested_batch"] == 8 and memory["batch"] < 8
    assert memory["estimate_bytes"] <= memory["room_bytes"] == 2**20


def test_train_refuses_a_step_that_does_not_fit_at_batch_one(radar, tmp_path):
    out = tmp_path / "run"
    args = ["train", str(radar), *TINY, "--batch-size", "8", "--out", str(out)]
    line = error_line(runner.invoke(app, [*args, "--set", "train.step_memory=500KB"]))
    assert "memory: a step of batch 1 on the 24x20 grid" in line
    assert "--crop 16" in line and "--batch-size 1" in line
    assert not out.exists()


def test_rollout_shrinks_its_batch_or_refuses_before_writing(radar, tmp_path):
    run = tmp_path / "run"
    result = runner.invoke(app, ["train", str(radar), *TINY, "--out", str(run)])
    assert result.exit_code == 0, result.output
    store = tmp_path / "fc.zarr"
    model = run / "model.pt"
    times = "2024-06-01T16:00/2024-06-01T17:00"
    done = rollout(model, [radar], 2, store, init_times=times, batch_size=8, step_memory=1_000_000)
    assert done.memory["batch"] < 8 and done.memory_note.startswith("batch 8 -> ")
    assert xr.open_zarr(store).sizes["time"] == 7
    with pytest.raises(MinconvError, match="rollout step of batch 1 on the 24x20 grid"):
        rollout(model, [radar], 2, tmp_path / "no.zarr", init_times=times, step_memory=1000)
    assert not (tmp_path / "no.zarr").exists()
