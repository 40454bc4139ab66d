"""What every command shares; it lives in `core.console` so that `python -m minconv_cli.simulate`
(a layer below the commands) shares it too."""

from minconv_cli.core.console import (
    console,
    counting_bar,
    fail,
    os_error_line,
    print_json,
    progress_bar,
    rich_progress,
    user_errors,
)

__all__ = [
    "console",
    "counting_bar",
    "fail",
    "os_error_line",
    "print_json",
    "progress_bar",
    "rich_progress",
    "user_errors",
]
