"""`minconv convert`: NetCDF <-> Zarr and NumPy arrays in, with selection, coarsening and rechunking."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import BarColumn, TextColumn, TimeElapsedColumn

from minconv_cli.commands._common import console, print_json, rich_progress, user_errors


def _ints(text: str | None, option: str) -> dict[str, int]:
    from minconv_cli.core.errors import MinconvError
    from minconv_cli.data.convert import parse_mapping

    out = {}
    for key, value in parse_mapping(text, option).items():
        try:
            out[key] = int(value)
        except ValueError:
            raise MinconvError(f"{option}: {key}={value} is not an integer") from None
    return out


def _names(text: str | None) -> list[str] | None:
    names = [s.strip() for s in (text or "").split(",") if s.strip()]
    return names or None


Src = Annotated[
    str, typer.Argument(help="Input: NetCDF file, Zarr store or its URL, or NumPy .npy/.npz.")
]
Dst = Annotated[str, typer.Argument(help="Output: .nc or .zarr (or any name with --to); local.")]
To = Annotated[
    str,
    typer.Option("--to", help="Output format: netcdf or zarr (default: from DST's extension)."),
]
ZarrFormat = Annotated[
    int,
    typer.Option(
        "--zarr-format",
        help="Zarr version of the output: 2 or 3 (default: the input's, else 3).",
    ),
]
Variables = Annotated[
    str, typer.Option("--variables", help="Comma-separated variables to keep (default: all).")
]
Time = Annotated[
    str, typer.Option("--time", help="Inclusive time range START/END (either side may be empty).")
]
Coarsen = Annotated[
    str, typer.Option("--coarsen", help="Block means, e.g. 'y=4,x=4' (leftover rows trimmed).")
]
Chunks = Annotated[
    str, typer.Option("--chunks", help="Output chunks, e.g. 'time=1,trajectory=10'.")
]
Rename = Annotated[
    str, typer.Option("--rename", help="Rename variables/dims, e.g. 'lat=latitude,t2=t2m'.")
]
Dims = Annotated[
    str,
    typer.Option(
        "--dims", help="NumPy input: dim names in array order, e.g. 'trajectory,time,y,x'."
    ),
]
Coords = Annotated[
    str,
    typer.Option(
        "--coords",
        help="NumPy input: coordinates per dim: START:STEP, START:STOP:STEP, DATE:FREQ (2000-01-01:6h) or a .npy/.txt file; e.g. 'time=0:1,x=0:0.0625'.",
    ),
]
Name = Annotated[
    str,
    typer.Option("--name", help="NumPy .npy input: the variable's name (default: file stem)."),
]
Attrs = Annotated[
    str,
    typer.Option(
        "--attrs", help="Attributes: 'units=K' for every variable, 'time.units=s' for one."
    ),
]
Overwrite = Annotated[
    bool,
    typer.Option(
        "--overwrite",
        help="Replace DST if it exists (the old DST stays until the new one is complete).",
    ),
]
AllowMissingChunks = Annotated[
    bool,
    typer.Option(
        "--allow-missing-chunks",
        help="Read chunks missing from a Zarr SRC as NaN (default: an error; stores written "
        "without empty chunks leave all-NaN chunks out).",
    ),
]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="No progress output.")]
JsonOut = Annotated[bool, typer.Option("--json", help="Print what was written as JSON on stdout.")]


@user_errors
def convert(
    src: Src,
    dst: Dst,
    to: To = None,
    zarr_format: ZarrFormat = None,
    variables: Variables = None,
    time: Time = None,
    coarsen: Coarsen = None,
    chunks: Chunks = None,
    rename: Rename = None,
    dims: Dims = None,
    coords: Coords = None,
    name: Name = None,
    attrs: Attrs = None,
    overwrite: Overwrite = False,
    allow_missing_chunks: AllowMissingChunks = False,
    quiet: Quiet = False,
    json_out: JsonOut = False,
) -> None:
    """Convert between NetCDF and Zarr (v2/v3), or bring NumPy arrays in; select, coarsen, rechunk, rename."""
    from minconv_cli.data.convert import parse_mapping

    options = dict(
        to=to,
        zarr_format=zarr_format,
        variables=_names(variables),
        time=time,
        coarsen=_ints(coarsen, "--coarsen"),
        chunks=_ints(chunks, "--chunks"),
        rename=parse_mapping(rename, "--rename"),
        dims=_names(dims),
        coords=parse_mapping(coords, "--coords"),
        name=name,
        attrs=parse_mapping(attrs, "--attrs"),
        overwrite=overwrite,
        allow_missing_chunks=allow_missing_chunks,
    )
    result = _run(src, dst, options, quiet)
    if json_out:
        print_json(result)
    elif not quiet:
        sizes = ", ".join(f"{k}={v}" for k, v in result["dims"].items())
        console.print(
            f"wrote {result['path']} ({result['format']}; {', '.join(result['variables'])}; {sizes})"
        )


def _run(src: str, dst: str, options: dict[str, Any], quiet: bool) -> dict:
    """Convert, with a chunk counter on a terminal unless `quiet`."""
    from minconv_cli.data.convert import convert as run_convert

    if quiet:
        return run_convert(src, dst, **options)
    with rich_progress(
        TextColumn(f"converting {Path(src).name} → {Path(dst).name}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total} chunks"),
        TimeElapsedColumn(),
        transient=True,
        disable=not console.is_terminal,
    ) as bar:
        task = bar.add_task("convert", total=None)
        return run_convert(
            src,
            dst,
            progress=lambda done, total: bar.update(task, completed=done, total=total),
            **options,
        )
