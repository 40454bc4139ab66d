"""The one exception type whose message is shown to users as-is, and the small checks of names
and periods that every entry point (CLI options, config files, the library) shares."""

from collections.abc import Sequence


class MinconvError(Exception):
    """A problem with the user's input: the message is one line naming the file/option and what is wrong.

    The CLI prints it on stderr without a traceback and exits with code 1. Library code raises it
    (or ValueError for programming-level misuse of the Python API) instead of printing.
    """


def one_line(err: BaseException, limit: int = 300) -> str:
    """An exception's message as one line (its type name when it has none), cut to `limit`."""
    return (" ".join(str(err).split()) or type(err).__name__)[:limit]


def first_line(err: BaseException, limit: int = 200) -> str:
    """An exception's first line (its type name when it has none), cut to `limit`: for messages
    whose later lines are advice or a traceback of someone else's."""
    return (str(err).strip().splitlines() or [type(err).__name__])[0][:limit]


def check_unique(names: Sequence[str], what: str) -> None:
    """Refuse a name given twice in `names` (`what` names the option or key)."""
    twice = [n for i, n in enumerate(names) if n in names[:i]]
    if twice:
        raise MinconvError(f"{what}: {twice[0]!r} is given twice")


def check_apart(a: Sequence[str], b: Sequence[str], what: str) -> None:
    """Refuse a name in both `a` and `b` (e.g. a variable that is also a static)."""
    both = [n for n in a if n in b]
    if both:
        raise MinconvError(f"{what}: {both[0]!r} is given in both")


def check_not_blank(value: str | None, what: str) -> None:
    """Refuse an empty or blank period (an unset shell variable, most likely); None passes."""
    if isinstance(value, str) and not value.strip():
        raise MinconvError(f"{what}: empty; an unset shell variable?")
