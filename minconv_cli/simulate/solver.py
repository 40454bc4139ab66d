"""Pseudo-spectral solver for 2-D incompressible Navier-Stokes in vorticity form on the periodic unit square.

    dω/dt + u·∇ω = ν Δω + f,   u = (∂ψ/∂y, -∂ψ/∂x),   -Δψ = ω

Fields are (..., y, x) float64 tensors on the cell-centred grid x_i = (i + 1/2)/n. Time stepping is
the low-storage IMEX scheme of Spalart, Moser & Rogers (1991): third-order Runge-Kutta for the
advection (stable up to a CFL number of about sqrt(3)) and Crank-Nicolson for viscosity in each of
its three substeps. The advection product is dealiased by the 2/3 rule.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

# Spalart-Moser-Rogers RK3/CN coefficients; alpha = beta = (gamma + zeta) / 2 keeps steady states exact.
_GAMMA = (8 / 15, 5 / 12, 3 / 4)
_ZETA = (0.0, -17 / 60, -5 / 12)
_HALF = tuple((g + z) / 2 for g, z in zip(_GAMMA, _ZETA, strict=True))


def cell_centres(n: int) -> torch.Tensor:
    """Cell-centre coordinates (i + 1/2) / n of an n-point periodic grid on [0, 1)."""
    return (torch.arange(n, dtype=torch.float64) + 0.5) / n


def kolmogorov_forcing(n: int, amplitude: float = 0.1) -> torch.Tensor:
    """The paper's forcing amplitude * (sin 2π(x+y) + cos 2π(x+y)) on the n x n cell-centred grid."""
    # The field depends on i + j only: evaluate the 2n - 1 distinct values with scalar libm calls,
    # so the bits do not depend on which SIMD path torch picks on this CPU.
    table = [
        amplitude * (math.sin(2 * math.pi * (s + 1) / n) + math.cos(2 * math.pi * (s + 1) / n))
        for s in range(2 * n - 1)
    ]
    table_t = torch.tensor(table, dtype=torch.float64)
    idx = torch.arange(n)
    return table_t[idx[:, None] + idx[None, :]]


class SpectralGrid:
    """Wavenumbers, the Laplacian and the 2/3 dealiasing mask of an n x n grid in rfft2 layout."""

    def __init__(self, n: int) -> None:
        if n < 4 or n % 2:
            raise ValueError(f"resolution: must be an even number >= 4, got {n}")
        self.n = n
        ky = torch.fft.fftfreq(n, 1.0 / n, dtype=torch.float64)[:, None]
        kx = torch.fft.rfftfreq(n, 1.0 / n, dtype=torch.float64)[None, :]
        self.k_squared = (kx**2 + ky**2).expand(n, n // 2 + 1).contiguous()
        # -Δ in Fourier space: 4π²|k|²
        self.minus_laplacian = 4 * math.pi**2 * self.k_squared
        inverse = 1.0 / self.minus_laplacian
        inverse[0, 0] = 0.0  # the mean of ψ is irrelevant; keep ω's mean out of ψ
        self.inverse_minus_laplacian = inverse
        # Derivatives 2πik with the Nyquist mode zeroed, so the derivative of a real field stays real.
        nyquist = n // 2
        self.ddx = 2j * math.pi * torch.where(kx.abs() == nyquist, 0.0, kx)
        self.ddy = 2j * math.pi * torch.where(ky.abs() == nyquist, 0.0, ky)
        cutoff = n / 3  # 2/3 of the largest wavenumber n/2
        self.dealias = ((kx.abs() <= cutoff) & (ky.abs() <= cutoff)).to(torch.float64)

    def to_spectral(self, w: torch.Tensor) -> torch.Tensor:
        return torch.fft.rfft2(w)

    def to_physical(self, w_hat: torch.Tensor) -> torch.Tensor:
        return torch.fft.irfft2(w_hat, s=(self.n, self.n))


class NavierStokes2D:
    """Time stepper for batches of vorticity fields (B, n, n) under fixed viscosity and forcing."""

    def __init__(
        self,
        n: int,
        viscosity: float,
        dt: float,
        forcing: torch.Tensor | None = None,
    ) -> None:
        if viscosity < 0:
            raise ValueError(f"viscosity: must be >= 0, got {viscosity}")
        if dt <= 0:
            raise ValueError(f"solver dt: must be > 0, got {dt}")
        self.grid = SpectralGrid(n)
        self.viscosity = viscosity
        self.dt = dt
        f = torch.zeros(n, n, dtype=torch.float64) if forcing is None else forcing
        if f.shape != (n, n):
            raise ValueError(f"forcing: shape {tuple(f.shape)} does not match the grid ({n}, {n})")
        self.forcing_hat = self.grid.to_spectral(f.to(torch.float64))
        decay = -viscosity * self.grid.minus_laplacian  # the viscous operator L in Fourier space
        # Substep k: ŵ ← A_k ŵ + B_k (γ_k N_k + ζ_k N_{k-1}), with (1 - dt β_k L) ŵ' = (1 + dt α_k L) ŵ + ...
        self._a = [(1 + dt * h * decay) / (1 - dt * h * decay) for h in _HALF]
        self._b = [dt / (1 - dt * h * decay) for h in _HALF]

    def tendency(self, w_hat: torch.Tensor) -> torch.Tensor:
        """Fourier coefficients of -u·∇ω + f (the explicit part), with the product dealiased."""
        g = self.grid
        psi_hat = w_hat * g.inverse_minus_laplacian
        stacked = torch.stack(
            (g.ddy * psi_hat, -g.ddx * psi_hat, g.ddx * w_hat, g.ddy * w_hat)
        )  # u, v, ∂ω/∂x, ∂ω/∂y: one batched inverse transform
        u, v, w_x, w_y = g.to_physical(stacked)
        advection_hat = g.to_spectral(u * w_x + v * w_y) * g.dealias
        return self.forcing_hat - advection_hat

    def step(self, w_hat: torch.Tensor) -> torch.Tensor:
        """Advance Fourier coefficients by one solver step dt."""
        previous = None
        for k in range(3):
            explicit = self.tendency(w_hat)
            combined = _GAMMA[k] * explicit
            if previous is not None:
                combined = combined + _ZETA[k] * previous
            w_hat = self._a[k] * w_hat + self._b[k] * combined
            previous = explicit
        return w_hat

    def advance(self, w_hat: torch.Tensor, n_steps: int) -> torch.Tensor:
        """Advance Fourier coefficients by n_steps solver steps."""
        for _ in range(n_steps):
            w_hat = self.step(w_hat)
        return w_hat

    def run(
        self,
        w0: torch.Tensor,
        n_snapshots: int,
        steps_per_snapshot: int,
        on_snapshot: Callable[[int, torch.Tensor], None],
    ) -> None:
        """Integrate physical vorticity w0 (B, n, n), calling on_snapshot(i, w) after each snapshot interval."""
        w_hat = self.grid.to_spectral(w0.to(torch.float64))
        for i in range(n_snapshots):
            w_hat = self.advance(w_hat, steps_per_snapshot)
            on_snapshot(i, self.grid.to_physical(w_hat))
