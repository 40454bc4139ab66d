"""What every command-line entry point shares (`minconv` and `python -m minconv_cli.simulate`):
the stderr console, JSON on stdout, turning errors into one line, and progress bars."""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    TextColumn,
    TimeRemainingColumn,
)

from minconv_cli.core.errors import MinconvError

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
        except ValueError as err:
            raise fail(str(err)) from None
        except OSError as err:  # read-only, disk full, file-size limit, a folder removed, ...
            raise fail(os_error_line(err)) from None
        except KeyboardInterrupt:
            raise fail("interrupted", code=130) from None

    return wrapper  # type: ignore[return-value]


def os_error_line(err: OSError) -> str:
    """`PATH: cause` for an OS error that no writer turned into its own line."""
    from minconv_cli.core.files import os_cause

    cause = os_cause(err) or " ".join(str(err).split())
    return f"{err.filename}: {cause}" if err.filename else cause


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


def rich_progress(*columns: str | ProgressColumn, **options: Any) -> Progress:
    """A rich `Progress` of `columns` on the stderr console: every command's bars are built here."""
    return Progress(*columns, console=console, **options)


def counting_bar(label: str, quiet: bool) -> Progress:
    """`label [bar] done/total time-left`, or nothing when `quiet`."""
    return rich_progress(
        TextColumn(label), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(), disable=quiet
    )


@contextmanager
def progress_bar(label: str, quiet: bool) -> Iterator[Callable[[int, int], None]]:
    """A `report(done, total)` callback driving a rich bar that appears at the first report,
    i.e. once the inputs are checked and the amount of work is known."""
    bar = counting_bar(label, quiet)
    task: list = []

    def report(done: int, total: int) -> None:
        if not task:
            bar.start()
            task.append(bar.add_task(label, total=total))
        bar.update(task[0], completed=done, total=total)

    try:
        yield report
    finally:
        bar.stop()
