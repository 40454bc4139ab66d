"""Ensemble members: how many, which checkpoint runs each, their perturbed context frames, their
per-lead model-error term and their recentring (for `minconv rollout --members`)."""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass

import numpy as np

from minconv_cli.core.errors import MinconvError


@dataclass(frozen=True)
class EnsembleSpec:
    """How many members, how they are spread over K checkpoints, and their perturbations.

    Members are split over the checkpoints in contiguous, near-equal blocks (member m runs
    checkpoint m*K // members); the first member of each block is that checkpoint's unperturbed
    control, every other member has Gaussian noise of `perturbation` x the training std per
    channel added to each context frame, smoothed over `smoothing` grid cells if > 0, and, with
    `step_noise` > 0, a model-error term at every lead (see `step_noise_draws`). With `recentre`,
    each block's perturbed members are shifted at every lead so that their mean is the control
    (see `recentre_matrix`).
    """

    members: int
    checkpoints: int = 1
    perturbation: float = 0.1
    smoothing: float = 0.0
    seed: int = 0
    step_noise: float = 0.0
    recentre: bool = False

    def __post_init__(self) -> None:
        if self.members < 1:
            raise MinconvError(f"--members: must be at least 1, got {self.members}")
        if self.members < self.checkpoints:
            raise MinconvError(
                f"--members: {self.members} is fewer than the {self.checkpoints} checkpoints given "
                "(each checkpoint runs at least one member)"
            )
        if not (self.perturbation >= 0 and np.isfinite(self.perturbation)):
            raise MinconvError(f"--perturbation: must be 0 or more, got {self.perturbation}")
        if not (self.smoothing >= 0 and np.isfinite(self.smoothing)):
            raise MinconvError(f"--perturbation-smoothing: must be 0 or more, got {self.smoothing}")
        if not (self.step_noise >= 0 and np.isfinite(self.step_noise)):
            raise MinconvError(f"--step-noise: must be 0 or more, got {self.step_noise}")
        if self.recentre:
            if self.perturbation == 0 and self.step_noise == 0:
                raise MinconvError(
                    "--recentre: needs perturbed members (--perturbation or --step-noise)"
                )
            if self.members // self.checkpoints < 3:
                raise MinconvError(
                    f"--recentre: needs at least 2 perturbed members beside each checkpoint's control, "
                    f"but {self.members} members over {self.checkpoints} checkpoint(s) leave "
                    f"{self.members // self.checkpoints - 1}"
                )

    def checkpoint_of(self, member: int) -> int:
        """Index of the checkpoint that runs `member`."""
        return member * self.checkpoints // self.members

    def is_control(self, member: int) -> bool:
        """The first member of each checkpoint's block runs from the unperturbed context."""
        return member == 0 or self.checkpoint_of(member - 1) != self.checkpoint_of(member)

    def block_start(self, member: int) -> int:
        """The first member (the control) of `member`'s checkpoint block."""
        k = self.checkpoint_of(member)
        return -(-k * self.members // self.checkpoints)

    def settings(self) -> dict:
        """What a resumed run must share with the store (recorded in its settings)."""
        out = {
            "members": self.members,
            "checkpoints": self.checkpoints,
            "perturbation": self.perturbation,
            "smoothing": self.smoothing,
            "seed": self.seed,
        }
        if self.step_noise:  # stores made before the option keep matching their settings
            out["step_noise"] = self.step_noise
        if self.recentre:
            out["recentre"] = True
        return out


def perturb(
    frames: np.ndarray,
    std: np.ndarray,
    spec: EnsembleSpec,
    keys: Sequence[tuple[int, int, int]],
) -> np.ndarray:
    """Context frames (B, K, C, H, W) in physical units with each member's perturbation added.

    keys: (data time index of the init time, flat sample, member) per row; each row's noise comes
    from its own generator seeded by (seed, *key), so it does not depend on batching or resuming.
    """
    out = np.array(frames, dtype=np.float32, copy=True)
    if spec.perturbation == 0:
        return out
    scale = (spec.perturbation * np.asarray(std, dtype=np.float64))[:, None, None]
    for b, (t, s, m) in enumerate(keys):
        if spec.is_control(m):
            continue
        rng = np.random.default_rng([spec.seed, int(t), int(s), int(m)])
        z = rng.standard_normal(frames.shape[1:])
        if spec.smoothing > 0:
            z = _smooth(z, spec.smoothing)
        out[b] += (z * scale).astype(np.float32)
    return out


def residual_count(context: int) -> int:
    """How many one-step residuals of the context the step noise draws from: those of its second
    half (the first half spins the state up)."""
    return (context - 1) - (context - 1) // 2


def step_noise_draws(
    spec: EnsembleSpec, keys: Sequence[tuple[int, int, int]], steps: int, pool: int
) -> tuple[np.ndarray, np.ndarray]:
    """The model-error term of each row: which of its `pool` one-step residuals to add at each lead
    (B, steps) and with which factor (B,): 0 for controls, +-`step_noise` otherwise.

    The non-control members of a block come in antithetic pairs: both draw the same residuals, the
    second adds them with the opposite sign, so the pair's mean keeps the model's own trajectory to
    first order (as ECMWF's paired +- perturbations do) while its spread carries the model's error.
    Draws are seeded by (seed, init time, sample, pair) like `perturb`, so batching and resuming
    do not change them.
    """
    index = np.zeros((len(keys), steps), dtype=np.int64)
    factor = np.zeros(len(keys), dtype=np.float32)
    for b, (t, s, m) in enumerate(keys):
        if spec.step_noise == 0 or spec.is_control(m):
            continue
        offset = m - spec.block_start(m) - 1  # 0, 1, 2, ... after the control
        first = m - offset % 2  # the pair's first member names its draws
        rng = np.random.default_rng([spec.seed, int(t), int(s), int(first), 1])
        index[b] = rng.integers(0, pool, size=steps)
        factor[b] = spec.step_noise * (1.0 if offset % 2 == 0 else -1.0)
    return index, factor


def recentre_matrix(
    spec: EnsembleSpec, members: Sequence[int], blocks: Sequence[Hashable]
) -> np.ndarray:
    """The (B, B) matrix R with which `R @ rows` recentres a batch: every perturbed row r of a
    block becomes r - mean(the block's perturbed rows) + its control, the others stay as they are.

    `members[b]` is row b's member and `blocks[b]` names its block (init time, sample and
    checkpoint); a batch holds whole blocks. The block's mean is then exactly its control, so the
    ensemble mean is the mean of the checkpoints' controls while the members keep the spread of
    their perturbations (the recentring of ensemble data assimilation, done at every lead).
    """
    n = len(members)
    mix = np.eye(n, dtype=np.float64)
    rows: dict[Hashable, list[int]] = {}
    for b, key in enumerate(blocks):
        rows.setdefault(key, []).append(b)
    for key, block in rows.items():
        controls = [b for b in block if spec.is_control(members[b])]
        perturbed = [b for b in block if not spec.is_control(members[b])]
        if len(controls) != 1 or len(perturbed) < 2:
            raise ValueError(f"recentring: block {key} is not whole in this batch")
        for r in perturbed:
            mix[r, perturbed] -= 1.0 / len(perturbed)
            mix[r, controls[0]] += 1.0
    return mix.astype(np.float32)


def _smooth(z: np.ndarray, sigma: float) -> np.ndarray:
    """White noise (..., H, W) made spatially correlated (Gaussian, `sigma` cells), unit std again."""
    from scipy.ndimage import gaussian_filter

    sig = (0,) * (z.ndim - 2) + (sigma, sigma)
    z = gaussian_filter(z, sigma=sig, mode="wrap")
    sd = z.std(axis=(-2, -1), keepdims=True)
    return z / np.where(sd > 0, sd, 1.0)
