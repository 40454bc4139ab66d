"""Files written by an earlier release (tests/fixtures, made at commit 5341570) keep working:
its checkpoints load and roll out to the same numbers, its forecast stores are scored by
`evaluate` and completed by `rollout --resume`."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import xarray as xr
import zarr
from typer.testing import CliRunner

from minconv_cli.cli import app
from minconv_cli.evaluate import evaluate
from minconv_cli.models.checkpoint import load_checkpoint

FIXTURES = Path(__file__).parent / "fixtures"
runner = CliRunner()
ROLL = ["--precision", "fp32", "--device", "cpu", "--quiet"]
# (checkpoint, data, store, rollout options) as in fixtures/make_fixtures.py
CASES = {
    "deterministic": (
        "traj_model.pt",
        "traj.nc",
        "traj_forecast.zarr",
        ["--subset", "split=test", "--steps", "3"],
    ),
    "ensemble": (
        "latlon_model.pt",
        "latlon.nc",
        "latlon_ensemble.zarr",
        ["--init-times", "2000-01-10/2000-01-11", "--steps", "2", "--members", "2"],
    ),
}


def rollout_args(case: str, out: Path, *extra: str) -> list[str]:
    ckpt, data, _, options = CASES[case]
    return ["rollout", str(FIXTURES / ckpt), str(FIXTURES / data), *options, "--out", str(out)]


def test_old_checkpoints_load_with_their_model_and_data_description():
    traj = load_checkpoint(FIXTURES / "traj_model.pt")
    assert traj.model.hparams["name"] == "minconvgru" and traj.model.hparams["widths"] == [2]
    assert traj.meta["context"] == 3 and traj.meta["grid"]["shape"] == [6, 6]
    latlon = load_checkpoint(FIXTURES / "latlon_model.pt")
    assert latlon.model.hparams["static_channels"] == 1
    assert [c["name"] for c in latlon.meta["channels"]] == ["z_500", "z_850"]
    x = torch.zeros(1, 3, 2, 4, 6)
    with torch.no_grad():
        y = latlon.model(x, 3, static=torch.zeros(1, 1, 4, 6))
    assert y.shape == (1, 3, 2, 4, 6) and torch.isfinite(y).all()


@pytest.mark.parametrize("case", list(CASES))
def test_old_checkpoints_roll_out_to_the_stored_forecast(tmp_path, case):
    out = tmp_path / "again.zarr"
    result = runner.invoke(app, [*rollout_args(case, out), *ROLL])
    assert result.exit_code == 0, result.output
    old = xr.open_zarr(FIXTURES / CASES[case][2])
    new = xr.open_zarr(out)
    assert list(new.data_vars) == list(old.data_vars)
    for v in old.data_vars:
        assert new[v].dims == old[v].dims
        np.testing.assert_allclose(new[v].values, old[v].values, rtol=1e-5, atol=1e-6)
    for c in old.coords:
        np.testing.assert_array_equal(new[c].values, old[c].values)
    assert (
        json.loads(new.attrs["minconv_rollout"]).keys()
        == json.loads(old.attrs["minconv_rollout"]).keys()
    )


@pytest.mark.parametrize("case", list(CASES))
def test_old_stores_are_scored_by_evaluate(tmp_path, case):
    _, data, store, _ = CASES[case]
    scores = evaluate(FIXTURES / store, FIXTURES / data)
    values = [r["value"] for r in scores.records if r["metric"] == "rmse"]
    assert values and all(np.isfinite(v) for v in values)
    result = runner.invoke(
        app, ["evaluate", str(FIXTURES / store), str(FIXTURES / data), "--out", "s", "--quiet"]
    )
    assert result.exit_code == 0, result.output
    assert json.loads(Path("s/scores.json").read_text())


@pytest.mark.parametrize("case", list(CASES))
def test_old_stores_are_completed_by_resume(tmp_path, case):
    """An old store with one sequence left unfinished: --resume writes just that one, equal to
    what the old release wrote."""
    _, data, store, _ = CASES[case]
    out = tmp_path / "partial.zarr"
    shutil.copytree(FIXTURES / store, out)
    group = zarr.open_group(str(out), mode="r+")
    settings = json.loads(group.attrs["minconv_rollout"])
    settings["data"] = [str((FIXTURES / data).resolve())]  # where the fixture lies here
    group.attrs["minconv_rollout"] = json.dumps(settings)
    done = group["minconv_done"]
    done[(0,) * done.ndim] = False
    zarr.consolidate_metadata(str(out))
    result = runner.invoke(app, [*rollout_args(case, out), "--resume", "--json", *ROLL[:-1]])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["written"] == 1 and summary["skipped"] == done.size - 1
    old, new = xr.open_zarr(FIXTURES / store), xr.open_zarr(out)
    assert bool(new["minconv_done"].all())
    for v in old.data_vars:
        np.testing.assert_allclose(new[v].values, old[v].values, rtol=1e-5, atol=1e-6)


def test_old_meta_converts_on_load_and_new_files_drop_the_copies(tmp_path):
    """Releases up to 0.1.0 also stored time_dim/sample_dims/level_dim/padding at the top level:
    read into the one place each belongs; a checkpoint written now stores them once."""
    from minconv_cli.models.checkpoint import read_checkpoint, save_checkpoint

    raw, meta = read_checkpoint(FIXTURES / "traj_model.pt")
    assert "padding" in json.loads(raw["meta_json"])  # the old file has the copies
    assert meta.data.sample_dims == ["trajectory"] and meta.data.time_dim == "time"
    assert meta.model.padding == "circular" and meta.data.step() == 1.0
    assert read_checkpoint(FIXTURES / "latlon_model.pt")[1].data.level_dim == "level"
    loaded = load_checkpoint(FIXTURES / "traj_model.pt")
    save_checkpoint(tmp_path / "again.pt", loaded.model, loaded.meta)
    stored = json.loads(torch.load(tmp_path / "again.pt", weights_only=True)["meta_json"])
    assert not {"time_dim", "sample_dims", "level_dim", "padding"} & set(stored)
    assert stored["grid"]["sample_dims"] == ["trajectory"]
    assert stored["model"] == json.loads(raw["meta_json"])["model"]


def test_a_model_this_release_does_not_know_is_refused_naming_the_versions(tmp_path):
    from minconv_cli.core.errors import MinconvError

    raw = torch.load(FIXTURES / "traj_model.pt", weights_only=True)
    meta = json.loads(raw["meta_json"])
    meta["model"]["new_option"] = 1
    meta["minconv_version"] = "9.0"
    torch.save({**raw, "meta_json": json.dumps(meta)}, tmp_path / "future.pt")
    with pytest.raises(MinconvError, match=r"future.pt: written by minconv 9.0.*this minconv"):
        load_checkpoint(tmp_path / "future.pt")


def test_each_shim_is_a_pure_function_over_the_dicts_of_old_files():
    """minconv_cli.compat: what each old file needs, read as this release writes it."""
    import warnings

    from minconv_cli import compat
    from minconv_cli.core.errors import MinconvError

    old = {"grid": {"y_dim": "y"}, "time_dim": "t", "sample_dims": ["s"], "padding": "circular"}
    assert compat.checkpoint_meta(old) == {
        "grid": {"time_dim": "t", "sample_dims": ["s"], "y_dim": "y"}
    }
    new = {"grid": {"time_dim": "time"}, "model": {}}
    assert compat.checkpoint_meta(new) is new  # nothing to do for files of this release

    with pytest.warns(FutureWarning, match="train.amp is deprecated"):
        assert compat.config_values({"train": {"amp": True}}, "c.yaml") == {
            "train": {"precision": "bf16"}
        }
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a stored config of an old run: read without a note
        assert compat.config_values({"train": {"amp": False}}, "run", note=False) == {
            "train": {"precision": "fp32"}
        }
    with pytest.raises(MinconvError, match=r"c.yaml: train.amp: expected bool, got str 'yes'"):
        compat.config_values({"train": {"amp": "yes"}}, "c.yaml")

    assert compat.rollout_settings({"steps": 3}) == {"steps": 3, "precision": "fp32"}
    assert compat.rollout_settings({"precision": "bf16"}) == {"precision": "bf16"}
    settings = {"members": 4, "step_noise": 0.0, "recentre": False, "smoothing": 0.0}
    assert compat.ensemble_settings(settings) == {"members": 4, "smoothing": 0.0}
    assert compat.ensemble_settings({**settings, "step_noise": 0.5})["step_noise"] == 0.5
    assert not compat.every_chunk_stored(xr.open_zarr(FIXTURES / "traj_forecast.zarr").attrs)
    assert compat.every_chunk_stored({compat.EVERY_CHUNK_ATTR: 1})
