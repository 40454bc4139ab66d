"""The one exception type whose message is shown to users as-is."""


class MinconvError(Exception):
    """A problem with the user's input: the message is one line naming the file/option and what is wrong.

    The CLI prints it on stderr without a traceback and exits with code 1. Library code raises it
    (or ValueError for programming-level misuse of the Python API) instead of printing.
    """
