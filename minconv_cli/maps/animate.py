"""Animations over the leads: truth and forecast (or ensemble mean and spread) side by side with
a time stamp, as GIF (Pillow) or MP4 (where ffmpeg is on PATH or the `imageio-ffmpeg` wheel, which
bundles one, is installed: `pip install -e ".[maps]"`)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from minconv_cli.core.errors import MinconvError
from minconv_cli.maps.panels import draw_field, figure, grid_of, panel_arrays, scales
from minconv_cli.maps.select import Selection

SUFFIXES = (".png", ".gif", ".mp4")
FPS = 4


def check_suffix(out: Path) -> str:
    """The output kind from `--out`'s suffix; one line for what cannot be written."""
    suffix = out.suffix.lower()
    if suffix not in SUFFIXES:
        raise MinconvError(
            f"--out: {out}: cannot write {suffix or 'no suffix'!r} (use .png, .gif or .mp4)"
        )
    if suffix == ".mp4" and not ffmpeg_found():
        raise MinconvError(
            f"--out: {out}: no ffmpeg found for MP4 (put ffmpeg on PATH or "
            f'pip install "minconv-cli[maps]"); write a .gif instead'
        )
    return suffix[1:]


def ffmpeg_found() -> bool:
    """Whether matplotlib can write MP4: ffmpeg on PATH, else the one `imageio-ffmpeg` bundles."""
    import matplotlib
    from matplotlib import animation

    if animation.writers.is_available("ffmpeg"):
        return True
    try:
        import imageio_ffmpeg

        exe = imageio_ffmpeg.get_ffmpeg_exe()
    except (ImportError, RuntimeError):
        return False
    matplotlib.rcParams["animation.ffmpeg_path"] = exe
    return animation.writers.is_available("ffmpeg")


def _writer(kind: str, fps: int):
    """A writer that names its format (the temporary sibling it writes has no suffix)."""
    from matplotlib import animation

    if kind == "mp4":
        return animation.FFMpegWriter(fps=fps, extra_args=["-f", "mp4"])

    class GifWriter(animation.PillowWriter):
        def finish(self) -> None:
            self._frames[0].save(
                self.outfile,
                format="GIF",
                save_all=True,
                append_images=self._frames[1:],
                duration=int(1000 / self.fps),
                loop=0,
            )

    return GifWriter(fps=fps)


def animate(
    sel: Selection,
    out: Path,
    kind: str = "gif",
    dpi: int = 80,
    fps: int = FPS,
    progress: Callable[[int, int], None] | None = None,
) -> dict:
    """One frame per lead of `sel`, written to `out` (the caller makes it atomic)."""
    import matplotlib.pyplot as plt

    cols = [c for c in panel_arrays(sel) if c.kind != "field" or not c.title.startswith("member")]
    cols = cols[:3]
    grid, scale = grid_of(sel), scales(cols)
    fig, axes = figure(1, len(cols), scale=1.2)
    images = []
    for ax, col in zip(axes[0], cols, strict=True):
        cmap, lo, hi = scale[col.kind]
        im = draw_field(ax, grid, col.values[0], cmap, lo, hi)
        fig.colorbar(im, ax=ax, location="bottom", shrink=0.8).set_label(sel.units, fontsize=7)
        ax.set_title(col.title, fontsize=8)
        ax.set_xlabel(grid.x_label, fontsize=7)
        ax.tick_params(labelsize=6)
        images.append(im)
    axes[0, 0].set_ylabel(grid.y_label, fontsize=7)
    stamp = fig.suptitle("", fontsize=9)
    writer = _writer(kind, fps)
    n = len(sel.leads)
    with writer.saving(fig, str(out), dpi):
        for i in range(n):
            for im, col in zip(images, cols, strict=True):
                im.set_data(grid.arrange(col.values[i]))
            stamp.set_text(
                f"{sel.store.name}: {sel.variable}, init {sel.init}, lead {sel.leads[i]}, "
                f"valid {sel.valid[i]}"
            )
            writer.grab_frame()
            if progress:
                progress(i + 1, n)
    plt.close(fig)
    return {"frames": n, "columns": [c.title for c in cols], "fps": fps}
