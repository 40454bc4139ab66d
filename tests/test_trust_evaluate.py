"""`minconv evaluate` exits 0 only when its scores are complete and right: the forecast, every
`--compare` forecast and every reference are scored on one set of cases (the cells where all of
them and the truth are finite and the sequences done), the cases dropped are counted by reason,
units must agree, and a forecast chunk missing where the store says it was written is an error."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import dask
import numpy as np
import pytest
import xarray as xr
import zarr
from factories import latlon_dataset
from test_ensemble import hand_crps
from test_evaluate import records_of, wb2_forecast
from typer.testing import CliRunner

from minconv_cli.cli import app
from minconv_cli.data import open_fields
from minconv_cli.data.integrity import missing_chunks
from minconv_cli.evaluate import align, evaluate, open_forecast
from minconv_cli.evaluate.cases import common_cases

runner = CliRunner()
FIXTURES = Path(__file__).parent / "fixtures"
LEADS = ["P1D", "P2D", "P3D"]
NO_DROPS = {
    "outside": 0,
    "unfinished": 0,
    "nan_forecast": 0,
    "nan_truth": 0,
    "nan_reference": 0,
    "other_forecast": 0,
}


def run(*args) -> object:
    return runner.invoke(app, ["evaluate", *map(str, args)])


def one_error_line(result) -> str:
    assert result.exit_code == 1, result.output
    lines = [ln for ln in result.output.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), result.output
    return lines[0]


def scored(out: Path) -> tuple[list[dict], list[dict]]:
    """(records, overlap) written to OUT."""
    records = json.loads((out / "scores.json").read_text())
    return records, json.loads((out / "overlap.json").read_text())


def weights(lat: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """cos(latitude) over the last two axes (lat, lon), broadcast to `shape`."""
    return np.broadcast_to(np.cos(np.deg2rad(lat))[:, None], shape[-2:]) * np.ones(shape)


def w_rmse(err: np.ndarray, lat: np.ndarray) -> float:
    """Area-weighted RMSE pooled over every axis, NaN cells left out."""
    w, ok = weights(lat, err.shape), ~np.isnan(err)
    return float(np.sqrt((w[ok] * err[ok] ** 2).sum() / w[ok].sum()))


def w_mean(x: np.ndarray, lat: np.ndarray) -> float:
    w, ok = weights(lat, x.shape), ~np.isnan(x)
    return float((w[ok] * x[ok]).sum() / w[ok].sum())


def noisy(fc: xr.Dataset, seed: int, scale: float = 30.0) -> xr.Dataset:
    rng = np.random.default_rng(seed)
    return fc.assign(z=(fc.z + rng.normal(0, scale, fc.z.shape)).astype(np.float32))


@pytest.fixture
def daily(tmp_path):
    """Truth (20 days, z on 4 x 6) in truth.nc and a noisy forecast of inits 8..11, leads 1..3."""
    truth = latlon_dataset(n_time=20, n_lat=4, n_lon=6, variables=("z",))
    truth.to_netcdf(tmp_path / "truth.nc")
    fc = noisy(wb2_forecast(truth, init_idx=[8, 9, 10, 11], n_leads=3, first_lead=1), 1)
    return truth, fc


def hand(truth: xr.Dataset, fc: np.ndarray, inits, mask: np.ndarray | None = None, clim=None):
    """Per lead 1..3: RMSE of the forecast, persistence (and the climatology) over `inits`
    (positions in the truth), NaN where `mask` (init, lead, y, x) is False."""
    z = truth.z.values.astype(np.float64)
    lat = truth.latitude.values
    obs = np.stack([[z[i + lead] for lead in (1, 2, 3)] for i in inits])
    pers = np.stack([[z[i]] * 3 for i in inits])
    m = np.ones(obs.shape, bool) if mask is None else mask
    out = {}
    for name, f in (("fc", fc), ("persistence", pers), ("climatology", clim)):
        if f is not None:
            err = np.where(m, np.broadcast_to(f, obs.shape) - obs, np.nan)
            out[name] = [w_rmse(err[:, k], lat) for k in range(3)]
    return out


# --------------------------------------------------------------------------- one case set


def test_persistence_and_climatology_are_scored_on_exactly_the_forecasts_finite_done_cases(
    tmp_path, daily
):
    truth, fc = daily
    fc.z[1] = np.nan  # a NaN context frame: the whole sequence is NaN
    fc.z[2, 1, 0, 0] = np.nan  # one cell of one case
    # init 11 was written but a kill came before its done flag
    fc.assign_coords(minconv_done=("time", [True, True, True, False])).to_zarr(tmp_path / "fc.zarr")
    clim = truth.isel(time=slice(0, 8)).mean("time", keep_attrs=True)
    clim.to_netcdf(tmp_path / "clim.nc")
    result = run(tmp_path / "fc.zarr", tmp_path / "truth.nc", "--climatology",
                 tmp_path / "clim.nc", "--out", tmp_path / "s")  # fmt: skip
    assert result.exit_code == 0, result.output
    records, overlap = scored(tmp_path / "s")

    mask = np.ones((2, 3, 4, 6), bool)
    mask[1, 1, 0, 0] = False  # init 10, lead 2, cell (0, 0): out of every row
    values = fc.z.values[[0, 2]].astype(np.float64)
    expect = hand(truth, values, [8, 10], mask, clim.z.values.astype(np.float64))
    for name in ("fc", "persistence", "climatology"):
        got = records_of(records, name, "rmse")
        assert [got[k] for k in LEADS] == pytest.approx(expect[name], rel=1e-5), name
    skill = records_of(records, "fc", "skill_vs_persistence")
    want = 1 - np.square(expect["fc"]) / np.square(expect["persistence"])
    assert [skill[k] for k in LEADS] == pytest.approx(want, rel=1e-4)

    # ACC: per case over its scored cells, then the mean over the 2 x 3 cases
    z = truth.z.values.astype(np.float64)
    lat, c = truth.latitude.values, clim.z.values.astype(np.float64)
    for k, lead in enumerate(LEADS):
        accs = []
        for j, i in enumerate((8, 10)):
            ok = mask[j, k]
            w = weights(lat, ok.shape)[ok]
            fa, oa = (values[j, k] - c)[ok], (z[i + k + 1] - c)[ok]
            accs.append((w * fa * oa).sum() / np.sqrt((w * fa**2).sum() * (w * oa**2).sum()))
        assert records_of(records, "fc", "acc")[lead] == pytest.approx(np.mean(accs), rel=1e-5)

    assert overlap[0]["cases"] == 6 and overlap[0]["of_cases"] == 12
    assert overlap[0]["dropped"] == {**NO_DROPS, "unfinished": 3, "nan_forecast": 3}
    assert overlap[0]["case"] == ["time", "prediction_timedelta"]
    assert "6/12 (time, prediction_timedelta) cases scored; dropped: 3 unfinished sequence, " \
        "3 NaN in the forecast" in " ".join(result.output.split())  # fmt: skip
    with xr.open_dataset(tmp_path / "s" / "scores.nc") as nc:
        assert json.loads(nc.attrs["overlap"])[0]["dropped"]["unfinished"] == 3
    csv = (tmp_path / "s" / "overlap.csv").read_text().splitlines()
    assert csv[0] == "forecast,case,cases,of_cases," + ",".join(NO_DROPS)
    assert csv[1] == "fc,time prediction_timedelta,6,12,0,3,3,0,0,0"


def test_cases_with_nan_truth_or_a_nan_reference_are_dropped_from_every_row_and_counted(
    tmp_path, daily
):
    truth, _ = daily
    truth = truth.copy(deep=True)
    truth.z[12] = np.nan  # a missing observation: the valid time of 2 cases, the init of 3
    truth.to_netcdf(tmp_path / "truth.nc")
    fc = noisy(wb2_forecast(latlon_dataset(n_time=20, n_lat=4, n_lon=6, variables=("z",)),
                            init_idx=[8, 9, 10, 12], n_leads=3, first_lead=1), 2)  # fmt: skip
    fc.to_zarr(tmp_path / "fc.zarr")
    clim = truth.isel(time=slice(0, 8)).mean("time", keep_attrs=True)
    clim.z[1, 1] = np.nan  # a cell the climatology file lacks
    clim.to_netcdf(tmp_path / "clim.nc")
    result = run(tmp_path / "fc.zarr", tmp_path / "truth.nc", "--climatology",
                 tmp_path / "clim.nc", "--out", tmp_path / "s", "-m", "rmse")  # fmt: skip
    assert result.exit_code == 0, result.output
    records, overlap = scored(tmp_path / "s")
    assert overlap[0]["dropped"] == {**NO_DROPS, "nan_truth": 2, "nan_reference": 3}
    assert overlap[0]["cases"] == 7

    inits = [8, 9, 10]  # init 12 has no persistence
    mask = np.ones((3, 3, 4, 6), bool)
    mask[1, 2] = mask[2, 1] = False  # valid time 12
    mask[..., 1, 1] = False  # no climatology there
    values = fc.z.values[:3].astype(np.float64)
    expect = hand(truth, values, inits, mask, clim.z.values.astype(np.float64))
    for name in ("fc", "persistence", "climatology"):
        got = records_of(records, name, "rmse")
        assert [got[k] for k in LEADS] == pytest.approx(expect[name], rel=1e-5), name


def test_compared_forecasts_and_the_references_are_all_scored_on_one_case_set(tmp_path, daily):
    truth, fc = daily
    fc.to_zarr(tmp_path / "fc.zarr")
    base = noisy(wb2_forecast(truth, init_idx=[8, 9, 10], n_leads=3, first_lead=1), 7, 60.0)
    base.z[1] = np.nan  # init 9 failed in the compared forecast; init 11 it never ran
    base.to_zarr(tmp_path / "base.zarr")
    result = run(tmp_path / "fc.zarr", tmp_path / "truth.nc", "--compare",
                 f"base={tmp_path / 'base.zarr'}", "--references", "persistence",
                 "-m", "rmse", "--out", tmp_path / "s")  # fmt: skip
    assert result.exit_code == 0, result.output
    records, overlap = scored(tmp_path / "s")
    expect = hand(truth, fc.z.values[[0, 2]].astype(np.float64), [8, 10])
    mine = hand(truth, base.z.values[[0, 2]].astype(np.float64), [8, 10])["fc"]
    for name, want in (
        ("fc", expect["fc"]),
        ("base", mine),
        ("persistence", expect["persistence"]),
    ):
        got = records_of(records, name, "rmse")
        assert [got[k] for k in LEADS] == pytest.approx(want, rel=1e-5), name
    skill = records_of(records, "base", "skill_vs_persistence")
    want = 1 - np.square(mine) / np.square(expect["persistence"])
    assert [skill[k] for k in LEADS] == pytest.approx(want, rel=1e-4)
    main, other = overlap
    assert (main["cases"], main["of_cases"]) == (6, 12)
    assert main["dropped"] == {**NO_DROPS, "other_forecast": 6}
    assert (other["forecast"], other["cases"], other["of_cases"]) == ("base", 6, 9)
    assert other["dropped"] == {**NO_DROPS, "nan_forecast": 3}


def test_an_ensemble_case_is_scored_only_where_every_member_is_done_and_finite(tmp_path):
    """A real rollout ensemble (tests/fixtures): one member of the second init time killed before
    it was written, one member cell NaN in the first."""
    store = tmp_path / "ens.zarr"
    shutil.copytree(FIXTURES / "latlon_ensemble.zarr", store)
    group = zarr.open_group(str(store), mode="r+")
    group["minconv_done"][1, 0] = False
    (store / "z" / "1.0.0.0.0.0").unlink()  # never written: not done, so just unfinished
    group["z"][0, 1, 0, 0, 0, 0] = np.nan
    result = run(store, FIXTURES / "latlon.nc", "--references", "persistence",
                 "-m", "rmse", "--out", tmp_path / "s")  # fmt: skip
    assert result.exit_code == 0, result.output
    records, overlap = scored(tmp_path / "s")
    assert (overlap[0]["cases"], overlap[0]["of_cases"]) == (2, 4)
    assert overlap[0]["dropped"] == {**NO_DROPS, "unfinished": 2}

    truth = xr.open_dataset(FIXTURES / "latlon.nc").z.values.astype(np.float64)
    # init 2000-01-10: (member, lead, level, y, x)
    members = xr.open_zarr(store).z.values[0].astype(np.float64)
    lat = xr.open_dataset(FIXTURES / "latlon.nc").latitude.values
    obs = truth[[10, 11]]  # (L, level, y, x)
    ok = np.isfinite(members).all(0)
    for lv, channel in enumerate(("z_500", "z_850")):
        for k, lead in enumerate(("P1D", "P2D")):
            m = ok[k, lv]
            want = {
                "persistence": w_rmse(np.where(m, truth[9, lv] - obs[k, lv], np.nan), lat),
                "ens": w_rmse(np.where(m, members[:, k, lv].mean(0) - obs[k, lv], np.nan), lat),
            }
            for name, value in want.items():
                assert records_of(records, name, "rmse", channel)[lead] == pytest.approx(
                    value, rel=1e-5
                ), (name, channel, lead)
            crps = hand_crps(members[:, k, lv], obs[k, lv], fair=False)
            assert records_of(records, "ens", "crps", channel)[lead] == pytest.approx(
                w_mean(np.where(m, crps, np.nan), lat), rel=1e-5
            )


def test_no_case_left_to_score_is_an_error_not_an_empty_report(tmp_path, daily):
    _, fc = daily
    fc.assign_coords(minconv_done=("time", [False] * 4)).to_zarr(tmp_path / "fc.zarr")
    line = one_error_line(run(tmp_path / "fc.zarr", tmp_path / "truth.nc", "--out", tmp_path / "s"))
    assert "no case left to score (12 unfinished sequence)" in line
    assert not (tmp_path / "s").exists()


def test_a_lazy_store_gives_the_in_memory_scores_and_case_counts(tmp_path, daily):
    truth, fc = daily
    fc.z[1] = np.nan
    fc.assign_coords(minconv_done=("time", [True, True, True, False])).to_zarr(tmp_path / "fc.zarr")
    base = noisy(wb2_forecast(truth, init_idx=[8, 9, 10], n_leads=3, first_lead=1), 3)
    base.z[0, 0, 1, 1] = np.nan
    base.z[2] = np.nan
    base.to_zarr(tmp_path / "base.zarr")
    clim = truth.isel(time=slice(0, 8)).mean("time", keep_attrs=True)
    clim.to_netcdf(tmp_path / "clim.nc")
    kw = {"compare": [str(tmp_path / "base.zarr")], "climatology": tmp_path / "clim.nc"}
    in_memory = evaluate(tmp_path / "fc.zarr", tmp_path / "truth.nc", **kw)
    lazy = evaluate(tmp_path / "fc.zarr", tmp_path / "truth.nc", load_below=0, **kw)
    np.testing.assert_allclose(lazy.table.values, in_memory.table.values, rtol=1e-6)
    assert lazy.overlap == in_memory.overlap
    # the mask and the counts stay lazy (dask) along with the store: nothing is loaded whole
    main = align(open_forecast(tmp_path / "fc.zarr"), open_fields(tmp_path / "truth.nc"), True, 0)
    cases = common_cases([main], {"persistence": {"z": main.persistence["z"]}}, None)
    for x in (cases.forecast[("fc", "z")], cases.truth["z"], cases.alive["fc"]["all"]):
        assert dask.is_dask_collection(x)
    assert in_memory.overlap[0]["dropped"] == {
        **NO_DROPS, "unfinished": 3, "nan_forecast": 3, "other_forecast": 3}  # fmt: skip


# --------------------------------------------------------------------------- done flags vs chunks


def test_a_chunk_missing_where_the_store_says_done_is_a_damaged_store_even_with_the_option(
    tmp_path,
):
    import zarr

    from minconv_cli.rollout.store import EVERY_CHUNK_ATTR

    store = tmp_path / "ens.zarr"
    shutil.copytree(FIXTURES / "latlon_ensemble.zarr", store)
    zarr.open_group(store).attrs[EVERY_CHUNK_ATTR] = 1  # as this release's rollout writes it
    zarr.consolidate_metadata(store)
    (store / "z" / "1.1.0.0.0.0").unlink()  # init 2000-01-11, member 1: flagged done
    for extra in ([], ["--allow-missing-chunks"]):
        line = one_error_line(run(store, FIXTURES / "latlon.nc", "--out", tmp_path / "s", *extra))
        assert line.startswith(f"error: {store}: damaged store: 1 chunk(s) of variable 'z'")
        assert "init time 2000-01-11T00:00:00, member 1" in line
    assert not (tmp_path / "s").exists()


def test_a_store_of_an_earlier_release_may_have_its_missing_chunks_read_as_nan(tmp_path):
    """Earlier releases left all-NaN chunks out, so there only the option tells damage apart."""
    store = tmp_path / "ens.zarr"
    shutil.copytree(FIXTURES / "latlon_ensemble.zarr", store)
    (store / "z" / "1.1.0.0.0.0").unlink()
    line = one_error_line(run(store, FIXTURES / "latlon.nc", "--out", tmp_path / "s"))
    assert "damaged store" in line and "--allow-missing-chunks reads them as NaN" in line
    result = run(store, FIXTURES / "latlon.nc", "--out", tmp_path / "s", "--allow-missing-chunks")
    assert result.exit_code == 0, result.output


def test_a_store_without_done_flags_refuses_missing_chunks_unless_allowed(tmp_path, daily):
    _, fc = daily
    fc.z[1] = np.nan
    # chunked by init time the zarr-python way: the all-NaN chunk is not stored
    fc.to_zarr(tmp_path / "fc.zarr", encoding={"z": {"chunks": (1, 3, 4, 6)}})
    assert missing_chunks(tmp_path / "fc.zarr", "z") == [(1, 0, 0, 0)]
    line = one_error_line(run(tmp_path / "fc.zarr", tmp_path / "truth.nc", "--out", tmp_path / "s"))
    assert "'z' has 1 missing chunk(s)" in line and "--allow-missing-chunks" in line
    result = run(tmp_path / "fc.zarr", tmp_path / "truth.nc", "--out", tmp_path / "s",
                 "--allow-missing-chunks")  # fmt: skip
    assert result.exit_code == 0, result.output
    assert scored(tmp_path / "s")[1][0]["dropped"]["nan_forecast"] == 3


def test_truth_chunks_missing_are_refused_unless_allowed_and_then_counted_as_nan_truth(
    tmp_path, daily
):
    truth, fc = daily
    fc.to_zarr(tmp_path / "fc.zarr")
    truth.to_zarr(tmp_path / "truth.zarr", encoding={"z": {"chunks": (1, 4, 6)}})
    (tmp_path / "truth.zarr" / "z" / "c" / "12" / "0" / "0").unlink()
    args = [tmp_path / "fc.zarr", tmp_path / "truth.zarr", "--references", "persistence",
            "-m", "rmse", "--out", tmp_path / "s"]  # fmt: skip
    line = one_error_line(run(*args))
    assert "missing chunk" in line and "truth.zarr" in line
    result = run(*args, "--allow-missing-chunks")
    assert result.exit_code == 0, result.output
    records, overlap = scored(tmp_path / "s")
    # valid time 12: init 9 lead 3, init 10 lead 2, init 11 lead 1; no init time is 12
    assert overlap[0]["dropped"] == {**NO_DROPS, "nan_truth": 3}
    mask = np.ones((4, 3, 4, 6), bool)
    mask[1, 2] = mask[2, 1] = mask[3, 0] = False
    expect = hand(truth, fc.z.values.astype(np.float64), [8, 9, 10, 11], mask)
    got = records_of(records, "persistence", "rmse")
    assert [got[k] for k in LEADS] == pytest.approx(expect["persistence"], rel=1e-5)


# --------------------------------------------------------------------------- units


def _in_metres(tmp_path, truth, fc, which):
    metres = truth.z.assign_attrs(units="m").to_dataset()
    if which == "truth":
        metres.to_netcdf(tmp_path / "other.nc")
        return ["--references", "persistence"], tmp_path / "other.nc", tmp_path / "fc.zarr"
    if which == "climatology":
        metres.mean("time", keep_attrs=True).to_netcdf(tmp_path / "clim.nc")
        return ["--climatology", tmp_path / "clim.nc"], tmp_path / "clim.nc", tmp_path / "fc.zarr"
    fc.assign(z=fc.z.assign_attrs(units="m")).to_zarr(tmp_path / "cmp.zarr")
    return ["--compare", tmp_path / "cmp.zarr"], tmp_path / "cmp.zarr", tmp_path / "fc.zarr"


@pytest.mark.parametrize("which", ["truth", "climatology", "compare"])
def test_a_variable_in_other_units_than_the_forecast_is_refused_in_one_line(tmp_path, daily, which):
    truth, fc = daily
    fc.to_zarr(tmp_path / "fc.zarr")
    extra, culprit, forecast = _in_metres(tmp_path, truth, fc, which)
    data = culprit if which == "truth" else tmp_path / "truth.nc"
    line = one_error_line(run(tmp_path / "fc.zarr", data, *extra, "--out", tmp_path / "s"))
    assert line == (
        f"error: {culprit}: variable 'z' is in 'm' but the forecast {forecast} is in 'm**2 s**-2'"
    )
    assert not (tmp_path / "s").exists()


def test_units_missing_on_one_side_are_allowed_with_a_note(tmp_path, daily):
    truth, fc = daily
    fc.to_zarr(tmp_path / "fc.zarr")
    bare = truth.copy()
    bare.z.attrs.pop("units")
    bare.to_netcdf(tmp_path / "bare.nc")
    result = run(tmp_path / "fc.zarr", tmp_path / "bare.nc", "--out", tmp_path / "s")
    assert result.exit_code == 0, result.output
    assert f"units of 'z' not checked: {tmp_path / 'bare.nc'} gives none" in " ".join(
        result.output.split()
    )


# --------------------------------------------------------------------------- earlier stores


def test_complete_rollout_stores_of_an_earlier_release_score_exactly_as_before(tmp_path):
    """Numbers from the release before the common case set (no NaN, nothing unfinished)."""
    det = evaluate(FIXTURES / "traj_forecast.zarr", FIXTURES / "traj.nc").records
    assert records_of(det, "persistence", "rmse", "vorticity")["2"] == 0.4863643944263458
    assert records_of(det, "climatology", "rmse", "vorticity")["3"] == 0.6673218607902527
    assert records_of(det, "traj_forecast", "skill_vs_climatology", "vorticity")["2"] == (
        -2.6350796222686768
    )
    ens = evaluate(FIXTURES / "latlon_ensemble.zarr", FIXTURES / "latlon.nc").records
    assert records_of(ens, "persistence", "bias", "z_500")["P2D"] == 4.2769190033732265
    assert records_of(ens, "latlon_ensemble", "skill_vs_persistence", "z_850")["P2D"] == (
        -1.366669157045548
    )
