"""The one exception type whose message is shown to users as-is."""


class MinconvError(Exception):
    """A problem with the user's input: the message is one line naming the file/option and what is wrong.

    The CLI prints it on stderr without a traceback and exits with code 1. Library code raises it
    (or ValueError for programming-level misuse of the Python API) instead of printing.
    """


def one_line(err: BaseException, limit: int = 300) -> str:
    """An exception's message as one line (its type name when it has none), cut to `limit`."""
    return (" ".join(str(err).split()) or type(err).__name__)[:limit]
