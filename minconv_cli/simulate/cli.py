"""`python -m minconv_cli.simulate`: make more Navier-Stokes data like the bundled sample."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
import xarray as xr

from minconv_cli.core.console import console, counting_bar, print_json, user_errors
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


Out = Annotated[
    Path, typer.Option("--out", "-o", help="Output file: .nc (NetCDF4, zlib) or .zarr.")
]
Trajectories = Annotated[int, typer.Option(help="Number of trajectories.")]
Splits = Annotated[
    str, typer.Option(help="Counts train,val,test (sum = --trajectories); default 75/10/15 %.")
]
Resolution = Annotated[int, typer.Option(help="Grid points per side of the solved field.")]
Coarsen = Annotated[
    int, typer.Option(help="Store the mean over coarsen x coarsen cells (1: as solved).")
]
Steps = Annotated[
    int, typer.Option(help="Snapshots per trajectory, at t = dt_snapshot, 2 dt_snapshot, ...")
]
DtSnapshot = Annotated[float, typer.Option(help="Time between snapshots.")]
SolverDt = Annotated[float, typer.Option(help="Solver time step (must divide --dt-snapshot).")]
Viscosity = Annotated[float, typer.Option(help="Kinematic viscosity nu.")]
ForcingAmplitude = Annotated[float, typer.Option(help="f = A (sin 2pi(x+y) + cos 2pi(x+y)).")]
Alpha = Annotated[float, typer.Option(help="Initial-condition GRF smoothness alpha.")]
Tau = Annotated[float, typer.Option(help="Initial-condition GRF inverse length scale tau.")]
Seed = Annotated[int, typer.Option(help="Random seed; trajectory i uses the stream (seed, i).")]
BlockSize = Annotated[
    int, typer.Option(help="Trajectories integrated together (part of what fixes the bits).")
]
KeepBits = Annotated[
    int,
    typer.Option(
        help="float32 mantissa bits to store (23: all; 10 keeps 3 digits and halves the file)."
    ),
]
Workers = Annotated[int, typer.Option(help="Parallel processes (one thread each; same bits).")]
Overwrite = Annotated[bool, typer.Option(help="Replace --out if it exists.")]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="No progress output.")]
JsonOut = Annotated[bool, typer.Option("--json", help="Print what was written as JSON on stdout.")]


@app.command()
@user_errors
def simulate(
    out: Out,
    trajectories: Trajectories = 200,
    splits: Splits = None,
    resolution: Resolution = 64,
    coarsen: Coarsen = 4,
    steps: Steps = 50,
    dt_snapshot: DtSnapshot = 1.0,
    solver_dt: SolverDt = 0.01,
    viscosity: Viscosity = 1e-3,
    forcing_amplitude: ForcingAmplitude = 0.1,
    alpha: Alpha = 2.5,
    tau: Tau = 7.0,
    seed: Seed = 0,
    block_size: BlockSize = 4,
    keep_bits: KeepBits = 23,
    workers: Workers = 1,
    overwrite: Overwrite = False,
    quiet: Quiet = False,
    json_out: JsonOut = False,
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
    with counting_bar("simulating", quiet) as bar:
        task = bar.add_task("simulate", total=config.trajectories * config.steps)
        ds = simulate_config(
            config, workers=workers, progress=lambda k: bar.advance(task, k), out=str(out)
        )
    write_dataset(ds, out, overwrite=overwrite)
    summary = _summary(ds, config, out)
    if json_out:
        print_json(summary)
    elif not quiet:
        console.print(f"wrote {out} ({summary['bytes'] / 1e6:.2f} MB)")


def _summary(ds: xr.Dataset, config: SimulationConfig, out: Path) -> dict:
    """What was written (`--json`): path, trajectories, splits, shape, size and the command."""
    return {
        "path": str(out),
        "trajectories": config.trajectories,
        "splits": dict(zip(("train", "val", "test"), config.split_counts(), strict=True)),
        "shape": dict(ds.sizes),
        "bytes": _size(out),
        "command": ds.attrs["command"],
    }


def _size(path: Path) -> int:
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return path.stat().st_size
