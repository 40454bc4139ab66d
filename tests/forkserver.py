"""Runs `minconv` commands in forked children of one process that imported everything once, so
that tests can kill real command processes (SIGKILL) at chosen moments without paying torch's
and xarray's imports for each of them.

Run as `python tests/forkserver.py`; it reads one JSON request a line on stdin,
`{"args": [...], "cwd": DIR, "log": FILE, "kill_after": SECONDS or null, "fsize": BYTES}`, runs `minconv ARGS`
in a child, kills it with SIGKILL once `kill_after` seconds have passed (if it still runs), and
answers `{"code": EXIT_CODE, "killed": BOOL, "seconds": FLOAT}` (a killed child's code is -9).
The parent never runs a torch operation, so each child starts torch's thread pools afresh.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path


def _child(request: dict) -> None:
    os.chdir(request["cwd"])
    if request.get("fsize"):  # a real file-size limit (ulimit -f) for this command
        import resource

        resource.setrlimit(resource.RLIMIT_FSIZE, (request["fsize"], request["fsize"]))
    fd = os.open(request.get("log") or os.devnull, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    code = 0
    try:
        from minconv_cli.cli import app

        app(args=request["args"], prog_name="minconv")
    except SystemExit as stop:
        code = stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
    except BaseException:  # noqa: BLE001 - a traceback is a failure the test must see
        import traceback

        traceback.print_exc()
        code = 99
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _run(request: dict) -> dict:
    started = time.monotonic()
    pid = os.fork()
    if pid == 0:
        _child(request)
    killed, deadline = False, request.get("kill_after")
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if deadline is not None and time.monotonic() - started >= deadline:
            os.kill(pid, signal.SIGKILL)
            killed = True
            _, status = os.waitpid(pid, 0)
            break
        time.sleep(0.002)
    return {
        "code": os.waitstatus_to_exitcode(status),
        "killed": killed,
        "seconds": time.monotonic() - started,
    }


def main() -> None:
    import dask.array  # noqa: F401
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot  # noqa: F401
    import netCDF4  # noqa: F401
    import torch  # noqa: F401
    import xarray  # noqa: F401
    import zarr  # noqa: F401
    from xarray.namedarray.parallelcompat import list_chunkmanagers

    list_chunkmanagers()  # xarray finds its chunk managers (dask) once, not in every child

    import minconv_cli.cli  # noqa: F401
    import minconv_cli.data.convert  # noqa: F401
    import minconv_cli.evaluate  # noqa: F401
    import minconv_cli.rollout  # noqa: F401
    import minconv_cli.training  # noqa: F401

    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        if line.strip():
            print(json.dumps(_run(json.loads(line))), flush=True)


class ForkServer:
    """The test side: start the server, send requests, read answers."""

    def __init__(self) -> None:
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        self.proc = subprocess.Popen(
            [sys.executable, str(Path(__file__))],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        assert json.loads(self.proc.stdout.readline()) == {"ready": True}

    def run(
        self,
        args: list,
        cwd: Path,
        kill_after: float | None = None,
        log: Path | None = None,
        fsize: int | None = None,
    ) -> dict:
        request = {"args": [str(a) for a in args], "cwd": str(cwd), "kill_after": kill_after}
        request.update(log=str(log) if log else None, fsize=fsize)
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        return json.loads(self.proc.stdout.readline())

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=30)


if __name__ == "__main__":
    main()
