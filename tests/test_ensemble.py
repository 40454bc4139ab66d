"""Ensembles: `minconv rollout --members` / several checkpoints into a store with a `number` dim,
and `minconv evaluate` on it (ensemble-mean scores, spread, spread/skill, CRPS, rank histogram)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import xarray as xr
import zarr
from factories import latlon_dataset
from test_rollout import invoke, make_checkpoint, one_error_line
from typer.testing import CliRunner

from minconv_cli.cli import app
from minconv_cli.evaluate import evaluate

runner = CliRunner()
DAY = np.timedelta64(1, "D")


@pytest.fixture
def setup(tmp_path):
    """Lat/lon data, a checkpoint of it, and a second checkpoint of the same data contract."""
    data = tmp_path / "data.nc"
    latlon_dataset(n_time=12, n_lat=6, n_lon=8).to_netcdf(data)
    make_checkpoint(data, tmp_path / "a.pt")
    make_checkpoint(data, tmp_path / "b.pt")
    return tmp_path, data


def rollout(tmp, data, *args):
    result = invoke(
        *args[:-1],
        data,
        "--steps",
        3,
        "--init-times",
        "2000-01-06,2000-01-08",
        "--out",
        tmp / args[-1],
        "-q",
    )
    assert result.exit_code == 0, result.output
    return xr.open_zarr(tmp / args[-1]).load()


# Members run batched with others, the deterministic forecast alone: the convolution library may
# split the batch differently (it does with one thread), so "the same forecast" is equal to float
# rounding, far below any perturbation.
SAME_RUN = 1e-5


def test_members_share_the_store_layout_with_a_number_dim_and_member_0_is_the_control(setup):
    tmp, data = setup
    det = rollout(tmp, data, tmp / "a.pt", "det.zarr")
    ens = rollout(tmp, data, tmp / "a.pt", "--members", 4, "--perturbation", 0.2, "ens.zarr")
    assert "number" not in det.dims  # deterministic stores are unchanged
    assert ens.z.dims == ("time", "number", "prediction_timedelta", "latitude", "longitude")
    assert ens.sizes["number"] == 4 and ens.minconv_done.dims == ("time", "number")
    assert bool(ens.minconv_done.all())
    assert ens.member_perturbed.values.tolist() == [False, True, True, True]
    np.testing.assert_allclose(ens.z.isel(number=0).values, det.z.values, rtol=SAME_RUN)
    for m in (1, 2, 3):  # perturbed members differ from the control and from each other
        assert not np.allclose(ens.z.isel(number=m).values, det.z.values)
    assert not np.allclose(ens.z.isel(number=1).values, ens.z.isel(number=2).values)


def test_perturbations_are_reproducible_from_the_seed_and_scale_with_the_option(setup):
    tmp, data = setup
    a = rollout(tmp, data, tmp / "a.pt", "--members", 3, "--seed", 7, "a.zarr")
    b = rollout(tmp, data, tmp / "a.pt", "--members", 3, "--seed", 7, "b.zarr")
    c = rollout(tmp, data, tmp / "a.pt", "--members", 3, "--seed", 8, "c.zarr")
    small = rollout(
        tmp, data, tmp / "a.pt", "--members", 3, "--seed", 7, "--perturbation", 0.01, "s.zarr"
    )
    np.testing.assert_array_equal(a.z.values, b.z.values)
    assert not np.allclose(a.z.values, c.z.values)
    spread = {k: float(ds.z.std("number").mean()) for k, ds in (("a", a), ("small", small))}
    assert 0 < spread["small"] < spread["a"]


def test_an_interrupted_ensemble_resumes_to_the_same_store(setup):
    tmp, data = setup
    full = rollout(tmp, data, tmp / "a.pt", "--members", 3, "full.zarr")
    rollout(tmp, data, tmp / "a.pt", "--members", 3, "part.zarr")
    group = zarr.open_group(str(tmp / "part.zarr"), mode="r+")
    group["minconv_done"][1, 1:] = False  # as if killed before these members were written
    group["z"][1, 1:] = np.nan
    args = ("--steps", 3, "--init-times", "2000-01-06,2000-01-08", "--out", tmp / "part.zarr")
    result = invoke(tmp / "a.pt", data, *args, "--members", 3, "--resume", "--json", "-q")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["written"] == 2 and summary["skipped"] == 4 and summary["members"] == 3
    np.testing.assert_allclose(
        xr.open_zarr(tmp / "part.zarr").z.values, full.z.values, rtol=SAME_RUN
    )
    changed = invoke(tmp / "a.pt", data, *args, "--members", 3, "--seed", 1, "--resume")
    assert "other settings (ensemble differ)" in one_error_line(changed)


def test_several_checkpoints_split_the_members_in_blocks_each_with_its_control(setup):
    tmp, data = setup
    det_b = rollout(tmp, data, tmp / "b.pt", "b.zarr")
    ens = rollout(tmp, data, tmp / "a.pt", tmp / "b.pt", "--members", 5, "ens.zarr")
    assert ens.member_checkpoint.values.tolist() == [0, 0, 0, 1, 1]
    assert ens.member_perturbed.values.tolist() == [False, True, True, False, True]
    np.testing.assert_allclose(ens.z.isel(number=3).values, det_b.z.values, rtol=SAME_RUN)
    one_each = rollout(tmp, data, tmp / "a.pt", tmp / "b.pt", "two.zarr")
    assert one_each.sizes["number"] == 2 and not one_each.member_perturbed.values.any()


def test_step_noise_adds_the_models_own_one_step_errors_in_antithetic_pairs(setup):
    import torch

    from minconv_cli.data.normalize import Normalizer
    from minconv_cli.models.checkpoint import load_checkpoint

    tmp, data = setup
    args = ("--members", 3, "--perturbation", 0, "--precision", "fp32", "--context", 6)
    ens = rollout(tmp, data, tmp / "a.pt", *args, "--step-noise", 1, "ens.zarr")
    half = rollout(tmp, data, tmp / "a.pt", *args, "--step-noise", 0.5, "half.zarr")
    det = rollout(tmp, data, tmp / "a.pt", "--precision", "fp32", "--context", 6, "det.zarr")
    np.testing.assert_allclose(
        ens.z.isel(number=0).values, det.z.values, rtol=SAME_RUN
    )  # the control
    lead1 = ens.isel(prediction_timedelta=0) - det.isel(prediction_timedelta=0)
    for v in ("z", "t"):  # the pair's lead-1 errors are opposite, and scale with the option
        d = lead1[v].values
        assert np.abs(d[:, 1]).max() > 0
        np.testing.assert_allclose(d[:, 2], -d[:, 1], rtol=1e-4, atol=1e-4 * np.abs(d).max())
        dh = (half.isel(prediction_timedelta=0) - det.isel(prediction_timedelta=0))[v].values
        np.testing.assert_allclose(dh, d / 2, rtol=1e-4, atol=1e-4 * np.abs(d).max())
    # each lead-1 error is one of the model's one-step residuals on the second half of its context
    loaded = load_checkpoint(tmp / "a.pt")
    norm = Normalizer.from_dict(loaded.meta["normalizer"])
    truth = xr.open_dataset(data)
    for i, init in enumerate(ens.time.values):
        window = truth.sel(time=slice(init - 5 * DAY, init))
        frames = np.stack([window[c].values for c in norm.channels], axis=1)[None]
        x = torch.from_numpy(norm.normalize(frames)[0])
        with torch.no_grad():
            y = loaded.model.eval()(x, context=6)
        residuals = (x[0, 3:] - y[0, 2:5]).numpy()  # targets: context frames 4, 5, 6
        drawn = np.stack([lead1[c].values[i, 1] for c in norm.channels]) / norm.std[:, None, None]
        gaps = [np.abs(drawn - r).max() for r in residuals]
        assert min(gaps) < 1e-4 * np.abs(residuals).max(), gaps


def test_recentring_moves_each_blocks_perturbed_members_so_their_mean_is_the_control():
    from minconv_cli.rollout.plan import EnsembleSpec, recentre_matrix

    spec = EnsembleSpec(members=7, checkpoints=2, perturbation=0, step_noise=1, recentre=True)
    members = [0, 1, 2, 3, 4, 5, 6]  # blocks: 0-3 (control 0), 4-6 (control 4)
    blocks = [("t0", 0)] * 4 + [("t0", 1)] * 3
    rows = np.random.default_rng(0).normal(size=(7, 5))
    out = recentre_matrix(spec, members, blocks).astype(np.float64) @ rows
    np.testing.assert_allclose(out[[0, 4]], rows[[0, 4]])  # controls stay
    np.testing.assert_allclose(out[0:4].mean(0), out[0], atol=1e-6)
    np.testing.assert_allclose(out[4:7].mean(0), out[4], atol=1e-6)
    # the members keep their differences from each other: only their common shift goes
    np.testing.assert_allclose(out[1] - out[2], rows[1] - rows[2], atol=1e-6)
    with pytest.raises(ValueError, match="not whole"):
        recentre_matrix(spec, members[:6], blocks[:6])


def test_recentred_step_noise_keeps_the_ensemble_mean_on_the_controls_at_every_lead(setup):
    tmp, data = setup
    args = ("--members", 6, "--perturbation", 0, "--step-noise", 1, "--precision", "fp32")
    args += ("--context", 6, "--batch-size", 2)  # smaller than a block: batches hold whole blocks
    free = rollout(tmp, data, tmp / "a.pt", tmp / "b.pt", *args, "free.zarr")
    ens = rollout(tmp, data, tmp / "a.pt", tmp / "b.pt", *args, "--recentre", "ens.zarr")
    for k, ckpt in enumerate(("a", "b")):
        det = rollout(
            tmp, data, tmp / f"{ckpt}.pt", "--precision", "fp32", "--context", 6, f"{ckpt}.zarr"
        )
        block = ens.z.isel(number=slice(3 * k, 3 * k + 3)).values
        control = det.z.values
        np.testing.assert_allclose(block[:, 0], control, rtol=SAME_RUN)
        np.testing.assert_allclose(block.mean(1), control, rtol=SAME_RUN, atol=1e-3)
        assert np.abs(block[:, 1] - control).min(axis=(-2, -1)).max() > 0  # spread is kept
        # without recentring the pair drifts off its control beyond lead 1 (second order)
        pair = free.z.isel(number=slice(3 * k + 1, 3 * k + 3)).values.mean(1)
        assert np.abs(pair[:, 1:] - control[:, 1:]).max() > 1e-2
    assert json.loads(ens.attrs["ensemble"])["recentre"] is True
    # a half-written block is redone whole on --resume, to the same store
    group = zarr.open_group(str(tmp / "ens.zarr"), mode="r+")
    group["minconv_done"][1, 4] = False
    group["z"][1, 4] = np.nan
    more = ("--steps", 3, "--init-times", "2000-01-06,2000-01-08", "--out", tmp / "ens.zarr")
    result = invoke(
        tmp / "a.pt", tmp / "b.pt", data, *more, *args, "--recentre", "--resume", "--json"
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["written"] == 3
    np.testing.assert_allclose(xr.open_zarr(tmp / "ens.zarr").z.values, ens.z.values, rtol=SAME_RUN)


def test_bad_ensemble_requests_are_one_line(setup):
    tmp, data = setup
    other = tmp / "other.nc"
    latlon_dataset(n_time=12, n_lat=5, n_lon=8).to_netcdf(other)
    make_checkpoint(other, tmp / "other.pt")
    base = ("--steps", 2, "--out", tmp / "x.zarr")
    assert "--members: must be at least 1, got 0" in one_error_line(
        invoke(tmp / "a.pt", data, *base, "--members", 0)
    )
    assert "fewer than the 2 checkpoints" in one_error_line(
        invoke(tmp / "a.pt", tmp / "b.pt", data, *base, "--members", 1)
    )
    line = one_error_line(invoke(tmp / "a.pt", tmp / "other.pt", data, *base))
    assert "other.pt: not trained on the same data as" in line and "grid 'latitude'" in line
    assert "must come before the data" in one_error_line(
        invoke(tmp / "a.pt", data, tmp / "b.pt", *base)
    )
    assert "--perturbation: must be 0 or more" in one_error_line(
        invoke(tmp / "a.pt", data, *base, "--members", 2, "--perturbation", -1)
    )
    assert "--step-noise: must be 0 or more" in one_error_line(
        invoke(tmp / "a.pt", data, *base, "--members", 2, "--step-noise", -1)
    )
    assert "--step-noise: needs an ensemble" in one_error_line(
        invoke(tmp / "a.pt", data, *base, "--step-noise", 1)
    )
    assert "--recentre: needs an ensemble" in one_error_line(
        invoke(tmp / "a.pt", data, *base, "--recentre")
    )
    assert "--recentre: needs perturbed members" in one_error_line(
        invoke(tmp / "a.pt", data, *base, "--members", 3, "--perturbation", 0, "--recentre")
    )
    assert "--recentre: needs at least 2 perturbed members" in one_error_line(
        invoke(tmp / "a.pt", tmp / "b.pt", data, *base, "--members", 5, "--recentre")
    )
    assert "needs --context of at least 2, got 1" in one_error_line(
        invoke(tmp / "a.pt", data, *base, "--members", 2, "--step-noise", 1, "--context", 1)
    )
    assert not (tmp / "x.zarr").exists()


# --------------------------------------------------------------------------- scoring


def hand_crps(members: np.ndarray, obs: np.ndarray, fair: bool) -> np.ndarray:
    """CRPS of an ensemble (members first) per cell: mean |x_i - y| - sum |x_i - x_j| / (2 K)."""
    m = members.shape[0]
    skill = np.abs(members - obs).mean(0)
    pairs = np.abs(members[:, None] - members[None, :]).sum((0, 1))
    return skill - pairs / (2 * (m * (m - 1) if fair else m * m))


def test_ensemble_scores_equal_a_hand_computation_on_a_tiny_ensemble(tmp_path):
    truth = latlon_dataset(n_time=10, n_lat=3, n_lon=4, variables=("z",))
    truth.to_netcdf(tmp_path / "truth.nc")
    rng = np.random.default_rng(3)
    n_mem, inits, leads = 3, [5, 6], np.array([1, 2]) * DAY
    init_t = truth.time.values[inits]
    obs = np.stack(
        [[truth.z.sel(time=t + ld).values for ld in leads] for t in init_t]
    )  # (I, L, y, x)
    members = obs[:, None] + rng.normal(0, 100, (2, n_mem, 2, 3, 4)).astype(np.float32)
    members[0, 1, 1, 0, 0] = obs[0, 1, 0, 0]  # a tie with the truth
    xr.Dataset(
        {
            "z": (
                ("time", "number", "prediction_timedelta", "latitude", "longitude"),
                members,
                truth.z.attrs,
            )
        },
        coords={
            "time": init_t,
            "number": np.arange(n_mem),
            "prediction_timedelta": leads,
            "latitude": truth.latitude,
            "longitude": truth.longitude,
        },
    ).to_zarr(tmp_path / "ens.zarr")
    scores = evaluate(
        tmp_path / "ens.zarr", tmp_path / "truth.nc", references=[], metrics_=["rmse"]
    )
    w = np.cos(np.deg2rad(truth.latitude.values))[:, None] * np.ones(4)
    w = w / w.mean()

    def wmean(x):  # over init times and the grid, per lead: (I, L, y, x) -> (L,)
        return (x * w).sum((0, 2, 3)) / (w.sum() * x.shape[0])

    table = scores.table.sel(forecast="ens", variable="z")
    mean = members.mean(1)
    rmse = np.sqrt(wmean((mean - obs) ** 2))
    spread = np.sqrt(wmean(members.var(1, ddof=1)))
    np.testing.assert_allclose(table.sel(metric="rmse").values, rmse, rtol=1e-5)
    np.testing.assert_allclose(table.sel(metric="spread").values, spread, rtol=1e-5)
    np.testing.assert_allclose(
        table.sel(metric="spread_skill").values, np.sqrt(4 / 3) * spread / rmse, rtol=1e-5
    )
    for metric, fair in (("crps", False), ("crps_fair", True)):
        crps = wmean(hand_crps(members.transpose(1, 0, 2, 3, 4), obs, fair))
        np.testing.assert_allclose(table.sel(metric=metric).values, crps, rtol=1e-5)
    # rank of the truth among the members, 1..n+1 (a tie shares its mass), area-weighted
    below = (members < obs[:, None]).sum(1)
    ties = (members == obs[:, None]).sum(1)
    hist = np.zeros((2, n_mem + 1))
    for r in range(n_mem + 1):
        share = ((below <= r) & (r <= below + ties)) / (ties + 1)
        hist[:, r] = wmean(share)
    got = scores.rank_histograms[("ens", "z")]
    assert got.dims == ("lead", "rank")
    np.testing.assert_allclose(got.values, hist, rtol=1e-5)
    assert np.allclose(got.sum("rank"), 1)


def test_cli_scores_a_rollout_ensemble_with_spread_on_the_plot_and_a_rank_histogram(setup):
    tmp, data = setup
    rollout(tmp, data, tmp / "a.pt", "--members", 4, "ens.zarr")
    rollout(tmp, data, tmp / "a.pt", "det.zarr")
    out = tmp / "scores"
    xr.open_dataset(data).mean("time").to_netcdf(tmp / "clim.nc")
    result = runner.invoke(
        app,
        [
            "evaluate",
            str(tmp / "ens.zarr"),
            str(data),
            "--compare",
            f"det={tmp / 'det.zarr'}",
            "--climatology",
            str(tmp / "clim.nc"),
            "--out",
            str(out),
            "--json",
            "-q",
        ],
    )
    assert result.exit_code == 0, result.output
    records = json.loads(result.stdout)
    metrics_of = {(r["forecast"], r["metric"]) for r in records if r["value"] is not None}
    for m in ("rmse", "acc", "spread", "spread_skill", "crps", "crps_fair"):
        assert ("ens", m) in metrics_of
    assert ("det", "spread") not in metrics_of and ("det", "rmse") in metrics_of
    assert (out / "rank_histogram.png").stat().st_size > 1000
    with xr.open_dataset(out / "scores.nc") as nc:
        assert nc.rank_histogram.dims == ("forecast", "variable", "lead", "rank")
        assert nc.rank_histogram.sizes["rank"] == 5
        np.testing.assert_allclose(nc.rank_histogram.sel(forecast="ens").sum("rank"), 1)


# --------------------------------------------------------------------------- training option


def test_the_training_loss_is_fair_crps_over_members_in_the_closed_loop(tmp_path):
    import torch

    from minconv_cli.models import create_model
    from minconv_cli.training.config import TrainConfig
    from minconv_cli.training.ensemble_loss import fair_crps
    from minconv_cli.training.steps import training_loss

    torch.manual_seed(0)
    members, truth = torch.randn(2, 4, 3, 5), torch.randn(2, 3, 5)
    hand = [hand_crps(members[b].numpy(), truth[b].numpy(), fair=True) for b in range(2)]
    np.testing.assert_allclose(fair_crps(members, truth).numpy(), np.stack(hand), rtol=1e-5)

    # without noise every member is the deterministic forecast: CRPS = |error|, MSE unchanged
    net = create_model("minconvgru", 1, width=4, layers=1, grid=(6, 6), padding="zeros").eval()
    x = torch.randn(3, 6, 1, 6, 6)
    batch = {"x": x, "mask": torch.ones_like(x, dtype=torch.bool), "static": torch.zeros(3, 0)}
    cfg = TrainConfig(context=3, horizon=2, ensemble_members=3, ensemble_noise=0.0)
    with torch.no_grad():
        y = net(x[:, :5], 3)
        tf = ((y[:, :3] - x[:, 1:4]) ** 2).mean()
        cl = (y[:, 3:] - x[:, 4:6]).abs().mean()
        got = training_loss(net, batch, 3, 2, cfg, torch.device("cpu"), torch.Generator())
    np.testing.assert_allclose(float(got), float((tf + cl) / 2), rtol=1e-5)


def test_training_with_ensemble_members_runs_and_bad_values_are_one_line(tmp_path):
    from factories import trajectory_dataset

    data = tmp_path / "traj.nc"
    trajectory_dataset(n_traj=5, n_time=10, n=8, splits=["train"] * 3 + ["val", "test"]).to_netcdf(
        data
    )
    args = ["train", str(data), "--context", "3", "--horizon", "2", "--epochs", "1", "--width", "4"]
    ok = runner.invoke(
        app, [*args, "--set", "train.ensemble_members=2", "--out", str(tmp_path / "r"), "-q"]
    )
    assert ok.exit_code == 0, ok.output
    assert (tmp_path / "r" / "model.pt").exists()
    bad = runner.invoke(
        app, [*args, "--set", "train.ensemble_members=0", "--out", str(tmp_path / "b")]
    )
    assert bad.exit_code == 1 and "train.ensemble_members" in bad.stderr
    assert len([ln for ln in bad.stderr.splitlines() if ln.strip()]) == 1
