"""`minconv evaluate`: alignment, references, scores and reports on real Zarr stores and NetCDF truth."""

import json

import numpy as np
import pandas as pd
import pytest
import xarray as xr
from factories import latlon_dataset, trajectory_dataset
from typer.testing import CliRunner

from minconv_cli.cli import app
from minconv_cli.core.errors import MinconvError
from minconv_cli.data import open_fields
from minconv_cli.evaluate import align, evaluate, open_forecast

runner = CliRunner()
DAY = np.timedelta64(1, "D")


def wb2_forecast(truth: xr.Dataset, init_idx, n_leads: int, first_lead: int = 0) -> xr.Dataset:
    """A WeatherBench 2 forecast store whose frame (init, lead) is the truth at init + lead (perfect)."""
    init = truth.time.values[list(init_idx)]
    leads = np.arange(first_lead, first_lead + n_leads) * DAY
    data = {}
    for v in truth.data_vars:
        frames = [truth[v].sel(time=init + lead).values for lead in leads]
        data[v] = (
            ("time", "prediction_timedelta", "latitude", "longitude"),
            np.stack(frames, axis=1),
            truth[v].attrs,
        )
    coords = {
        "time": init,
        "prediction_timedelta": leads,
        "latitude": truth.latitude,
        "longitude": truth.longitude,
    }
    return xr.Dataset(data, coords=coords)


def day_encoded_truth(n_time: int = 20) -> xr.Dataset:
    """Truth whose every cell holds the day number of its time: a frame says which time it is."""
    ds = latlon_dataset(n_time=n_time, n_lat=4, n_lon=6, variables=("z",))
    days = np.arange(n_time, dtype=np.float32)[:, None, None]
    return ds.assign(z=ds.z.copy(data=np.broadcast_to(days, ds.z.shape).copy()))


def records_of(records, forecast, metric, variable="z"):
    """{lead: value} of the records of one forecast, metric and variable."""
    return {
        r["lead"]: r["value"]
        for r in records
        if r["forecast"] == forecast and r["metric"] == metric and r["variable"] == variable
    }


def clim_file(tmp_path, clim: xr.Dataset):
    path = tmp_path / "clim.nc"
    clim.to_netcdf(path)
    return path


def test_alignment_selects_the_truth_frame_at_init_plus_lead_and_reports_the_overlap(tmp_path):
    truth = day_encoded_truth(20)
    truth.to_netcdf(tmp_path / "truth.nc")
    fc = wb2_forecast(day_encoded_truth(30), init_idx=[5, 6, 17, 18], n_leads=4)  # runs past day 19
    fc.to_zarr(tmp_path / "fc.zarr")
    aligned = align(open_forecast(tmp_path / "fc.zarr"), open_fields(tmp_path / "truth.nc"), True)
    got = aligned.truth["z"].isel(latitude=0, longitude=0).values
    expect = np.array([[5, 6, 7, 8], [6, 7, 8, 9], [17, 18, 19, np.nan], [18, 19, np.nan, np.nan]])
    np.testing.assert_array_equal(got, expect)
    persistence = aligned.persistence["z"].isel(latitude=0, longitude=0).values
    np.testing.assert_array_equal(persistence, [5, 6, 17, 18])
    assert aligned.overlap["cases"] == 13 and aligned.overlap["of_cases"] == 16
    assert aligned.overlap["valid_times"]["last"] == str(truth.time.values[19])[:19]


def test_perfect_forecast_scores_zero_and_acc_one_persistence_is_exact_at_lead_zero(tmp_path):
    truth = latlon_dataset(n_time=30, n_lat=4, n_lon=8, variables=("z", "t"), nan_mask=True)
    truth.to_netcdf(tmp_path / "truth.nc")
    wb2_forecast(truth, init_idx=range(10, 20), n_leads=4).to_zarr(tmp_path / "fc.zarr")
    clim = clim_file(tmp_path, truth.isel(time=slice(0, 10)).mean("time"))
    scores = evaluate(tmp_path / "fc.zarr", tmp_path / "truth.nc", climatology=clim)
    rec = scores.records
    for v in ("z", "t"):
        assert all(x == 0.0 for x in records_of(rec, "fc", "rmse", v).values())
        assert records_of(rec, "fc", "acc", v) == pytest.approx(
            dict.fromkeys(["PT0H", "P1D", "P2D", "P3D"], 1.0)
        )
        assert records_of(rec, "persistence", "rmse", v)["PT0H"] == 0.0
    # persistence at lead 2 days: the truth at init held fixed, cos(latitude)-weighted, NaN cells out
    z = truth.z.values.astype(np.float64)
    err = z[12:22] - z[10:20]
    w = np.broadcast_to(np.cos(np.deg2rad(truth.latitude.values))[None, :, None], err.shape)
    ok = ~np.isnan(err)
    expect = np.sqrt((w[ok] * err[ok] ** 2).sum() / w[ok].sum())
    assert records_of(rec, "persistence", "rmse")["P2D"] == pytest.approx(expect, rel=1e-5)
    skill = records_of(rec, "fc", "skill_vs_persistence")
    assert skill["PT0H"] is None and skill["P1D"] == 1.0
    assert any("skill_vs_persistence" in n and "PT0H" in n for n in scores.notes)


