"""`evaluate` in batches of init times: a store of any size is scored one bounded dask graph at a
time, and the batches' reductions combine into exactly the scores of one pass (sums add up, means
are weighted by what they divide by)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
from factories import latlon_dataset
from test_evaluate import wb2_forecast

from minconv_cli.evaluate import evaluate
from minconv_cli.evaluate.batches import WEIGHT, combine, init_spans
from minconv_cli.evaluate.metric_table import MAX, MEAN, METRICS, Metric

FIXTURES = Path(__file__).parent / "fixtures"
LEADS = 3
INIT_BYTES = 4 * 8 * 4 * LEADS  # one init time of the stores below (4x8 float32, 3 leads)


def _store(truth: xr.Dataset, inits, path: Path, seed: int, holes: bool = False) -> None:
    fc = wb2_forecast(truth, init_idx=inits, n_leads=LEADS, first_lead=1)
    fc = fc + np.random.default_rng(seed).normal(0, 30.0, fc.z.shape)
    if holes:  # a masked cell in some cases, a whole missing case
        fc.z[3, 0, 1, 2] = np.nan
        fc.z[7, 1] = np.nan
    fc.astype(np.float32).chunk({"time": 1}).to_zarr(path)


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    """A year of daily lat/lon truth with a NaN hole, a store of 12 init times after it (NaNs in
    it) and a second store to compare."""
    root = tmp_path_factory.mktemp("batches")
    truth = latlon_dataset(n_time=420, n_lat=4, n_lon=8, variables=("z",))
    truth = truth.assign(z=truth.z.astype(np.float32))
    truth.z[380, 2, 3] = np.nan
    truth.to_netcdf(root / "truth.nc")
    _store(truth, range(370, 382), root / "fc.zarr", seed=1, holes=True)
    _store(truth, range(370, 382), root / "other.zarr", seed=2)
    return root


def _both(fc, truth, **kw):
    """One dask pass, and batches of 3 init times of two stores (blocks of 1 init time)."""
    kw = {"load_below": 0, "block_bytes": INIT_BYTES, "batch_bytes": 6 * INIT_BYTES, **kw}
    batch_bytes = kw.pop("batch_bytes")
    return evaluate(fc, truth, **kw), evaluate(fc, truth, batch_bytes=batch_bytes, **kw)


def test_batches_give_the_one_pass_scores_counts_and_error_maps(stores):
    kw = {
        "compare": [f"other={stores / 'other.zarr'}"],
        "references": "persistence,climatology",
        "thresholds": "54000,55000",
        "fss_scales": "1,3",
        "maps": True,
    }
    one, batched = _both(stores / "fc.zarr", stores / "truth.nc", **kw)
    assert one.run["batches"] == 1 and batched.run["batches"] == 4
    assert {"acc", "rel_l2", "mae", "bias", "csi@54000", "fss@54000/s3"} <= set(
        batched.table.metric.values
    )
    assert np.isfinite(batched.table.values).sum() > 100
    np.testing.assert_allclose(batched.table.values, one.table.values, rtol=1e-5)
    assert batched.overlap == one.overlap and one.overlap[0]["dropped"]["nan_forecast"] == 1
    xr.testing.assert_allclose(batched.error_maps, one.error_maps, rtol=1e-6)


def test_batches_give_the_one_pass_ensemble_scores_and_rank_histograms(tmp_path):
    store = tmp_path / "ens.zarr"
    shutil.copytree(FIXTURES / "latlon_ensemble.zarr", store)  # two init times, two members
    one, batched = _both(store, FIXTURES / "latlon.nc", block_bytes=1, batch_bytes=1)
    assert batched.run["batches"] == 2
    assert {"crps", "crps_fair", "spread", "spread_skill"} <= set(batched.table.metric.values)
    np.testing.assert_allclose(batched.table.values, one.table.values, rtol=1e-5)
    assert one.rank_histograms.keys() == batched.rank_histograms.keys()
    for key, hist in one.rank_histograms.items():
        xr.testing.assert_allclose(batched.rank_histograms[key], hist)


def test_batches_give_the_one_pass_scores_of_trajectories(tmp_path):
    truth = xr.open_dataset(FIXTURES / "traj.nc").load()
    inits, leads = np.arange(2.0, 7.0), np.arange(1.0, 4.0)
    frames = np.stack([truth.vorticity.sel(time=inits + lead).values for lead in leads], axis=2)
    noise = np.random.default_rng(0).normal(0, 0.1, frames.shape)
    fc = xr.Dataset(
        {"vorticity": (("trajectory", "time", "prediction_timedelta", "y", "x"), frames + noise)},
        coords={"trajectory": truth.trajectory, "time": inits, "prediction_timedelta": leads,
                "y": truth.y, "x": truth.x},
    )  # fmt: skip
    fc.transpose("time", ...).astype(np.float32).chunk({"time": 1}).to_zarr(tmp_path / "fc.zarr")
    one, batched = _both(tmp_path / "fc.zarr", FIXTURES / "traj.nc", block_bytes=1, batch_bytes=1)
    assert batched.run["batches"] == 5 and one.overlap[0]["cases"] == 5 * 3 * 4
    np.testing.assert_allclose(batched.table.values, one.table.values, rtol=1e-5)
    assert batched.overlap == one.overlap


def test_means_of_batches_combine_by_their_weights_and_sums_add_up():
    lead = {"lead": [1, 2]}
    a = xr.Dataset(
        {
            "mae": ("lead", [1.0, np.nan]),
            f"mae{WEIGHT}": ("lead", [3.0, 0.0]),  # no cell scored at lead 2
            "count": ("lead", [3, 0]),
        },
        coords=lead,
    )
    b = xr.Dataset(
        {
            "mae": ("lead", [2.0, 4.0]),
            f"mae{WEIGHT}": ("lead", [1.0, 2.0]),
            "count": ("lead", [1, 2]),
        },
        coords=lead,
    )
    whole = combine([a, b], {"count": "sum"})
    assert set(whole.data_vars) == {"mae", "count"}
    np.testing.assert_allclose(whole["mae"], [(3 * 1.0 + 1 * 2.0) / 4, 4.0])
    np.testing.assert_array_equal(whole["count"], [4, 2])
    none = combine([a, a], {"count": "sum"})
    assert np.isnan(none["mae"].values[1])  # undefined in every batch: undefined


def test_maxima_and_minima_of_batches_are_the_maximum_and_minimum_of_all():
    a = xr.Dataset({"worst": ("lead", [1.0, np.nan]), "best": ("lead", [0.5, 2.0])})
    b = xr.Dataset({"worst": ("lead", [3.0, 2.0]), "best": ("lead", [0.1, np.nan])})
    whole = combine([a, b], {"worst": "max", "best": "min"})
    np.testing.assert_array_equal(whole["worst"], [3.0, 2.0])
    np.testing.assert_array_equal(whole["best"], [0.1, 2.0])


def test_a_mean_metric_without_its_weight_is_refused_where_it_is_defined():
    with pytest.raises(ValueError, match="weight="):
        Metric("worst", lambda f, t, space, cases, w=None: abs(f - t).max([*cases, *space]))
    assert Metric("worst", lambda *a: None, pooled=MAX).pooled == MAX
    for row in METRICS.values():  # every row of the table: a mean has its weight
        assert row.reduce is None or row.pooled != MEAN or row.weight is not None, row.name


def test_batches_are_cut_at_block_edges_and_hold_about_the_bytes_asked():
    da = xr.DataArray(np.zeros((10, 4), np.float32), dims=("time", "x")).chunk({"time": 2})
    assert init_spans([da], batch_bytes=2 * 16) == [slice(i, i + 2) for i in range(0, 10, 2)]
    assert init_spans([da], batch_bytes=5 * 16) == [slice(0, 4), slice(4, 8), slice(8, 10)]
    assert init_spans([da], batch_bytes=1) == [slice(i, i + 2) for i in range(0, 10, 2)]
    assert init_spans([da.compute()], batch_bytes=1) == [slice(None)]  # in memory: one pass


def test_one_progress_bar_runs_once_from_start_to_end_over_all_batches(stores):
    seen = []
    evaluate(
        stores / "fc.zarr",
        stores / "truth.nc",
        references="persistence",
        metrics_="rmse",
        load_below=0,
        block_bytes=INIT_BYTES,
        batch_bytes=4 * INIT_BYTES,
        progress=lambda done, total: seen.append(done / total),
    )
    assert seen[-1] == 1.0 and seen == sorted(seen)
    assert len({round(f, 3) for f in seen}) > 6  # it moves batch by batch (3 batches)
