"""The Navier-Stokes solver that makes the bundled sample and benchmark data (`python -m minconv_cli.simulate`)."""

from minconv_cli.simulate.dataset import (
    SimulationConfig,
    simulate_block,
    simulate_config,
    simulate_navier_stokes,
)
from minconv_cli.simulate.files import write_dataset
from minconv_cli.simulate.grf import gaussian_random_field, grf_eigenvalues, white_noise
from minconv_cli.simulate.solver import NavierStokes2D, SpectralGrid, kolmogorov_forcing

__all__ = [
    "NavierStokes2D",
    "SimulationConfig",
    "SpectralGrid",
    "gaussian_random_field",
    "grf_eigenvalues",
    "kolmogorov_forcing",
    "simulate_block",
    "simulate_config",
    "simulate_navier_stokes",
    "white_noise",
    "write_dataset",
]
