"""Windows hold exactly the frames they claim: values encode (trajectory, time), across files, gaps and splits."""

import pickle

import numpy as np
import pandas as pd
import pytest
import torch
import xarray as xr

from minconv_cli.core.errors import MinconvError
from minconv_cli.data import Normalizer, WindowDataset, open_fields, split_fields


def encoded(n_traj=5, n_time=12, n=4, t0=0):
    """Every value is 1000 * trajectory + time index, so a frame tells where it came from."""
    traj = np.arange(n_traj)[:, None, None, None]
    time = np.arange(t0, t0 + n_time)[None, :, None, None]
    value = (1000 * traj + time + np.zeros((1, 1, n, n))).astype(np.float32)
    return xr.Dataset(
        {"u": (("trajectory", "time", "y", "x"), value, {"units": "1"})},
        coords={
            "trajectory": np.arange(n_traj),
            "time": ("time", np.arange(t0, t0 + n_time, dtype=np.float64)),
            "y": np.arange(n) / n,
            "x": np.arange(n) / n,
            "split": ("trajectory", ["train", "train", "train", "val", "test"][:n_traj]),
        },
    )


def identity():
    return Normalizer(["u"], [0.0], [1.0])


def origin(item):
    """(trajectory, times) that a window's frames encode."""
    v = item["x"][:, 0, 0, 0].numpy().astype(int)
    assert np.all(v // 1000 == v[0] // 1000), "a window mixes trajectories"
    return int(v[0] // 1000), (v % 1000).tolist()


def test_every_window_holds_consecutive_frames_of_one_trajectory(tmp_path):
    encoded().to_zarr(tmp_path / "d.zarr", zarr_format=2)
    ds = WindowDataset(open_fields(tmp_path / "d.zarr"), 4, identity())
    assert len(ds) == 5 * (12 - 4 + 1)
    for i in range(len(ds)):
        item = ds[i]
        traj, times = origin(item)
        assert traj == item["sample"]
        assert times == list(range(item["start"], item["start"] + 4))
        assert item["x"].dtype == torch.float32 and item["mask"].all()
        assert item["static"].shape == (0, 4, 4)


def test_windows_continue_across_file_boundaries_but_never_across_a_gap(tmp_path):
    encoded(n_time=6, t0=0).to_netcdf(tmp_path / "a.nc")
    encoded(n_time=4, t0=6).to_netcdf(tmp_path / "b.nc")
    encoded(n_time=5, t0=20).to_netcdf(tmp_path / "c.nc")  # a gap: times 10..19 are missing
    fields = open_fields([tmp_path / "c.nc", tmp_path / "a.nc", tmp_path / "b.nc"])
    assert fields.segments == [(0, 10), (10, 15)]
    ds = WindowDataset(fields, 4, identity(), stride=2)
    seen = {tuple(origin(ds[i])[1]) for i in range(len(ds)) if ds[i]["sample"] == 0}
    assert (4, 5, 6, 7) in seen  # crosses a.nc -> b.nc
    assert seen == {(0, 1, 2, 3), (2, 3, 4, 5), (4, 5, 6, 7), (6, 7, 8, 9), (20, 21, 22, 23)}


def test_windows_of_a_split_come_only_from_its_trajectories_and_times(tmp_path):
    encoded().to_netcdf(tmp_path / "d.nc")
    fields = open_fields(tmp_path / "d.nc")
    val = WindowDataset(split_fields(fields, "split=val"), 3, identity())
    assert {origin(val[i])[0] for i in range(len(val))} == {3}
    late = WindowDataset(
        split_fields(split_fields(fields, "trajectory=1:3"), "8/11"), 3, identity()
    )
    got = sorted((origin(late[i])[0], tuple(origin(late[i])[1])) for i in range(len(late)))
    assert got == [(t, (a, a + 1, a + 2)) for t in (1, 2) for a in (8, 9)]


def test_lazy_and_in_memory_windows_agree(tmp_path, monkeypatch):
    encoded().to_zarr(tmp_path / "d.zarr", zarr_format=3)
    memory = WindowDataset(open_fields(tmp_path / "d.zarr"), 5, identity())
    monkeypatch.setattr("minconv_cli.data.open.LOAD_BELOW_BYTES", 0)
    lazy_fields = open_fields(tmp_path / "d.zarr")
    assert lazy_fields.is_lazy and not memory.fields.is_lazy
    lazy = WindowDataset(lazy_fields, 5, identity())
    for i in (0, 7, len(lazy) - 1):
        assert torch.equal(lazy[i]["x"], memory[i]["x"])


def test_dataset_is_picklable_and_works_with_dataloader_workers(tmp_path, monkeypatch):
    encoded(n_traj=2, n_time=6).to_zarr(tmp_path / "d.zarr", zarr_format=2)
    monkeypatch.setattr("minconv_cli.data.open.LOAD_BELOW_BYTES", 0)
    ds = WindowDataset(open_fields(tmp_path / "d.zarr"), 3, identity())
    clone = pickle.loads(pickle.dumps(ds))
    assert torch.equal(clone[3]["x"], ds[3]["x"])
    loader = torch.utils.data.DataLoader(ds, batch_size=4, num_workers=1)
    batches = list(loader)
    assert sum(len(b["sample"]) for b in batches) == len(ds) == 8
    assert batches[0]["x"].shape == (4, 3, 1, 4, 4)


def test_nan_cells_are_filled_and_masked(tmp_path):
    data = encoded(n_traj=1)
    data["u"][0, :, 0, 0] = np.nan
    data.to_netcdf(tmp_path / "d.nc")
    fields = open_fields(tmp_path / "d.nc")
    norm = Normalizer.fit(fields)
    item = WindowDataset(fields, 3, norm)[0]
    assert not item["mask"][:, 0, 0, 0].any() and item["mask"][:, 0, 1, 1].all()
    assert torch.all(item["x"][:, 0, 0, 0] == 0) and torch.isfinite(item["x"]).all()


def test_statics_travel_with_every_window(tmp_path):
    time = pd.date_range("2001-01-01", periods=6, freq="6h")
    ds = xr.Dataset(
        {
            "t2m": (("time", "lat", "lon"), np.random.default_rng(0).normal(size=(6, 3, 4))),
            "lsm": (("lat", "lon"), np.array([[0, 1, 1, 0]] * 3, dtype=np.float32)),
        },
        coords={"time": time, "lat": [50.0, 51.0, 52.0], "lon": [0.0, 1.0, 2.0, 3.0]},
    )
    ds.to_netcdf(tmp_path / "d.nc")
    fields = open_fields(tmp_path / "d.nc", static=["lsm", "lat"])
    assert [c.name for c in fields.channels] == ["t2m"]
    assert [c.name for c in fields.static_channels] == ["lsm", "lat"]
    raw = fields.static_array()
    assert raw.shape == (2, 3, 4) and np.allclose(raw[1, :, 0], [50, 51, 52])
    item = WindowDataset(fields, 2, Normalizer.fit(fields))[0]
    assert item["static"].shape == (2, 3, 4)
    assert np.allclose(item["static"].mean(dim=(1, 2)), 0, atol=1e-6)


def test_too_short_split_names_the_split_and_its_length(tmp_path):
    encoded().to_netcdf(tmp_path / "d.nc")
    short = split_fields(open_fields(tmp_path / "d.nc"), "0/4")
    with pytest.raises(MinconvError, match=r"\[0/4\].*window of 8 steps.*5 time steps"):
        WindowDataset(short, 8, identity())
