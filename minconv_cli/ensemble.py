"""Ensembles: members from perturbed context frames and/or several checkpoints (for `minconv
rollout --members`), and the ensemble scores `minconv evaluate` reports on a store with a `number`
dim (spread, spread/skill, CRPS, rank histogram; CRPS and ranks computed by the `scores` library)."""

from __future__ import annotations

import warnings
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from minconv_cli import metrics
from minconv_cli.errors import MinconvError
from minconv_cli.store import MEMBER_DIM

ENSEMBLE_METRICS = ("spread", "spread_skill", "crps", "crps_fair")
RANK_HISTOGRAM = "rank_histogram"
RANK_DIM = "rank"


# --------------------------------------------------------------------------- making members


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


def is_checkpoint_path(path: str | Path) -> bool:
    """A `.pt`/`.pth` file: a checkpoint written by `minconv train`, not data."""
    return Path(path).suffix.lower() in (".pt", ".pth")


def split_checkpoints(
    checkpoint: str | Path, data: Sequence[str | Path]
) -> tuple[list[str | Path], list[str | Path]]:
    """`rollout A.pt [B.pt ...] DATA...`: the leading checkpoint files, then the data (as given)."""
    ckpts, rest = [checkpoint], list(data)
    while rest and is_checkpoint_path(rest[0]):
        ckpts.append(rest.pop(0))
    late = [str(p) for p in rest if is_checkpoint_path(p)]
    if late:
        raise MinconvError(f"{late[0]}: checkpoints must come before the data files")
    return ckpts, rest


def check_same_data(metas: Sequence[dict], paths: Sequence[Path]) -> None:
    """Every checkpoint must have been trained on the same data contract as the first: channels,
    units, static inputs, grid and time step (normalisation may differ)."""
    first = metas[0]
    for meta, path in zip(metas[1:], paths[1:], strict=True):
        problems = []
        for key, what in (("channels", "channels"), ("static_channels", "static inputs")):
            a = [(c["name"], str(c.get("units", ""))) for c in first.get(key, [])]
            b = [(c["name"], str(c.get("units", ""))) for c in meta.get(key, [])]
            if a != b:
                problems.append(f"{what} {b} differ from {a}")
        ga, gb = first["grid"], meta["grid"]
        for axis in ("y", "x"):
            va, vb = np.asarray(ga[axis]["values"]), np.asarray(gb[axis]["values"])
            same = ga.get(f"{axis}_dim") == gb.get(f"{axis}_dim") and va.shape == vb.shape
            if not (same and np.allclose(va, vb, rtol=0, atol=1e-6 * (np.ptp(va) or 1.0))):
                problems.append(f"grid {gb.get(f'{axis}_dim')!r} differs")
        if bool(first.get("time_is_datetime")) != bool(meta.get("time_is_datetime")) or str(
            first.get("time_step")
        ) != str(meta.get("time_step")):
            problems.append(
                f"time step {meta.get('time_step')} differs from {first.get('time_step')}"
            )
        if problems:
            raise MinconvError(
                f"{path}: not trained on the same data as {paths[0]}: " + "; ".join(problems)
            )


def add_member_dim(
    template: xr.Dataset, encoding: dict, spec: EnsembleSpec, done: str
) -> tuple[xr.Dataset, dict]:
    """The store template with a `number` dim after `time` on every forecast variable and on the
    done flags (one flag per init time, member and sample), plus which checkpoint runs each member."""
    import dask.array as dsa

    n = spec.members
    number = {
        MEMBER_DIM: (MEMBER_DIM, np.arange(n), {"long_name": "ensemble member"}),
        "member_checkpoint": (
            MEMBER_DIM,
            np.array([spec.checkpoint_of(m) for m in range(n)]),
            {"long_name": "index of the checkpoint (in the command) that runs each member"},
        ),
        "member_perturbed": (
            MEMBER_DIM,
            np.array([not spec.is_control(m) for m in range(n)]),
            {
                "long_name": "perturbed: context frames, step noise (False: the checkpoint's control)"
            },
        ),
    }
    flags = template[done]
    flag_dims = (flags.dims[0], MEMBER_DIM, *flags.dims[1:])
    flag_shape = (flags.shape[0], n, *flags.shape[1:])
    coords = {k: v for k, v in template.coords.items() if k != done}
    coords.update(number)
    coords[done] = (flag_dims, np.zeros(flag_shape, dtype=bool), dict(flags.attrs))
    data_vars = {}
    encoding = dict(encoding)
    encoding[done] = {"chunks": (1, n, *flag_shape[2:])}
    for name, da in template.data_vars.items():
        dims = (da.dims[0], MEMBER_DIM, *da.dims[1:])
        shape = (da.shape[0], n, *da.shape[1:])
        data_vars[name] = (dims, dsa.empty(shape, chunks=shape, dtype=da.dtype), dict(da.attrs))
        enc = dict(encoding[name])
        enc["chunks"] = (enc["chunks"][0], 1, *enc["chunks"][1:])
        encoding[name] = enc
    return xr.Dataset(data_vars, coords=coords, attrs=template.attrs), encoding


