"""Nowcasting scores of `minconv evaluate`: POD, FAR, CSI and ETS of rain events at `--thresholds`
and the FSS at `--fss-scales`, checked by hand on tiny fields, against pySTEPS' own verification
on random ones, lazily, and through the CLI into every record file and the plot."""

import csv
import json
import struct

import numpy as np
import pandas as pd
import pytest
import xarray as xr
from factories import radar_dataset
from typer.testing import CliRunner

from minconv_cli.cli import app
from minconv_cli.evaluate import evaluate
from minconv_cli.evaluate.events import (
    Events,
    contingency,
    csi_of,
    ets_of,
    far_of,
    fss_of,
    fss_sums,
    pod_of,
)

runner = CliRunner()
SPACE, CASES = ("y", "x"), ("time",)
FIVE_MIN = np.timedelta64(5, "m")


def _field(values) -> xr.DataArray:
    """(time, lead, y, x) from one or more (y, x) arrays (one case, one lead each)."""
    a = np.asarray(values, dtype=np.float64)
    a = a[None] if a.ndim == 2 else a
    return xr.DataArray(a[:, None], dims=("time", "prediction_timedelta", "y", "x"))


def _scores(fc: xr.DataArray, obs: xr.DataArray, events: Events) -> xr.Dataset:
    """The computed sums and every event score derived from them (threshold, scale dims kept)."""
    ds = xr.Dataset(
        {
            "contingency": contingency(fc, obs, SPACE, CASES, events=events),
            **(
                {"fss_sums": fss_sums(fc, obs, SPACE, CASES, events=events)}
                if events.scales
                else {}
            ),
        }
    ).compute()
    for name, derive in (("pod", pod_of), ("far", far_of), ("csi", csi_of), ("ets", ets_of)):
        ds[name] = derive(ds, 0)
    if events.scales:
        ds["fss"] = fss_of(ds, 0)
    return ds.isel(prediction_timedelta=0)


def test_categorical_scores_count_hits_misses_and_false_alarms_and_skip_nan_cells():
    # 4x4, event >= 1: 3 hits, 2 misses, 1 false alarm, 8 correct negatives, 2 cells NaN
    fc = [[5, 1, 2, 0], [0, 0, 0.5, 3], [0, 0, 0, 0], [0, 0, 9, 0]]
    obs = [[2, 1, 3, 1], [4, 0, 0, 0], [0, 0, 0, 0], [0, 0, np.nan, np.nan]]
    s = _scores(_field(fc), _field(obs), Events((1.0,))).sel(threshold=1.0)
    counts = s.contingency.values.tolist()
    assert counts == [3, 2, 1, 8]  # hits, misses, false alarms, correct negatives
    h, m, f, n = 3, 2, 1, 14
    random_hits = (h + m) * (h + f) / n
    assert float(s.pod) == pytest.approx(3 / 5)
    assert float(s.far) == pytest.approx(1 / 4)
    assert float(s.csi) == pytest.approx(3 / 6)
    assert float(s.ets) == pytest.approx((h - random_hits) / (h + m + f - random_hits))


def test_an_event_is_a_value_at_or_above_the_threshold_and_undefined_scores_are_nan():
    fc, obs = _field(np.zeros((3, 3))), _field(np.zeros((3, 3)))
    s = _scores(fc + 1.0, obs + 1.0, Events((1.0, 2.0)))
    assert s.csi.sel(threshold=1.0) == 1.0 and s.pod.sel(threshold=1.0) == 1.0
    # no event anywhere at 2: POD (no observed event), FAR, CSI, ETS all undefined
    for name in ("pod", "far", "csi", "ets"):
        assert np.isnan(s[name].sel(threshold=2.0)), name


def test_fss_of_a_single_event_displaced_by_one_cell_by_hand():
    fc, obs = np.zeros((4, 4)), np.zeros((4, 4))
    fc[1, 1], obs[1, 2] = 1.0, 1.0
    s = _scores(_field(fc), _field(obs), Events((0.5,), (1, 3)))
    fss = s.fss.sel(threshold=0.5)
    # one cell: no overlap, 1 - 2/2 = 0. 3x3 windows (zero outside the grid): fractions 1/9 on a
    # 3x3 block each, sharing 6 cells: 1 - (6/81) / (18/81) = 2/3
    assert float(fss.sel(scale=1)) == pytest.approx(0.0)
    assert float(fss.sel(scale=3)) == pytest.approx(2 / 3)


