"""Exit 0 means the input was what it claimed to be: damaged or ambiguous input data is refused.

Through the real commands on real files: ±inf and values beyond float32 arithmetic, Zarr chunks or
array metadata that are not stored, names given twice, empty periods and a validation period that
overlaps the training one each end in one error line naming the file or option, and nothing is
written. NaN stays missing data.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml
from factories import latlon_dataset, trajectory_dataset
from typer.testing import CliRunner

from minconv_cli.cli import app
from minconv_cli.data import open_fields
from minconv_cli.data.sample import sample_path
from minconv_cli.data.splits import split_overlap
from minconv_cli.training.data import default_splits

runner = CliRunner()
TINY = ["--context", "3", "--horizon", "2", "--epochs", "1", "--batch-size", "4", "--width", "4"]
TINY += ["--device", "cpu", "--quiet"]
PERIODS = ["--train-period", "0.0:0.6", "--val-period", "0.6:1.0"]
ROLLOUT = ["--steps", "2", "--device", "cpu", "--precision", "fp32", "--quiet"]
CHUNKS = {"z": {"chunks": (5, 4, 8)}, "t": {"chunks": (5, 4, 8)}}  # 6 chunks of 5 days each


def data(n_time: int = 30, **kwargs):
    """30 days (2000-01-01 ...) of z and t on a 4 x 8 grid."""
    return latlon_dataset(n_time=n_time, n_lat=4, n_lon=8, **kwargs)


def invoke(*args) -> object:
    return runner.invoke(app, [str(a) for a in args])


def error_line(result) -> str:
    """The one stderr line of a refused command (exit 1, no traceback)."""
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), result.stderr
    return " ".join(lines[0].split())


def refused_train(*args, out: Path) -> str:
    """Train with `args`, expect one error line, and that the run directory was not made."""
    line = error_line(invoke("train", *args, *TINY, "--out", out))
    assert not out.exists(), sorted(p.name for p in out.iterdir())
    return line


def trains(*args, out: Path) -> None:
    result = invoke("train", *args, *TINY, "--out", out)
    assert result.exit_code == 0, result.output
    assert (out / "model.pt").is_file()


# --- validation that scores nothing -------------------------------------------------------------


def test_a_validation_period_without_a_valid_value_is_an_error_not_an_rmse_of_zero(tmp_path):
    ds = data()
    ds["z"].values[18:] = np.nan  # the whole validation period of z is missing
    ds.to_netcdf(tmp_path / "gap.nc")
    line = refused_train(tmp_path / "gap.nc", *PERIODS, out=tmp_path / "run")
    assert "validation windows hold no valid (non-NaN) value of 'z'" in line
    assert not (tmp_path / "run").exists()


# --- non-finite and overflowing values ----------------------------------------------------------


@pytest.mark.parametrize("value, shown", [(np.inf, "inf"), (-np.inf, "-inf")])
def test_inf_in_a_variable_is_an_error_naming_file_variable_and_first_time(tmp_path, value, shown):
    ds = data()
    ds["z"].values[5, 1, 1] = value
    ds["z"].values[9, 0, 0] = value
    ds.to_netcdf(tmp_path / "inf.nc")
    line = refused_train(tmp_path / "inf.nc", *PERIODS, out=tmp_path / "run")
    assert f"inf.nc: variable 'z' at time 2000-01-06 holds {shown}" in line
    assert "all NaN" not in line


def test_float64_values_beyond_the_float32_range_are_an_error(tmp_path):
    ds = data()
    ds["z"] = ds["z"].astype(np.float64)
    ds["z"].values[12, 2, 3] = -1e39  # finite here, -inf once cast to float32
    ds.to_netcdf(tmp_path / "wide.nc")
    line = refused_train(tmp_path / "wide.nc", *PERIODS, out=tmp_path / "run")
    assert "wide.nc: variable 'z' at time 2000-01-13 holds 1e+39, beyond the float32 range" in line


def test_a_block_of_huge_values_is_an_error_saying_they_overflow_float32_arithmetic(tmp_path):
    ds = data()
    ds["t"].values[25:] = 3e38  # a corrupted block: float32, but its squares are inf
    ds.to_netcdf(tmp_path / "corrupt.nc")
    line = refused_train(tmp_path / "corrupt.nc", *PERIODS, out=tmp_path / "run")
    assert "corrupt.nc: variable 't' at time 2000-01-26 holds 3e+38" in line
    assert "overflow float32 arithmetic (a corrupted block?)" in line


@pytest.mark.parametrize("workers", [0, 1])
def test_a_corrupted_block_read_lazily_for_validation_fails_training_in_one_line(tmp_path, workers):
    ds = data()
    ds["z"].values[25:] = 3e38  # the last chunk, inside the validation period
    ds.to_zarr(tmp_path / "corrupt.zarr", encoding=CHUNKS, zarr_format=3)
    out = tmp_path / "run"
    lazy = ["--memory-limit", "1KB", "--set", f"train.num_workers={workers}"]
    line = error_line(
        invoke("train", tmp_path / "corrupt.zarr", *PERIODS, *TINY, *lazy, "--out", out)
    )
    assert "corrupt.zarr: variable 'z' at time 2000-01-26 holds 3e+38" in line
    assert "overflow float32 arithmetic" in line
    assert not out.exists()  # a run that fails before its first checkpoint leaves nothing


def test_a_corrupted_block_read_lazily_for_the_statistics_fails_before_the_run_starts(tmp_path):
    ds = data()
    ds["z"].values[10:15] = 3e38  # one chunk, inside the training period
    ds.to_zarr(tmp_path / "corrupt.zarr", encoding=CHUNKS, zarr_format=3)
    line = refused_train(
        tmp_path / "corrupt.zarr", *PERIODS, "--memory-limit", "1KB", out=tmp_path / "run"
    )
    assert "corrupt.zarr: variable 'z' at time 2000-01-11 holds 3e+38" in line


def test_inf_in_a_static_is_an_error_naming_the_static(tmp_path):
    ds = data()
    ds["lsm"] = (("latitude", "longitude"), np.zeros((4, 8), np.float32))
    ds["lsm"].values[2, 2] = np.inf
    ds.to_netcdf(tmp_path / "static.nc")
    line = refused_train(
        tmp_path / "static.nc", *PERIODS, "--variables", "z,t", "--static", "lsm",
        out=tmp_path / "run",
    )  # fmt: skip
    assert "static.nc: static 'lsm' holds inf" in line


def test_among_files_joined_along_time_the_message_names_the_file_with_the_bad_time(tmp_path):
    ds = data()
    ds.isel(time=slice(0, 15)).to_netcdf(tmp_path / "early.nc")
    late = ds.isel(time=slice(15, 30)).copy(deep=True)
    late["t"].values[3, 0, 0] = np.inf
    late.to_netcdf(tmp_path / "late.nc")
    line = refused_train(tmp_path / "early.nc", tmp_path / "late.nc", *PERIODS, out=tmp_path / "r")
    assert "error: " + str(tmp_path / "late.nc") + ": variable 't' at time 2000-01-19" in line


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    """A checkpoint trained (one tiny epoch) on clean data."""
    tmp = tmp_path_factory.mktemp("model")
    data().to_netcdf(tmp / "clean.nc")
    trains(tmp / "clean.nc", *PERIODS, out=tmp / "run")
    return tmp / "run" / "model.pt"


def test_rollout_refuses_initial_conditions_holding_inf(tmp_path, model):
    ds = data()
    ds["t"].values[20, 1, 1] = np.inf
    ds.to_netcdf(tmp_path / "init.nc")
    out = tmp_path / "forecast.zarr"
    line = error_line(invoke("rollout", model, tmp_path / "init.nc", *ROLLOUT, "--out", out))
    assert "init.nc: variable 't' at time 2000-01-21 holds inf" in line
    assert not out.exists()


def test_evaluate_refuses_truth_holding_inf(tmp_path, model):
    data().to_netcdf(tmp_path / "clean.nc")
    forecast = tmp_path / "forecast.zarr"
    result = invoke(
        "rollout", model, tmp_path / "clean.nc", *ROLLOUT, "--init-times",
        "2000-01-10/2000-01-12", "--out", forecast,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    truth = data()
    truth["z"].values[11, 0, 0] = np.inf
    truth.to_netcdf(tmp_path / "truth.nc")
    scores = tmp_path / "scores"
    line = error_line(invoke("evaluate", forecast, tmp_path / "truth.nc", "--out", scores))
    assert "truth.nc: variable 'z' at time 2000-01-12 holds inf" in line
    assert not scores.exists()


# --- Zarr chunks and array metadata that are not stored -----------------------------------------


def chunk_file(store: Path, variable: str, index: tuple[int, ...], zarr_format: int) -> Path:
    if zarr_format == 3:
        return store.joinpath(variable, "c", *map(str, index))
    return store / variable / ".".join(map(str, index))


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_a_zarr_store_missing_a_chunk_is_an_error_unless_allowed(tmp_path, zarr_format):
    store = tmp_path / "d.zarr"
    data().to_zarr(store, encoding=CHUNKS, zarr_format=zarr_format, write_empty_chunks=True)
    chunk_file(store, "z", (2, 0, 0), zarr_format).unlink()
    line = refused_train(store, *PERIODS, out=tmp_path / "run")
    assert (
        f"{store}: variable 'z' has 1 missing chunk(s), first at time 2000-01-11 to 2000-01-15"
        in line
    )
    assert "--allow-missing-chunks" in line
    trains(store, *PERIODS, "--allow-missing-chunks", out=tmp_path / "allowed")


def test_chunks_zarr3_leaves_out_because_they_are_all_nan_need_allow_missing_chunks(tmp_path):
    ds = data()
    ds["t"].values[:5] = np.nan  # one whole chunk: zarr-python 3 does not store it by default
    ds.to_zarr(tmp_path / "holes.zarr", encoding=CHUNKS, zarr_format=3)
    line = refused_train(tmp_path / "holes.zarr", *PERIODS, out=tmp_path / "run")
    assert "variable 't' has 1 missing chunk(s), first at time 2000-01-01 to 2000-01-05" in line
    trains(
        tmp_path / "holes.zarr", *PERIODS, "--set", "data.allow_missing_chunks=true",
        out=tmp_path / "allowed",
    )  # fmt: skip


def test_rollout_refuses_a_store_missing_a_chunk_unless_allowed(tmp_path, model):
    store = tmp_path / "init.zarr"
    data().to_zarr(store, encoding=CHUNKS, zarr_format=3, write_empty_chunks=True)
    chunk_file(store, "t", (4, 0, 0), 3).unlink()
    out = tmp_path / "forecast.zarr"
    init = ["--init-times", "2000-01-10"]
    line = error_line(invoke("rollout", model, store, *ROLLOUT, *init, "--out", out))
    assert "init.zarr: variable 't' has 1 missing chunk(s), first at time 2000-01-21" in line
    assert not out.exists()
    allowed = invoke(
        "rollout", model, store, *ROLLOUT, *init, "--allow-missing-chunks", "--out", out
    )
    assert allowed.exit_code == 0, allowed.output


@pytest.mark.parametrize("zarr_format", [2, 3])
@pytest.mark.parametrize("consolidated", [True, False])
@pytest.mark.parametrize("array", ["t", "time", "latitude"])
def test_an_array_whose_metadata_file_was_deleted_is_named(
    tmp_path, zarr_format, consolidated, array
):
    store = tmp_path / "d.zarr"
    data().to_zarr(store, zarr_format=zarr_format, consolidated=consolidated)
    name = "zarr.json" if zarr_format == 3 else ".zarray"
    (store / array / name).unlink()
    line = refused_train(store, *PERIODS, out=tmp_path / "run")
    assert f"{store}: array {array!r} has no metadata ({array}/{name} is missing)" in line


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_an_array_whose_metadata_file_is_unreadable_is_named(tmp_path, zarr_format):
    store = tmp_path / "d.zarr"
    data().to_zarr(store, zarr_format=zarr_format, consolidated=True)
    name = "zarr.json" if zarr_format == 3 else ".zarray"
    (store / "z" / name).write_text("{truncated")
    line = refused_train(store, *PERIODS, out=tmp_path / "run")
    assert f"{store}: array 'z' has unreadable metadata (z/{name}" in line


# --- names given twice ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args, message",
    [
        (["--variables", "z,z"], "--variables: 'z' is given twice"),
        (["--variables", "z", "--variables", "t,z"], "--variables: 'z' is given twice"),
        (["--static", "lsm,lsm"], "--static: 'lsm' is given twice"),
        (["--variables", "z,lsm", "--static", "lsm"], "'lsm' is given in both"),
    ],
)
def test_a_name_given_twice_is_an_error_naming_the_option(tmp_path, args, message):
    ds = data()
    ds["lsm"] = (("latitude", "longitude"), np.zeros((4, 8), np.float32))
    ds.to_netcdf(tmp_path / "d.nc")
    line = refused_train(tmp_path / "d.nc", *PERIODS, *args, out=tmp_path / "run")
    assert message in line and "Normalizer" not in line


def test_a_name_given_twice_in_a_config_file_is_an_error_naming_the_key(tmp_path):
    data().to_netcdf(tmp_path / "d.nc")
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({"data": {"variables": ["t", "t"]}}))
    line = refused_train(tmp_path / "d.nc", *PERIODS, "--config", config, out=tmp_path / "run")
    assert "data.variables: 't' is given twice" in line


# --- periods -------------------------------------------------------------------------------------


@pytest.fixture
def clean(tmp_path) -> Path:
    data().to_netcdf(tmp_path / "d.nc")
    return tmp_path / "d.nc"


@pytest.mark.parametrize("option", ["--train-period", "--val-period"])
@pytest.mark.parametrize("value", ["", "   "])
def test_an_empty_period_is_an_error_naming_the_option(tmp_path, clean, option, value):
    line = refused_train(clean, option, value, out=tmp_path / "run")
    assert f"{option}: empty; an unset shell variable?" in line


def test_an_empty_period_from_set_or_a_config_file_is_an_error(tmp_path, clean):
    line = refused_train(clean, "--set", "data.train_period=", out=tmp_path / "run")
    assert "data.train_period: empty; an unset shell variable?" in line
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({"data": {"val_period": " "}}))
    line = refused_train(clean, "--config", config, out=tmp_path / "run")
    assert f"{config}: data.val_period: empty" in line


def test_rollout_refuses_an_empty_subset(tmp_path, model, clean):
    out = tmp_path / "forecast.zarr"
    line = error_line(invoke("rollout", model, clean, *ROLLOUT, "--subset", "", "--out", out))
    assert "--subset: empty; an unset shell variable?" in line
    assert not out.exists()


@pytest.mark.parametrize(
    "train, val, shared",
    [
        ("0.0:0.8", "0.7:1.0", "3 time values from 2000-01-22 to 2000-01-24"),
        ("2000-01-01/2000-01-20", "2000-01-20/2000-01-30", "time 2000-01-20"),
    ],
)
def test_a_validation_period_overlapping_the_training_period_is_an_error(
    tmp_path, clean, train, val, shared
):
    line = refused_train(clean, "--train-period", train, "--val-period", val, out=tmp_path / "run")
    assert f"validation period {val!r} overlaps training period {train!r}" in line
    assert f"both hold {shared}" in line and "--allow-overlap" in line


@pytest.mark.parametrize(
    "train, val, shared",
    [
        ("trajectory=0:4", "split=val", "trajectory 3"),
        ("split=train", "0.4:1.0", "trajectory 2"),
        ("split=train", "5/8", "3 trajectory values from 0 to 2, 4 time values from 5.0 to 8.0"),
    ],
)
def test_samples_or_times_shared_by_both_periods_are_an_overlap(tmp_path, train, val, shared):
    path = tmp_path / "traj.nc"
    trajectory_dataset(
        n_traj=6, n_time=12, splits=["train"] * 3 + ["val", "test", "test"]
    ).to_netcdf(path)
    line = refused_train(path, "--train-period", train, "--val-period", val, out=tmp_path / "run")
    assert f"validation period {val!r} overlaps training period {train!r}" in line
    assert f"both hold {shared}" in line


@pytest.mark.parametrize("allow", [["--allow-overlap"], ["--set", "data.allow_overlap=true"]])
def test_an_overlap_asked_for_trains(tmp_path, clean, allow):
    trains(
        clean, "--train-period", "0.0:0.8", "--val-period", "0.6:1.0", *allow, out=tmp_path / "r"
    )


def test_default_splits_never_overlap(tmp_path):
    data().to_netcdf(tmp_path / "d.nc")
    trajectory_dataset().to_netcdf(tmp_path / "traj.nc")
    for path in (sample_path(), tmp_path / "d.nc", tmp_path / "traj.nc"):
        fields = open_fields(path)
        assert split_overlap(fields, *default_splits(fields)) is None, path
