"""`python -m minconv_cli.simulate`: make more Navier-Stokes data like the bundled sample."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from minconv_cli.commands._common import console, print_json, user_errors
from minconv_cli.core.errors import MinconvError
from minconv_cli.simulate.dataset import SimulationConfig, simulate_config
from minconv_cli.simulate.files import check_writable, write_dataset

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)


def parse_splits(text: str | None) -> tuple[int, int, int] | None:
    """'150,20,30' -> (150, 20, 30)."""
    if text is None:
        return None
    try:
        counts = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise MinconvError(f"--splits: {text!r} is not three integers train,val,test") from None
    if len(counts) != 3:
        raise MinconvError(f"--splits: {text!r} is not three integers train,val,test")
    return counts  # type: ignore[return-value]


@app.command()
@user_errors
def simulate(
    out: Path = typer.Option(..., "--out", "-o", help="Output file: .nc (NetCDF4, zlib) or .zarr."),
    trajectories: int = typer.Option(200, help="Number of trajectories."),
    splits: str = typer.Option(
        None, help="Counts train,val,test (sum = --trajectories); default 75/10/15 %."
    ),
    resolution: int = typer.Option(64, help="Grid points per side of the solved field."),
    coarsen: int = typer.Option(
        4, help="Store the mean over coarsen x coarsen cells (1: as solved)."
    ),
    steps: int = typer.Option(
        50, help="Snapshots per trajectory, at t = dt_snapshot, 2 dt_snapshot, ..."
    ),
    dt_snapshot: float = typer.Option(1.0, help="Time between snapshots."),
    solver_dt: float = typer.Option(0.01, help="Solver time step (must divide --dt-snapshot)."),
    viscosity: float = typer.Option(1e-3, help="Kinematic viscosity nu."),
    forcing_amplitude: float = typer.Option(0.1, help="f = A (sin 2pi(x+y) + cos 2pi(x+y))."),
    alpha: float = typer.Option(2.5, help="Initial-condition GRF smoothness alpha."),
    tau: float = typer.Option(7.0, help="Initial-condition GRF inverse length scale tau."),
    seed: int = typer.Option(0, help="Random seed; trajectory i uses the stream (seed, i)."),
    block_size: int = typer.Option(
        4, help="Trajectories integrated together (part of what fixes the bits)."
    ),
    keep_bits: int = typer.Option(
        23, help="float32 mantissa bits to store (23: all; 10 keeps 3 digits and halves the file)."
    ),
    workers: int = typer.Option(1, help="Parallel processes (one thread each; same bits)."),
    overwrite: bool = typer.Option(False, help="Replace --out if it exists."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress output."),
    json_out: bool = typer.Option(
        False, "--json", help="Print what was written as JSON on stdout."
    ),
) -> None:
    """Simulate forced 2-D Navier-Stokes vorticity from random initial conditions into a file."""
    config = SimulationConfig(
        trajectories=trajectories,
        resolution=resolution,
        coarsen=coarsen,
        steps=steps,
        dt_snapshot=dt_snapshot,
        solver_dt=solver_dt,
        viscosity=viscosity,
        forcing_amplitude=forcing_amplitude,
        grf_alpha=alpha,
        grf_tau=tau,
        seed=seed,
        block_size=block_size,
        splits=parse_splits(splits),
        keep_bits=keep_bits,
    )
    check_writable(out, overwrite)
    with Progress(
        TextColumn("simulating"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=console,
        disable=quiet,
    ) as bar:
        task = bar.add_task("simulate", total=config.trajectories * config.steps)
        ds = simulate_config(
            config, workers=workers, progress=lambda k: bar.advance(task, k), out=str(out)
        )
    write_dataset(ds, out, overwrite=overwrite)
    summary = {
        "path": str(out),
        "trajectories": config.trajectories,
        "splits": dict(zip(("train", "val", "test"), config.split_counts(), strict=True)),
        "shape": dict(ds.sizes),
        "bytes": _size(out),
        "command": ds.attrs["command"],
    }
    if json_out:
        print_json(summary)
    elif not quiet:
        console.print(f"wrote {out} ({summary['bytes'] / 1e6:.2f} MB)")


def _size(path: Path) -> int:
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return path.stat().st_size
