"""Navier-Stokes trajectories as an xarray Dataset in the tool's file conventions, reproducible bit for bit.

Trajectories are simulated in fixed blocks of `block_size`, each block single-threaded: the FFT
library's results depend on the batch size and thread count, so this fixed partition (recorded in
the file) is what makes a block regenerate to the same bits, alone or as part of a full run.
Trajectory i's initial vorticity comes from its own random stream (seed, i).
"""

from __future__ import annotations

import contextlib
import math
import shlex
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, fields
from multiprocessing import get_context

import numpy as np
import torch
import xarray as xr

from minconv_cli import __version__
from minconv_cli.core.errors import MinconvError
from minconv_cli.simulate.grf import gaussian_random_field, grf_sigma, white_noise
from minconv_cli.simulate.solver import NavierStokes2D, kolmogorov_forcing

SPLIT_NAMES = ("train", "val", "test")
ADDED_LATER = ("keep_bits",)  # SimulationConfig fields older files do not record
SOLVER = (
    "minconv pseudo-spectral vorticity solver (torch.fft, float64): stream function from a Poisson "
    "solve, 2/3-rule dealiased advection, Spalart-Moser-Rogers RK3 (advection) / Crank-Nicolson "
    "(viscosity)"
)


@dataclass(frozen=True)
class SimulationConfig:
    """Everything that determines a simulated data set (and so its bits)."""

    trajectories: int = 200
    resolution: int = 64
    coarsen: int = 4
    steps: int = 50
    dt_snapshot: float = 1.0
    solver_dt: float = 0.01
    viscosity: float = 1e-3
    forcing_amplitude: float = 0.1
    grf_alpha: float = 2.5
    grf_tau: float = 7.0
    seed: int = 0
    block_size: int = 4
    splits: tuple[int, int, int] | None = None  # (train, val, test); None: 75 / 10 / 15 %
    keep_bits: int = 23  # float32 mantissa bits stored (23: all; fewer compress better)

    def __post_init__(self) -> None:
        _check(self.trajectories >= 1, "--trajectories", "must be >= 1")
        _check(
            self.resolution >= 4 and self.resolution % 2 == 0, "--resolution", "must be even, >= 4"
        )
        _check(self.coarsen >= 1, "--coarsen", "must be >= 1")
        _check(1 <= self.keep_bits <= 23, "--keep-bits", "must be in 1..23 (float32 mantissa)")
        _check(
            self.resolution % self.coarsen == 0,
            "--coarsen",
            f"{self.coarsen} does not divide --resolution {self.resolution}",
        )
        _check(self.steps >= 1, "--steps", "must be >= 1")
        _check(self.dt_snapshot > 0, "--dt-snapshot", "must be > 0")
        _check(self.solver_dt > 0, "--solver-dt", "must be > 0")
        ratio = self.dt_snapshot / self.solver_dt
        _check(
            abs(ratio - round(ratio)) < 1e-9 * ratio,
            "--solver-dt",
            f"{self.solver_dt} must divide --dt-snapshot {self.dt_snapshot} into whole steps",
        )
        _check(self.viscosity >= 0, "--viscosity", "must be >= 0")
        _check(self.grf_tau > 0 and self.grf_alpha > 1, "--alpha/--tau", "need alpha > 1, tau > 0")
        _check(self.block_size >= 1, "--block-size", "must be >= 1")
        _check(self.seed >= 0, "--seed", "must be >= 0")
        if self.splits is not None:
            _check(
                len(self.splits) == 3 and min(self.splits) >= 0,
                "--splits",
                "needs three counts train,val,test >= 0",
            )
            _check(
                sum(self.splits) == self.trajectories,
                "--splits",
                f"counts {','.join(map(str, self.splits))} do not add up to "
                f"--trajectories {self.trajectories}",
            )

    @property
    def steps_per_snapshot(self) -> int:
        return round(self.dt_snapshot / self.solver_dt)

    @property
    def stored_resolution(self) -> int:
        return self.resolution // self.coarsen

    @property
    def n_blocks(self) -> int:
        return math.ceil(self.trajectories / self.block_size)

    def split_counts(self) -> tuple[int, int, int]:
        if self.splits is not None:
            return tuple(self.splits)  # type: ignore[return-value]
        val = round(0.10 * self.trajectories)
        test = round(0.15 * self.trajectories)
        return (self.trajectories - val - test, val, test)

    def block_trajectories(self, block: int) -> range:
        if not 0 <= block < self.n_blocks:
            raise ValueError(f"block: {block} is outside 0..{self.n_blocks - 1}")
        start = block * self.block_size
        return range(start, min(start + self.block_size, self.trajectories))

    def command(self, out: str) -> str:
        """The shell command that regenerates this data set into `out`."""
        train, val, test = self.split_counts()
        args = [
            "python", "-m", "minconv_cli.simulate",
            "--trajectories", str(self.trajectories),
            "--splits", f"{train},{val},{test}",
            "--resolution", str(self.resolution),
            "--coarsen", str(self.coarsen),
            "--steps", str(self.steps),
            "--dt-snapshot", repr(self.dt_snapshot),
            "--solver-dt", repr(self.solver_dt),
            "--viscosity", repr(self.viscosity),
            "--forcing-amplitude", repr(self.forcing_amplitude),
            "--alpha", repr(self.grf_alpha),
            "--tau", repr(self.grf_tau),
            "--seed", str(self.seed),
            "--block-size", str(self.block_size),
            *(["--keep-bits", str(self.keep_bits)] if self.keep_bits < 23 else []),
            "--out", out,
        ]  # fmt: skip
        return shlex.join(args)

    def to_attrs(self) -> dict[str, int | float | str]:
        """The configuration as NetCDF-safe global attributes (prefix `sim_`)."""
        out: dict[str, int | float | str] = {}
        for key, value in asdict(self).items():
            out[f"sim_{key}"] = (
                ",".join(map(str, self.split_counts())) if key == "splits" else value
            )
        return out

    @classmethod
    def from_attrs(cls, attrs: dict) -> SimulationConfig:
        """Rebuild the configuration recorded in a file's attributes (the inverse of to_attrs)."""
        kwargs = {}
        for f in fields(cls):
            key = f"sim_{f.name}"
            if key not in attrs and f.name in ADDED_LATER:
                continue  # files from before the field: its default is what they were made with
            if key not in attrs:
                raise MinconvError(
                    f"attribute {key}: missing, the file was not written by minconv simulate"
                )
            value = attrs[key]
            if f.name == "splits":
                kwargs[f.name] = tuple(int(v) for v in str(value).split(","))
            elif f.type in ("int", int):
                kwargs[f.name] = int(value)
            else:
                kwargs[f.name] = float(value)
        return cls(**kwargs)


