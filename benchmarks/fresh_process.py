"""Running a benchmark case in a fresh Python process: for process-wide settings (threads, the
allocator, another tree's `minconv_cli`) and memory that earlier cases did not touch."""

from __future__ import annotations

import json
import os
import subprocess
import sys


def run_json(code: str, threads: int, env: dict[str, str] | None = None) -> dict:
    """Run `code` with `threads` OpenMP threads in `env` (default: this environment) and return the
    JSON object it prints last."""
    env = {**(os.environ if env is None else env), "OMP_NUM_THREADS": str(threads)}
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True
    )
    return json.loads(done.stdout.strip().splitlines()[-1])