def test_a_store_scored_lazily_block_by_block_gives_the_in_memory_scores(tmp_path):
    truth = latlon_dataset(n_time=30, n_lat=4, n_lon=8, variables=("z",), nan_mask=True)
    truth.to_netcdf(tmp_path / "truth.nc")
    fc = wb2_forecast(truth, init_idx=range(10, 20), n_leads=4)
    (fc + np.random.default_rng(1).normal(0, 50, fc.z.shape)).astype(np.float32).to_zarr(
        tmp_path / "fc.zarr"
    )
    kw = {"climatology": clim_file(tmp_path, truth.isel(time=slice(0, 10)).mean("time"))}
    in_memory = evaluate(tmp_path / "fc.zarr", tmp_path / "truth.nc", **kw)
    lazy = evaluate(tmp_path / "fc.zarr", tmp_path / "truth.nc", load_below=0, **kw)
    np.testing.assert_allclose(lazy.table.values, in_memory.table.values, rtol=1e-6)
    assert np.isfinite(in_memory.table.sel(forecast="fc").values).sum() > 20


def test_acc_of_the_climatology_is_undefined_and_of_opposite_anomalies_is_minus_one(tmp_path):
    truth = latlon_dataset(n_time=20, n_lat=4, n_lon=8, variables=("z",))
    truth.to_netcdf(tmp_path / "truth.nc")
    clim = truth.mean("time")
    perfect = wb2_forecast(truth, init_idx=range(5, 10), n_leads=3)
    perfect.to_zarr(tmp_path / "fc.zarr")
    (clim.z.astype(np.float32) + 0 * perfect.z).to_dataset().to_zarr(tmp_path / "clim.zarr")
    (2 * clim.z - perfect.z).astype(np.float32).to_dataset().to_zarr(tmp_path / "opposite.zarr")
    scores = evaluate(
        tmp_path / "fc.zarr",
        tmp_path / "truth.nc",
        compare=[f"clim={tmp_path / 'clim.zarr'}", str(tmp_path / "opposite.zarr")],
        climatology=clim_file(tmp_path, clim),
    )
    assert set(records_of(scores.records, "clim", "acc").values()) == {None}
    note = [r["note"] for r in scores.records if r["forecast"] == "clim" and r["metric"] == "acc"]
    assert all("undefined" in n for n in note)
    assert records_of(scores.records, "opposite", "acc") == pytest.approx(
        dict.fromkeys(["PT0H", "P1D", "P2D"], -1.0), abs=1e-6
    )
    # the climatology reference equals the forecast `clim`, so its scores do too
    assert records_of(scores.records, "climatology", "rmse") == pytest.approx(
        records_of(scores.records, "clim", "rmse"), rel=1e-5
    )


def test_climatology_from_the_truth_is_the_mean_by_day_of_year_over_the_period(tmp_path):
    truth = latlon_dataset(n_time=3 * 365 + 20, n_lat=2, n_lon=4, variables=("z",))
    t = pd.DatetimeIndex(truth.time.values)
    value = (t.day_of_year + 1000 * (t.year - 2000)).to_numpy(np.float32)[:, None, None]
    truth = truth.assign(z=truth.z.copy(data=np.broadcast_to(value, truth.z.shape).copy()))
    truth.to_netcdf(tmp_path / "truth.nc")
    init = np.flatnonzero(t.year == 2002)[100:110]
    wb2_forecast(truth, init_idx=init, n_leads=3).to_zarr(tmp_path / "fc.zarr")
    scores = evaluate(
        tmp_path / "fc.zarr",
        tmp_path / "truth.nc",
        references="climatology",
        climatology_period="2000-01-01/2001-12-31",
    )
    # climatology at day d = mean of d + 0 and d + 1000; the 2002 truth is d + 2000
    rmse = records_of(scores.records, "climatology", "rmse")
    assert rmse == pytest.approx(dict.fromkeys(["PT0H", "P1D", "P2D"], 1500.0))
    with pytest.raises(MinconvError, match="no climatology for"):
        evaluate(
            tmp_path / "fc.zarr",
            tmp_path / "truth.nc",
            climatology_period="2000-01-01/2000-02-28",
        )


