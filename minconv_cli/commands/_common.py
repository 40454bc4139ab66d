"""What every command shares: the stderr console, JSON on stdout, and turning errors into one line."""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape

from minconv_cli.errors import MinconvError

F = TypeVar("F", bound=Callable[..., Any])

# Humans read stderr (progress, tables, errors); scripts read stdout (--json).
console = Console(stderr=True, highlight=False)


def fail(message: str, code: int = 1) -> typer.Exit:
    """Print one error line on stderr and return the Exit to raise."""
    console.print(f"[bold red]error:[/] {escape(message)}", soft_wrap=True, markup=True)
    return typer.Exit(code)


def user_errors(func: F) -> F:
    """Run a command so that user-facing errors become one stderr line and a non-zero exit code."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except (typer.Exit, typer.Abort):
            raise
        except MinconvError as err:
            raise fail(str(err)) from None
        except (ValueError, FileNotFoundError, FileExistsError, PermissionError) as err:
            raise fail(str(err)) from None
        except KeyboardInterrupt:
            raise fail("interrupted", code=130) from None

    return wrapper  # type: ignore[return-value]


def print_json(obj: Any) -> None:
    """Write a machine-readable result on stdout (one JSON document)."""
    sys.stdout.write(json.dumps(obj, indent=2, default=_json_default) + "\n")
    sys.stdout.flush()


def _json_default(obj: Any) -> Any:
    import numpy as np

    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    return str(obj)
