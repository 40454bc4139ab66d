"""`minconv rollout`: forecasts from initial conditions into a WeatherBench 2-layout Zarr store."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import xarray as xr
import zarr
from factories import latlon_dataset, trajectory_dataset
from typer.testing import CliRunner

from minconv_cli.cli import app
from minconv_cli.core.errors import MinconvError
from minconv_cli.data import Normalizer, open_fields
from minconv_cli.models import create_model
from minconv_cli.models.checkpoint import save_checkpoint
from minconv_cli.rollout import select_init_times

runner = CliRunner()
CONTEXT = 4
FP32 = ("--precision", "fp32")  # bit-for-bit comparisons with model.forward (which runs in fp32)


def make_checkpoint(
    data: Path, path: Path, model: str = "minconvgru", context: int = CONTEXT, static=None
):
    """An untrained model with the checkpoint meta `minconv train` writes (plumbing needs no training)."""
    from minconv_cli.models.checkpoint import data_meta

    fields = open_fields(data, static=static)
    normalizer = Normalizer.fit(fields)
    n_static = len(fields.static_channels)
    net = create_model(
        model,
        len(fields.channels) + n_static,
        width=6,
        layers=2,
        grid=fields.grid_shape,
        padding=fields.default_padding,
        static_channels=n_static,
    )
    meta = {
        **data_meta(fields, normalizer),
        "model": net.hparams,
        "context": context,
        "horizon": 2,
        "config": {},
        "epoch": 0,
        "metrics": {},
    }
    save_checkpoint(path, net, meta)
    return net.eval(), fields, normalizer


def invoke(*args: str):
    return runner.invoke(app, ["rollout", *map(str, args)])


def one_error_line(result) -> str:
    assert result.exit_code == 1, result.output
    lines = [ln for ln in result.output.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), result.output
    assert "Traceback" not in result.output
    return lines[0]


def tree_digest(path: Path) -> str:
    """Hash of every file's name and bytes under `path` (or of the file)."""
    digest = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for p in files:
        digest.update(str(p.relative_to(path) if path.is_dir() else p.name).encode())
        digest.update(p.read_bytes())
    return digest.hexdigest()


@pytest.fixture
def latlon(tmp_path):
    data = tmp_path / "era.nc"
    latlon_dataset(n_time=24).to_netcdf(data)
    ckpt = tmp_path / "model.pt"
    net, fields, normalizer = make_checkpoint(data, ckpt)
    return data, ckpt, net, fields, normalizer


@pytest.fixture
def trajectories(tmp_path):
    data = tmp_path / "ns.nc"
    trajectory_dataset(n_traj=3, n_time=12).to_netcdf(data)
    ckpt = tmp_path / "ns.pt"
    net, fields, normalizer = make_checkpoint(data, ckpt, model="convlstm")
    return data, ckpt, net, fields, normalizer


def reference(
    net, normalizer, windows: np.ndarray, steps: int, context: int = CONTEXT
) -> np.ndarray:
    """`model(x, context)` over whole windows: its outputs from t = context-1 on are leads 1..steps."""
    x, _ = normalizer.normalize(windows)
    with torch.inference_mode():
        y = net(torch.from_numpy(x), context=context)
    return normalizer.denormalize(y[:, context - 1 :]).numpy()


# --------------------------------------------------------------------------- the numbers


def test_rollout_reproduces_the_closed_loop_of_model_forward(latlon, tmp_path):
    data, ckpt, net, fields, normalizer = latlon
    steps, inits = 6, [5, 9, 14]
    out = tmp_path / "fc.zarr"
    spec = ",".join(str(fields.times[i])[:10] for i in inits)
    result = invoke(
        ckpt,
        data,
        "--steps",
        steps,
        "--out",
        out,
        "--init-times",
        spec,
        "--batch-size",
        3,
        "--precision",
        "fp32",
        "--quiet",
    )
    assert result.exit_code == 0, result.output
    windows = np.stack([fields.frames(0, i - CONTEXT + 1, i + steps) for i in inits])
    expected = reference(net, normalizer, windows, steps)
    fc = xr.open_zarr(out)
    got = np.stack([fc["z"].values, fc["t"].values], axis=2)
    assert got.shape == expected.shape == (3, steps, 2, 8, 16)
    np.testing.assert_array_equal(got, expected)