def test_grids_match_by_coordinates_whatever_the_latitude_order_and_dim_names(tmp_path):
    truth = latlon_dataset(n_time=12, n_lat=4, n_lon=6, variables=("t",), lat_descending=True)
    wb2_forecast(truth, init_idx=[2, 3], n_leads=3).to_zarr(tmp_path / "fc.zarr")
    flipped = truth.isel(latitude=slice(None, None, -1)).rename(latitude="lat", longitude="lon")
    flipped.to_netcdf(tmp_path / "truth.nc")
    scores = evaluate(tmp_path / "fc.zarr", tmp_path / "truth.nc", references="persistence")
    assert set(records_of(scores.records, "fc", "rmse", "t").values()) == {0.0}


def test_numeric_time_trajectories_are_scored_with_a_mean_climatology(tmp_path):
    truth = trajectory_dataset(n_traj=3, n_time=12, n=8)
    truth.to_netcdf(tmp_path / "truth.nc")
    init = np.array([4.0, 6.0])
    leads = np.array([1.0, 2.0, 3.0])
    w = truth.vorticity
    frames = np.stack(
        [np.stack([w.sel(time=i + lead).values for lead in leads], axis=0) for i in init]
    )  # (time, lead, trajectory, y, x)
    fc = xr.Dataset(
        {"vorticity": (("time", "prediction_timedelta", "trajectory", "y", "x"), frames + 0.1)},
        coords={
            "time": init,
            "prediction_timedelta": leads,
            "trajectory": truth.trajectory,
            "y": truth.y,
            "x": truth.x,
        },
    )
    fc.to_zarr(tmp_path / "fc.zarr")
    scores = evaluate(tmp_path / "fc.zarr", tmp_path / "truth.nc")
    assert records_of(scores.records, "fc", "rmse", "vorticity") == pytest.approx(
        {"1": 0.1, "2": 0.1, "3": 0.1}, rel=1e-4
    )
    assert records_of(scores.records, "fc", "bias", "vorticity")["2"] == pytest.approx(
        0.1, rel=1e-4
    )
    assert {r["lead_hours"] for r in scores.records} == {None}
    clim = w.mean(["trajectory", "time"])
    expect = float(np.sqrt(((clim - w.sel(time=[6.0, 8.0])) ** 2).mean()))
    assert records_of(scores.records, "climatology", "rmse", "vorticity")["2"] == pytest.approx(
        expect, rel=1e-5
    )


def test_unfinished_rollout_sequences_are_left_out(tmp_path):
    truth = latlon_dataset(n_time=12, n_lat=4, n_lon=6, variables=("z",))
    truth.to_netcdf(tmp_path / "truth.nc")
    fc = wb2_forecast(truth, init_idx=[2, 3, 4], n_leads=2)
    fc["z"][2] = np.nan  # a rollout store's unwritten chunk
    fc = fc.assign_coords(minconv_done=("time", [True, True, False]))
    fc.to_zarr(tmp_path / "fc.zarr")
    scores = evaluate(tmp_path / "fc.zarr", tmp_path / "truth.nc", references="persistence")
    assert set(records_of(scores.records, "fc", "rmse").values()) == {0.0}
    assert any("1 of 3 forecast sequences are unfinished" in n for n in scores.notes)


