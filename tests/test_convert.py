"""`minconv convert` through the real CLI: lossless round trips, selection, coarsening, NumPy in, errors."""

import json

import numpy as np
import pytest
import xarray as xr
import zarr
from factories import latlon_dataset, trajectory_dataset
from typer.testing import CliRunner

from minconv_cli.cli import app

runner = CliRunner()


def run(*args):
    return runner.invoke(app, ["convert", *map(str, args)])


def rich_dataset():
    """NaNs, an int variable with attrs, a packed int16 variable, datetime time with encoding."""
    ds = latlon_dataset(n_time=6, nan_mask=True)
    ds["count"] = (("time",), np.arange(6, dtype=np.int32), {"long_name": "a counter"})
    ds["z"].encoding = {"zlib": True, "complevel": 3}
    ds["t"].encoding = {
        "dtype": "int16",
        "scale_factor": 0.01,
        "add_offset": 275.0,
        "_FillValue": -32768,
    }
    return ds


def assert_same(a: xr.Dataset, b: xr.Dataset):
    assert set(a.variables) == set(b.variables)
    for name in a.variables:
        assert a[name].dtype == b[name].dtype, name
        assert a[name].dims == b[name].dims, name
        np.testing.assert_array_equal(a[name].values, b[name].values)  # NaN == NaN here
        assert a[name].attrs == b[name].attrs, name
    assert a.attrs == b.attrs


def test_netcdf_to_zarr2_to_netcdf_and_to_zarr3_keep_everything(tmp_path):
    rich_dataset().to_netcdf(tmp_path / "src.nc")
    src = xr.load_dataset(tmp_path / "src.nc")  # loaded and closed: no handle shared with convert
    assert run(tmp_path / "src.nc", tmp_path / "v2.zarr", "--zarr-format", "2", "-q").exit_code == 0
    assert run(tmp_path / "v2.zarr", tmp_path / "back.nc", "-q").exit_code == 0
    assert run(tmp_path / "src.nc", tmp_path / "v3.zarr", "-q").exit_code == 0
    assert zarr.open_group(tmp_path / "v2.zarr", mode="r").metadata.zarr_format == 2
    assert zarr.open_group(tmp_path / "v3.zarr", mode="r").metadata.zarr_format == 3
    for out in ("v2.zarr", "back.nc", "v3.zarr"):
        assert_same(src, xr.load_dataset(tmp_path / out))
    back = xr.open_dataset(tmp_path / "back.nc")
    assert back["t"].encoding["dtype"] == np.int16 and back["t"].encoding["scale_factor"] == 0.01
    assert back["z"].encoding["zlib"]  # compressed again on the way back from Zarr
    assert back["time"].encoding["units"].startswith("days since 2000-01-01")


def test_trajectory_store_with_string_split_round_trips(tmp_path):
    trajectory_dataset(n_traj=3, n_time=4).to_netcdf(tmp_path / "ns.nc")
    assert run(tmp_path / "ns.nc", tmp_path / "ns.zarr", "-q").exit_code == 0
    assert run(tmp_path / "ns.zarr", tmp_path / "ns2.nc", "-q").exit_code == 0
    a, b = xr.open_dataset(tmp_path / "ns.nc"), xr.open_dataset(tmp_path / "ns2.nc")
    assert list(b["split"].values) == ["train", "val", "test"] and b.attrs == a.attrs
    np.testing.assert_array_equal(a["vorticity"].values, b["vorticity"].values)


