"""Monthly data and cftime calendars, end to end: a monthly SST-like file (month-start, month-end or
mid-month stamps, NaN land; standard calendar or cftime `noleap`) trains, rolls out with valid
times exactly N calendar months after each init time, and is scored with a climatology by month."""

import json
import warnings

import numpy as np
import pandas as pd
import pytest
import xarray as xr
from factories import latlon_dataset, monthly_dataset
from typer.testing import CliRunner

from minconv_cli.cli import app
from minconv_cli.core.errors import MinconvError
from minconv_cli.data import WindowDataset, open_fields, split_fields
from minconv_cli.data.normalize import Normalizer
from minconv_cli.data.timeaxis import CalendarStep, shift

runner = CliRunner()
TRAIN = ["--train-period", "1970-01-01/1971-12-31", "--val-period", "1972-01-01/1972-12-31"]


def invoke(*args: str) -> dict:
    result = runner.invoke(app, [*args, "--json", "--quiet"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


@pytest.mark.parametrize(
    ("calendar", "stamp", "label"),
    [
        ("standard", "start", "P1M"),
        ("noleap", "start", "P1M"),
        ("360_day", "start", "P1M"),
        ("noleap", "mid", "P1M mid"),
        ("standard", "mid", "P1M mid"),
        ("standard", "end", "P1M end-P1DT0H0M0S"),
    ],
)
def test_monthly_stamps_are_one_calendar_month_apart(tmp_path, calendar, stamp, label):
    monthly_dataset(n_months=30, calendar=calendar, stamp=stamp).to_netcdf(tmp_path / "m.nc")
    fields = open_fields(tmp_path / "m.nc")
    assert fields.time_is_datetime
    assert isinstance(fields.time_step, CalendarStep) and fields.time_step.label() == label
    assert fields.segments == [(0, 30)]
    assert len(WindowDataset(fields, 12, Normalizer.fit(fields))) == 30 - 12 + 1


def test_a_missing_month_is_a_gap(tmp_path):
    ds = monthly_dataset(n_months=24, calendar="noleap")
    ds.isel(time=[i for i in range(24) if i != 10]).to_netcdf(tmp_path / "gap.nc")
    fields = open_fields(tmp_path / "gap.nc")
    assert fields.time_step == CalendarStep("month") and fields.segments == [(0, 10), (10, 23)]


def test_yearly_means_step_by_a_year(tmp_path):
    ds = latlon_dataset(n_time=12, freq="YS", start="1990-01-01")
    ds.to_netcdf(tmp_path / "y.nc")
    fields = open_fields(tmp_path / "y.nc")
    assert fields.time_step == CalendarStep("year") and fields.segments == [(0, 12)]


def test_daily_360_day_calendar_keeps_a_fixed_step(tmp_path):
    ds = monthly_dataset(n_months=40)
    ds = ds.assign_coords(
        time=xr.date_range("2000-02-25", periods=40, freq="D", calendar="360_day", use_cftime=True)
    )
    ds.to_netcdf(tmp_path / "d.nc")
    fields = open_fields(tmp_path / "d.nc")
    assert fields.time_step == np.timedelta64(1, "D") and fields.segments == [(0, 40)]
    assert str(fields.times[5]) == "2000-02-30 00:00:00"  # 360_day has a 30 February
    part = split_fields(fields, "2000-03-01/2000-03-30")
    assert part.n_times == 30


@pytest.fixture(scope="module", params=["standard", "noleap"])
def monthly_run(request, tmp_path_factory):
    """Train -> rollout -> evaluate through the CLI on 4 years of monthly SST, one calendar each."""
    calendar = request.param
    tmp = tmp_path_factory.mktemp(f"monthly_{calendar}")
    data = tmp / "sst.nc"
    monthly_dataset(n_months=48, calendar=calendar).to_netcdf(data)
    invoke(
        "train", str(data), "--model", "minconvgru", "--width", "4", "--layers", "1",
        "--context", "4", "--horizon", "2", "--epochs", "1", "--batch-size", "8",
        *TRAIN, "--out", str(tmp / "run"),
    )  # fmt: skip
    forecast = tmp / "fc.zarr"
    rollout = invoke(
        "rollout", str(tmp / "run" / "model.pt"), str(data), "--steps", "5",
        "--init-times", "1973-01-01/1973-12-31/3M", "--out", str(forecast),
    )  # fmt: skip
    scores = invoke("evaluate", str(forecast), str(data), "--out", str(tmp / "scores"))
    return {"calendar": calendar, "data": data, "forecast": forecast, "rollout": rollout,
            "scores": scores, "tmp": tmp}  # fmt: skip


def test_checkpoint_records_the_calendar_step(monthly_run):
    from minconv_cli.models.checkpoint import read_checkpoint

    _, meta = read_checkpoint(monthly_run["tmp"] / "run" / "model.pt")
    assert meta["time_step"] == "P1M"
    want = "noleap" if monthly_run["calendar"] == "noleap" else "proleptic_gregorian"
    assert meta["time_calendar"] == want


def test_init_times_stride_in_months(monthly_run):
    assert monthly_run["rollout"]["init_times"] == [
        "1973-01-01T00:00:00",
        "1973-04-01T00:00:00",
        "1973-07-01T00:00:00",
        "1973-10-01T00:00:00",
    ]


def test_store_opens_without_warnings_and_valid_times_are_init_plus_n_months(monthly_run):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fc = xr.open_zarr(monthly_run["forecast"])
    lead = fc["prediction_timedelta"]
    assert lead.values.tolist() == [1, 2, 3, 4, 5] and lead.attrs["units"] == "months"
    init = fc["time"].values
    valid = fc["valid_time"].values
    assert valid.shape == (4, 5)
    if monthly_run["calendar"] == "noleap":
        assert fc["time"].encoding["calendar"] == "noleap"
        index = xr.CFTimeIndex(init)
        for n in range(1, 6):
            assert list(valid[:, n - 1]) == list(index.shift(n, "MS"))
    else:
        for n in range(1, 6):
            expect = (pd.DatetimeIndex(init) + pd.DateOffset(months=n)).values
            np.testing.assert_array_equal(valid[:, n - 1], expect)
    # e.g. 1973-10-01 + 5 months = 1974-03-01 (crossing a year end and February)
    assert str(valid[-1, -1])[:10] == "1974-03-01"
    sst = fc["sst"].values
    assert np.isnan(sst[:, :, :2, :4]).all() and np.isfinite(sst[:, :, 2:, 4:]).all()


def test_scores_have_month_leads_and_a_climatology_by_month(monthly_run):
    records = monthly_run["scores"]
    leads = sorted({r["lead"] for r in records}, key=lambda s: int(s[1:-1]))
    assert leads == ["P1M", "P2M", "P3M", "P4M", "P5M"]
    acc = {r["lead"]: r["value"] for r in records if r["metric"] == "acc" and r["forecast"] == "fc"}
    assert all(v is not None and -1 <= v <= 1 for v in acc.values())
    clim_rmse = [
        r["value"] for r in records if r["forecast"] == "climatology" and r["metric"] == "rmse"
    ]
    assert all(v is not None and v > 0 for v in clim_rmse)
    with xr.open_dataset(monthly_run["tmp"] / "scores" / "scores.nc") as table:
        overlap = json.loads(table.attrs["overlap"])[0]
        assert table["lead"].attrs["units"] == "months"
    assert (overlap["leads"]["first"], overlap["leads"]["last"]) == ("P1M", "P5M")
    assert overlap["cases"] == 4 * 5 - 3  # the truth ends 1973-12: 1974-01..03 are not scored


def test_a_day_stride_on_monthly_data_is_one_clear_error(monthly_run, tmp_path):
    out = tmp_path / "fc.zarr"
    result = runner.invoke(
        app,
        [
            "rollout", str(monthly_run["tmp"] / "run" / "model.pt"), str(monthly_run["data"]),
            "--steps", "2", "--init-times", "1973-01-01/1973-12-31/7D", "--out", str(out),
        ],
    )  # fmt: skip
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "stride '7D': monthly/yearly data takes strides like 3M or 1Y" in result.output
    assert not out.exists()


def test_acc_uses_the_monthly_climatology(monthly_run):
    """ACC at lead 1 recomputed by hand: climatology = mean of the same calendar month over the
    truth before the first init time (1970-1972), anomalies area-weighted over the sea cells."""
    truth = xr.open_dataset(monthly_run["data"])
    fc = xr.open_zarr(monthly_run["forecast"])
    before = truth["sst"].isel(time=slice(0, 36))  # 1970-01 .. 1972-12
    months = np.array([t.month for t in before.indexes["time"]])
    w = np.cos(np.deg2rad(truth["lat"].values))[:, None] * np.ones(truth.sizes["lon"])
    per_case = []
    for i in range(fc.sizes["time"]):
        valid = fc["valid_time"].values[i, 0]
        month = valid.month if hasattr(valid, "month") else pd.Timestamp(valid).month
        clim = before.values[months == month].mean(axis=0)
        f = fc["sst"].values[i, 0] - clim
        o = truth["sst"].sel(time=valid).values - clim
        ok = np.isfinite(f) & np.isfinite(o)
        num = (w * f * o)[ok].sum()
        per_case.append(num / np.sqrt((w * f * f)[ok].sum() * (w * o * o)[ok].sum()))
    record = [
        r for r in monthly_run["scores"]
        if r["forecast"] == "fc" and r["metric"] == "acc" and r["lead"] == "P1M"
    ]  # fmt: skip
    assert record[0]["value"] == pytest.approx(float(np.mean(per_case)), abs=1e-5)


def test_irregular_time_axis_is_one_clear_error(tmp_path):
    rng = np.random.default_rng(1)
    days = np.cumsum(rng.integers(1, 40, size=30))
    ds = latlon_dataset(n_time=30)
    ds = ds.assign_coords(time=pd.Timestamp("2000-01-01") + pd.to_timedelta(days, "D"))
    ds.to_netcdf(tmp_path / "irregular.nc")
    out = tmp_path / "run"
    result = runner.invoke(app, ["train", str(tmp_path / "irregular.nc"), "--out", str(out)])
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.output
    assert "irregular.nc" in lines[0] and "irregular time axis" in lines[0]
    assert "days x" in lines[0]  # the spacings found
    assert not out.exists() or not any(out.iterdir())  # nothing written
    with pytest.raises(MinconvError, match="no fixed step and no calendar step"):
        open_fields(tmp_path / "irregular.nc")


def test_calendar_shift_follows_each_calendar():
    import cftime

    step = CalendarStep("month", "mid")
    jan = np.array([cftime.DatetimeNoLeap(1999, 1, 16, 12)])
    assert str(shift(jan, step, 1)[0]) == "1999-02-15 00:00:00"
    assert str(shift(jan, CalendarStep("month"), 13)[0]) == "2000-02-01 00:00:00"
    leap = np.array(["2000-01-16T12:00"], dtype="datetime64[ns]")
    assert str(shift(leap, step, 1)[0])[:19] == "2000-02-15T12:00:00"  # 29-day February
