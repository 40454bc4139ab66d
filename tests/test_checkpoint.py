"""Checkpoints: one file with weights and meta, written atomically, loaded without unpickling."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from factories import latlon_dataset, trajectory_dataset

from minconv_cli.core.errors import MinconvError
from minconv_cli.data import Normalizer, open_fields
from minconv_cli.models import create_model
from minconv_cli.models.checkpoint import (
    FORMAT,
    data_meta,
    load_checkpoint,
    read_checkpoint,
    save_checkpoint,
)


def small_model(name: str = "minconvgru", **kw):
    return create_model(name, 2, width=6, layers=2, grid=(8, 16), **kw)


def test_save_then_load_rebuilds_the_same_model(tmp_path):
    net = small_model(predict="increment")
    path = tmp_path / "model.pt"
    save_checkpoint(path, net, {"context": 3, "epoch": 2})
    loaded = load_checkpoint(path)
    assert loaded.meta["model"] == net.hparams
    assert loaded.meta["context"] == 3 and loaded.meta["epoch"] == 2
    assert "minconv_version" in loaded.meta
    assert not loaded.model.training
    for key, value in net.state_dict().items():
        assert torch.equal(loaded.model.state_dict()[key], value), key
    x = torch.randn(1, 5, 2, 8, 16)
    with torch.no_grad():
        assert torch.allclose(net.eval()(x, 3), loaded.model(x, 3))


def test_file_is_loadable_with_weights_only_and_holds_meta_as_json(tmp_path):
    path = tmp_path / "c.pt"
    opt = torch.optim.Adam(small_model().parameters(), lr=1e-3)
    save_checkpoint(
        path, small_model(), {"context": 1}, opt.state_dict(), {"rng": torch.get_rng_state()}
    )
    raw = torch.load(path, weights_only=True)
    assert raw["format"] == FORMAT and raw["format_version"] == 1
    assert json.loads(raw["meta_json"])["context"] == 1
    assert raw["optimizer_state"]["param_groups"][0]["lr"] == 1e-3
    assert torch.equal(raw["extra"]["rng"], torch.get_rng_state())


def test_wrapped_models_are_saved_unwrapped(tmp_path):
    net = small_model("convlstm")
    path = tmp_path / "c.pt"
    save_checkpoint(path, _Wrapper(_Wrapper(net)), {})
    assert set(load_checkpoint(path).model.state_dict()) == set(net.state_dict())


class _Wrapper(torch.nn.Module):
    """DDP's `.module` layout (real DDP needs a process group; the DDP test in test_train covers it)."""

    def __init__(self, module):
        super().__init__()
        self.module = module


def test_data_meta_describes_channels_grid_time_and_normalisation(tmp_path):
    path = tmp_path / "d.nc"
    latlon_dataset(n_time=12).to_netcdf(path)
    fields = open_fields(path)
    norm = Normalizer.fit(fields)
    meta = data_meta(fields, norm)
    assert [c["name"] for c in meta["channels"]] == ["z", "t"]
    assert meta["variables"]["z"]["units"] == "m**2 s**-2"
    assert meta["grid"]["shape"] == [8, 16]
    assert meta["time_is_datetime"] is True
    assert pd.Timedelta(meta["time_step"]) == pd.Timedelta("1D")
    assert Normalizer.from_dict(meta["normalizer"]).to_dict() == norm.to_dict()
    json.dumps(meta)  # JSON-able as stored


def test_data_meta_of_numeric_time_stores_a_float_step(tmp_path):
    path = tmp_path / "t.nc"
    trajectory_dataset(n_time=8).to_netcdf(path)
    fields = open_fields(path)
    meta = data_meta(fields, Normalizer.fit(fields))
    assert meta["time_step"] == 1.0 and meta["time_is_datetime"] is False
    assert meta["grid"]["sample_dims"] == ["trajectory"]
    assert meta["grid"]["default_padding"] == "circular"


def test_failed_save_leaves_the_old_file_and_no_temporaries(tmp_path):
    path = tmp_path / "model.pt"
    save_checkpoint(path, small_model(), {"epoch": 1})
    before = path.read_bytes()
    with pytest.raises(ValueError, match="JSON"):
        save_checkpoint(path, small_model(), {"epoch": object()})
    with pytest.raises(TypeError):
        save_checkpoint(path, small_model(), {"epoch": 2}, extra={"bad": _Unsaveable()})
    assert path.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["model.pt"]


class _Unsaveable:
    def __reduce__(self):
        raise TypeError("cannot pickle this")


class _Payload:
    def __reduce__(self):
        return (Path.touch, (Path(os.environ["MINCONV_TEST_MARKER"]),))


def test_foreign_corrupt_and_hostile_files_are_refused_naming_the_file(tmp_path, monkeypatch):
    marker = tmp_path / "code-ran"
    monkeypatch.setenv("MINCONV_TEST_MARKER", str(marker))
    bad = {
        "hostile.pt": lambda p: torch.save({"format": FORMAT, "x": _Payload()}, p),
        "pickled.pt": lambda p: p.write_bytes(pickle.dumps(_Payload())),
        "corrupt.pt": lambda p: p.write_bytes(b"\x00garbage" * 20),
        "foreign.pt": lambda p: torch.save({"weights": torch.zeros(2)}, p),
        "tensor.pt": lambda p: torch.save(torch.zeros(2), p),
    }
    for name, make in bad.items():
        make(tmp_path / name)
        with pytest.raises(MinconvError, match=name):
            load_checkpoint(tmp_path / name)
    assert not marker.exists()
    with pytest.raises(MinconvError, match="missing.pt: checkpoint not found"):
        load_checkpoint(tmp_path / "missing.pt")


def test_other_format_versions_and_mismatched_weights_are_refused(tmp_path):
    path = tmp_path / "c.pt"
    save_checkpoint(path, small_model(), {})
    raw = torch.load(path, weights_only=True)
    torch.save({**raw, "format_version": 99}, tmp_path / "future.pt")
    with pytest.raises(MinconvError, match="future.pt: checkpoint format version 99"):
        read_checkpoint(tmp_path / "future.pt")
    meta = json.loads(raw["meta_json"])
    meta["model"]["width"] = meta["model"]["widths"][0] = 7
    meta["model"]["widths"] = [7, 7]
    torch.save({**raw, "meta_json": json.dumps(meta)}, tmp_path / "other.pt")
    with pytest.raises(MinconvError, match="other.pt: the weights do not fit"):
        load_checkpoint(tmp_path / "other.pt")
    torch.save({**raw, "meta_json": "{not json"}, tmp_path / "damaged.pt")
    with pytest.raises(MinconvError, match="damaged.pt: damaged"):
        load_checkpoint(tmp_path / "damaged.pt")


def test_every_model_round_trips(tmp_path):
    for name in ("minconvgru", "minconvlstm", "minconvexplstm", "convgru", "convlstm"):
        net = small_model(name)
        save_checkpoint(tmp_path / f"{name}.pt", net, {})
        loaded = load_checkpoint(tmp_path / f"{name}.pt")
        assert loaded.meta["model"]["name"] == name
        x = torch.from_numpy(
            np.random.default_rng(0).standard_normal((1, 4, 2, 8, 16), dtype=np.float32)
        )
        with torch.no_grad():
            assert torch.allclose(net.eval()(x, 2), loaded.model(x, 2))
