"""`evaluate` on stores larger than memory: the truth (and the climatology) is gathered at the
valid times block by block, one task per block of init times, reading only the slabs of the truth
the block needs; the scores equal the in-memory ones; the peak memory of a run hardly grows with
the store."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from dask.core import get_dependencies
from factories import latlon_dataset
from test_evaluate import wb2_forecast

from minconv_cli.data import open_fields
from minconv_cli.evaluate import align, evaluate
from minconv_cli.evaluate.gather import gather
from minconv_cli.rollout.store import open_forecast

GRID = (4, 8)
LEADS = 3


def _noisy_store(truth, inits, path, seed=1):
    fc = wb2_forecast(truth, init_idx=inits, n_leads=LEADS, first_lead=1)
    noise = np.random.default_rng(seed).normal(0, 30.0, fc.z.shape)
    (fc + noise).astype(np.float32).chunk({"time": 1}).to_zarr(path)  # rollout's layout


@pytest.fixture(scope="module")
def two_years(tmp_path_factory):
    """Two years of daily truth (the first one a climatology by day of year) and a store of 60
    init times in the second year."""
    root = tmp_path_factory.mktemp("memory")
    truth = latlon_dataset(n_time=2 * 366, n_lat=GRID[0], n_lon=GRID[1], variables=("z",))
    truth = truth.assign(z=truth.z.astype(np.float32))
    truth.to_netcdf(root / "truth.nc")
    _noisy_store(truth, range(400, 460), root / "fc.zarr")
    return root


def test_lazy_blocks_with_a_lazy_truth_and_a_day_of_year_climatology_give_the_in_memory_scores(
    two_years,
):
    fc, truth = two_years / "fc.zarr", two_years / "truth.nc"
    kw = {"references": "persistence,climatology", "thresholds": "54000", "fss_scales": "3"}
    in_memory = evaluate(fc, truth, **kw)
    # blocks of 4 init times (15 blocks), the truth read lazily from the file in slabs
    lazy = evaluate(fc, truth, load_below=0, block_bytes=4 * 4 * 32 * LEADS, truth_memory=1, **kw)
    assert lazy.run["lazy"] and not in_memory.run["lazy"]
    assert "climatology" in lazy.references and "acc" in set(lazy.table.metric.values)
    np.testing.assert_allclose(lazy.table.values, in_memory.table.values, rtol=1e-5)
    assert np.isfinite(lazy.table.sel(forecast="climatology").values).sum() > 10
    assert lazy.overlap == in_memory.overlap


def test_the_truth_is_gathered_with_one_task_per_block_not_per_case(two_years):
    store = open_forecast(two_years / "fc.zarr")
    for truth in (
        open_fields(two_years / "truth.nc"),
        open_fields(two_years / "truth.nc", memory_limit=1),
    ):
        main = align(store, truth, True, load_below=0, block_bytes=4 * 4 * 32 * LEADS)
        fc, at = main.forecast["z"], main.truth["z"]
        assert at.chunks == fc.chunks and len(fc.chunks[0]) == 15  # blocks of 4 init times
        graph = at.data.__dask_graph__()
        gathers = [
            k for k in graph if str(k[0] if isinstance(k, tuple) else k).startswith("gather")
        ]
        assert len(gathers) == 15
        # the whole truth, its slabs, the blocks and the mask: far fewer tasks than 180 cases
        assert len(graph) < 60, len(graph)
        np.testing.assert_array_equal(at.values, align(store, truth, True).truth["z"].values)


def test_a_gather_reads_only_the_slabs_its_positions_fall_in():
    import xarray as xr

    src = xr.DataArray(np.arange(100.0).reshape(100, 1), dims=("t", "x")).chunk({"t": 10})
    pos = xr.DataArray(np.array([[3, 4], [95, 96], [50, 0]]), dims=("init", "lead"))
    mask = xr.DataArray(np.array([[True, True], [True, True], [True, False]]), dims=pos.dims)
    out = gather(src, "t", pos, mask, {"init": (1, 1, 1)})
    graph = dict(out.data.__dask_graph__())
    tasks = [k for k in graph if k[0].startswith("gather")]
    slabs_of = {k[1]: {d[1] for d in get_dependencies(graph, k)} for k in tasks}
    assert slabs_of == {0: {0}, 1: {9}, 2: {5}}  # the masked-off position 0 reads nothing
    np.testing.assert_array_equal(out.values[..., 0], [[3, 4], [95, 96], [50, np.nan]])


PEAK = textwrap.dedent(
    """
    import json, sys
    from minconv_cli.evaluate import evaluate
    fc, truth = sys.argv[1:3]
    scores = evaluate(fc, truth, references="persistence", metrics_="rmse,mae,bias",
                      load_below=0, block_bytes=4 * 2**20, truth_memory=1)
    # VmHWM: this process's own peak (ru_maxrss keeps the forking parent's across exec)
    hwm = [ln for ln in open("/proc/self/status") if ln.startswith("VmHWM")][0]
    print(json.dumps({"peak_kb": int(hwm.split()[1]),
                      "bytes": scores.run["forecast_bytes"], "lazy": scores.run["lazy"]}))
    """
)


def _peak(fc, truth) -> dict:
    proc = subprocess.run(
        [sys.executable, "-c", PEAK, str(fc), str(truth)], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_peak_memory_grows_far_less_than_the_store(tmp_path):
    """A store 4x larger (24 -> 96 MB, a lazy truth, 4 MB blocks) costs less than its 72 MB more
    at peak (about 40 MB measured: dask holds some blocks' intermediates; gathering the truth case
    by case read the truth in every case's task: more than the store's growth, 1.4x measured)."""
    frames = 64 * 128 * 4 * LEADS  # bytes per init time
    n_time = 96 * 2**20 // frames + LEADS + 1
    truth = latlon_dataset(n_time=n_time, n_lat=64, n_lon=128, variables=("z",))
    chunked = {"z": {"chunksizes": (16, 64, 128)}}  # a truth larger than memory is chunked
    truth.assign(z=truth.z.astype(np.float32)).to_netcdf(tmp_path / "truth.nc", encoding=chunked)
    small, large = tmp_path / "small.zarr", tmp_path / "large.zarr"
    _noisy_store(truth, range(0, 24 * 2**20 // frames), small)
    _noisy_store(truth, range(0, 96 * 2**20 // frames), large)
    one, four = _peak(small, tmp_path / "truth.nc"), _peak(large, tmp_path / "truth.nc")
    assert one["lazy"] and four["bytes"] >= 3.9 * one["bytes"]
    growth = (four["peak_kb"] - one["peak_kb"]) * 1024
    assert growth < 0.75 * (four["bytes"] - one["bytes"]), (one, four)
