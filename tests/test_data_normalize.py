"""Per-channel statistics: NaN-aware, chunk-wise on lazy data, from the training split only; round trips."""

import json

import numpy as np
import pytest
import torch
from factories import latlon_dataset, trajectory_dataset

from minconv_cli.core.errors import MinconvError
from minconv_cli.data import Normalizer, open_fields, split_fields


def test_stats_come_from_the_training_split_only(tmp_path):
    ds = trajectory_dataset(n_traj=4, n_time=6)
    ds["vorticity"][:3] = 1.0  # train: trajectories 0..2 (constant 1 except one cell)
    ds["vorticity"][3] = 100.0  # test trajectory: far away
    ds["vorticity"][0, 0, 0, 0] = 3.0
    ds = ds.assign_coords(split=("trajectory", ["train", "train", "train", "test"]))
    ds.to_netcdf(tmp_path / "d.nc")
    train = split_fields(open_fields(tmp_path / "d.nc"), "split=train")
    norm = Normalizer.fit(train)
    values = ds["vorticity"].values[:3].astype(np.float64)
    assert norm.mean[0] == pytest.approx(values.mean())
    assert norm.std[0] == pytest.approx(values.std())


def test_lazy_fit_matches_in_memory_fit_and_skips_nan(tmp_path, monkeypatch):
    latlon_dataset(n_time=12, nan_mask=True).to_zarr(
        tmp_path / "d.zarr", encoding={"z": {"chunks": (3, 8, 16)}}
    )
    memory = Normalizer.fit(open_fields(tmp_path / "d.zarr"))
    monkeypatch.setattr("minconv_cli.data.open.LOAD_BELOW_BYTES", 0)
    fields = open_fields(tmp_path / "d.zarr")
    assert fields.is_lazy
    lazy = Normalizer.fit(fields)
    np.testing.assert_allclose(lazy.mean, memory.mean, rtol=1e-9)
    np.testing.assert_allclose(lazy.std, memory.std, rtol=1e-9)
    k = lazy.channels.index("z")
    z = fields.ds["z"].values.astype(np.float64)
    assert lazy.mean[k] == pytest.approx(np.nanmean(z)) and lazy.std[k] == pytest.approx(
        np.nanstd(z)
    )


def test_normalize_fills_nan_and_returns_the_mask_for_numpy_and_torch():
    norm = Normalizer(["a", "b"], [10.0, -1.0], [2.0, 0.5])
    frames = np.array([[[[12.0, np.nan]], [[-1.5, 0.0]]]], dtype=np.float32)  # (T=1, C=2, 1, 2)
    x, mask = norm.normalize(frames)
    np.testing.assert_array_equal(x, [[[[1.0, 0.0]], [[-1.0, 2.0]]]])
    np.testing.assert_array_equal(mask, [[[[True, False]], [[True, True]]]])
    tx, tmask = norm.normalize(torch.from_numpy(frames))
    assert torch.equal(tx, torch.from_numpy(x)) and torch.equal(tmask, torch.from_numpy(mask))
    back = norm.denormalize(torch.from_numpy(x))
    assert torch.allclose(back[0, :, 0, 0], torch.tensor([12.0, -1.5]))


def test_constant_channel_gets_a_std_floor_and_the_dict_round_trips(tmp_path):
    ds = trajectory_dataset(n_traj=2, n_time=4)
    ds["vorticity"][:] = 5.0
    ds.to_netcdf(tmp_path / "d.nc")
    norm = Normalizer.fit(open_fields(tmp_path / "d.nc"))
    assert norm.std[0] == 1.0 and norm.mean[0] == 5.0
    again = Normalizer.from_dict(json.loads(json.dumps(norm.to_dict())))
    assert again.to_dict() == norm.to_dict()


def test_all_nan_variable_in_lazy_data_is_reported_at_fit(tmp_path, monkeypatch):
    ds = latlon_dataset(n_time=3)
    ds["t"][:] = np.nan
    ds.to_zarr(tmp_path / "nan.zarr", write_empty_chunks=True)  # an all-NaN chunk is stored
    monkeypatch.setattr("minconv_cli.data.open.LOAD_BELOW_BYTES", 0)
    with pytest.raises(MinconvError, match=r"nan\.zarr: variable 't' is all NaN"):
        Normalizer.fit(open_fields(tmp_path / "nan.zarr"))
