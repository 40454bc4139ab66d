"""The `minconv` command-line app: one subcommand per module in `minconv_cli.commands`."""

from __future__ import annotations

import typer

from minconv_cli import __version__
from minconv_cli.commands.convert import convert
from minconv_cli.commands.evaluate import evaluate
from minconv_cli.commands.plot import plot
from minconv_cli.commands.rollout import rollout
from minconv_cli.commands.train import train

app = typer.Typer(
    name="minconv",
    help="Forecast gridded spatiotemporal fields with minimal convolutional RNNs.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"minconv {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: bool = typer.Option(
        False,
        "--version",
        help="Print the version and exit.",
        callback=_version_callback,
        is_eager=True,
    ),
) -> None:
    """Train, roll out, evaluate and convert gridded forecasts (MinConvGRU/LSTM/ExpLSTM, ConvGRU/LSTM)."""


app.command()(train)
app.command()(rollout)
app.command()(evaluate)
app.command()(convert)
app.command()(plot)

if __name__ == "__main__":
    app()
