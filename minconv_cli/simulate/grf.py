"""Gaussian random fields N(0, σ²(-Δ + τ²I)^-α) on the periodic unit square: the initial vorticity.

This is the distribution of the FNO data generator (Li et al. 2021, `GaussianRF`), which the papers
write as N(0, 7^{3/2}(-Δ + 49I)^{-2.5}) for α = 2.5, τ = 7: σ = τ^{α - 1} = 7^{3/2} scales the
standard deviation. The mean (k = 0 mode) is zero.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from minconv_cli.simulate.solver import SpectralGrid


def grf_sigma(alpha: float, tau: float) -> float:
    """The FNO generator's default scale σ = τ^{(2α - d)/2} for d = 2."""
    return tau ** (alpha - 1.0)


def grf_eigenvalues(n: int, alpha: float = 2.5, tau: float = 7.0) -> torch.Tensor:
    """Covariance eigenvalues σ²(4π²|k|² + τ²)^-α of every rfft2 mode of an n x n grid (0 for k = 0)."""
    grid = SpectralGrid(n)
    sigma2 = grf_sigma(alpha, tau) ** 2
    k2 = grid.k_squared.to(torch.int64)
    # One scalar libm pow per distinct |k|², so the bits do not depend on the CPU's SIMD path.
    distinct = sorted(set(k2.flatten().tolist()))
    table = torch.zeros(max(distinct) + 1, dtype=torch.float64)
    for value in distinct:
        if value:
            table[value] = sigma2 * (4 * math.pi**2 * value + tau**2) ** (-alpha)
    return table[k2]


def white_noise(n: int, seeds: list[int], base_seed: int) -> torch.Tensor:
    """Standard normal (len(seeds), n, n) float64 noise, one independent numpy stream per entry.

    Entry i comes from `numpy.random.default_rng([base_seed, seeds[i]])`, so a trajectory's noise
    depends only on (base_seed, its index), not on how many trajectories are drawn together.
    """
    rows = [np.random.default_rng([base_seed, s]).standard_normal((n, n)) for s in seeds]
    return torch.from_numpy(np.stack(rows))


def gaussian_random_field(
    noise: torch.Tensor, alpha: float = 2.5, tau: float = 7.0
) -> torch.Tensor:
    """Colour white noise (B, n, n) into zero-mean fields with covariance σ²(-Δ + τ²I)^-α."""
    n = noise.shape[-1]
    grid = SpectralGrid(n)
    # Var of fft2(white noise) per mode is n², so the filter n·sqrt(λ_k) gives pointwise Var = Σ_k λ_k.
    filt = n * grf_eigenvalues(n, alpha, tau).sqrt()
    return grid.to_physical(grid.to_spectral(noise.to(torch.float64)) * filt)
