"""Per-variable data transforms (dbr, log1p): pure round trips, fitted in the transformed space,
stored in the checkpoint, inverted on the way out so that forecast stores hold rain rate in mm/h."""

import json
from pathlib import Path

import dask.array as dsa
import numpy as np
import pytest
import torch
import xarray as xr
from factories import radar_dataset
from typer.testing import CliRunner

from minconv_cli.cli import app
from minconv_cli.core.errors import MinconvError
from minconv_cli.data import Normalizer, open_fields
from minconv_cli.data.transforms import parse_assignments, parse_spec
from minconv_cli.models.checkpoint import load_checkpoint

runner = CliRunner()
FIXTURES = Path(__file__).parent / "fixtures"
RAIN = np.array([0.0, 0.0, 0.05, 0.0999, 0.1, 0.37, 2.0, 55.0, np.nan], dtype=np.float32)
DRY = RAIN < 0.1  # NaN compares False: not dry


@pytest.mark.parametrize("kind", ["numpy", "torch"])
def test_dbr_round_trip_keeps_rain_drops_drizzle_and_keeps_zero_and_nan(kind):
    dbr = parse_spec("dbr", "--transform")
    x = torch.from_numpy(RAIN.copy()) if kind == "torch" else RAIN.copy()
    back = np.asarray(dbr.inverse(dbr.forward(x)))
    assert back.dtype == np.float32
    assert np.all(back[DRY] == 0.0)  # zero rain and drizzle below the threshold: exactly 0
    wet = ~DRY & np.isfinite(RAIN)
    np.testing.assert_allclose(back[wet], RAIN[wet], rtol=1e-5)
    assert np.isnan(back[-1])


def test_dbr_is_ten_log10_with_the_floor_below_the_threshold():
    dbr = parse_spec("dbr", "--transform")
    assert dbr.spec == "dbr:threshold=0.1,floor=-15.0"  # pySTEPS' dB_transform defaults
    np.testing.assert_allclose(dbr.forward(np.array([0.0, 0.05, 1.0, 10.0])), [-15, -15, 0, 10])
    custom = parse_spec("dbr:threshold=0.5,floor=-20", "--transform")
    assert custom.forward(np.array([0.2]))[0] == -20.0
    # anything the model puts below 10 log10(threshold) is no rain, exactly
    inverse = custom.inverse(np.array([-40.0, -20.0, 10 * np.log10(0.5) - 1e-6, 10.0]))
    assert inverse[:3].tolist() == [0.0, 0.0, 0.0]
    assert inverse[3] == pytest.approx(10.0)


def test_log1p_round_trips_and_its_inverse_clips_at_zero():
    log1p = parse_spec("log1p", "data.transforms.rain_rate")
    x = np.array([0.0, 0.3, 12.0, np.nan])
    back = log1p.inverse(log1p.forward(x))
    np.testing.assert_allclose(back[:3], x[:3], rtol=1e-12)
    assert back[0] == 0.0 and np.isnan(back[3])
    below = log1p.inverse(torch.tensor([-2.0, -0.01, float("nan")]))
    assert below[:2].tolist() == [0.0, 0.0] and torch.isnan(below[2])


def test_transforms_on_dask_arrays_stay_lazy_and_agree_with_numpy():
    dbr = parse_spec("dbr", "--transform")
    lazy = dbr.forward(dsa.from_array(RAIN.astype(np.float64), chunks=3))
    assert isinstance(lazy, dsa.Array)
    np.testing.assert_array_equal(lazy.compute(), dbr.forward(RAIN.astype(np.float64)))


@pytest.mark.parametrize(
    "spec, words",
    [
        ("db", "unknown transform 'db'"),
        ("dbr:threshold=0", "threshold must be a positive number"),
        ("dbr:floor=-5", "floor must be below 10 log10(threshold) = -10 dBR"),
        ("dbr:thresh=0.1", "bad transform parameter 'thresh=0.1'"),
        ("dbr:threshold=abc", "threshold='abc' is not a number"),
        ("log1p:threshold=1", "bad transform parameter"),
    ],
)
def test_a_bad_spec_is_one_line_naming_the_option(spec, words):
    with pytest.raises(MinconvError) as err:
        parse_assignments([f"rain_rate={spec}"], "--transform")
    assert str(err.value).startswith(f"--transform 'rain_rate={spec}': ")
    assert words in str(err.value) and "\n" not in str(err.value)