def test_bf16_rollout_stays_close_to_fp32_and_is_recorded(latlon, tmp_path):
    data, ckpt, _, fields, _ = latlon
    args = ["--steps", 6, "--init-times", "2000-01-08,2000-01-12", "--quiet"]
    stores = {}
    for precision in ("fp32", "bf16"):
        stores[precision] = tmp_path / f"{precision}.zarr"
        result = invoke(ckpt, data, *args, "--precision", precision, "--out", stores[precision])
        assert result.exit_code == 0, result.output
    a, b = xr.open_zarr(stores["fp32"]), xr.open_zarr(stores["bf16"])
    for var in ("z", "t"):
        diff = np.abs(a[var].values - b[var].values)
        assert diff.max() > 0  # the convolutions did run in bf16
        assert diff.max() < 0.02 * float(fields.ds[var].std())  # bf16: ~3 significant digits
    assert b.attrs["precision"] == "bf16"
    assert json.loads(b.attrs["minconv_rollout"])["precision"] == "bf16"
    assert "--precision bf16" in b.attrs["command"]
    line = one_error_line(
        invoke(ckpt, data, *args, "--precision", "fp32", "--out", stores["bf16"], "--resume")
    )
    assert "precision" in line
    # auto on resume keeps the store's own precision, whatever this machine would pick
    resumed = invoke(ckpt, data, *args, "--out", stores["bf16"], "--resume", "--json")
    assert resumed.exit_code == 0, resumed.output
    assert json.loads(resumed.stdout)["skipped"] == 2
    line = one_error_line(
        invoke(ckpt, data, *args, "--precision", "nope", "--out", tmp_path / "x.zarr")
    )
    assert "--precision: expected one of fp32, bf16, auto, got 'nope'" in line
    assert not (tmp_path / "x.zarr").exists()


def test_every_trajectory_is_a_sequence_with_its_own_forecast(trajectories, tmp_path):
    data, ckpt, net, fields, normalizer = trajectories
    steps, out = 5, tmp_path / "ns.zarr"
    result = invoke(ckpt, data, "--steps", steps, "--out", out, "--batch-size", 3, *FP32, "--quiet")
    assert result.exit_code == 0, result.output
    fc = xr.open_zarr(out)
    # default for trajectory data: the first time with a full context, for every trajectory
    assert fc["time"].values.tolist() == [float(fields.times[CONTEXT - 1])]
    assert fc["vorticity"].dims == ("time", "prediction_timedelta", "trajectory", "y", "x")
    windows = np.stack([fields.frames(s, 0, CONTEXT + steps - 1) for s in range(3)])
    expected = reference(net, normalizer, windows, steps)
    np.testing.assert_array_equal(
        fc["vorticity"].values[0].transpose(1, 0, 2, 3), expected[:, :, 0]
    )
    assert fc["split"].values.tolist() == ["train", "val", "test"]


def test_subset_forecasts_only_the_chosen_trajectories(trajectories, tmp_path):
    data, ckpt, net, fields, normalizer = trajectories
    out = tmp_path / "test.zarr"
    result = invoke(ckpt, data, "--steps", 2, "--out", out, "--subset", "split=test", *FP32)
    assert result.exit_code == 0, result.output
    fc = xr.open_zarr(out)
    assert fc["trajectory"].values.tolist() == [2] and fc["split"].values.tolist() == ["test"]
    window = fields.frames(2, 0, CONTEXT + 1)[None]
    np.testing.assert_array_equal(
        fc["vorticity"].values[0, :, 0], reference(net, normalizer, window, 2)[0, :, 0]
    )


