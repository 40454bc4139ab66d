"""`minconv train --transform VAR=SPEC`: the option and its parsing into `data.transforms` (a
module of its own so that train.py stays small)."""

from __future__ import annotations

from typing import Annotated

import typer

Transforms = Annotated[
    list[str] | None,
    typer.Option(
        "--transform",
        help="Train VAR in a transformed space, VAR=SPEC (repeatable): dbr (10 log10 R; "
        "dbr:threshold=0.1,floor=-15 are the defaults), log1p or none. Forecasts are inverted "
        "back to the variable's units.",
    ),
]


def transform_options(items: list[str] | None) -> dict[str, dict[str, str] | None]:
    """The `data.transforms` override the options give ({variable: spec}; None: not given)."""
    from minconv_cli.data.transforms import parse_assignments

    return {"data.transforms": parse_assignments(items, "--transform")}
