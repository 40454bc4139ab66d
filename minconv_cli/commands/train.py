"""`minconv train`: not available yet."""

from minconv_cli.commands._common import fail


def train() -> None:
    """(not available yet) This command is being built."""
    raise fail("'minconv train' is not available yet in this version")