def test_levels_statics_and_missing_cells(tmp_path):
    """Levels stay a level dim, statics are fed to every step, NaN cells of the init frame stay NaN."""
    data = tmp_path / "levels.nc"
    ds = latlon_dataset(n_time=12, variables=("t",), levels=[500, 850], nan_mask=True)
    ds["orography"] = (("latitude", "longitude"), np.linspace(0, 900, 8 * 16).reshape(8, 16))
    ds["orography"].attrs["units"] = "m"
    ds.to_netcdf(data)
    ckpt = tmp_path / "model.pt"
    net, fields, normalizer = make_checkpoint(data, ckpt, static=["orography"])
    out, steps, init = tmp_path / "fc.zarr", 3, 6
    spec = str(fields.times[init])[:10]
    result = invoke(ckpt, data, "--steps", steps, "--out", out, "--init-times", spec, *FP32)
    assert result.exit_code == 0, result.output
    fc = xr.open_zarr(out)
    assert fc["t"].dims == ("time", "prediction_timedelta", "level", "latitude", "longitude")
    assert fc["level"].values.tolist() == [500, 850]
    assert "orography" not in fc
    window = fields.frames(0, init - CONTEXT + 1, init + steps)[None]
    static = torch.from_numpy(normalizer.normalize_static(fields.static_array()))[None]
    x, _ = normalizer.normalize(window)
    with torch.inference_mode():
        y = net(torch.from_numpy(x), context=CONTEXT, static=static)[:, CONTEXT - 1 :]
    expected = normalizer.denormalize(y).numpy()
    expected = np.where(np.isnan(window[:, CONTEXT - 1 : CONTEXT]), np.nan, expected)
    got = fc["t"].values
    assert np.isnan(got).any() and not np.isnan(got).all()
    np.testing.assert_array_equal(got, expected)