def test_fss_counts_nan_as_no_event_and_leaves_nan_cells_out_of_the_sums():
    fc, obs = np.zeros((4, 4)), np.zeros((4, 4))
    fc[1, 1], obs[1, 1], fc[3, 3], obs[3, 3] = 1.0, 1.0, 1.0, np.nan
    s = _scores(_field(fc), _field(obs), Events((0.5,), (1,)))
    assert float(s.fss.sel(threshold=0.5, scale=1)) == 1.0  # the NaN cell is not a false alarm
    assert s.contingency.sel(threshold=0.5).values.tolist() == [1, 0, 0, 14]


def _random_rain(shape, seed):
    rng = np.random.default_rng(seed)
    return rng.gamma(0.6, 2.0, size=shape) * (rng.random(shape) < 0.6)


def test_every_score_agrees_with_pysteps_verification_on_random_fields(capsys):
    pysteps = pytest.importorskip("pysteps")
    from pysteps.verification.detcatscores import det_cat_fct
    from pysteps.verification.spatialscores import fss_accum, fss_compute, fss_init

    capsys.readouterr()  # "Pysteps configuration file found" on import
    del pysteps
    fc, obs = _random_rain((3, 20, 24), 1), _random_rain((3, 20, 24), 2)
    thresholds, scales = (0.1, 1.0, 5.0), (1, 3, 5, 8)
    s = _scores(_field(fc), _field(obs), Events(thresholds, scales))
    for t in thresholds:
        # pySTEPS' categorical events are value > t: the same on continuous random fields
        ref = det_cat_fct(fc, obs, t, scores=["POD", "FAR", "CSI", "ETS"])
        for name in ("pod", "far", "csi", "ets"):
            assert float(s[name].sel(threshold=t)) == pytest.approx(ref[name.upper()], abs=1e-9)
        for scale in scales:
            acc = fss_init(t, scale)
            for case in range(fc.shape[0]):
                fss_accum(acc, fc[case], obs[case])
            got = float(s.fss.sel(threshold=t, scale=scale))
            assert got == pytest.approx(fss_compute(acc), abs=1e-9), (t, scale)


def test_fss_reduces_dask_blocks_lazily_and_agrees_with_the_scores_library_cell_by_cell():
    from scores.spatial import fss_2d

    fc, obs = _field(_random_rain((4, 16, 16), 3)), _field(_random_rain((4, 16, 16), 4))
    events = Events((1.0,), (1, 5))
    lazy = fss_sums(fc.chunk(time=1), obs.chunk(time=1), SPACE, CASES, events=events)
    assert lazy.chunks is not None  # nothing computed yet
    ours = fss_of(xr.Dataset({"fss_sums": lazy.compute()}), 0).isel(prediction_timedelta=0)
    eager = _scores(fc, obs, events).fss
    np.testing.assert_allclose(ours.values, eager.values, rtol=0, atol=1e-12)
    # `scores` lays its zero-padded windows out differently at the edges (pySTEPS is the check for
    # windows above); one-cell windows have no edge, and both pool the sums over the cases
    theirs = fss_2d(
        fc, obs, event_threshold=1.0, window_size=(1, 1), spatial_dims=SPACE,
        zero_padding=True, reduce_dims=["time", "prediction_timedelta"],
    )  # fmt: skip
    assert float(ours.sel(threshold=1.0, scale=1)) == pytest.approx(float(theirs), abs=1e-9)


