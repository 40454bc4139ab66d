"""`minconv convert`: not available yet."""

from minconv_cli.commands._common import fail


def convert() -> None:
    """(not available yet) This command is being built."""
    raise fail("'minconv convert' is not available yet in this version")
