"""How much memory the data may use: a configured size, or a share of what the machine has free."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from minconv_cli.core.errors import MinconvError

AUTO_SHARE = 0.5  # of the available memory, when no limit is configured
IN_MEMORY_FACTOR = 5.0  # peak per float32 byte: values, frames, normalising temporaries, mask
_UNITS = {"": 1, "b": 1, "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*([kmgt]?)(?:i?b)?\s*$", re.IGNORECASE)


def parse_size(value: Any, what: str = "data.memory_limit") -> int:
    """Bytes from a number of bytes or a string like `512MB`, `2GiB`, `1.5G`; one-line error otherwise."""
    if isinstance(value, bool):
        raise MinconvError(f"{what}: expected a size like 2GB or a number of bytes, got {value!r}")
    if isinstance(value, (int, float)):
        size = float(value)
    else:
        m = _SIZE.match(str(value))
        if not m:
            raise MinconvError(
                f"{what}: expected a size like 2GB, 512MB or a number of bytes, got {value!r}"
            )
        size = float(m.group(1)) * _UNITS[m.group(2).lower()]
    if size < 0:
        raise MinconvError(f"{what}: must be 0 or more, got {value!r}")
    return int(size)


def _cgroup_free() -> int | None:
    """Room left under this container's cgroup memory limit (v2 or v1), None when unlimited."""
    for limit_file, usage_file in (
        ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
        (
            "/sys/fs/cgroup/memory/memory.limit_in_bytes",
            "/sys/fs/cgroup/memory/memory.usage_in_bytes",
        ),
    ):
        try:
            limit = Path(limit_file).read_text().strip()
            usage = int(Path(usage_file).read_text().strip())
        except (OSError, ValueError):
            continue
        if limit == "max" or int(limit) >= 2**60:
            return None
        return max(0, int(limit) - usage)
    return None


def available_memory() -> int:
    """Bytes this process can still use: the system's available memory, capped by a cgroup limit."""
    import psutil

    free = int(psutil.virtual_memory().available)
    room = _cgroup_free()
    return min(free, room) if room is not None else free


def memory_budget(limit: Any = None) -> int:
    """The data's memory budget in bytes: `limit` (a size) or, when None, half the available memory."""
    if limit is None:
        return int(AUTO_SHARE * available_memory())
    return parse_size(limit)


def fits_in_memory(float32_bytes: int, budget: int) -> bool:
    """Whether data of this many float32 bytes can be loaded and windowed within `budget`."""
    return IN_MEMORY_FACTOR * float32_bytes <= budget