def test_select_variables_and_time_then_rename_and_rechunk(tmp_path):
    latlon_dataset(n_time=10).to_netcdf(tmp_path / "src.nc")
    result = run(
        tmp_path / "src.nc",
        tmp_path / "out.zarr",
        "--variables", "z",
        "--time", "2000-01-03/2000-01-06",
        "--rename", "z=geopotential,latitude=lat",
        "--chunks", "time=2",
        "--json",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["format"] == "zarr" and summary["zarr_format"] == 3
    assert list(summary["variables"]) == ["geopotential"]
    assert summary["dims"] == {"time": 4, "lat": 8, "longitude": 16}
    out = xr.open_zarr(tmp_path / "out.zarr")
    assert str(out.time.values[0])[:10] == "2000-01-03" and out["geopotential"].encoding[
        "chunks"
    ] == (2, 8, 16)
    src = xr.open_dataset(tmp_path / "src.nc")
    np.testing.assert_array_equal(out["geopotential"].values, src["z"].values[2:6])


def test_coarsen_is_a_block_mean_that_trims_the_boundary(tmp_path):
    ds = trajectory_dataset(n_traj=2, n_time=3, n=9)
    ds.to_netcdf(tmp_path / "ns.nc")
    assert run(tmp_path / "ns.nc", tmp_path / "c.nc", "--coarsen", "y=4,x=4", "-q").exit_code == 0
    out = xr.open_dataset(tmp_path / "c.nc")
    assert out.sizes["y"] == 2 and out.sizes["x"] == 2
    block = ds["vorticity"].values[:, :, 4:8, 0:4].astype(np.float64).mean(axis=(2, 3))
    np.testing.assert_allclose(out["vorticity"].values[:, :, 1, 0], block, rtol=1e-6)
    assert out["vorticity"].dtype == np.float32 and out["vorticity"].attrs["units"] == "s**-1"
    np.testing.assert_allclose(out["x"].values, [ds.x.values[:4].mean(), ds.x.values[4:8].mean()])


def test_numpy_arrays_come_in_with_dims_coords_name_and_attrs(tmp_path):
    values = np.random.default_rng(0).normal(size=(3, 5, 4, 4)).astype(np.float32)
    np.save(tmp_path / "w.npy", values)
    result = run(
        tmp_path / "w.npy",
        tmp_path / "w.zarr",
        "--dims", "trajectory,time,y,x",
        "--coords", "time=0:0.5,x=0:1:0.25",
        "--name", "vorticity",
        "--attrs", "units=s**-1,time.units=1",
        "-q",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    out = xr.open_zarr(tmp_path / "w.zarr")
    np.testing.assert_array_equal(out["vorticity"].values, values)
    np.testing.assert_array_equal(out["time"].values, [0, 0.5, 1, 1.5, 2])
    np.testing.assert_array_equal(out["x"].values, [0, 0.25, 0.5, 0.75])
    assert out["vorticity"].attrs["units"] == "s**-1" and out["time"].attrs["units"] == "1"


def test_npz_arrays_become_variables_and_1d_arrays_named_like_dims_coordinates(tmp_path):
    u, v = np.ones((4, 2, 3)), np.zeros((4, 2, 3), dtype=np.float32)
    np.savez(tmp_path / "uv.npz", u=u, v=v, lat=np.array([10.0, 20.0]))
    result = run(
        tmp_path / "uv.npz", tmp_path / "uv.nc", "--dims", "time,lat,lon",
        "--coords", "time=2000-01-01T00:00:6h", "-q",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    out = xr.open_dataset(tmp_path / "uv.nc")
    assert out["u"].dtype == np.float64 and out["v"].dtype == np.float32
    assert list(out["lat"].values) == [10.0, 20.0]
    assert str(out["time"].values[1])[:16] == "2000-01-01T06:00"


def test_refuses_to_overwrite_unless_told(tmp_path):
    latlon_dataset(n_time=3).to_netcdf(tmp_path / "a.nc")
    latlon_dataset(n_time=5).to_netcdf(tmp_path / "b.nc")
    result = run(tmp_path / "a.nc", tmp_path / "b.nc")
    assert result.exit_code == 1 and "already exists (use --overwrite" in result.output
    assert xr.open_dataset(tmp_path / "b.nc").sizes["time"] == 5
    assert run(tmp_path / "a.nc", tmp_path / "b.nc", "--overwrite", "-q").exit_code == 0
    assert xr.open_dataset(tmp_path / "b.nc").sizes["time"] == 3


def test_failure_while_writing_leaves_nothing_behind(tmp_path):
    latlon_dataset(n_time=4).to_zarr(tmp_path / "src.zarr", zarr_format=3)
    chunk = next(
        p for p in (tmp_path / "src.zarr" / "z").rglob("*") if p.is_file() and p.name != "zarr.json"
    )
    chunk.write_bytes(b"garbage that is no zstd frame")
    result = run(tmp_path / "src.zarr", tmp_path / "out.nc")
    assert result.exit_code == 1 and "out.nc: conversion failed" in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src.zarr"]


@pytest.mark.parametrize(
    "args, message",
    [
        (["missing.nc", "o.zarr"], "missing.nc: no such file or directory"),
        (["notes.txt", "o.zarr"], "notes.txt: unknown format"),
        (["src.nc", "o.zarr", "--variables", "q"], "variable(s) q not found; available: z, t"),
        (["src.nc", "o.zarr", "--coarsen", "level=2"], "'level' is not a dimension"),
        (["src.nc", "o.txt"], "cannot tell the output format"),
        (["arr.npy", "o.zarr"], "needs --dims"),
        (["arr.npy", "o.zarr", "--dims", "time,y"], "does not fit --dims time,y"),
        (
            ["arr.npy", "o.zarr", "--dims", "t,y,x", "--coords", "t=0:2:1"],
            "2 values for a dim of size 3",
        ),
        (["broken.zarr", "o.nc"], "broken.zarr: cannot read as a Zarr store"),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    latlon_dataset(n_time=3).to_netcdf("src.nc")
    (tmp_path / "notes.txt").write_text("not data")
    np.save("arr.npy", np.zeros((3, 2, 2)))
    (tmp_path / "broken.zarr").mkdir()
    (tmp_path / "broken.zarr" / "zarr.json").write_text("{")
    before = sorted(p.name for p in tmp_path.iterdir())
    result = run(*args)
    assert result.exit_code == 1
    assert message in result.output and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == before
