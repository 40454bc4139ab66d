"""The extrapolation reference (`minconv evaluate --references extrapolation`): the last radar frame
advected along pySTEPS' Lucas-Kanade motion, on real stores and truth files."""

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from minconv_cli.core.errors import MinconvError
from minconv_cli.data import open_fields
from minconv_cli.evaluate import align, open_forecast
from minconv_cli.evaluate.extrapolation import PAST_FRAMES, lead_steps

STEP = np.timedelta64(5, "m")
CENTRES = [(10.0, 8.0), (22.0, 14.0), (14.0, 22.0)]  # rain cells (y, x) at the first time


def rain(n_time: int, n: int, velocity: tuple[int, int]) -> np.ndarray:
    """Gaussian rain cells (mm/h, peak 10) moving `velocity` (y, x) cells per step; dry elsewhere."""
    y, x = np.mgrid[0:n, 0:n].astype(np.float64)
    frames = np.zeros((n_time, n, n))
    for t in range(n_time):
        for cy, cx in CENTRES:
            cy, cx = cy + t * velocity[0], cx + t * velocity[1]
            frames[t] += 10.0 * np.exp(-((y - cy) ** 2 + (x - cx) ** 2) / (2 * 3.0**2))
    return np.where(frames < 0.05, 0.0, frames)


def rmse(a: np.ndarray, b: np.ndarray) -> float:
    both = np.isfinite(a) & np.isfinite(b)
    return float(np.sqrt(np.mean((a[both] - b[both]) ** 2)))


@pytest.mark.parametrize("velocity", [(0, 1), (1, 1)], ids=["east", "diagonal"])
def test_moving_rain_is_extrapolated_to_its_future_positions_far_better_than_persistence(velocity):
    from minconv_cli.evaluate.extrapolation import nowcast

    pytest.importorskip("pysteps")
    frames = rain(PAST_FRAMES + 6, 40, velocity)
    past, future = frames[:PAST_FRAMES], frames[PAST_FRAMES:]
    fc = nowcast(past, 6)
    assert fc.shape == (6, 40, 40)
    for k in range(6):
        ex, pers = rmse(fc[k], future[k]), rmse(past[-1], future[k])
        assert ex < 0.5 * pers and ex < 0.05, (k, ex, pers)
        # the cells' centres land where they truly are
        assert np.unravel_index(np.nanargmax(fc[k]), fc[k].shape) == np.unravel_index(
            np.argmax(future[k]), future[k].shape
        )


def test_zero_stays_zero_nothing_is_negative_and_nan_coverage_stays_nan():
    from minconv_cli.evaluate.extrapolation import nowcast

    pytest.importorskip("pysteps")
    assert np.array_equal(nowcast(np.zeros((3, 24, 24)), 4), np.zeros((4, 24, 24)))
    frames = rain(PAST_FRAMES, 40, (0, 1))
    frames[:, 30:, 30:] = np.nan  # outside the radar's coverage, the same at every time
    fc = nowcast(frames, 5)
    assert np.isnan(fc[:, 30:, 30:]).all()  # no coverage, no forecast
    assert np.isnan(fc[:, :, 0]).all()  # rain comes in from the west: unknown, NaN
    assert np.nanmin(fc) >= 0.0
    dry = np.isfinite(fc) & (np.arange(40)[None, :, None] > 34)  # far south of every cell
    assert (fc[dry] == 0.0).all() and dry.any()


def test_leads_must_be_whole_truth_steps():
    assert list(lead_steps(np.array([0, 5, 15], "timedelta64[m]"), STEP)) == [0, 1, 3]
    with pytest.raises(MinconvError, match="lead .* is not a whole number"):
        lead_steps(np.array([5, 7], "timedelta64[m]").astype("timedelta64[ns]"), STEP)


def radar_truth(n_time: int = 16, n: int = 32, velocity: tuple[int, int] = (0, 1)) -> xr.Dataset:
    """A radar-like truth: moving rain cells every 5 minutes on a km grid."""
    time = pd.date_range("2024-06-01T12:00", periods=n_time, freq="5min")
    km = np.arange(n, dtype=np.float64)
    values = rain(n_time, n, velocity).astype(np.float32)
    return xr.Dataset(
        {"rain_rate": (("time", "y", "x"), values, {"units": "mm h-1"})},
        coords={
            "time": time,
            "y": ("y", km, {"units": "km", "axis": "Y"}),
            "x": ("x", km, {"units": "km", "axis": "X"}),
        },
    )


def radar_forecast(truth: xr.Dataset, init_idx, n_leads: int) -> xr.Dataset:
    """A forecast store (WeatherBench 2 layout) whose frames are the truth's at the valid time, wetter."""
    init = truth.time.values[list(init_idx)]
    leads = (np.arange(1, n_leads + 1) * STEP).astype("timedelta64[ns]")
    frames = [truth.rain_rate.sel(time=init + lead).values for lead in leads]
    return xr.Dataset(
        {"rain_rate": (("time", "prediction_timedelta", "y", "x"), 1.1 * np.stack(frames, 1))},
        coords={"time": init, "prediction_timedelta": leads, "y": truth.y, "x": truth.x},
    )


def records_of(records, forecast, metric):
    return {
        r["lead"]: r["value"] for r in records if (r["forecast"], r["metric"]) == (forecast, metric)
    }


