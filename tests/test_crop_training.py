"""Training on random crops of a large grid (`--crop`), forecasting the whole grid afterwards."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import xarray as xr
import yaml
from factories import radar_dataset
from typer.testing import CliRunner

from minconv_cli.cli import app
from minconv_cli.core.errors import MinconvError
from minconv_cli.data import Normalizer
from minconv_cli.training.crop import Cropper, crop_model_options
from minconv_cli.training.crop_keys import parse_crop

runner = CliRunner()
TINY = ["--context", "3", "--horizon", "2", "--epochs", "1", "--batch-size", "4", "--width", "4"]
IDENTITY = Normalizer(["rain"], [0.0], [1.0])


@pytest.fixture(scope="module")
def radar(tmp_path_factory) -> Path:
    """A 24x20 radar-like day whose grid is marked periodic (so `auto` padding is circular)."""
    ds = radar_dataset(n_time=60, n=24, blobs=3).isel(x=slice(0, 20))
    ds.attrs["periodic_dims"] = "y x"
    path = tmp_path_factory.mktemp("data") / "radar.nc"
    ds.to_netcdf(path)
    return path


def batch_of(x: np.ndarray) -> dict:
    """A batch as the loader gives it: x and mask (B, T, C, H, W), no statics."""
    t = torch.from_numpy(x.astype(np.float32))
    b = t.shape[0]
    return {
        "x": t,
        "mask": torch.ones_like(t),
        "static": torch.zeros(b, 0, *t.shape[-2:]),
        "sample": torch.zeros(b, dtype=torch.int64),
        "start": torch.arange(b, dtype=torch.int64),
    }


def error_line(result) -> str:
    assert result.exit_code == 1, result.output
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), result.stderr
    return lines[0]


def test_crop_option_reads_n_and_h_by_w():
    assert parse_crop("128") == [128]
    assert parse_crop("128x96") == [128, 96]
    assert parse_crop(None) is None
    for bad in ("0", "12x", "axb", "1x2x3"):
        with pytest.raises(MinconvError, match="--crop"):
            parse_crop(bad)


def test_crops_are_inside_the_grid_reproducible_and_differ_between_steps():
    grid = np.arange(6 * 30 * 40, dtype=np.float32).reshape(1, 6, 1, 30, 40)
    batch = batch_of(np.repeat(grid, 4, axis=0))
    cropper = Cropper((8, 12), seed=3, keep=1.0, threshold=0.1, normalizer=IDENTITY)
    cut = cropper.train(batch, step=5, rank=0, context=3)
    assert cut["x"].shape == (4, 6, 1, 8, 12) and cut["mask"].shape == (4, 6, 1, 8, 12)
    for b, (i, j) in enumerate(cropper.corners(batch, 5, 0, 3)):
        assert 0 <= i <= 30 - 8 and 0 <= j <= 40 - 12
        assert torch.equal(cut["x"][b], batch["x"][b, :, :, i : i + 8, j : j + 12])
    again = Cropper((8, 12), seed=3, keep=1.0, threshold=0.1, normalizer=IDENTITY)
    assert again.corners(batch, 5, 0, 3) == cropper.corners(batch, 5, 0, 3)
    assert cropper.corners(batch, 6, 0, 3) != cropper.corners(batch, 5, 0, 3)
    assert len(set(cropper.corners(batch, 5, 0, 3))) > 1  # windows of a batch differ too
    assert cropper.validation_corners(batch) == cropper.validation_corners(batch)


def test_dry_crops_are_redrawn_when_keep_is_zero():
    rain = np.zeros((16, 6, 1, 32, 32), dtype=np.float32)
    rain[..., :8, :8] = 5.0  # wet only in one corner: 1/16 of the grid
    batch = batch_of(rain)

    def wet_share(keep: float) -> float:
        cropper = Cropper((8, 8), seed=0, keep=keep, threshold=0.1, normalizer=IDENTITY)
        corners = [c for step in range(8) for c in cropper.corners(batch, step, 0, 3)]
        return float(np.mean([i < 8 and j < 8 for i, j in corners]))

    assert wet_share(0.0) > 0.6
    assert wet_share(1.0) < 0.25


def test_whole_grid_norm_and_periodic_padding_are_switched_or_refused():
    assert crop_model_options("auto", "auto", "circular", False)[:2] == ("none", "zeros")
    assert crop_model_options("group", "zeros", "circular", False)[:2] == ("group", "zeros")
    for norm, padding, peep in (("layer", "auto", False), ("auto", "cylinder", False)):
        with pytest.raises(MinconvError):
            crop_model_options(norm, padding, "zeros", peep)
    with pytest.raises(MinconvError, match="peepholes"):
        crop_model_options("auto", "auto", "zeros", True)


def test_train_on_crops_then_rollout_forecasts_the_whole_grid(radar, tmp_path):
    run = tmp_path / "run"
    result = runner.invoke(app, ["train", str(radar), *TINY, "--crop", "8", "--out", str(run)])
    assert result.exit_code == 0, result.output
    said = " ".join(result.stderr.split())
    assert said.count("crop: norm auto -> none") == 1
    assert "padding circular -> zeros" in said and "random 8x8 crops of the 24x20 grid" in said
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["model"]["norm"] == "none" and config["model"]["padding"] == "zeros"
    assert config["train"]["crop"] == [8]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["crop"] == [8, 8] and summary["step_memory"]["grid"] == [8, 8]
    store = tmp_path / "fc.zarr"
    args = ["rollout", str(run / "model.pt"), str(radar), "--steps", "2", "--out", str(store)]
    result = runner.invoke(app, [*args, "--init-times", "2024-06-01T16:00/2024-06-01T17:00"])
    assert result.exit_code == 0, result.output
    forecast = xr.open_zarr(store)
    assert forecast.sizes["y"] == 24 and forecast.sizes["x"] == 20
    assert bool(np.isfinite(forecast["precip"].values).all())


def test_bad_crops_are_one_line_and_write_nothing(radar, tmp_path):
    out = tmp_path / "run"
    cases = [
        (["--crop", "30"], "--crop 30x30: larger than the 24x20 grid"),
        (["--crop", "8", "--norm", "layer"], "--norm layer"),
        (["--crop", "8", "--set", "model.padding=circular"], "model.padding circular"),
        (["--crop", "8", "--crop-dry-keep", "2"], "crop_dry_keep"),
    ]
    for extra, words in cases:
        result = runner.invoke(app, ["train", str(radar), *TINY, *extra, "--out", str(out)])
        assert words in error_line(result)
        assert not out.exists()


def test_a_resumed_crop_run_draws_the_same_crops_as_an_uninterrupted_one(radar, tmp_path):
    args = [*TINY, "--crop", "8", "--crop-dry-keep", "0.3", "--set", "optim.schedule=none"]

    def train(out: Path, *extra: str) -> None:
        result = runner.invoke(app, ["train", str(radar), *args, "--out", str(out), *extra])
        assert result.exit_code == 0, result.output

    train(tmp_path / "whole", "--epochs", "2")
    train(tmp_path / "split", "--epochs", "1")
    train(tmp_path / "split", "--epochs", "2", "--resume")
    whole, split = (torch.load(tmp_path / r / "last.pt")["state_dict"] for r in ("whole", "split"))
    assert all(torch.equal(whole[k], split[k]) for k in whole)