def _radar_store(tmp_path, n: int = 24):
    """5-min rain-like truth with a NaN corner (outside coverage) and a forecast that is the truth
    moved one cell east (a displacement error), as a Zarr store in the WeatherBench 2 layout."""
    truth = radar_dataset(n_time=10, n=n, blobs=6)
    truth = truth.assign_coords(time=pd.date_range("2024-06-01T12:00", periods=10, freq="5min"))
    truth["precip"][:, : n // 4, : n // 4] = np.nan
    truth.to_netcdf(tmp_path / "truth.nc")
    init = truth.time.values[[3, 4, 5]]
    leads = np.arange(1, 4) * FIVE_MIN
    moved = [
        [np.roll(truth.precip.sel(time=i + ld).values, 1, axis=1) for ld in leads] for i in init
    ]
    dims = ("time", "prediction_timedelta", "y", "x")
    coords = {"time": init, "prediction_timedelta": leads, "y": truth.y, "x": truth.x}
    fc = xr.Dataset({"precip": (dims, np.asarray(moved), truth.precip.attrs)}, coords=coords)
    fc.to_zarr(tmp_path / "fc.zarr")
    return truth


def _png_height(path) -> int:
    header = path.read_bytes()[:24]
    assert header[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">I", header[20:24])[0]


def _cli(tmp_path, out, *options):
    args = ["evaluate", str(tmp_path / "fc.zarr"), str(tmp_path / "truth.nc"), "-q", "--json"]
    return runner.invoke(app, [*args, "--out", str(tmp_path / out), *options])


def test_cli_writes_event_scores_for_forecast_and_references_in_every_record_file(tmp_path):
    _radar_store(tmp_path)
    plain = _cli(tmp_path, "plain", "-m", "rmse")
    result = _cli(tmp_path, "scores", "-m", "rmse", "--thresholds", "0.1,1", "--fss-scales", "1,3")
    assert plain.exit_code == 0 and result.exit_code == 0, result.output
    records = json.loads(result.stdout)
    out = tmp_path / "scores"
    assert json.loads((out / "scores.json").read_text()) == records
    names = {r["metric"] for r in records}
    assert {"csi@0.1", "ets@1", "pod@1", "far@0.1", "fss@1/s3", "fss@0.1/s1"} <= names
    for ref in ("fc", "persistence", "climatology"):
        assert {r["metric"] for r in records if r["forecast"] == ref} >= {"csi@1", "fss@1/s3"}
    fss = next(r for r in records if r["metric"] == "fss@1/s3" and r["forecast"] == "fc")
    assert (fss["threshold"], fss["scale"], fss["lead"], fss["lead_minutes"]) == (
        1.0, 3, "PT5M", 5.0)  # fmt: skip
    rmse = next(r for r in records if r["metric"] == "rmse")
    assert rmse["threshold"] is None and rmse["scale"] is None
    # a forecast displaced by one cell: imperfect at one cell, better over 3x3 windows
    fc = {r["metric"]: r["value"] for r in records if r["forecast"] == "fc" and r["lead"] == "PT5M"}
    assert 0 < fc["fss@1/s1"] < fc["fss@1/s3"] < 1 and 0 < fc["csi@1"] < 1
    with open(out / "scores.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(records) and {"threshold", "scale", "lead_minutes"} <= set(rows[0])
    assert {r["scale"] for r in rows if r["metric"] == "fss@0.1/s3"} == {"3"}
    with xr.open_dataset(out / "scores.nc") as nc:
        csi = nc.score.sel(forecast="fc", metric="csi@1", variable="precip")
        assert csi.values[0] == pytest.approx(fc["csi@1"])
        assert float(nc.threshold.sel(metric="fss@1/s3")) == 1.0
        assert int(nc.scale.sel(metric="fss@1/s3")) == 3
    # the plot: CSI at both thresholds and FSS at threshold 1 at both scales: 4 more panel rows
    assert (
        _png_height(out / "scores.png") - _png_height(tmp_path / "plain" / "scores.png") > 3 * 352
    )


def test_metrics_chooses_among_the_event_scores_and_an_ensemble_is_scored_on_its_mean(tmp_path):
    truth = _radar_store(tmp_path)
    fc = xr.open_zarr(tmp_path / "fc.zarr").load()
    spread = xr.concat([fc * 0.5, fc * 1.5], dim="number").assign_coords(number=[0, 1])
    spread.to_zarr(tmp_path / "ens.zarr")
    scores = evaluate(
        tmp_path / "fc.zarr", tmp_path / "truth.nc", compare=[f"ens={tmp_path / 'ens.zarr'}"],
        metrics_="csi", thresholds=[1.0, 5.0], references="persistence",
    )  # fmt: skip
    names = list(scores.table.metric.values)
    assert names[:3] == ["csi@1", "csi@5", "skill_vs_persistence"] and "pod@1" not in names
    table = scores.table.sel(variable="precip", metric=["csi@1", "csi@5"])
    np.testing.assert_allclose(table.sel(forecast="ens"), table.sel(forecast="fc"))
    assert truth.precip.max() > 5


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--thresholds", "1,-0.5"], "--thresholds: -0.5 is not a threshold"),
        (["--thresholds", "heavy"], "--thresholds: 'heavy' is not a number"),
        (["--thresholds", "1", "--fss-scales", "3,25"], "--fss-scales: 25 cells is larger than"),
        (["--thresholds", "1", "--fss-scales", "0"], "--fss-scales: 0 is not a window size"),
        (["--thresholds", "1", "--fss-scales", "2.5"], "--fss-scales: 2.5 is not a window size"),
        (["--fss-scales", "3"], "--fss-scales: fss needs --thresholds"),
        (["-m", "rmse,csi"], "--metrics: csi need(s) --thresholds"),
        (["-m", "fss", "--thresholds", "1"], "--metrics: fss needs --fss-scales"),
    ],
)
def test_bad_event_options_are_one_line_and_nothing_is_written(tmp_path, options, message):
    _radar_store(tmp_path)
    result = _cli(tmp_path, "scores", *options)
    assert result.exit_code == 1, result.output
    lines = [ln for ln in result.output.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0], result.output
    assert not (tmp_path / "scores").exists()
