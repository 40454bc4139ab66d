"""`minconv plot`: maps and animations of a forecast store (with the truth, if given)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from minconv_cli.commands._common import console, print_json, progress_bar, user_errors

Forecast = Annotated[str, typer.Argument(help="Forecast Zarr store (WeatherBench 2 layout).")]
Truth = Annotated[
    list[str] | None,
    typer.Argument(help="NetCDF file(s) or Zarr store(s) with the observed fields (optional)."),
]
Out = Annotated[
    str,
    typer.Option("--out", "-o", help="Image to write: FILE.png (panels), FILE.gif or FILE.mp4."),
]
Init = Annotated[
    str | None, typer.Option("--init", help="Init time to draw (default: the store's first).")
]
Member = Annotated[
    int | None,
    typer.Option("--member", help="Ensemble member to draw (default: mean, spread and members)."),
]
Variable = Annotated[
    str | None, typer.Option("--variable", "-v", help="Variable (default: the first).")
]
Level = Annotated[str | None, typer.Option("--level", help="Level value (default: the first).")]
Leads = Annotated[
    str | None,
    typer.Option(
        "--leads", help="Comma-separated lead steps (1 = first) or labels like P1D; default all."
    ),
]
Spaghetti = Annotated[
    float | None,
    typer.Option(
        "--spaghetti", help="PNG of every member's contour at this value, one panel per lead."
    ),
]
Dpi = Annotated[int, typer.Option("--dpi", min=20, max=600, help="Resolution of the image.")]
Overwrite = Annotated[bool, typer.Option("--overwrite", help="Replace an existing image.")]
JsonOut = Annotated[bool, typer.Option("--json", help="Print what was written on stdout.")]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar or message.")]


@user_errors
def plot(
    forecast: Forecast,
    out: Out,
    truth: Truth = None,
    init: Init = None,
    member: Member = None,
    variable: Variable = None,
    level: Level = None,
    leads: Leads = None,
    spaghetti: Spaghetti = None,
    dpi: Dpi = 100,
    overwrite: Overwrite = False,
    json_out: JsonOut = False,
    quiet: Quiet = False,
) -> None:
    """Draw maps of truth, forecast and difference per lead (PNG), or animate them (GIF/MP4)."""
    from minconv_cli.core.errors import MinconvError
    from minconv_cli.core.files import atomic_path, output_lock, recover, writing
    from minconv_cli.data import open_fields
    from minconv_cli.data.remote import as_source, local_path
    from minconv_cli.maps import check_suffix, select
    from minconv_cli.rollout.store import open_forecast

    path = Path(local_path(out, "--out"))
    kind = check_suffix(path)
    if spaghetti is not None and kind != "png":
        raise MinconvError("--spaghetti: draws a .png; use --out FILE.png")
    if path.exists() and not overwrite:
        raise MinconvError(f"--out: {path} exists (use --overwrite to replace it)")
    store = open_forecast(as_source(forecast))
    fields = open_fields([as_source(t) for t in truth], variables=None) if truth else None
    sel = select(store, fields, variable, level, init, member, leads)
    with output_lock(path, "plot"):
        recover(path)  # what a killed plot left beside the image
        with atomic_path(path) as tmp, writing(path):
            info = _draw(sel, kind, spaghetti, tmp, dpi, quiet, path.name)
            _check_image(tmp, kind)
    record = {"path": str(path), "kind": kind, "variable": sel.variable, "init": sel.init}
    record.update(leads=sel.leads, valid=sel.valid, **info)
    if json_out:
        print_json(record)
    elif not quiet:
        console.print(f"wrote {path}")


def _draw(sel, kind: str, spaghetti: float | None, tmp: Path, dpi: int, quiet: bool, name: str):
    """Draw the selection into `tmp`: spaghetti or panels (PNG), or an animation (GIF/MP4)."""
    from minconv_cli.maps import animate, draw_panels
    from minconv_cli.maps.panels import draw_spaghetti

    if spaghetti is not None:
        return draw_spaghetti(sel, spaghetti, tmp, dpi)
    if kind == "png":
        return draw_panels(sel, tmp, dpi)
    with progress_bar(f"drawing {name}", quiet) as report:
        return animate(sel, tmp, kind, dpi=min(dpi, 80), progress=report)


def _check_image(tmp: Path, kind: str) -> None:
    """Read a PNG or GIF back before it replaces anything (an MP4 is checked for bytes only)."""
    from minconv_cli.core.errors import MinconvError

    if tmp.stat().st_size == 0:
        raise MinconvError(f"{tmp}: the image writer wrote nothing")
    if kind in ("png", "gif"):
        from PIL import Image

        with Image.open(tmp) as image:
            image.verify()
