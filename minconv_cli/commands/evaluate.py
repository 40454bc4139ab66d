"""`minconv evaluate`: not available yet."""

from minconv_cli.commands._common import fail


def evaluate() -> None:
    """(not available yet) This command is being built."""
    raise fail("'minconv evaluate' is not available yet in this version")
