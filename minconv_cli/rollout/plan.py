"""Forecast plans: which rows a rollout forecasts, from which initial frames, and what happens to
every lead before it is fed back (a per-step perturbation, a mixing of the members).

The deterministic forecast is the plan whose every part is the identity; an ensemble is a plan
(`EnsemblePlan`, made of `EnsembleSpec`, `perturb`, `step_noise_draws` and `recentre_matrix`), not
a branch of the rollout. To add a perturbation, subclass `DeterministicPlan` (or `EnsemblePlan`)
and override `initial` or `leads`; see docs/rollout.md.
"""

from __future__ import annotations

import json
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from minconv_cli.compat import ensemble_settings
from minconv_cli.core.errors import MinconvError
from minconv_cli.rollout.forecast_loop import LeadRule, MemberLeads, residual_count, unchanged_leads

Row = tuple[int, int, tuple[int, ...]]  # (init position, flat sample, store position)
Key = tuple[int, int, tuple[int, ...]]  # (data time index of the init, flat sample, store position)


class ForecastPlan:
    """What a rollout forecasts: its rows, their initial frames and the rule applied to every lead.

    Every hook here is the identity, which is the deterministic forecast; a plan overrides the
    ones it changes. Rows are (init position, flat sample, store position); keys, which seed
    perturbations, are (data time index of the init, flat sample, store position).
    """

    members: int | None = None  # the size of the store's `number` dim (None: no such dim)

    def check_data(self, fields: Any) -> None:
        """Refuse DATA the plan cannot write (after it was opened)."""

    def check_context(self, context: int) -> None:
        """Refuse a context the plan cannot work with."""

    def template(self, template: Any, encoding: dict) -> tuple[Any, dict]:
        """The store template (and encoding) with the plan's own dims."""
        return template, encoding

    def rows(self, sequences: list[Row]) -> list[Row]:
        """Every row of the store, in store order, from the (init, sample) sequences."""
        return sequences

    def pending(self, rows: list[Row], done: Any) -> list[Row]:
        """The rows still to forecast, given the store's done flags."""
        return [row for row in rows if not done[row[2]]]

    def checkpoint_of(self, row: Row) -> int:
        """Which checkpoint (index in the command) runs `row`."""
        return 0

    def batches(self, rows: list[Row], batch_size: int) -> list[list[Row]]:
        """`rows` cut into the batches forecast together."""
        return [rows[start : start + batch_size] for start in range(0, len(rows), batch_size)]

    def initial(self, frames: np.ndarray, keys: Sequence[Key], std: np.ndarray) -> np.ndarray:
        """Each row's context frames (B, K, C, H, W, physical units) as the model ingests them."""
        return frames

    def leads(self, keys: Sequence[Key], steps: int, context: int) -> LeadRule:
        """The batch's rule for every lead (normalised units), applied before it is fed back."""
        return unchanged_leads

    def settings(self, checkpoints_sha256: list[str]) -> dict:
        """What a resumed run must share with the store beyond the deterministic settings."""
        return {}

    def attrs(self, checkpoints: list[str]) -> dict:
        """Global store attrs the plan adds."""
        return {}


class DeterministicPlan(ForecastPlan):
    """One forecast per (init time, sample) from the frames as read: no `number` dim."""


def make_plan(
    n_checkpoints: int,
    members: int | None,
    perturbation: float,
    perturbation_smoothing: float,
    seed: int,
    step_noise: float,
    recentre: bool = False,
) -> ForecastPlan:
    """The plan the rollout options ask for: an ensemble (`members`, or several checkpoints),
    else the deterministic forecast."""
    if members is not None or n_checkpoints > 1:
        return EnsemblePlan(
            EnsembleSpec(
                n_checkpoints if members is None else members,
                n_checkpoints,
                perturbation,
                perturbation_smoothing,
                seed,
                step_noise,
                recentre,
            )
        )
    if recentre:
        raise MinconvError("--recentre: needs an ensemble (--members, or several checkpoints)")
    if step_noise:
        raise MinconvError("--step-noise: needs an ensemble (--members, or several checkpoints)")
    return DeterministicPlan()


