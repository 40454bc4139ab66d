"""Opening NetCDF/Zarr files: dim recognition, joining along time, laziness, and one-line errors."""

import numpy as np
import pandas as pd
import pytest
import xarray as xr
from factories import latlon_dataset, trajectory_dataset

from minconv_cli.core.errors import MinconvError
from minconv_cli.data import open_fields


def weatherbench_style(n_time=6):
    """WeatherBench names (time, lat, lon), no CF attributes, increasing latitude, global."""
    ds = latlon_dataset(n_time=n_time, n_lat=4, n_lon=8, variables=("z",), global_lon=True)
    ds = ds.rename(latitude="lat", longitude="lon").sortby("lat")
    for name in ("time", "lat", "lon"):
        ds[name].attrs = {}
    return ds


def test_weatherbench_style_time_lat_lon_by_names(tmp_path):
    weatherbench_style().to_netcdf(tmp_path / "z500.nc")
    f = open_fields(tmp_path / "z500.nc")
    assert (f.time_dim, f.y_dim, f.x_dim, f.sample_dims, f.level_dim) == (
        "time",
        "lat",
        "lon",
        (),
        None,
    )
    assert f.is_latlon and f.default_padding == "cylinder"
    assert f.time_step == np.timedelta64(1, "D") and f.n_samples == 1 and f.grid_shape == (4, 8)
    assert not f.grid_meta()["y_descending"]


def test_era5_style_decreasing_latitude_is_kept_and_recorded(tmp_path):
    latlon_dataset(n_time=5, lat_descending=True).to_zarr(tmp_path / "era5.zarr", zarr_format=3)
    f = open_fields(tmp_path / "era5.zarr")
    assert (f.time_dim, f.y_dim, f.x_dim) == ("time", "latitude", "longitude")
    meta = f.grid_meta()
    assert meta["y_descending"] and meta["y"]["values"][0] == 55.0
    assert meta["y"]["attrs"]["units"] == "degrees_north"
    assert f.default_padding == "zeros"  # regional longitudes
    assert sorted(c.name for c in f.channels) == ["t", "z"]
    k = [c.name for c in f.channels].index("z")
    assert f.channels[k].units == "m**2 s**-2"
    assert f.frames(0, 0, 1)[0, k, 0, 0] == f.ds["z"].values[0, 0, 0]


def test_cf_attributes_win_over_odd_names(tmp_path):
    ds = weatherbench_style().rename(time="when", lat="rows", lon="cols")
    ds["when"].attrs = {"axis": "T"}
    ds["rows"].attrs = {"units": "degrees_north"}
    ds["cols"].attrs = {"standard_name": "longitude"}
    ds.to_netcdf(tmp_path / "odd.nc")
    f = open_fields(tmp_path / "odd.nc")
    assert (f.time_dim, f.y_dim, f.x_dim, f.is_latlon) == ("when", "rows", "cols", True)


def test_user_dims_override_recognition(tmp_path):
    ds = weatherbench_style().rename(time="step", lat="i", lon="j")
    ds.to_netcdf(tmp_path / "plain.nc")
    with pytest.raises(
        MinconvError, match=r"no y \(latitude\) dimension found among \(step, i, j\)"
    ):
        open_fields(tmp_path / "plain.nc")
    f = open_fields(tmp_path / "plain.nc", dims={"time": "step", "y": "i", "x": "j"})
    assert (f.time_dim, f.y_dim, f.x_dim, f.is_latlon) == ("step", "i", "j", False)


def test_trajectory_time_x_y_is_a_periodic_simulation(tmp_path):
    ds = trajectory_dataset(n_traj=3, n_time=5).transpose("trajectory", "time", "x", "y")
    ds.to_zarr(tmp_path / "ns.zarr", zarr_format=2)
    f = open_fields(tmp_path / "ns.zarr")
    assert f.sample_dims == ("trajectory",) and f.n_samples == 3
    assert (f.y_dim, f.x_dim) == ("y", "x") and f.default_padding == "circular"
    assert f.time_step == 1.0 and f.time_index(3.0) == 2
    # frames come out as (T, C, y, x) whatever the file's order
    np.testing.assert_array_equal(
        f.frames(1, 0, 2)[:, 0], ds["vorticity"].values[1, :2].transpose(0, 2, 1)
    )