# --------------------------------------------------------------------------- scoring members


def ensemble_scores(
    fc: xr.DataArray,
    truth: xr.DataArray,
    space: Sequence[Hashable],
    cases: Sequence[Hashable],
    weights: xr.DataArray | None,
    keep: Sequence[Hashable],
) -> dict[str, xr.DataArray]:
    """Lazy reductions of an ensemble `fc` (with a `number` dim) against `truth` over cases and space.

    spread: sqrt of the mean unbiased (ddof=1) ensemble variance; `spread_mse` its square (so the
    spread/skill ratio can be formed with the ensemble-mean MSE); crps/crps_fair: the ensemble CRPS
    (empirical CDF and fair, Ferro 2014) per cell from `scores`, then averaged like the MSE;
    rank_histogram: relative frequency of the truth's rank among the members, by `keep` dims.
    """
    from scores.probability import crps_for_ensemble, rank_histogram

    n = fc.sizes[MEMBER_DIM]
    valid = fc.notnull().all(MEMBER_DIM) & truth.notnull()
    fc_v, truth_v = fc.where(valid), truth.where(valid)
    over = [*cases, *space]
    out: dict[str, xr.DataArray] = {}
    if n > 1:
        var = fc_v.var(MEMBER_DIM, ddof=1)
        out["spread_mse"] = metrics.weighted_mean(var, over, weights)
        for method, name in (("ecdf", "crps"), ("fair", "crps_fair")):
            per_cell = crps_for_ensemble(
                fc_v, truth_v, MEMBER_DIM, method=method, preserve_dims="all"
            )
            out[name] = metrics.weighted_mean(per_cell.where(valid), over, weights)
    else:  # one member: the CRPS is the absolute error, there is no spread
        out["crps"] = metrics.weighted_mean(
            abs(fc_v.squeeze(MEMBER_DIM, drop=True) - truth_v), over, weights
        )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "NaN in fcst": unscored cases, left out
        hist = rank_histogram(
            fc_v,
            truth_v,
            MEMBER_DIM,
            preserve_dims=[d for d in keep if d in fc.dims],
            weights=weights,
        )
    out[RANK_HISTOGRAM] = hist
    return out


def finish(ds: xr.Dataset, members: int) -> xr.Dataset:
    """Spread and the spread/skill ratio from the reduced `spread_mse` and ensemble-mean `mse`.

    The ratio carries the (n+1)/n finite-ensemble factor (Fortin et al. 2014), so a reliable
    ensemble of any size scores 1: E[MSE of the mean] = (n+1)/n E[unbiased variance].
    """
    if "spread_mse" in ds:
        ds["spread"] = np.sqrt(ds["spread_mse"])
        factor = np.sqrt((members + 1) / members)
        ds["spread_skill"] = factor * ds["spread"] / np.sqrt(ds["mse"].where(ds["mse"] > 0))
    return ds


def plot_rank_histograms(
    hists: dict[tuple[str, str], xr.DataArray], path: Path, leads: Any
) -> None:
    """One panel per (forecast, variable): the rank histogram at the first, middle and last lead."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = list(hists)
    fig, axes = plt.subplots(1, len(keys), figsize=(4.2 * len(keys), 3.2), squeeze=False)
    for ax, key in zip(axes[0], keys, strict=True):
        h = hists[key]
        n_lead = h.sizes["lead"]
        picks = sorted({0, n_lead // 2, n_lead - 1})
        ranks = h[RANK_DIM].values
        width = 0.8 / len(picks)
        for j, i in enumerate(picks):
            ax.bar(
                ranks + (j - (len(picks) - 1) / 2) * width,
                h.isel(lead=i).values,
                width=width,
                label=f"lead {leads[i]}",
            )
        ax.axhline(1.0 / len(ranks), color="0.3", ls=":", lw=1, label="flat (calibrated)")
        ax.set_title(f"{key[0]}: {key[1]}", fontsize=9)
        ax.set_xlabel("rank of the truth among the members")
        ax.set_ylabel("relative frequency")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100, format="png")
    plt.close(fig)
