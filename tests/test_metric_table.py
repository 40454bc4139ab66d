"""The metric table is the one place a metric lives: a new metric is one function and one row, and
`minconv evaluate` then accepts it in `--metrics`, scores it, records it and plots it; every row's
"better" direction is what a perfect and a noisy forecast score."""

import csv
import inspect
import json
import struct

import numpy as np
import pytest
import xarray as xr
from factories import latlon_dataset
from test_evaluate import clim_file, records_of, wb2_forecast
from typer.testing import CliRunner

from minconv_cli.cli import app
from minconv_cli.commands import evaluate as evaluate_command
from minconv_cli.evaluate import evaluate, metric_table
from minconv_cli.evaluate.metric_table import HIGHER, LOWER, MAX, NEARER, Metric, choices, row_of

runner = CliRunner()


# The recipe: one function ...
def max_abs_error(forecast, truth, space, cases, weights=None):
    """Largest absolute error over cases and space (a maximum takes no area weights)."""
    return abs(forecast - truth).max([*cases, *space], skipna=True)


# ... and one row.
MAX_ABS_ERROR = Metric(
    "max_abs_error", max_abs_error, better=LOWER, best=0.0, headline=True, pooled=MAX
)


def _noisy(fc: xr.Dataset, seed: int, scale: float = 30.0) -> xr.Dataset:
    noise = np.random.default_rng(seed).normal(0, scale, fc.z.shape)
    return (fc + noise).astype(np.float32)


def _png_height(path) -> int:
    header = path.read_bytes()[:24]
    assert header[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">I", header[20:24])[0]


@pytest.fixture
def stores(tmp_path):
    """A NetCDF truth, its climatology file and a noisy forecast store on disk."""
    truth = latlon_dataset(n_time=30, n_lat=4, n_lon=8, variables=("z",))
    truth.to_netcdf(tmp_path / "truth.nc")
    clim = clim_file(tmp_path, truth.isel(time=slice(0, 10)).mean("time"))
    fc = _noisy(wb2_forecast(truth, init_idx=range(10, 20), n_leads=3), seed=1)
    fc.to_zarr(tmp_path / "fc.zarr")
    return tmp_path, truth, fc, clim


def _cli(tmp_path, clim, metrics: str, out: str):
    args = ["evaluate", str(tmp_path / "fc.zarr"), str(tmp_path / "truth.nc"), "-m", metrics]
    args += ["--climatology", str(clim), "--out", str(tmp_path / out), "--json", "-q"]
    return runner.invoke(app, args)


def test_a_new_metric_is_one_function_and_one_row(stores, monkeypatch):
    tmp_path, truth, fc, clim = stores
    plain = _cli(tmp_path, clim, "rmse,acc", "plain")
    assert plain.exit_code == 0, plain.output
    monkeypatch.setitem(metric_table.METRICS, MAX_ABS_ERROR.name, MAX_ABS_ERROR)

    result = _cli(tmp_path, clim, "rmse,acc,max_abs_error", "scores")

    assert result.exit_code == 0, result.output
    # scored: the largest |forecast - truth| over init times and the grid, per lead
    truth_at = wb2_forecast(truth, init_idx=range(10, 20), n_leads=3).z.values
    expect = np.abs(fc.z.values - truth_at).max(axis=(0, 2, 3))
    records = json.loads(result.stdout)
    got = records_of(records, "fc", "max_abs_error")
    assert list(got.values()) == pytest.approx(expect.tolist(), rel=1e-6)
    assert set(records_of(records, "persistence", "max_abs_error")) == set(got)
    # recorded: scores.json, scores.csv and scores.nc, like every other metric
    out = tmp_path / "scores"
    assert json.loads((out / "scores.json").read_text()) == records
    with open(out / "scores.csv") as f:
        rows = [r for r in csv.DictReader(f) if r["metric"] == "max_abs_error"]
    assert len(rows) == 3 * 3  # fc, persistence, climatology x 3 leads
    with xr.open_dataset(out / "scores.nc") as nc:
        assert list(nc.metric.values[:3]) == ["rmse", "acc", "max_abs_error"]
        np.testing.assert_allclose(nc.score.sel(forecast="fc", metric="max_abs_error"), [expect])
    # plotted: a headline row is one more panel row of scores.png (352 px at 3.2 in x 110 dpi)
    assert _png_height(out / "scores.png") - _png_height(tmp_path / "plain" / "scores.png") == 352


def test_an_unknown_metric_is_refused_in_one_line_naming_the_option(stores):
    tmp_path, _, _, clim = stores
    result = _cli(tmp_path, clim, "rmse,max_abs_error", "scores")
    assert result.exit_code == 1
    lines = [ln for ln in result.output.strip().splitlines() if ln.strip()]
    assert lines == [
        "error: --metrics: unknown max_abs_error; choose from rmse, mae, bias, acc, rel_l2"
    ]
    assert not (tmp_path / "scores").exists()


def test_the_metrics_option_defaults_to_every_row_it_accepts():
    default = inspect.signature(evaluate_command.evaluate).parameters["metrics"].default
    assert default.split(",") == choices() == ["rmse", "mae", "bias", "acc", "rel_l2"]
    assert row_of("skill_vs_persistence") is metric_table.METRICS["skill"]


def _ensemble(members: list[xr.Dataset]) -> xr.Dataset:
    return xr.concat(members, dim="number").assign_coords(number=np.arange(len(members)))


def test_each_metric_scores_its_best_on_a_perfect_forecast_and_worse_on_a_noisy_one(stores):
    tmp_path, truth, _, clim = stores
    perfect = wb2_forecast(truth, init_idx=range(10, 20), n_leads=3)
    exact = perfect.astype(np.float64)  # so that the members' mean is exact
    _ensemble([exact] * 3).to_zarr(tmp_path / "perfect.zarr")
    noisy = [_noisy(perfect, seed) for seed in (2, 3, 4)]
    _ensemble(noisy).to_zarr(tmp_path / "noisy.zarr")

    scores = evaluate(
        tmp_path / "perfect.zarr",
        tmp_path / "truth.nc",
        compare=[str(tmp_path / "noisy.zarr")],
        climatology=clim,
    )

    scored = [str(m) for m in scores.table.metric.values]
    assert {"rmse", "acc", "skill_vs_persistence", "spread", "spread_skill", "crps_fair"} <= set(
        scored
    )
    for name in scored:
        row = row_of(name)
        best, worse = (scores.table.sel(forecast=f, metric=name).values for f in scores.forecasts)
        if row.best is None:
            continue
        if name == "spread_skill":  # spread 0 over an exact mean: the ratio is undefined
            assert np.isnan(best).all()
        else:
            assert np.isfinite(best).any(), name
        np.testing.assert_allclose(best[np.isfinite(best)], row.best, atol=1e-6, err_msg=name)
        worse = worse[np.isfinite(worse)]
        assert worse.size, name
        if row.better == LOWER:
            assert (worse > row.best).all(), name
        elif row.better == HIGHER:
            assert (worse < row.best).all(), name
        else:
            assert row.better == NEARER and (worse != row.best).all(), name
