"""Training on random spatial crops of large grids (`train.crop`), applied whole-grid later.

Each training window gets its own crop, drawn from (seed, global step, rank, window): a resumed
run draws the same crops. Validation windows get a fixed crop each, drawn from (seed, sample,
start), so that every epoch validates the same cells. A crop whose target frames hold no cell above
`crop_wet_threshold` (data units) is kept with probability `crop_dry_keep`, else redrawn (at most
`DRY_TRIES` times, then kept). The model is built without a grid (`grid=None`), so it runs on the
whole grid in rollout: norms and paddings that need the whole grid are replaced or refused.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from minconv_cli.core.errors import MinconvError
from minconv_cli.training.crop_keys import crop_shape
from minconv_cli.training.position import generator

DRY_TRIES = 10  # redraws of a dry crop before it is kept anyway
VALIDATION_STREAM = 7_919  # separates the validation crops' seeds from the training ones


def check_fits(shape: tuple[int, int] | None, grid: tuple[int, int], label: str) -> None:
    """Refuse a crop larger than the grid, naming both."""
    if shape is not None and (shape[0] > grid[0] or shape[1] > grid[1]):
        raise MinconvError(
            f"--crop {shape[0]}x{shape[1]}: larger than the {grid[0]}x{grid[1]} grid of {label}"
        )


def crop_model_options(
    norm: str, padding: str, default_padding: str, peepholes: bool
) -> tuple[str, str, str]:
    """(norm, padding, note) for training on crops: `auto` norm resolves to none, the one norm
    that is the same function on a crop and on the whole grid (instance and group normalise with
    the crop's statistics), and periodic default padding becomes zeros; explicit choices that
    need the whole grid are a one-line error."""
    if norm == "layer":
        raise MinconvError(
            "--norm layer: has per-cell parameters of the training grid, so it cannot train on "
            "--crop and run on the whole grid; use --norm auto, instance, group or none"
        )
    if peepholes:
        raise MinconvError(
            "model.peepholes: per-cell weights of the training grid cannot train on --crop"
        )
    if padding in ("circular", "cylinder"):
        raise MinconvError(
            f"model.padding {padding}: wraps around the whole grid, which a crop is not; "
            "use zeros (or leave it auto) with --crop"
        )
    changes = []
    if norm == "auto":
        norm = "none"
        changes.append("norm auto -> none (the same on a crop and on the whole grid)")
    if padding == "auto":
        if default_padding != "zeros":
            changes.append(f"padding {default_padding} -> zeros (a crop is not periodic)")
        padding = "zeros"
    note = "crop: " + ("; ".join(changes) if changes else "norm and padding fit crops as given")
    return norm, padding, note


def _threshold(normalizer: Any, threshold: float) -> torch.Tensor:
    """`threshold` (data units) in each channel's normalised units, shape (C,)."""
    c = len(normalizer.channels)
    frame = np.full((1, c, 1, 1), threshold, dtype=np.float32)
    x, _ = normalizer.normalize(frame)
    return torch.as_tensor(np.asarray(x, dtype=np.float32)).reshape(c)


class Cropper:
    """Cuts each window of a batch (x, mask: (B, T, C, H, W); static: (B, S, H, W)) to a crop."""

    def __init__(
        self, shape: tuple[int, int], seed: int, keep: float, threshold: float, normalizer: Any
    ) -> None:
        self.shape, self.seed, self.keep = shape, int(seed), float(keep)
        self.wet_above = _threshold(normalizer, threshold)
        self.drawn = self.redrawn = 0  # crops kept, dry crops redrawn (for the summary)

    def _corner(self, g: torch.Generator, grid: tuple[int, int]) -> tuple[int, int]:
        hi = [grid[i] - self.shape[i] + 1 for i in (0, 1)]
        return int(torch.randint(hi[0], (1,), generator=g)), int(
            torch.randint(hi[1], (1,), generator=g)
        )

    def _wet(
        self, x: torch.Tensor, mask: torch.Tensor, corner: tuple[int, int], context: int
    ) -> bool:
        (i, j), (h, w) = corner, self.shape
        target = x[context:, :, i : i + h, j : j + w]
        valid = mask[context:, :, i : i + h, j : j + w] > 0
        above = target > self.wet_above.to(target.dtype)[:, None, None]
        return bool((above & valid).any())

    def corners(self, batch: dict, step: int, rank: int, context: int) -> list[tuple[int, int]]:
        """One crop corner per window of a training batch (dry ones redrawn as configured)."""
        x, mask = batch["x"], batch["mask"]
        grid = (x.shape[-2], x.shape[-1])
        out = []
        for b in range(x.shape[0]):
            g = generator(self.seed, step, rank, b)
            corner = self._corner(g, grid)
            for _ in range(DRY_TRIES if self.keep < 1 else 0):
                if self._wet(x[b], mask[b], corner, context):
                    break
                if float(torch.rand((1,), generator=g)) < self.keep:
                    break
                self.redrawn += 1
                corner = self._corner(g, grid)
            out.append(corner)
        self.drawn += len(out)
        return out

    def validation_corners(self, batch: dict) -> list[tuple[int, int]]:
        """The fixed crop of each validation window, from (seed, sample, start)."""
        x = batch["x"]
        grid = (x.shape[-2], x.shape[-1])
        keys = zip(batch["sample"].tolist(), batch["start"].tolist(), strict=True)
        return [self._corner(generator(self.seed, VALIDATION_STREAM, s, t), grid) for s, t in keys]

    def cut(self, batch: dict, corners: list[tuple[int, int]]) -> dict:
        """`batch` with x, mask and static cut to the crops at `corners`."""
        h, w = self.shape
        out = dict(batch)
        for key in ("x", "mask", "static"):
            t = batch[key]
            if key == "static" and t.shape[1] == 0:
                out[key] = t[..., :h, :w]
                continue
            out[key] = torch.stack(
                [t[b, ..., i : i + h, j : j + w] for b, (i, j) in enumerate(corners)]
            )
        return out

    def train(self, batch: dict, step: int, rank: int, context: int) -> dict:
        """A training batch cut to this step's crops."""
        return self.cut(batch, self.corners(batch, step, rank, context))

    def validation(self, batch: dict) -> dict:
        """A validation batch cut to its windows' fixed crops."""
        return self.cut(batch, self.validation_corners(batch))


def make_cropper(config: Any, data: Any) -> tuple[Cropper | None, str | None]:
    """The run's cropper and the note saying what the crop changed (None, None without a crop);
    call before the model section's `auto` values are replaced by what they resolved to."""
    t, m, fields = config.train, config.model, data.fields
    shape = crop_shape(t.crop)
    if shape is None:
        return None, None
    check_fits(shape, fields.grid_shape, fields.path_label)
    _, _, note = crop_model_options(m.norm, m.padding, fields.default_padding, m.peepholes)
    h, w = fields.grid_shape
    dry = (
        ""
        if t.crop_dry_keep >= 1
        else (
            f"; dry crops (no target cell above {t.crop_wet_threshold:g}) kept with "
            f"probability {t.crop_dry_keep:g}"
        )
    )
    note = f"{note}; training on random {shape[0]}x{shape[1]} crops of the {h}x{w} grid{dry}"
    cropper = Cropper(shape, t.seed, t.crop_dry_keep, t.crop_wet_threshold, data.normalizer)
    return cropper, note