def test_level_dim_becomes_channels_and_levels_selects(tmp_path):
    latlon_dataset(n_time=4, levels=[500, 850]).to_netcdf(tmp_path / "pl.nc")
    f = open_fields(tmp_path / "pl.nc")
    assert f.level_dim == "level"
    assert [c.name for c in f.channels] == ["z_500", "z_850", "t_500", "t_850"]
    assert f.frames(0, 0, 4).shape == (4, 4, 8, 16)
    g = open_fields(tmp_path / "pl.nc", variables=["t"], levels=[850])
    assert [(c.name, c.level) for c in g.channels] == [("t_850", 850)]
    np.testing.assert_array_equal(g.frames(0, 0, 1)[0, 0], g.ds["t"].values[0, 0])


def test_files_join_along_time_in_time_order(tmp_path):
    ds = latlon_dataset(n_time=10)
    ds.isel(time=slice(5, 10)).to_netcdf(tmp_path / "late.nc")
    ds.isel(time=slice(0, 5)).to_zarr(tmp_path / "early.zarr")
    f = open_fields([tmp_path / "late.nc", tmp_path / "early.zarr"])
    np.testing.assert_array_equal(f.times, ds.time.values)
    np.testing.assert_array_equal(f.frames(0, 0, 10)[:, 1], ds["t"].values)


def test_large_data_stays_lazy(tmp_path, monkeypatch):
    latlon_dataset(n_time=4).to_zarr(tmp_path / "d.zarr")
    assert not open_fields(tmp_path / "d.zarr").is_lazy
    monkeypatch.setattr("minconv_cli.data.open.LOAD_BELOW_BYTES", 10)
    assert open_fields(tmp_path / "d.zarr").is_lazy


def test_zarr_json_or_zgroup_inside_a_store_opens_it(tmp_path):
    latlon_dataset(n_time=3).to_zarr(tmp_path / "v3", zarr_format=3)
    latlon_dataset(n_time=3).to_zarr(tmp_path / "v2", zarr_format=2)
    assert open_fields(tmp_path / "v3" / "zarr.json").n_times == 3
    assert open_fields(tmp_path / "v2").n_times == 3


@pytest.mark.parametrize(
    "make, kwargs, message",
    [
        (lambda d: None, {}, "no such file"),
        (lambda d: (d / "x.txt").write_text("hello"), {}, "unknown format"),
        (
            lambda d: (d / "x.nc").write_bytes(b"\x89HDF\r\n\x1a\ngarbage"),
            {},
            "cannot read as a NetCDF",
        ),
        (
            lambda d: latlon_dataset(n_time=3).to_netcdf(d / "x.nc"),
            {"variables": ["q"]},
            "'q' not found; available: z, t",
        ),
        (
            lambda d: latlon_dataset(n_time=3).isel(time=0).to_netcdf(d / "x.nc"),
            {},
            "no time dimension",
        ),
    ],
)
def test_bad_input_is_one_line_naming_the_file(tmp_path, make, kwargs, message):
    make(tmp_path)
    path = next(iter(sorted(tmp_path.iterdir())), tmp_path / "missing.nc")
    with pytest.raises(MinconvError, match=message) as err:
        open_fields(path, **kwargs)
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_corrupt_zarr_store(tmp_path):
    latlon_dataset(n_time=3).to_zarr(tmp_path / "d.zarr", zarr_format=3)
    (tmp_path / "d.zarr" / "zarr.json").write_text("{not json")
    with pytest.raises(MinconvError, match=r"d\.zarr: cannot read as a Zarr store"):
        open_fields(tmp_path / "d.zarr")


@pytest.mark.parametrize("kind", ["duplicate", "non-monotonic"])
def test_bad_time_order_is_an_error(tmp_path, kind):
    ds = latlon_dataset(n_time=5)
    times = ds.time.values.copy()
    times[3] = times[2] if kind == "duplicate" else times[0]
    ds.assign_coords(time=times).to_netcdf(tmp_path / "bad.nc")
    with pytest.raises(MinconvError, match=rf"bad\.nc: {kind} times at index 3"):
        open_fields(tmp_path / "bad.nc")


