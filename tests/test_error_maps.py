"""`minconv evaluate --maps`: RMSE and bias per grid cell and lead over every init time, as
NetCDF and PNG, equal to hand computations; without `--maps` nothing of it is written."""

from __future__ import annotations

import json

import numpy as np
import pytest
import xarray as xr
from factories import latlon_dataset
from PIL import Image
from typer.testing import CliRunner

from minconv_cli.cli import app
from minconv_cli.evaluate.error_maps import error_maps, error_sums
from minconv_cli.maps.error_maps import shown_leads

runner = CliRunner()
INITS, LEADS = [4, 5, 6], 3


@pytest.fixture
def files(tmp_path):
    """Truth with a NaN corner and a forecast = truth at the valid time + a known error field."""
    truth = latlon_dataset(n_time=14, n_lat=6, n_lon=8, variables=("t",), nan_mask=True)
    truth.to_netcdf(tmp_path / "truth.nc")
    rng = np.random.default_rng(1)
    err = rng.normal(0.5, 2.0, (len(INITS), LEADS, 6, 8)).astype(np.float32)
    frames = np.stack([[truth.t.values[i + lead] for lead in range(1, LEADS + 1)] for i in INITS])
    store = xr.Dataset(
        {
            "t": (
                ("time", "prediction_timedelta", "latitude", "longitude"),
                frames + err,
                truth.t.attrs,
            )
        },
        coords={
            "time": truth.time.values[INITS],
            "prediction_timedelta": np.arange(1, LEADS + 1) * np.timedelta64(1, "D"),
            "latitude": truth.latitude,
            "longitude": truth.longitude,
        },
    )
    store.to_zarr(tmp_path / "fc.zarr")
    np.save(tmp_path / "err.npy", err)
    return tmp_path


def evaluate(files, *args):
    return runner.invoke(
        app,
        [
            "evaluate",
            str(files / "fc.zarr"),
            str(files / "truth.nc"),
            "--out",
            str(files / "out"),
            "--references",
            "",
            *args,
        ],
    )


def test_error_maps_equal_the_rmse_and_bias_of_each_cell_over_the_init_times(files):
    r = evaluate(files, "--maps")
    assert r.exit_code == 0, r.output
    err = np.load(files / "err.npy").astype(np.float64)  # (init, lead, y, x)
    truth = xr.open_dataset(files / "truth.nc").t.values
    land = np.isnan(truth[0])
    with xr.open_dataset(files / "out" / "error_maps.nc") as maps:
        rmse = maps["t_rmse"].sel(forecast="fc").values
        bias = maps["t_bias"].sel(forecast="fc").values
        count = maps["t_count"].sel(forecast="fc").values
        assert maps["t_rmse"].attrs["units"] == "K"
        assert list(maps["lead_label"].values) == ["P1D", "P2D", "P3D"]
        assert maps["latitude"].size == 6 and maps["longitude"].size == 8
    want_rmse, want_bias = np.sqrt((err**2).mean(axis=0)), err.mean(axis=0)
    sea = ~land
    np.testing.assert_allclose(rmse[:, sea], want_rmse[:, sea], atol=1e-4)  # float32 K
    np.testing.assert_allclose(bias[:, sea], want_bias[:, sea], atol=1e-4)
    assert np.isnan(rmse[:, land]).all() and (count[:, land] == 0).all()
    assert (count[:, sea] == len(INITS)).all()


def test_the_error_map_picture_has_rmse_and_bias_panels_that_differ(files):
    assert evaluate(files, "--maps").exit_code == 0
    png = Image.open(files / "out" / "error_maps.png").convert("RGB")
    width, height = png.size
    assert width > 300 and height > 400  # 3 leads x 2 columns of panels
    pixels = np.asarray(png, dtype=int)
    left, right = pixels[:, : width // 2], pixels[:, width // 2 :]
    assert np.abs(left.mean(axis=(0, 1)) - right.mean(axis=(0, 1))).max() > 3  # two colour maps


def test_without_maps_no_error_map_is_written_and_old_ones_need_overwrite(files):
    assert evaluate(files).exit_code == 0
    assert not (files / "out" / "error_maps.nc").exists()
    for old in (files / "out").iterdir():
        old.unlink()
    (files / "out" / "error_maps.nc").write_text("old")  # only an error map is there
    r = evaluate(files, "--maps")
    assert r.exit_code != 0 and "error_maps.nc" in r.output and "--overwrite" in r.output
    assert (files / "out" / "error_maps.nc").read_text() == "old"
    r = evaluate(files, "--maps", "--overwrite", "--json")
    assert r.exit_code == 0 and json.loads(r.stdout)
    xr.open_dataset(files / "out" / "error_maps.nc").close()


def test_an_ensemble_is_mapped_by_its_mean_and_empty_cells_are_nan():
    truth = xr.DataArray([[1.0, np.nan], [2.0, 4.0]], dims=("time", "x"))
    members = xr.DataArray(
        [[[2.0, 1.0], [4.0, 0.0]], [[0.0, 1.0], [2.0, 0.0]]], dims=("number", "time", "x")
    )  # member means: [1, 1], [3, 0] -> errors [0, NaN], [1, -4]
    maps = error_maps(error_sums(members, truth, ["time"]))
    np.testing.assert_allclose(maps["bias"].values, [0.5, -4.0])
    np.testing.assert_allclose(maps["rmse"].values, [np.sqrt(0.5), 4.0])
    assert maps["count"].values.tolist() == [2, 1]
    empty = error_maps(error_sums(truth * np.nan, truth, ["time"]))
    assert np.isnan(empty["rmse"].values).all() and empty["count"].values.tolist() == [0, 0]


def test_the_picture_shows_the_first_and_last_lead_and_at_most_four():
    assert shown_leads(1) == [0] and shown_leads(3) == [0, 1, 2]
    assert shown_leads(12) == [0, 4, 7, 11]
