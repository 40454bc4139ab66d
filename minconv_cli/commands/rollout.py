"""`minconv rollout`: not available yet."""

from minconv_cli.commands._common import fail


def rollout() -> None:
    """(not available yet) This command is being built."""
    raise fail("'minconv rollout' is not available yet in this version")
