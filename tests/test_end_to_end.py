"""The whole pipeline on the bundled Navier-Stokes sample: train -> rollout -> evaluate, via the CLI."""

import json

import numpy as np
import pytest
import xarray as xr
from typer.testing import CliRunner

from minconv_cli.cli import app
from minconv_cli.data.sample import sample_path

runner = CliRunner()


def invoke(*args: str) -> dict:
    result = runner.invoke(app, [*args, "--json", "--quiet"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    """A small model trained on a few sample trajectories, rolled out on the test split, scored."""
    tmp = tmp_path_factory.mktemp("e2e")
    data = str(sample_path())
    summary = invoke(
        "train", data, "--model", "minconvgru", "--width", "8", "--layers", "1",
        "--context", "5", "--horizon", "3", "--epochs", "1", "--batch-size", "8",
        "--train-period", "trajectory=0:16", "--val-period", "split=val",
        "--set", "data.stride=5", "--out", str(tmp / "run"),
    )  # fmt: skip
    forecast = tmp / "forecast.zarr"
    rollout = invoke(
        "rollout", str(tmp / "run" / "model.pt"), data, "--steps", "6", "--context", "5",
        "--subset", "split=test", "--out", str(forecast),
    )  # fmt: skip
    scores = invoke("evaluate", str(forecast), data, "--out", str(tmp / "scores"))
    return {
        "tmp": tmp,
        "summary": summary,
        "rollout": rollout,
        "scores": scores,
        "forecast": forecast,
    }


def records_of(scores):
    return scores["records"] if isinstance(scores, dict) else scores


def test_training_writes_a_checkpoint_rollout_can_use(pipeline):
    assert (pipeline["tmp"] / "run" / "model.pt").exists()
    assert pipeline["summary"]["model"] == "minconvgru"


def test_forecast_covers_every_test_trajectory_at_every_lead(pipeline):
    truth = xr.open_dataset(sample_path())
    forecast = xr.open_zarr(pipeline["forecast"])
    n_test = int((truth["split"] == "test").sum())
    assert forecast["vorticity"].sizes["trajectory"] == n_test
    assert forecast["vorticity"].sizes["prediction_timedelta"] == 6
    assert np.isfinite(forecast["vorticity"].values).all()
    # valid time = init + lead lands on the truth's time axis (numeric simulation time)
    valid = forecast["time"].values[:, None] + forecast["prediction_timedelta"].values[None, :]
    assert np.isin(valid, truth["time"].values).all()


def test_model_and_references_are_scored_in_one_run(pipeline):
    records = records_of(pipeline["scores"])
    forecasts = {r["forecast"] for r in records}
    assert {"persistence", "climatology"} <= forecasts
    assert len(forecasts - {"persistence", "climatology"}) == 1
    rmse = [
        r
        for r in records
        if r["metric"] == "rmse" and r["forecast"] not in ("persistence", "climatology")
    ]
    assert len(rmse) == 6 and all(r["value"] > 0 for r in rmse)
    on_disk = json.loads((pipeline["tmp"] / "scores" / "scores.json").read_text())
    assert records_of(on_disk) == records


def test_the_plot_is_a_png(pipeline):
    png = pipeline["tmp"] / "scores" / "scores.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert png.stat().st_size > 10_000
