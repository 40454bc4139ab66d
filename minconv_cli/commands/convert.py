"""`minconv convert`: NetCDF <-> Zarr and NumPy arrays in, with selection, coarsening and rechunking."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from minconv_cli.commands._common import console, print_json, user_errors


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


@user_errors
def convert(
    src: str = typer.Argument(
        ..., help="Input: NetCDF file, Zarr store or its URL, or NumPy .npy/.npz."
    ),
    dst: str = typer.Argument(..., help="Output: .nc or .zarr (or any name with --to); local."),
    to: str = typer.Option(
        None, "--to", help="Output format: netcdf or zarr (default: from DST's extension)."
    ),
    zarr_format: int = typer.Option(
        None,
        "--zarr-format",
        help="Zarr version of the output: 2 or 3 (default: the input's, else 3).",
    ),
    variables: str = typer.Option(
        None, "--variables", help="Comma-separated variables to keep (default: all)."
    ),
    time: str = typer.Option(
        None, "--time", help="Inclusive time range START/END (either side may be empty)."
    ),
    coarsen: str = typer.Option(
        None, "--coarsen", help="Block means, e.g. 'y=4,x=4' (leftover rows trimmed)."
    ),
    chunks: str = typer.Option(
        None, "--chunks", help="Output chunks, e.g. 'time=1,trajectory=10'."
    ),
    rename: str = typer.Option(
        None, "--rename", help="Rename variables/dims, e.g. 'lat=latitude,t2=t2m'."
    ),
    dims: str = typer.Option(
        None, "--dims", help="NumPy input: dim names in array order, e.g. 'trajectory,time,y,x'."
    ),
    coords: str = typer.Option(
        None,
        "--coords",
        help="NumPy input: coordinates per dim: START:STEP, START:STOP:STEP, DATE:FREQ (2000-01-01:6h) or a .npy/.txt file; e.g. 'time=0:1,x=0:0.0625'.",
    ),
    name: str = typer.Option(
        None, "--name", help="NumPy .npy input: the variable's name (default: file stem)."
    ),
    attrs: str = typer.Option(
        None, "--attrs", help="Attributes: 'units=K' for every variable, 'time.units=s' for one."
    ),
    overwrite: bool = typer.Option(
        False,
        "--overwrite",
        help="Replace DST if it exists (the old DST stays until the new one is complete).",
    ),
    allow_missing_chunks: bool = typer.Option(
        False,
        "--allow-missing-chunks",
        help="Read chunks missing from a Zarr SRC as NaN (default: an error; stores written "
        "without empty chunks leave all-NaN chunks out).",
    ),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress output."),
    json_out: bool = typer.Option(
        False, "--json", help="Print what was written as JSON on stdout."
    ),
) -> None:
    """Convert between NetCDF and Zarr (v2/v3), or bring NumPy arrays in; select, coarsen, rechunk, rename."""
    from minconv_cli.data.convert import convert as run_convert
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
    if quiet:
        result = run_convert(src, dst, **options)
    else:
        with Progress(
            TextColumn(f"converting {Path(src).name} → {Path(dst).name}"),
            BarColumn(),
            TextColumn("{task.completed}/{task.total} chunks"),
            TimeElapsedColumn(),
            console=console,
            transient=True,
            disable=not console.is_terminal,
        ) as bar:
            task = bar.add_task("convert", total=None)
            result = run_convert(
                src,
                dst,
                progress=lambda done, total: bar.update(task, completed=done, total=total),
                **options,
            )
    if json_out:
        print_json(result)
    elif not quiet:
        sizes = ", ".join(f"{k}={v}" for k, v in result["dims"].items())
        console.print(
            f"wrote {result['path']} ({result['format']}; {', '.join(result['variables'])}; {sizes})"
        )