def _check(ok: bool, option: str, message: str) -> None:
    if not ok:
        raise MinconvError(f"{option}: {message}")


@contextlib.contextmanager
def _single_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def coarsen_mean(w: torch.Tensor, factor: int) -> torch.Tensor:
    """Mean over factor x factor cells of (..., n, n) fields: the paper's 64 -> 16 coarsening."""
    if factor == 1:
        return w
    *lead, ny, nx = w.shape
    return w.reshape(*lead, ny // factor, factor, nx // factor, factor).mean(dim=(-3, -1))


def simulate_block(
    config: SimulationConfig, block: int, on_snapshot: Callable[[int], None] | None = None
) -> np.ndarray:
    """Vorticity (b, steps, n_out, n_out) float32 of one block of trajectories, the same bits every time."""
    members = config.block_trajectories(block)
    n = config.resolution
    snapshots = np.empty(
        (len(members), config.steps, config.stored_resolution, config.stored_resolution),
        dtype=np.float32,
    )

    def record(i: int, w: torch.Tensor) -> None:
        snapshots[:, i] = coarsen_mean(w, config.coarsen).to(torch.float32).numpy()
        if on_snapshot is not None:
            on_snapshot(len(members))

    with _single_thread():
        w0 = gaussian_random_field(
            white_noise(n, list(members), config.seed), config.grf_alpha, config.grf_tau
        )
        solver = NavierStokes2D(
            n,
            config.viscosity,
            config.solver_dt,
            kolmogorov_forcing(n, config.forcing_amplitude),
        )
        solver.run(w0, config.steps, config.steps_per_snapshot, record)
    return snapshots


def _block_worker(args: tuple[SimulationConfig, int]) -> np.ndarray:
    return simulate_block(*args)


def simulate_navier_stokes(
    trajectories: int = 200,
    resolution: int = 64,
    coarsen: int = 4,
    steps: int = 50,
    dt_snapshot: float = 1.0,
    solver_dt: float = 0.01,
    viscosity: float = 1e-3,
    seed: int = 0,
    splits: tuple[int, int, int] | None = None,
    forcing_amplitude: float = 0.1,
    grf_alpha: float = 2.5,
    grf_tau: float = 7.0,
    block_size: int = 4,
    *,
    workers: int = 1,
    progress: Callable[[int], None] | None = None,
    out: str = "navier_stokes.nc",
) -> xr.Dataset:
    """Simulate forced 2-D turbulence from random initial vorticity: a Dataset (trajectory, time, y, x).

    `progress(k)` is called as k more trajectory-snapshots are done; `out` only names the file in
    the recorded regeneration command; `workers` > 1 runs blocks in parallel processes (same bits).
    """
    config = SimulationConfig(
        trajectories=trajectories,
        resolution=resolution,
        coarsen=coarsen,
        steps=steps,
        dt_snapshot=dt_snapshot,
        solver_dt=solver_dt,
        viscosity=viscosity,
        forcing_amplitude=forcing_amplitude,
        grf_alpha=grf_alpha,
        grf_tau=grf_tau,
        seed=seed,
        block_size=block_size,
        splits=splits,
    )
    return simulate_config(config, workers=workers, progress=progress, out=out)


def simulate_config(
    config: SimulationConfig,
    *,
    workers: int = 1,
    progress: Callable[[int], None] | None = None,
    out: str = "navier_stokes.nc",
) -> xr.Dataset:
    """simulate_navier_stokes for a ready SimulationConfig."""
    if workers < 1:
        raise MinconvError(f"--workers: must be >= 1, got {workers}")
    blocks = range(config.n_blocks)
    if workers == 1:
        parts = [simulate_block(config, b, progress) for b in blocks]
    else:
        parts = []
        with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
            for b, part in zip(
                blocks, pool.map(_block_worker, [(config, b) for b in blocks]), strict=True
            ):
                parts.append(part)
                if progress is not None:
                    progress(len(config.block_trajectories(b)) * config.steps)
    return to_dataset(np.concatenate(parts), config, out)


def stored_bits(vorticity: np.ndarray, keep_bits: int) -> np.ndarray:
    """float32 values rounded to `keep_bits` mantissa bits (numcodecs BitRound, round to
    nearest): relative error <= 2^-(keep_bits+1), and the zeroed low bits compress."""
    vorticity = np.asarray(vorticity, dtype=np.float32)
    if keep_bits >= 23:
        return vorticity
    from numcodecs import BitRound

    return BitRound(keepbits=keep_bits).encode(vorticity).view(np.float32)


def to_dataset(vorticity: np.ndarray, config: SimulationConfig, out: str) -> xr.Dataset:
    """Wrap simulated vorticity (trajectory, time, y, x), rounded to `config.keep_bits`, with
    coordinates and provenance."""
    vorticity = stored_bits(vorticity, config.keep_bits)
    n_out = config.stored_resolution
    centres = (np.arange(n_out) + 0.5) / n_out
    split = np.repeat(np.asarray(SPLIT_NAMES), config.split_counts())
    time = config.dt_snapshot * np.arange(1, config.steps + 1, dtype=np.float64)
    attrs = provenance(config, out)
    return xr.Dataset(
        {
            "vorticity": (
                ("trajectory", "time", "y", "x"),
                vorticity,
                {"units": "1", "long_name": "vorticity"},
            )
        },
        coords={
            "trajectory": (
                "trajectory",
                np.arange(config.trajectories, dtype=np.int64),
                {"long_name": "trajectory index"},
            ),
            "time": ("time", time, {"units": "1", "long_name": "simulation time", "axis": "T"}),
            "y": ("y", centres, {"units": "1", "long_name": "y (cell centre)", "axis": "Y"}),
            "x": ("x", centres, {"units": "1", "long_name": "x (cell centre)", "axis": "X"}),
            "split": ("trajectory", split, {"long_name": "data split (train/val/test)"}),
        },
        attrs=attrs,
    )


def provenance(config: SimulationConfig, out: str) -> dict:
    """The data set's attributes: the equation, solver and settings, and how to make it again."""
    n_out = config.stored_resolution
    return {
        "title": "2-D incompressible Navier-Stokes vorticity on the periodic unit square",
        "periodic_dims": "y x",
        "solver": SOLVER,
        "equation": "dw/dt + u.grad(w) = nu lap(w) + f, u = (dpsi/dy, -dpsi/dx), -lap(psi) = w",
        "viscosity": config.viscosity,
        "forcing": f"{config.forcing_amplitude!r}*(sin(2*pi*(x+y)) + cos(2*pi*(x+y)))",
        "initial_condition": (
            f"Gaussian random field N(0, sigma^2 (-lap + tau^2 I)^-alpha), alpha={config.grf_alpha!r}, "
            f"tau={config.grf_tau!r}, sigma=tau^(alpha-1)={grf_sigma(config.grf_alpha, config.grf_tau)!r}, "
            "zero mean (as the FNO data generator)"
        ),
        "resolution_solved": f"{config.resolution}x{config.resolution}",
        "resolution_stored": f"{n_out}x{n_out} (mean over {config.coarsen}x{config.coarsen} cells)",
        "solver_dt": config.solver_dt,
        "dt_snapshot": config.dt_snapshot,
        "seed": config.seed,
        "seeding": "trajectory i starts from numpy.random.default_rng([seed, i]) white noise",
        "determinism": (
            f"blocks of {config.block_size} trajectories, one thread each; bit-for-bit on the same "
            "platform"
        ),
        "stored_precision": (
            "float32"
            if config.keep_bits >= 23
            else f"float32 rounded to {config.keep_bits} mantissa bits (numcodecs BitRound; "
            f"relative error <= 2^-{config.keep_bits + 1})"
        ),
        "torch_version": torch.__version__,
        "minconv_version": __version__,
        "command": config.command(out),
        **config.to_attrs(),
    }
