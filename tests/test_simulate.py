"""The Navier-Stokes solver, its random initial conditions, the `simulate` command and the bundled sample."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pytest
import torch
import xarray as xr
from factories import trajectory_dataset
from typer.testing import CliRunner

from minconv_cli.data.sample import NAVIER_STOKES, sample_path
from minconv_cli.simulate import (
    NavierStokes2D,
    SimulationConfig,
    SpectralGrid,
    gaussian_random_field,
    grf_eigenvalues,
    kolmogorov_forcing,
    simulate_block,
    simulate_navier_stokes,
    white_noise,
    write_dataset,
)
from minconv_cli.simulate.cli import app
from minconv_cli.simulate.dataset import stored_bits, to_dataset
from minconv_cli.simulate.solver import cell_centres


@pytest.fixture(autouse=True)
def _one_thread():
    """Small FFTs run fastest on one thread, above all on a busy machine (simulate_block does the same)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


TINY = dict(trajectories=4, resolution=16, coarsen=2, steps=3, solver_dt=0.05, block_size=2)


def grid_xy(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    x = cell_centres(n)
    return x[None, :], x[:, None]


def physical(solver: NavierStokes2D, w0: torch.Tensor, n_steps: int) -> torch.Tensor:
    g = solver.grid
    return g.to_physical(solver.advance(g.to_spectral(w0), n_steps))


# --- the solver against exact solutions ---------------------------------------------------------


def test_advection_term_matches_the_analytic_jacobian():
    # ω = a sin 2πx + b cos 4πy  gives  u·∇ω = (3/2) a b cos 2πx sin 4πy  with u = (ψ_y, -ψ_x), -Δψ = ω.
    n, a, b = 32, 0.7, -1.3
    x, y = grid_xy(n)
    w = a * torch.sin(2 * math.pi * x) + b * torch.cos(4 * math.pi * y)
    solver = NavierStokes2D(n, viscosity=0.0, dt=0.01)
    tendency = solver.grid.to_physical(solver.tendency(solver.grid.to_spectral(w)))
    expected = -1.5 * a * b * torch.cos(2 * math.pi * x) * torch.sin(4 * math.pi * y)
    torch.testing.assert_close(tendency, expected, atol=1e-12, rtol=0)


def test_taylor_green_vorticity_decays_exactly_without_forcing():
    # Modes with one |k|² = 5: ψ ∝ ω, so advection vanishes and ω(t) = ω(0) exp(-ν 4π² |k|² t).
    n, nu, t_end, dt = 32, 0.01, 2.0, 0.002
    x, y = grid_xy(n)
    w0 = torch.cos(4 * math.pi * x) * torch.cos(2 * math.pi * y) + torch.sin(
        2 * math.pi * x
    ) * torch.sin(4 * math.pi * y)
    w = physical(NavierStokes2D(n, nu, dt), w0[None], round(t_end / dt))[0]
    exact = w0 * math.exp(-nu * 4 * math.pi**2 * 5 * t_end)
    assert (w - exact).abs().max() / exact.abs().max() < 1e-6


def test_forcing_drives_its_mode_to_the_exact_stationary_response():
    # From rest, f (one |k|² = 2 mode) gives ω(t) = f (1 - exp(-νλt)) / (νλ), λ = 8π², with no advection.
    n, nu, dt = 16, 0.05, 0.01
    lam = 8 * math.pi**2
    f = kolmogorov_forcing(n)
    solver = NavierStokes2D(n, nu, dt, forcing=f)
    rest = torch.zeros(1, n, n, dtype=torch.float64)
    for t_end in (1.0, 6.0):
        w = physical(solver, rest, round(t_end / dt))[0]
        exact = f * (1 - math.exp(-nu * lam * t_end)) / (nu * lam)
        assert (w - exact).abs().max() / exact.abs().max() < 1e-5
    assert (w - f / (nu * lam)).abs().max() < 1e-5  # t = 6 is ~24 e-folds: stationary


def test_time_stepping_converges_at_second_order():
    n = 32
    w0 = gaussian_random_field(white_noise(n, [0], base_seed=5)) * 20  # strong: advection matters
    ref = physical(NavierStokes2D(n, 1e-3, 0.0025, kolmogorov_forcing(n)), w0, 800)
    errors = []
    for dt in (0.04, 0.02):
        w = physical(NavierStokes2D(n, 1e-3, dt, kolmogorov_forcing(n)), w0, round(2.0 / dt))
        errors.append((w - ref).norm().item())
    assert errors[1] > 0
    assert errors[0] / errors[1] > 3.5


def test_the_default_solver_step_is_accurate_for_the_sample_setting():
    # Paper setting (64x64, ν = 1e-3); halving the default step changes the field by < 1e-6 (relative).
    config = SimulationConfig()
    n = config.resolution
    w0 = gaussian_random_field(white_noise(n, [7], base_seed=0))
    runs = []
    for dt in (config.solver_dt, config.solver_dt / 2):
        solver = NavierStokes2D(n, config.viscosity, dt, kolmogorov_forcing(n))
        runs.append(physical(solver, w0, round(5.0 / dt)))
    assert (runs[0] - runs[1]).norm() / runs[1].norm() < 1e-6


def test_dealiasing_keeps_wavenumbers_up_to_two_thirds_of_nyquist():
    grid = SpectralGrid(12)  # Nyquist 6: keep |k| <= 4 in each direction
    kept_x = {int(k) for k in torch.fft.rfftfreq(12, 1 / 12)[grid.dealias[0] > 0]}
    assert kept_x == {0, 1, 2, 3, 4}


# --- random initial conditions -----------------------------------------------------------------


def test_grf_has_zero_mean_and_the_prescribed_spectrum():
    n, count = 32, 300
    w = gaussian_random_field(white_noise(n, list(range(count)), base_seed=1))
    assert w.mean(dim=(-2, -1)).abs().max() < 1e-12
    # E|ŵ_k|² = n⁴ λ_k with λ_k = σ²(4π²|k|² + τ²)^-α: check the ratio in a low and a high band.
    power = torch.fft.rfft2(w).abs().pow(2).mean(0) / n**4
    lam = grf_eigenvalues(n)
    k2 = SpectralGrid(n).k_squared
    for band in ((k2 > 0) & (k2 <= 16), (k2 > 64) & (k2 <= 196)):
        ratio = (power[band] / lam[band]).mean()
        assert abs(ratio - 1) < 0.05
    # The spectrum falls as |k|^-5 at large |k| (α = 2.5): compare two shells.
    assert lam[k2 == 100].mean() / lam[k2 == 400].mean() == pytest.approx(
        ((4 * math.pi**2 * 400 + 49) / (4 * math.pi**2 * 100 + 49)) ** 2.5
    )


def test_each_trajectory_has_its_own_noise_stream():
    alone = white_noise(16, [3], base_seed=9)
    together = white_noise(16, [1, 2, 3], base_seed=9)
    assert torch.equal(alone[0], together[2])
    assert not torch.equal(together[0], together[1])
    assert not torch.equal(white_noise(16, [3], base_seed=10), alone)


# --- data sets and files -----------------------------------------------------------------------


def test_a_simulated_dataset_has_the_conventional_layout_of_the_test_twin():
    ds = simulate_navier_stokes(**TINY, splits=(2, 1, 1), seed=3)
    twin = trajectory_dataset(n_traj=4, n_time=3, n=8)
    assert ds["vorticity"].dims == twin["vorticity"].dims == ("trajectory", "time", "y", "x")
    assert ds["vorticity"].dtype == twin["vorticity"].dtype == np.float32
    assert set(ds.coords) == set(twin.coords)
    for name in ds.coords:
        assert ds[name].dims == twin[name].dims
        assert ds[name].dtype.kind == twin[name].dtype.kind
    assert ds.attrs["periodic_dims"] == twin.attrs["periodic_dims"] == "y x"
    assert list(ds["split"].values) == ["train", "train", "val", "test"]
    np.testing.assert_array_equal(ds["time"], [1.0, 2.0, 3.0])
    np.testing.assert_array_equal(ds["x"], (np.arange(8) + 0.5) / 8)
    for name in ("vorticity", "time", "x", "y"):
        assert ds[name].attrs["units"] and ds[name].attrs["long_name"]


def test_a_run_is_its_blocks_whatever_else_is_simulated():
    config = SimulationConfig(**TINY, seed=4)
    ds = simulate_navier_stokes(**TINY, seed=4)
    np.testing.assert_array_equal(ds["vorticity"].values[2:4], simulate_block(config, 1))


def test_files_round_trip_and_record_their_own_configuration(tmp_path):
    ds = simulate_navier_stokes(**TINY, seed=2, splits=(2, 1, 1))
    for name in ("sim.nc", "sim.zarr"):
        path = write_dataset(ds, tmp_path / name)
        back = xr.load_dataset(path)
        np.testing.assert_array_equal(back["vorticity"].values, ds["vorticity"].values)
        assert list(back["split"].values) == ["train", "train", "val", "test"]
        assert SimulationConfig.from_attrs(back.attrs) == SimulationConfig(
            **TINY, seed=2, splits=(2, 1, 1)
        )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sim.nc", "sim.zarr"]


def test_fewer_stored_bits_round_to_nearest_and_are_recorded(tmp_path):
    full = simulate_navier_stokes(**TINY, seed=2, splits=(2, 1, 1))
    config = SimulationConfig(**TINY, seed=2, splits=(2, 1, 1), keep_bits=10)
    rounded = to_dataset(full["vorticity"].values, config, "x.nc")
    w, r = full["vorticity"].values, rounded["vorticity"].values
    assert np.abs(r - w).max() > 0 and np.all(np.abs(r - w) <= 2.0**-11 * np.abs(w))
    low = r.view(np.uint32) & np.uint32((1 << 13) - 1)  # the 23 - 10 dropped mantissa bits
    assert not low.any()
    back = xr.load_dataset(write_dataset(rounded, tmp_path / "r.nc"))
    assert SimulationConfig.from_attrs(back.attrs) == config
    assert "--keep-bits 10" in back.attrs["command"]
    older = {k: v for k, v in back.attrs.items() if k != "sim_keep_bits"}  # before the option
    assert SimulationConfig.from_attrs(older).keep_bits == 23


def test_bad_settings_are_one_line_errors():
    runner = CliRunner()
    cases = [
        (["--splits", "1,1"], "--splits"),
        (["--trajectories", "5", "--splits", "1,1,1"], "--splits"),
        (["--resolution", "16", "--coarsen", "3"], "--coarsen"),
        (["--solver-dt", "0.3"], "--solver-dt"),
        (["--keep-bits", "0"], "--keep-bits"),
    ]
    for args, option in cases:
        result = runner.invoke(app, [*args, "--out", "x.nc"])
        assert result.exit_code == 1
        assert option in result.output and "Traceback" not in result.output


def test_the_command_refuses_to_overwrite_and_rejects_unknown_formats(tmp_path):
    runner = CliRunner()
    existing = tmp_path / "old.nc"
    existing.write_bytes(b"keep me")
    result = runner.invoke(app, ["--out", str(existing), "--trajectories", "1"])
    assert result.exit_code == 1 and "already exists" in result.output
    assert existing.read_bytes() == b"keep me"
    result = runner.invoke(app, ["--out", str(tmp_path / "x.csv"), "--trajectories", "1"])
    assert result.exit_code == 1 and "unknown output format" in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["old.nc"]


def test_python_m_simulate_writes_a_file_and_reports_it(tmp_path):
    # Two worker processes, blocks of 2: the same bits as the library computes in this process.
    out = tmp_path / "ns.nc"
    args = ["--trajectories", "3", "--splits", "1,1,1", "--resolution", "16", "--coarsen", "4"]
    args += ["--steps", "2", "--dt-snapshot", "0.5", "--solver-dt", "0.05", "--viscosity", "0.01"]
    args += ["--block-size", "2", "--workers", "2", "--seed", "11"]
    done = subprocess.run(
        [sys.executable, "-m", "minconv_cli.simulate", *args, "--out", str(out), "--json", "-q"],
        capture_output=True,
        text=True,
        check=True,
    )
    summary = json.loads(done.stdout)
    assert summary["shape"] == {"trajectory": 3, "time": 2, "y": 4, "x": 4}
    assert summary["splits"] == {"train": 1, "val": 1, "test": 1}
    ds = xr.load_dataset(out)
    np.testing.assert_array_equal(ds["time"], [0.5, 1.0])
    assert ds.attrs["viscosity"] == 0.01
    assert ds.attrs["command"].startswith("python -m minconv_cli.simulate --trajectories 3")
    here = simulate_navier_stokes(
        3, 16, 4, 2, 0.5, 0.05, 0.01, seed=11, splits=(1, 1, 1), block_size=2
    )
    np.testing.assert_array_equal(ds["vorticity"].values, here["vorticity"].values)


# --- the bundled sample ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sample() -> xr.Dataset:
    return xr.load_dataset(sample_path(NAVIER_STOKES))


def test_the_bundled_sample_has_the_documented_layout(sample):
    assert dict(sample.sizes) == {"trajectory": 200, "time": 50, "y": 16, "x": 16}
    assert sample["vorticity"].dtype == np.float32
    assert np.isfinite(sample["vorticity"].values).all()
    counts = {s: int((sample["split"] == s).sum()) for s in ("train", "val", "test")}
    assert counts == {"train": 150, "val": 20, "test": 30}
    np.testing.assert_array_equal(sample["time"], np.arange(1, 51))
    np.testing.assert_array_equal(sample["y"], (np.arange(16) + 0.5) / 16)
    assert sample.attrs["periodic_dims"] == "y x"
    config = SimulationConfig.from_attrs(sample.attrs)
    assert (config.resolution, config.coarsen, config.viscosity) == (64, 4, 1e-3)
    assert sample.attrs["command"] == config.command("sample_data/navier_stokes_16x16.nc")


def test_the_bundled_sample_regenerates_bit_for_bit(sample):
    config = SimulationConfig.from_attrs(sample.attrs)
    last = config.n_blocks - 1
    members = list(config.block_trajectories(last))
    regenerated = stored_bits(simulate_block(config, last), config.keep_bits)
    assert np.array_equal(regenerated, sample["vorticity"].values[members])