def test_cli_writes_json_csv_netcdf_and_png_and_refuses_to_overwrite(tmp_path):
    truth = latlon_dataset(n_time=20, n_lat=4, n_lon=8, variables=("z", "t"))
    truth.to_netcdf(tmp_path / "truth.nc")
    fc = wb2_forecast(truth, init_idx=range(5, 12), n_leads=3, first_lead=1)
    fc.to_zarr(tmp_path / "fc.zarr")
    (fc + 1.0).to_zarr(tmp_path / "warm.zarr")
    args = ["evaluate", str(tmp_path / "fc.zarr"), str(tmp_path / "truth.nc"),
            "--compare", str(tmp_path / "warm.zarr"), "--metrics", "rmse,bias,acc",
            "--climatology", str(clim_file(tmp_path, truth.mean("time")))]  # fmt: skip
    result = runner.invoke(app, [*args, "--json", "--quiet"])
    assert result.exit_code == 0, result.output
    out = tmp_path / "fc_scores"
    records = json.loads((out / "scores.json").read_text())
    assert json.loads(result.stdout) == records
    # 4 forecasts (fc, warm, persistence, climatology) x 2 variables x 3 leads x 3 metrics, plus skill
    # against the 2 references for fc and warm, and against the other reference for each reference
    assert len(records) == 4 * 2 * 3 * 3 + (2 * 2 + 2) * 2 * 3
    assert set(records[0]) == {
        "forecast",
        "variable",
        "lead",
        "lead_hours",
        "metric",
        "value",
        "note",
    }
    warm_bias = records_of(records, "warm", "bias", "t")
    assert warm_bias == pytest.approx({"P1D": 1.0, "P2D": 1.0, "P3D": 1.0}, rel=1e-5)
    assert {r["lead_hours"] for r in records} == {24.0, 48.0, 72.0}
    csv = pd.read_csv(out / "scores.csv")
    assert len(csv) == len(records) and list(csv.columns)[:6] == [
        "forecast", "variable", "lead", "lead_hours", "metric", "value"]  # fmt: skip
    nc = xr.open_dataset(out / "scores.nc")
    assert nc.score.dims == ("forecast", "metric", "variable", "lead")
    assert list(nc.forecast.values) == ["fc", "warm", "persistence", "climatology"]
    assert float(nc.score.sel(forecast="warm", metric="bias", variable="t").isel(lead=0)) == (
        pytest.approx(1.0, rel=1e-5)
    )
    nc.close()
    assert (out / "scores.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    before = (out / "scores.json").read_text()
    again = runner.invoke(app, args)
    assert again.exit_code == 1 and "--overwrite" in again.output
    assert (out / "scores.json").read_text() == before
    plot = tmp_path / "plots" / "errors.png"
    third = runner.invoke(app, [*args, "--overwrite", "--plot", str(plot)])
    assert third.exit_code == 0, third.output
    assert plot.exists() and "scores" in third.output  # the table on the terminal


def _truth_and_forecast(tmp_path):
    truth = latlon_dataset(n_time=15, n_lat=4, n_lon=6, variables=("z",))
    truth.to_netcdf(tmp_path / "truth.nc")
    return truth, wb2_forecast(truth, init_idx=[3, 4], n_leads=2)


def _no_wb2_dims(tmp_path):
    truth, _ = _truth_and_forecast(tmp_path)
    truth.to_zarr(tmp_path / "fc.zarr")


def _variable_missing(tmp_path):
    _, fc = _truth_and_forecast(tmp_path)
    fc.rename(z="q").to_zarr(tmp_path / "fc.zarr")


def _grid_mismatch(tmp_path):
    _, fc = _truth_and_forecast(tmp_path)
    fc.assign_coords(longitude=fc.longitude + 2.5).to_zarr(tmp_path / "fc.zarr")


def _no_overlap(tmp_path):
    _, fc = _truth_and_forecast(tmp_path)
    fc.assign_coords(time=fc.time + np.timedelta64(365, "D")).to_zarr(tmp_path / "fc.zarr")


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (_no_wb2_dims, "WeatherBench 2 layout"),
        (_variable_missing, "variable 'q' not found"),
        (_grid_mismatch, "grids do not match along 'longitude'"),
        (_no_overlap, "no overlapping times"),
    ],
)
def test_bad_input_is_one_line_and_a_non_zero_exit(tmp_path, make, message):
    make(tmp_path)
    result = runner.invoke(app, ["evaluate", str(tmp_path / "fc.zarr"), str(tmp_path / "truth.nc")])
    assert result.exit_code == 1, result.output
    lines = [ln for ln in result.output.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0], result.output
    assert not (tmp_path / "fc_scores").exists()


def test_unknown_metric_is_refused(tmp_path):
    _, fc = _truth_and_forecast(tmp_path)
    fc.to_zarr(tmp_path / "fc.zarr")
    result = runner.invoke(
        app, ["evaluate", str(tmp_path / "fc.zarr"), str(tmp_path / "truth.nc"), "-m", "rmse,crps"]
    )
    assert result.exit_code == 1 and "--metrics: unknown crps" in result.output