def test_assignments_need_a_variable_and_name_it_once():
    assert parse_assignments(["rain_rate=dbr", "snow=log1p"], "--transform") == {
        "rain_rate": "dbr:threshold=0.1,floor=-15.0",
        "snow": "log1p",
    }
    with pytest.raises(MinconvError, match="expected VARIABLE=TRANSFORM"):
        parse_assignments(["dbr"], "--transform")
    with pytest.raises(MinconvError, match="'rain_rate' is given twice"):
        parse_assignments(["rain_rate=dbr", "rain_rate=log1p"], "--transform")


def rain_dataset(n_time: int = 40, n: int = 16, negative: bool = False) -> xr.Dataset:
    """Radar-like rain rate (mm/h, mostly zero) with NaN outside a circular coverage."""
    ds = radar_dataset(n_time=n_time, n=n, blobs=4, seed=3).rename({"precip": "rain_rate"})
    yy, xx = np.mgrid[:n, :n]
    outside = (yy - n / 2 + 0.5) ** 2 + (xx - n / 2 + 0.5) ** 2 > (n / 2) ** 2
    rain = ds["rain_rate"].values
    rain[:, outside] = np.nan
    if negative:
        rain[5, n // 2, n // 2] = -0.5  # a bad calibration
    ds["rain_rate"].values = rain
    return ds


def test_normaliser_fits_the_transformed_values_and_inverts_on_the_way_out(tmp_path):
    rain_dataset().to_netcdf(tmp_path / "r.nc")
    fields = open_fields(tmp_path / "r.nc")
    dbr = parse_spec("dbr", "data.transforms.rain_rate")
    norm = Normalizer.fit(fields, {"rain_rate": dbr})
    raw = fields.array().astype(np.float64)
    assert (raw == 0).mean() > 0.3  # mostly dry
    db = dbr.forward(raw)
    assert norm.mean[0] == pytest.approx(np.nanmean(db))
    assert norm.std[0] == pytest.approx(np.nanstd(db))
    x, mask = norm.normalize(fields.array())
    assert np.array_equal(mask, np.isfinite(raw)) and np.all(x[~mask] == 0)
    back = norm.denormalize(torch.from_numpy(x)).numpy()
    assert np.all(back[raw == 0] == 0.0)
    np.testing.assert_allclose(back[raw >= 0.1], raw[raw >= 0.1], rtol=1e-4)
    stored = Normalizer.from_dict(json.loads(json.dumps(norm.to_dict())))
    assert stored.transform_specs() == {"rain_rate": "dbr:threshold=0.1,floor=-15.0"}
    plain = Normalizer.fit(fields)
    assert "transforms" not in plain.to_dict()  # what earlier releases stored, unchanged


def test_lazy_data_is_fitted_chunk_by_chunk_in_the_transformed_space(tmp_path, monkeypatch):
    ds = rain_dataset(negative=True)
    ds.to_zarr(tmp_path / "r.zarr", encoding={"rain_rate": {"chunks": (5, 16, 16)}})
    memory = open_fields(tmp_path / "r.zarr")
    monkeypatch.setattr("minconv_cli.data.open.LOAD_BELOW_BYTES", 0)
    lazy = open_fields(tmp_path / "r.zarr")
    assert lazy.is_lazy and not memory.is_lazy
    log1p = {"rain_rate": parse_spec("log1p", "x")}
    for fields in (memory, lazy):
        with pytest.raises(MinconvError, match=r"negative values \(min -0.5\); --transform log1p"):
            Normalizer.fit(fields, log1p)
    ds["rain_rate"].values = np.abs(ds["rain_rate"].values)
    ds.to_zarr(tmp_path / "ok.zarr", encoding={"rain_rate": {"chunks": (5, 16, 16)}})
    fitted = Normalizer.fit(open_fields(tmp_path / "ok.zarr"), log1p)
    assert fitted.mean[0] == pytest.approx(np.nanmean(np.log1p(ds["rain_rate"].values)), rel=1e-6)


def test_a_transform_of_a_variable_that_is_not_predicted_is_refused(tmp_path):
    rain_dataset(n_time=4).to_netcdf(tmp_path / "r.nc")
    fields = open_fields(tmp_path / "r.nc")
    with pytest.raises(MinconvError, match=r"'snow' is not in the data; .*\(rain_rate\)"):
        Normalizer.fit(fields, {"snow": parse_spec("log1p", "x")})


def test_old_checkpoints_without_transforms_load_as_none():
    meta = load_checkpoint(FIXTURES / "traj_model.pt").meta
    assert "transforms" not in meta.data.normalizer
    norm = Normalizer.from_dict(meta.data.normalizer)
    assert norm.transform_specs() == {} and all(t.name == "none" for t in norm.transforms)
    z = torch.randn(1, len(norm.channels), 4, 4)
    std = torch.as_tensor(norm.std, dtype=torch.float32)[:, None, None]
    mean = torch.as_tensor(norm.mean, dtype=torch.float32)[:, None, None]
    assert torch.equal(norm.denormalize(z), z * std + mean)


TRAIN = [
    "--model", "minconvgru", "--width", "4", "--layers", "1", "--context", "4",
    "--horizon", "2", "--epochs", "4", "--batch-size", "4", "--device", "cpu",
    "--train-period", "0.0:0.6", "--val-period", "0.6:1.0", "--set", "data.stride=2", "--lr", "0.01",
]  # fmt: skip


def invoke(*args: str):
    return runner.invoke(app, [*args, "--quiet"])


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny model trained on dBR rain rate, and its forecast store."""
    tmp = tmp_path_factory.mktemp("dbr")
    data = str(tmp / "rain.nc")
    rain_dataset().to_netcdf(data)
    result = invoke(
        "train", data, *TRAIN, "--transform", "rain_rate=dbr", "--out", str(tmp / "run")
    )
    assert result.exit_code == 0, result.output
    store = tmp / "f.zarr"
    result = invoke(
        "rollout", str(tmp / "run" / "model.pt"), data, "--steps", "3",
        "--init-times", "2024-06-01T16:00", "--device", "cpu", "--precision", "fp32", "--out", str(store),
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    return {"data": data, "model": tmp / "run" / "model.pt", "store": store}


def test_the_checkpoint_holds_the_transform_and_the_statistics_of_dbr(trained):
    norm = Normalizer.from_dict(load_checkpoint(trained["model"]).meta.data.normalizer)
    assert norm.transform_specs() == {"rain_rate": "dbr:threshold=0.1,floor=-15.0"}
    train = xr.open_dataset(trained["data"])["rain_rate"].values[:24].astype(np.float64)
    db = parse_spec("dbr", "x").forward(train)  # the training split: the first 60 % of 40
    assert norm.mean[0] == pytest.approx(np.nanmean(db))
    assert norm.std[0] == pytest.approx(np.nanstd(db))


def model_output(
    model_path: Path, data: str, init: int, steps: int
) -> tuple[np.ndarray, Normalizer]:
    """The checkpoint's own leads for one init, normalised (dBR space), run here by hand."""
    loaded = load_checkpoint(model_path)
    norm = Normalizer.from_dict(loaded.meta.data.normalizer)
    rain = xr.open_dataset(data)["rain_rate"].values
    x, _ = norm.normalize(rain[init - 3 : init + 1][None, :, None])  # 4 context frames
    with torch.inference_mode():
        y, state = loaded.model(torch.from_numpy(x), context=4, return_state=True)
        leads = [y[:, -1]]
        for _ in range(steps - 1):
            pred, state = loaded.model.step(leads[-1], state)
            leads.append(pred)
    return torch.stack(leads, 1)[0, :, 0].numpy(), norm


def test_the_store_holds_rain_rate_the_inverse_of_the_model_output(trained):
    store = xr.open_zarr(trained["store"])
    assert json.loads(store.attrs["minconv_transform"]) == {
        "rain_rate": "dbr:threshold=0.1,floor=-15.0"
    }
    forecast = store["rain_rate"].isel(time=0).values  # (lead, y, x)
    init = 24  # 2024-06-01T16:00 in 10-minute steps from 12:00
    z, norm = model_output(trained["model"], trained["data"], init, 3)
    db = z * norm.std[0] + norm.mean[0]
    coverage = np.isfinite(xr.open_dataset(trained["data"])["rain_rate"].values[init])
    assert np.all(np.isnan(forecast[:, ~coverage]))  # outside the radar: NaN, as the init frame
    inside = forecast[:, coverage]
    assert np.all(inside >= 0)
    dry = db[:, coverage] < -10.0  # the model says below 0.1 mm/h
    assert dry.sum() > 10 and np.all(inside[dry] == 0.0)  # exactly dry in the store
    expected = parse_spec("dbr", "x").inverse(db)
    np.testing.assert_allclose(inside, expected[:, coverage], rtol=1e-5, atol=1e-6)


def test_negative_rain_with_a_transform_is_one_line_and_nothing_is_written(tmp_path):
    rain_dataset(negative=True).to_netcdf(tmp_path / "bad.nc")
    out = tmp_path / "run"
    result = invoke(
        "train", str(tmp_path / "bad.nc"), *TRAIN, "--transform", "rain_rate=dbr", "--out", str(out)
    )
    assert result.exit_code != 0
    message = result.output.strip()
    assert message.count("\n") == 0 and "Traceback" not in message
    assert (
        "variable 'rain_rate' has negative values (min -0.5); --transform dbr needs values >= 0"
        in message
    )
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.nc"]


def test_a_bad_transform_option_is_refused_before_anything_is_read_or_written(tmp_path):
    rain_dataset(n_time=8).to_netcdf(tmp_path / "r.nc")
    result = invoke(
        "train",
        str(tmp_path / "r.nc"),
        *TRAIN,
        "--transform",
        "rain_rate=dbr:floor=0",
        "--out",
        str(tmp_path / "run"),
    )
    assert result.exit_code != 0
    assert "--transform 'rain_rate=dbr:floor=0': dbr floor must be below" in result.output
    assert not (tmp_path / "run").exists()


def test_the_config_key_names_an_unknown_variable_and_the_file_ones(tmp_path):
    rain_dataset(n_time=8).to_netcdf(tmp_path / "r.nc")
    (tmp_path / "c.yaml").write_text("data:\n  transforms:\n    rainrate: dbr\n")
    result = invoke(
        "train",
        str(tmp_path / "r.nc"),
        *TRAIN,
        "-c",
        str(tmp_path / "c.yaml"),
        "--out",
        str(tmp_path / "run"),
    )
    assert result.exit_code != 0
    assert "data.transforms: 'rainrate' is not in the data" in result.output
    assert "(rain_rate)" in result.output and not (tmp_path / "run").exists()


def test_an_ensemble_is_perturbed_in_the_transformed_space_where_its_std_was_fitted(tmp_path):
    rain_dataset().to_netcdf(tmp_path / "r.nc")
    fields = open_fields(tmp_path / "r.nc")
    norm = Normalizer.fit(fields, {"rain_rate": parse_spec("dbr", "x")})
    frames = fields.array()[:4][None]  # (1, T, C, H, W) mm/h
    shift = float(norm.std[0])  # one std of dBR added: a factor 10**(std/10) on wet cells
    moved = norm.in_model_space(frames, lambda f: f + shift)
    wet = frames >= 0.1
    np.testing.assert_allclose(moved[wet], frames[wet] * 10 ** (shift / 10), rtol=1e-5)
    assert np.array_equal(np.isnan(moved), np.isnan(frames))
    assert np.all(moved[np.isfinite(moved)] >= 0)  # never negative rain
    plain = Normalizer.fit(fields)
    np.testing.assert_array_equal(plain.in_model_space(frames, lambda f: f + 1.0), frames + 1.0)


def test_an_ensemble_rollout_of_a_dbr_model_keeps_every_member_non_negative(trained, tmp_path):
    store = tmp_path / "ens.zarr"
    result = invoke(
        "rollout", str(trained["model"]), trained["data"], "--steps", "2", "--members", "3",
        "--perturbation", "0.5", "--init-times", "2024-06-01T16:00", "--out", str(store),
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    fc = xr.open_zarr(store)["rain_rate"].isel(time=0).values  # (member, lead, y, x)
    assert np.all(fc[np.isfinite(fc)] >= 0)
    assert np.abs(fc[1] - fc[0])[np.isfinite(fc[0])].max() > 0  # the perturbed member differs