@dataclass(frozen=True)
class EnsemblePlan(ForecastPlan):
    """An ensemble: a `number` dim, members spread over the checkpoints in blocks, perturbed
    context frames, step noise and recentring as `spec` says (see `EnsembleSpec`)."""

    spec: EnsembleSpec

    @property
    def members(self) -> int:  # type: ignore[override]
        return self.spec.members

    def check_data(self, fields: Any) -> None:
        if "number" in fields.sample_dims:
            raise MinconvError(f"{fields.path_label}: has a 'number' dim, the ensemble member dim")

    def check_context(self, context: int) -> None:
        if self.spec.step_noise and residual_count(context) < 1:
            raise MinconvError(
                f"--step-noise: draws from the model's one-step errors on the context, so it needs "
                f"--context of at least 2, got {context}"
            )

    def template(self, template: Any, encoding: dict) -> tuple[Any, dict]:
        from minconv_cli.rollout.store import DONE, add_member_dim

        return add_member_dim(template, encoding, self.spec, DONE)

    def rows(self, sequences: list[Row]) -> list[Row]:
        """Store positions (init, member, *sample), in store order."""
        members = range(self.spec.members)
        rows = ((i, s, (pos[0], m, *pos[1:])) for i, s, pos in sequences for m in members)
        return sorted(rows, key=lambda row: row[2])

    def pending(self, rows: list[Row], done: Any) -> list[Row]:
        if not self.spec.recentre:
            return super().pending(rows, done)
        # a block is recentred on its control: redo it whole
        open_blocks = {self.block(row) for row in rows if not done[row[2]]}
        return [row for row in rows if self.block(row) in open_blocks]

    def checkpoint_of(self, row: Row) -> int:
        return self.spec.checkpoint_of(row[2][1])

    def block(self, row: Row | Key) -> tuple:
        """The ensemble block of a row (or key): its init, sample and checkpoint."""
        return (row[0], row[1], self.checkpoint_of(row))

    def batches(self, rows: list[Row], batch_size: int) -> list[list[Row]]:
        """With recentring, batches of whole blocks (at least one, however big)."""
        if not self.spec.recentre:
            return super().batches(rows, batch_size)
        blocks: dict[tuple, list] = {}
        for row in rows:
            blocks.setdefault(self.block(row), []).append(row)
        out: list[list[Row]] = []
        for block in blocks.values():
            if out and len(out[-1]) + len(block) <= batch_size:
                out[-1].extend(block)
            else:
                out.append(list(block))
        return out

    def initial(self, frames: np.ndarray, keys: Sequence[Key], std: np.ndarray) -> np.ndarray:
        return perturb(frames, std, self.spec, _member_keys(keys))

    def step_perturbation(
        self, keys: Sequence[Key], steps: int, context: int
    ) -> tuple[np.ndarray, np.ndarray] | None:
        """The batch's step noise draws (see `step_noise_draws`), None without step noise."""
        if not self.spec.step_noise:
            return None
        return step_noise_draws(self.spec, _member_keys(keys), steps, residual_count(context))

    def mixing(self, keys: Sequence[Key]) -> np.ndarray | None:
        """The batch's recentring matrix (see `recentre_matrix`), None without recentring."""
        if not self.spec.recentre:
            return None
        blocks = [self.block(key) for key in keys]
        return recentre_matrix(self.spec, [pos[1] for _, _, pos in keys], blocks)

    def leads(self, keys: Sequence[Key], steps: int, context: int) -> LeadRule:
        return MemberLeads(self.step_perturbation(keys, steps, context), self.mixing(keys))

    def settings(self, checkpoints_sha256: list[str]) -> dict:
        return {"ensemble": {**self.spec.settings(), "checkpoints_sha256": checkpoints_sha256}}

    def attrs(self, checkpoints: list[str]) -> dict:
        return {
            "checkpoints": json.dumps(checkpoints),
            "ensemble": json.dumps(self.spec.settings()),
        }


def _member_keys(keys: Sequence[Key]) -> list[tuple[int, int, int]]:
    """(data time index, flat sample, member) per row: what seeds each member's draws."""
    return [(t, s, pos[1]) for t, s, pos in keys]


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
        return ensemble_settings(
            {
                "members": self.members,
                "checkpoints": self.checkpoints,
                "perturbation": self.perturbation,
                "smoothing": self.smoothing,
                "seed": self.seed,
                "step_noise": self.step_noise,
                "recentre": self.recentre,
            }
        )


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