def test_overlapping_files_and_different_grids_are_errors(tmp_path):
    ds = latlon_dataset(n_time=6)
    ds.isel(time=slice(0, 4)).to_netcdf(tmp_path / "a.nc")
    ds.isel(time=slice(3, 6)).to_netcdf(tmp_path / "b.nc")
    with pytest.raises(MinconvError, match=r"b\.nc: times overlap with .*a\.nc"):
        open_fields([tmp_path / "a.nc", tmp_path / "b.nc"])
    other = latlon_dataset(n_time=3, n_lat=6, start="2001-01-01")
    other.to_netcdf(tmp_path / "c.nc")
    with pytest.raises(MinconvError, match=r"c\.nc: grid differs from .*a\.nc along 'latitude'"):
        open_fields([tmp_path / "a.nc", tmp_path / "c.nc"])


def test_all_nan_variable_is_an_error(tmp_path):
    ds = latlon_dataset(n_time=3)
    ds["t"][:] = np.nan
    ds.to_netcdf(tmp_path / "nan.nc")
    with pytest.raises(MinconvError, match=r"nan\.nc: variable 't' is all NaN"):
        open_fields(tmp_path / "nan.nc")


def test_gaps_are_reported_as_separate_segments(tmp_path):
    times = pd.DatetimeIndex(["2000-01-01", "2000-01-02", "2000-01-03", "2000-01-10", "2000-01-11"])
    latlon_dataset(n_time=5).assign_coords(time=times).to_netcdf(tmp_path / "gap.nc")
    f = open_fields(tmp_path / "gap.nc")
    assert f.time_step == np.timedelta64(1, "D") and f.segments == [(0, 3), (3, 5)]


def test_member_dim_is_a_sample_dim(tmp_path):
    ds = xr.concat([latlon_dataset(n_time=3, seed=s) for s in range(2)], dim="member")
    ds.to_netcdf(tmp_path / "ens.nc")
    f = open_fields(tmp_path / "ens.nc")
    assert f.sample_dims == ("member",) and f.n_samples == 2
    np.testing.assert_array_equal(f.frames(1, 0, 3)[:, 0], ds["z"].values[1])


def test_files_with_different_variables_on_one_grid_and_time_become_channels(tmp_path):
    ds = latlon_dataset(variables=("z", "t", "msl"))
    paths = []
    for name in ("z", "t", "msl"):
        path = tmp_path / f"{name}.nc"
        ds[[name]].to_netcdf(path)
        paths.append(path)
    fields = open_fields(paths)
    assert sorted(c.name for c in fields.channels) == ["msl", "t", "z"]
    assert fields.n_times == ds.sizes["time"]
    frames = fields.frames(0, 0, 3)
    for k, channel in enumerate(fields.channels):
        np.testing.assert_array_equal(frames[:, k], ds[channel.variable].values[:3])


def test_variable_files_per_period_are_merged_then_joined_along_time(tmp_path):
    ds = latlon_dataset(variables=("z", "t"), n_time=20)
    paths = []
    for part, times in (("a", slice(0, 10)), ("b", slice(10, 20))):
        for name in ("z", "t"):
            path = tmp_path / f"{name}_{part}.nc"
            ds[[name]].isel(time=times).to_netcdf(path)
            paths.append(path)
    fields = open_fields(paths)
    assert fields.n_times == 20
    assert sorted(c.name for c in fields.channels) == ["t", "z"]


def test_zarr_v3_channels_come_in_name_order_on_every_open(tmp_path):
    """A Zarr v3 group without consolidated metadata lists its arrays in no fixed order; the
    default channels must not change from one run to the next (it once swapped z and t)."""
    store = tmp_path / "many.zarr"
    names = ("z", "t", "u", "v", "q", "msl")
    latlon_dataset(variables=names).to_zarr(store, zarr_format=3, consolidated=False)
    orders = {tuple(c.name for c in open_fields(store).channels) for _ in range(6)}
    assert orders == {tuple(sorted(names))}