# --------------------------------------------------------------------------- the store


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_store_has_the_weatherbench2_layout_and_opens_plainly(latlon, tmp_path, zarr_format):
    data, ckpt, _, fields, _ = latlon
    out = tmp_path / "fc.zarr"
    result = invoke(
        ckpt,
        data,
        "--steps",
        3,
        "--out",
        out,
        "--init-times",
        "2000-01-10/2000-01-16/3D",
        "--zarr-format",
        zarr_format,
        "--json",
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["init_times"] == [
        "2000-01-10T00:00:00",
        "2000-01-13T00:00:00",
        "2000-01-16T00:00:00",
    ]
    assert summary["steps"] == 3 and summary["variables"] == ["z", "t"] and summary["seconds"] > 0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fc = xr.open_zarr(out)
    assert (zarr_format == 2) == (out / ".zmetadata").exists()
    src = xr.open_dataset(data)
    assert fc["time"].dtype == "datetime64[ns]"
    assert fc["prediction_timedelta"].dtype == "timedelta64[ns]"
    days = np.array([1, 2, 3], dtype="timedelta64[D]").astype("timedelta64[ns]")
    np.testing.assert_array_equal(fc["prediction_timedelta"].values, days)
    for var in ("z", "t"):
        assert fc[var].dims == ("time", "prediction_timedelta", "latitude", "longitude")
        assert fc[var].dtype == np.float32
        assert fc[var].attrs == src[var].attrs
        assert fc[var].encoding["chunks"] == (1, 3, 8, 16)
        assert not np.isnan(fc[var].values).any()
    for dim in ("latitude", "longitude"):
        np.testing.assert_array_equal(fc[dim].values, src[dim].values)
        assert fc[dim].attrs == src[dim].attrs
    assert fc["minconv_done"].values.all()
    assert summary["path"] == str(out)
    attrs = fc.attrs
    assert attrs["minconv_version"]
    assert attrs["model"] == "minconvgru"
    assert attrs["checkpoint"] == str(ckpt.resolve())
    assert attrs["checkpoint_sha256"] == hashlib.sha256(ckpt.read_bytes()).hexdigest()
    assert attrs["created"].endswith("+00:00")
    assert attrs["command"].startswith(f"minconv rollout {ckpt} {data} --steps 3 --out {out}")
    assert "--init-times 2000-01-10/2000-01-16/3D" in attrs["command"]


def test_init_time_plus_lead_is_the_valid_time_of_the_truth(latlon, tmp_path):
    """`time + prediction_timedelta` is the time of the truth frame each lead forecasts."""
    data, ckpt, _, fields, _ = latlon
    out = tmp_path / "fc.zarr"
    assert invoke(ckpt, data, "--steps", 4, "--out", out, "--quiet").exit_code == 0
    fc = xr.open_zarr(out)
    truth = xr.open_dataset(data)
    # default for datetime data: every time with CONTEXT frames up to it
    np.testing.assert_array_equal(fc["time"].values, truth["time"].values[CONTEXT - 1 :])
    valid = (fc["time"] + fc["prediction_timedelta"]).values
    times = truth["time"].values
    for i, k in enumerate(range(CONTEXT - 1, len(times))):
        for lead in range(4):
            if k + lead + 1 < len(times):
                assert valid[i, lead] == times[k + lead + 1]


def test_reversed_latitudes_are_read_in_the_checkpoints_order(latlon, tmp_path):
    data, ckpt, _, _, _ = latlon
    flipped = tmp_path / "flipped.nc"
    xr.open_dataset(data).isel(latitude=slice(None, None, -1)).to_netcdf(flipped)
    a, b = tmp_path / "a.zarr", tmp_path / "b.zarr"
    for src, out in ((data, a), (flipped, b)):
        result = invoke(
            ckpt, src, "--steps", 3, "--out", out, "--init-times", "2000-01-08", "--quiet"
        )
        assert result.exit_code == 0, result.output
    fa, fb = xr.open_zarr(a), xr.open_zarr(b)
    np.testing.assert_array_equal(fb["latitude"].values, fa["latitude"].values)
    assert fb["latitude"].values[0] > fb["latitude"].values[-1]  # checkpoint (training) order
    np.testing.assert_array_equal(fb["z"].values, fa["z"].values)


# --------------------------------------------------------------------------- init times


def test_init_time_specs(latlon):
    _, _, _, fields, _ = latlon
    step = fields.time_step
    times = [str(t)[:10] for t in fields.times]
    pick = lambda spec, k=CONTEXT: [times[i] for i in select_init_times(spec, fields, k, step)]  # noqa: E731
    assert pick("2000-01-05,2000-01-09") == ["2000-01-05", "2000-01-09"]
    assert pick("2000-01-04/2000-01-12/4D") == ["2000-01-04", "2000-01-08", "2000-01-12"]
    assert pick("2000-01-20/2000-01-24") == times[19:]
    assert pick("all") == times[CONTEXT - 1 :]
    assert pick(None, 1) == times


def test_init_time_ranges_pick_the_datas_own_times(tmp_path):
    data = tmp_path / "noon.nc"
    ds = latlon_dataset(n_time=24)
    ds["time"] = ds["time"] + np.timedelta64(12, "h")  # daily data stamped 12 UTC, as ERA-Interim
    ds.to_netcdf(data)
    fields = open_fields(data)
    picked = select_init_times("2000-01-05/2000-01-15/5D", fields, CONTEXT, fields.time_step)
    assert [str(t)[:16] for t in fields.times[picked]] == [
        "2000-01-05T12:00",
        "2000-01-10T12:00",
        "2000-01-15T12:00",
    ]
    with pytest.raises(MinconvError, match="no time of the data"):
        select_init_times("2001-01-01/2001-02-01", fields, CONTEXT, fields.time_step)


def test_init_times_never_take_context_across_a_gap_in_time(tmp_path):
    data = tmp_path / "gap.nc"
    ds = latlon_dataset(n_time=14)
    ds.isel(time=[i for i in range(14) if i != 6]).to_netcdf(data)  # 2000-01-07 is missing
    fields = open_fields(data)
    step = np.timedelta64(1, "D").astype("timedelta64[ns]")
    chosen = [str(t)[:10] for t in fields.times[select_init_times("all", fields, CONTEXT, step)]]
    assert chosen == [
        "2000-01-04",
        "2000-01-05",
        "2000-01-06",
        "2000-01-11",
        "2000-01-12",
        "2000-01-13",
        "2000-01-14",
    ]
    with pytest.raises(MinconvError, match="not evenly spaced"):
        select_init_times("2000-01-09", fields, CONTEXT, step)


def test_numeric_init_times_on_trajectory_data(trajectories):
    _, _, _, fields, _ = trajectories
    chosen = select_init_times("5, 7/11/2", fields, CONTEXT, fields.time_step)
    assert fields.times[chosen].tolist() == [5.0, 7.0, 9.0, 11.0]
    assert fields.times[select_init_times("all", fields, CONTEXT, 1.0)].tolist()[0] == float(
        CONTEXT
    )


# --------------------------------------------------------------------------- written as it goes


@pytest.fixture
def one_thread():
    """Every run of the kill test on one torch thread (tiny tensors; same numerics in and out of process)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield {**os.environ, "OMP_NUM_THREADS": "1"}
    torch.set_num_threads(threads)


def test_a_killed_run_resumes_to_the_same_store_as_an_uninterrupted_one(tmp_path, one_thread):
    data = tmp_path / "long.nc"
    latlon_dataset(n_time=60, n_lat=4, n_lon=8, freq="6h").to_netcdf(data)
    ckpt = tmp_path / "model.pt"
    make_checkpoint(data, ckpt)
    killed, clean = tmp_path / "killed.zarr", tmp_path / "clean.zarr"
    args = ["--steps", "6", "--batch-size", "1", "--quiet"]
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "minconv_cli",
            "rollout",
            str(ckpt),
            str(data),
            "--out",
            str(killed),
            *args,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=one_thread,
    )
    try:
        deadline = time.monotonic() + 60
        done = np.zeros(0, bool)
        while time.monotonic() < deadline and proc.poll() is None:
            if (killed / ".zmetadata").exists():
                done = zarr.open_group(str(killed), mode="r")["minconv_done"][:]
                if done.any():
                    break
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()
    done = zarr.open_group(str(killed), mode="r")["minconv_done"][:]
    assert 0 < done.sum() < done.size, (
        "the kill should land after the first batch and before the end"
    )
    refused = invoke(ckpt, data, "--out", killed, *args)
    assert "--resume" in one_error_line(refused)
    resumed = runner.invoke(
        app, ["rollout", str(ckpt), str(data), "--out", str(killed), *args, "--resume", "--json"]
    )
    assert resumed.exit_code == 0, resumed.output
    summary = json.loads(resumed.stdout)
    assert summary["skipped"] >= done.sum() and summary["written"] + summary["skipped"] == done.size
    assert invoke(ckpt, data, "--out", clean, *args).exit_code == 0
    a, b = xr.open_zarr(killed), xr.open_zarr(clean)
    assert a["minconv_done"].values.all()
    for var in ("z", "t"):
        np.testing.assert_array_equal(a[var].values, b[var].values)
    np.testing.assert_array_equal(a["time"].values, b["time"].values)


def test_resume_refuses_a_store_made_with_other_settings(latlon, tmp_path):
    data, ckpt, _, _, _ = latlon
    out = tmp_path / "fc.zarr"
    assert (
        invoke(
            ckpt, data, "--steps", 3, "--out", out, "--init-times", "2000-01-08", "--quiet"
        ).exit_code
        == 0
    )
    before = tree_digest(out)
    line = one_error_line(
        invoke(ckpt, data, "--steps", 5, "--out", out, "--init-times", "2000-01-08", "--resume")
    )
    assert "steps" in line
    assert tree_digest(out) == before
    foreign = tmp_path / "foreign.zarr"
    xr.Dataset({"z": ("time", np.zeros(3))}).to_zarr(foreign, zarr_format=2)
    before = tree_digest(foreign)
    line = one_error_line(invoke(ckpt, data, "--steps", 3, "--out", foreign, "--resume"))
    assert "not a minconv rollout store" in line
    assert tree_digest(foreign) == before


def test_an_existing_path_is_refused_untouched_and_overwrite_replaces_it(latlon, tmp_path):
    data, ckpt, _, _, _ = latlon
    out = tmp_path / "fc.zarr"
    args = ["--steps", 2, "--out", out, "--init-times", "2000-01-08", "--quiet"]
    assert invoke(ckpt, data, *args).exit_code == 0
    before = tree_digest(out)
    line = one_error_line(invoke(ckpt, data, *args))
    assert str(out) in line and "--overwrite" in line
    assert tree_digest(out) == before
    # a failing --overwrite leaves the old store as it was
    line = one_error_line(invoke(ckpt, data, *args[:-2], "2030-01-01", "--overwrite"))
    assert tree_digest(out) == before
    result = invoke(
        ckpt,
        data,
        "--steps",
        4,
        "--out",
        out,
        "--init-times",
        "2000-01-09",
        "--overwrite",
        "--quiet",
    )
    assert result.exit_code == 0, result.output
    fc = xr.open_zarr(out)
    assert fc.sizes["prediction_timedelta"] == 4
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


# --------------------------------------------------------------------------- bad input


def _variable_missing(data: Path, tmp: Path) -> Path:
    bad = tmp / "no_t.nc"
    xr.open_dataset(data).drop_vars("t").to_netcdf(bad)
    return bad


def _other_units(data: Path, tmp: Path) -> Path:
    bad = tmp / "celsius.nc"
    ds = xr.open_dataset(data).load()
    ds["t"].attrs["units"] = "degC"
    ds.to_netcdf(bad)
    return bad


def _other_grid(data: Path, tmp: Path) -> Path:
    bad = tmp / "shifted.nc"
    ds = xr.open_dataset(data).load()
    ds.assign_coords(longitude=ds["longitude"] + 1.0).to_netcdf(bad)
    return bad


def _other_step(data: Path, tmp: Path) -> Path:
    bad = tmp / "hourly.nc"
    latlon_dataset(n_time=24, freq="h").to_netcdf(bad)
    return bad


@pytest.mark.parametrize(
    ("make_bad", "extra", "words"),
    [
        (None, ["--init-times", "2000-01-02"], ["2000-01-02", "frame"]),
        (None, ["--init-times", "2001-03-01"], ["2001-03-01", "not in the data"]),
        (None, ["--init-times", "yesterday-ish"], ["--init-times"]),
        (_variable_missing, [], ["'t'"]),
        (_other_units, [], ["degC"]),
        (_other_grid, [], ["longitude"]),
        (_other_step, [], ["time step"]),
    ],
    ids=[
        "too-few-frames",
        "outside-data",
        "unreadable-time",
        "variable",
        "units",
        "grid",
        "time-step",
    ],
)
def test_bad_data_is_one_line_and_writes_nothing(latlon, tmp_path, make_bad, extra, words):
    data, ckpt, _, _, _ = latlon
    src = make_bad(data, tmp_path) if make_bad else data
    out = tmp_path / "fc.zarr"
    line = one_error_line(invoke(ckpt, src, "--steps", 2, "--out", out, *extra))
    for word in words:
        assert word in line
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


class _Payload:
    def __reduce__(self):
        return (Path.touch, (Path(os.environ["MINCONV_TEST_MARKER"]),))


def test_corrupt_or_foreign_checkpoints_are_refused_without_unpickling(
    latlon, tmp_path, monkeypatch
):
    data = latlon[0]
    marker = tmp_path / "code-ran"
    monkeypatch.setenv("MINCONV_TEST_MARKER", str(marker))
    hostile = tmp_path / "hostile.pt"
    torch.save({"format": "minconv-checkpoint", "payload": _Payload()}, hostile)
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"\x00not a checkpoint" * 10)
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(3)}, foreign)
    pickled = tmp_path / "pickled.pt"
    pickled.write_bytes(pickle.dumps(_Payload()))
    for bad in (hostile, corrupt, foreign, pickled):
        line = one_error_line(invoke(bad, data, "--steps", 2, "--out", tmp_path / "fc.zarr"))
        assert bad.name in line
    assert not marker.exists()
    assert not (tmp_path / "fc.zarr").exists()