def cli(*args: str, prelude: str = "") -> subprocess.CompletedProcess:
    """`minconv ARGS` in a fresh Python (so pySTEPS is imported there for the first time)."""
    code = f"{prelude}\nfrom minconv_cli.cli import app\napp({list(args)!r}, prog_name='minconv')"
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)


def test_cli_scores_extrapolation_beside_persistence_and_it_wins_on_moving_rain(tmp_path):
    pytest.importorskip("pysteps")
    truth = radar_truth()
    truth.to_netcdf(tmp_path / "truth.nc")
    radar_forecast(truth, range(3, 9), n_leads=4).to_zarr(tmp_path / "fc.zarr")
    result = cli("evaluate", str(tmp_path / "fc.zarr"), str(tmp_path / "truth.nc"),
                 "--references", "persistence,extrapolation", "--metrics", "rmse", "--json")  # fmt: skip
    assert result.returncode == 0, result.stderr
    records = json.loads(result.stdout)  # stdout is the JSON alone: no pySTEPS banner
    ex, pers = (
        records_of(records, "extrapolation", "rmse"),
        records_of(records, "persistence", "rmse"),
    )
    assert list(ex) == ["PT5M", "PT10M", "PT15M", "PT20M"] == list(pers)
    for lead in ex:
        assert ex[lead] < 0.5 * pers[lead], (lead, ex, pers)
    assert records_of(records, "fc", "skill_vs_extrapolation")  # the forecast's skill against it
    assert (tmp_path / "fc_scores" / "scores.json").exists()


def test_missing_pysteps_is_one_line_naming_the_extra_and_nothing_is_written(tmp_path):
    truth = radar_truth(n_time=10, n=12)
    truth.to_netcdf(tmp_path / "truth.nc")
    radar_forecast(truth, range(3, 5), n_leads=2).to_zarr(tmp_path / "fc.zarr")
    result = cli("evaluate", str(tmp_path / "fc.zarr"), str(tmp_path / "truth.nc"),
                 "--references", "extrapolation", prelude="import sys; sys.modules['pysteps'] = None")  # fmt: skip
    assert result.returncode != 0
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, result.stderr
    assert "--references extrapolation needs pySTEPS" in lines[0] and '".[nowcast]"' in lines[0]
    assert not (tmp_path / "fc_scores").exists()


def test_an_init_time_without_enough_regular_past_frames_is_nan_with_a_note(tmp_path):
    pytest.importorskip("pysteps")
    truth = radar_truth(n_time=14, n=24).drop_isel(time=[7])  # a gap: 12:35 is missing
    truth.to_netcdf(tmp_path / "truth.nc")
    # inits at 12:05 (one frame before it), 12:45 (gap among its past), 12:15 and 12:55 (fine)
    fc = radar_forecast(radar_truth(n_time=14, n=24), [1, 9, 3, 11], n_leads=1)
    fc.to_zarr(tmp_path / "fc.zarr")
    aligned = align(
        open_forecast(tmp_path / "fc.zarr"),
        open_fields(tmp_path / "truth.nc"),
        with_persistence=True,
        with_extrapolation=True,
    )
    ex = aligned.extrapolation["rain_rate"]
    assert ex.dims == ("time", "prediction_timedelta", "y", "x")
    has = ex.notnull().any(["y", "x"]).values[:, 0]
    assert has.tolist() == [False, False, True, True]
    assert aligned.persistence["rain_rate"].notnull().all()  # persistence needs no past
    assert any("2 of 4 init times lack 3 frames" in n for n in aligned.overlap["notes"])


def test_a_lazy_store_gets_a_lazy_extrapolation_one_task_per_block_with_the_same_scores(tmp_path):
    pytest.importorskip("pysteps")
    import dask

    from minconv_cli.evaluate import evaluate

    truth = radar_truth(n_time=16, n=24).drop_isel(time=[9])  # a gap: one init lacks its past
    truth.to_netcdf(tmp_path / "truth.nc")
    fc = radar_forecast(radar_truth(n_time=16, n=24), [1, 3, 5, 7, 11, 12], n_leads=3)
    fc.astype(np.float32).chunk({"time": 1}).to_zarr(tmp_path / "fc.zarr")
    kw = {"references": "persistence,extrapolation", "metrics_": "rmse,mae"}
    in_memory = evaluate(tmp_path / "fc.zarr", tmp_path / "truth.nc", **kw)
    block = 2 * 3 * 24 * 24 * 4  # two init times per block
    lazy = evaluate(
        tmp_path / "fc.zarr", tmp_path / "truth.nc", load_below=0, block_bytes=block, **kw
    )
    assert lazy.run["lazy"] and not in_memory.run["lazy"]
    np.testing.assert_allclose(lazy.table.values, in_memory.table.values, rtol=1e-5)
    assert np.isfinite(lazy.table.sel(forecast="extrapolation", metric="rmse").values).all()
    assert lazy.overlap == in_memory.overlap and lazy.notes == in_memory.notes
    aligned = align(
        open_forecast(tmp_path / "fc.zarr"), open_fields(tmp_path / "truth.nc"), True,
        load_below=0, with_extrapolation=True, block_bytes=block,
    )  # fmt: skip
    ex = aligned.extrapolation["rain_rate"]
    assert dask.is_dask_collection(ex) and ex.chunks[0] == (2, 2, 2)
