"""Exit 0 means every output is complete: OS errors are one line, writers lock their output, an
interrupted `--overwrite` keeps the old output, and leftovers of killed runs are cleared.

Full and read-only file systems are real (a tiny or read-only tmpfs, which needs root; those tests
skip without it); file-size limits are real `ulimit -f` limits of a subprocess.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
import xarray as xr
from factories import hold_in_process, latlon_dataset
from forkserver import ForkServer
from test_rollout import make_checkpoint
from typer.testing import CliRunner

from minconv_cli.cli import app
from minconv_cli.core.files import commit, output_lock, recover, sibling

runner = CliRunner()
TINY = ["--epochs", "1", "--width", "4", "--layers", "1", "--context", "4", "--horizon", "2"]


def invoke(*args: object):
    return runner.invoke(app, [str(a) for a in args])


def one_error_line(result) -> str:
    """The command failed with one `error:` line and no traceback; that line."""
    assert result.exit_code != 0, result.output
    assert "Traceback" not in result.output, result.output
    lines = [ln for ln in result.output.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), result.output
    return lines[0]


@pytest.fixture()
def data(tmp_path: Path) -> Path:
    path = tmp_path / "data.nc"
    latlon_dataset(n_time=40).to_netcdf(path)
    return path


@pytest.fixture()
def checkpoint(tmp_path: Path, data: Path) -> Path:
    path = tmp_path / "model.pt"
    make_checkpoint(data, path)
    return path


@pytest.fixture()
def writers_inputs(tmp_path: Path, data: Path, checkpoint: Path) -> tuple[Path, Path, Path]:
    """(a 32x64 data file, an untrained checkpoint for it, a small forecast store of `data`):
    inputs whose outputs are large enough to fill a tiny disk or pass a file-size limit."""
    big = tmp_path / "big.nc"
    latlon_dataset(n_time=200, n_lat=32, n_lon=64).to_netcdf(big)
    store = tmp_path / "fc.zarr"
    assert invoke("rollout", checkpoint, data, "--steps", 2, "--out", store, "-q").exit_code == 0
    big_ckpt = tmp_path / "big.pt"
    make_checkpoint(big, big_ckpt)
    return big, big_ckpt, store


def _long(folder: Path) -> Path:
    """Data long enough for the default training and validation splits of TINY's windows."""
    path = folder / "long.nc"
    if not path.exists():
        latlon_dataset(n_time=80, n_lon=8).to_netcdf(path)
    return path


def _mount(where: Path, options: str) -> Iterator[Path]:
    where.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)], capture_output=True
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.decode().strip()})")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


@pytest.fixture()
def full_disk(tmp_path: Path) -> Iterator[Path]:
    """A real file system with 64 KiB of room."""
    yield from _mount(tmp_path / "full", "size=64k")


@pytest.fixture()
def read_only(tmp_path: Path) -> Iterator[Path]:
    """A real read-only file system."""
    yield from _mount(tmp_path / "ro", "ro,size=1m")


# --------------------------------------------------------------------------- OS errors


def test_a_read_only_output_folder_is_one_line_for_every_command(
    tmp_path, data, checkpoint, read_only
):
    store = tmp_path / "fc.zarr"
    assert invoke("rollout", checkpoint, data, "--steps", 2, "--out", store, "-q").exit_code == 0
    cases = [
        ("convert", data, read_only / "x.zarr"),
        ("convert", data, read_only / "x.nc"),
        ("rollout", checkpoint, data, "--steps", 2, "--out", read_only / "fc.zarr"),
        ("evaluate", store, data, "--out", read_only / "scores"),
        ("train", data, "--out", read_only / "run", *TINY),
    ]
    for args in cases:
        line = one_error_line(invoke(*args, "-q"))
        assert "read-only file system" in line, line
        assert str(read_only) in line, line
    assert list(read_only.iterdir()) == []


def test_a_full_disk_is_one_line_naming_the_output_and_no_space(
    tmp_path, data, writers_inputs, full_disk
):
    big, big_ckpt, store = writers_inputs
    cases = [
        ("convert", big, full_disk / "x.nc"),
        ("convert", big, full_disk / "x.zarr"),
        ("rollout", big_ckpt, big, "--steps", 5, "--out", full_disk / "fc.zarr"),
        ("evaluate", store, data, "--out", full_disk / "scores"),
        ("train", _long(tmp_path), "--out", full_disk / "run", *TINY, "--width", "64"),
    ]
    for args in cases:
        line = one_error_line(invoke(*args, "-q"))
        assert "no space left on device" in line, line
        assert str(full_disk) in line, line
        assert [p.name for p in full_disk.iterdir() if p.name.startswith(".")] == []


def test_a_file_size_limit_is_one_line_not_a_traceback(tmp_path, data, writers_inputs):
    big, big_ckpt, store = writers_inputs
    limited = tmp_path / "limited"
    cases = {
        limited / "copy.nc": ("convert", big, limited / "copy.nc"),
        limited / "fc.zarr": ("rollout", big_ckpt, big, "--steps", 8, "--out", limited / "fc.zarr"),
        limited / "scores": ("evaluate", store, data, "--out", limited / "scores"),
        limited / "run": ("train", _long(tmp_path), "--out", limited / "run", *TINY, "--width", 64),
    }
    server = ForkServer()
    try:
        for out, args in cases.items():
            log = tmp_path / "log.txt"
            done = server.run([*args, "-q"], tmp_path, log=log, fsize=20_000)
            err = log.read_text()
            assert done["code"] == 1 and "Traceback" not in err, err
            assert "file too large" in err and str(out) in err, err
            assert [p.name for p in limited.glob(".*")] in ([], [f".{out.name}.minconv-lock"])
    finally:
        server.close()


def test_a_checkpoint_that_is_not_one_never_suggests_an_unsafe_load(tmp_path, data):
    pickled = tmp_path / "objects.pt"
    torch.save({"f": print}, pickled)
    text = tmp_path / "notes.pt"
    text.write_text("not a checkpoint\n")
    for path in (pickled, text):
        line = one_error_line(invoke("rollout", path, data, "--steps", 2, "--out", "x.zarr"))
        assert str(path) in line and "not a readable minconv checkpoint" in line, line
        assert "weights_only" not in line and "False" not in line, line
    assert "pickled Python objects" in one_error_line(
        invoke("rollout", pickled, data, "--steps", 2, "--out", "x.zarr")
    )


# --------------------------------------------------------------------------- locks


@pytest.fixture()
def holder(tmp_path: Path) -> Iterator[callable]:
    """Starts a real process holding the writer's lock of a path until it is killed."""
    procs: list[subprocess.Popen] = []

    def hold(path: Path) -> subprocess.Popen:
        code = (
            "import sys, time; from pathlib import Path; from minconv_cli.core.files import output_lock\n"
            "with output_lock(Path(sys.argv[1]), 'minconv rollout (the other one)'):\n"
            "    print('held', flush=True); time.sleep(600)\n"
        )
        procs.append(hold_in_process(code, str(path)))
        return procs[-1]

    yield hold
    for proc in procs:
        proc.kill()
        proc.wait()


def test_a_second_writer_is_refused_naming_the_holder(tmp_path, data, checkpoint, holder):
    cases = {
        tmp_path / "fc.zarr": ("rollout", checkpoint, data, "--steps", 2, "--out"),
        tmp_path / "copy.zarr": ("convert", data),
        tmp_path / "run": ("train", data, *TINY, "--out"),
    }
    for out, args in cases.items():
        proc = holder(out)
        line = one_error_line(invoke(*args, out, "-q"))
        assert str(out) in line and f"pid {proc.pid}" in line, line
        assert "minconv rollout (the other one)" in line
        assert not out.exists()


def test_a_lock_left_by_a_killed_writer_is_taken_over(tmp_path, data, checkpoint, holder):
    out = tmp_path / "fc.zarr"
    proc = holder(out)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert sibling(out, "minconv-lock", unique=False).exists()  # the stale lock file is there
    assert invoke("rollout", checkpoint, data, "--steps", 2, "--out", out, "-q").exit_code == 0
    assert not sibling(out, "minconv-lock", unique=False).exists()


def test_two_rollouts_into_one_store_at_once_never_both_write(tmp_path, data, checkpoint):
    out = tmp_path / "fc.zarr"
    args = [sys.executable, "-m", "minconv_cli", "rollout", str(checkpoint), str(data)]
    args += ["--steps", "3", "--out", str(out), "--overwrite", "-q", "--batch-size", "1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen(args, stderr=subprocess.PIPE, text=True, env=env) for _ in range(2)]
    results = [(p.wait(), p.stderr.read()) for p in procs]
    for code, err in results:
        assert "Traceback" not in err, err
        assert code == 0 or "another minconv command is writing it" in err, err
    assert any(code == 0 for code, _ in results)
    with xr.open_zarr(out) as ds:
        assert bool(ds["minconv_done"].all()) and ds["z"].notnull().all()


# --------------------------------------------------------------------------- interrupted work


def _spawn(*args: object, stderr: int | None = subprocess.PIPE) -> subprocess.Popen:
    """`minconv ARGS` in a real process (one thread), its stderr as text."""
    return subprocess.Popen(
        [sys.executable, "-m", "minconv_cli", *map(str, args)],
        stderr=stderr,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )


def _kill_when(proc: subprocess.Popen, ready, timeout: float = 120) -> None:
    start = time.monotonic()
    while not ready():
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        assert time.monotonic() - start < timeout
        time.sleep(0.01)
    proc.kill()
    proc.wait()


def test_a_killed_rollout_overwrite_is_continued_by_resume_and_then_replaces_the_old(
    tmp_path, data, checkpoint
):
    out = tmp_path / "fc.zarr"
    assert invoke("rollout", checkpoint, data, "--steps", 2, "--out", out, "-q").exit_code == 0
    old = xr.open_zarr(out).load()
    partial = sibling(out, "minconv-partial", unique=False)
    args = ["rollout", checkpoint, data, "--steps", 4, "--out", out, "-q", "--batch-size", 1]
    proc = _spawn(*args, "--overwrite")

    def some_written() -> bool:
        try:
            return int(xr.open_zarr(partial)["minconv_done"].sum()) >= 3
        except Exception:
            return False

    _kill_when(proc, some_written)
    xr.testing.assert_identical(xr.open_zarr(out).load(), old)  # the old store is untouched
    result = invoke(*args, "--resume", "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["skipped"] >= 3  # the killed run's sequences were kept
    with xr.open_zarr(out) as ds:
        assert ds.sizes["prediction_timedelta"] == 4 and bool(ds["minconv_done"].all())
    assert not partial.exists()


def test_a_killed_convert_leaves_nothing_that_the_next_run_keeps(tmp_path):
    src = tmp_path / "big.nc"
    latlon_dataset(n_time=400, n_lat=16, n_lon=32).to_netcdf(src)
    out = tmp_path / "copy.zarr"
    proc = _spawn("convert", src, out, "-q", "--chunks", "time=1", stderr=None)

    def temp_written() -> bool:
        temps = list(tmp_path.glob(".copy.zarr.tmp-*"))
        return bool(temps) and len(list(temps[0].rglob("*"))) > 50

    _kill_when(proc, temp_written)
    assert list(tmp_path.glob(".copy.zarr.tmp-*"))  # what the killed run left
    assert invoke("convert", src, out, "-q").exit_code == 0
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_a_store_removed_while_rollout_writes_is_an_error_not_exit_0(tmp_path, data, checkpoint):
    out = tmp_path / "fc.zarr"
    args = ["rollout", str(checkpoint), str(data), "--steps", "4", "--out", str(out)]
    proc = _spawn(*args, "-q", "--batch-size", "1")
    start = time.monotonic()
    while not (out / "z").exists():
        assert proc.poll() is None, proc.stderr.read()
        assert time.monotonic() - start < 120
        time.sleep(0.005)
    shutil.rmtree(out, ignore_errors=True)  # races with the writer: part is enough
    code, err = proc.wait(), proc.stderr.read()
    assert code == 1, err
    assert "Traceback" not in err and str(out) in err, err


def test_train_overwrite_interrupted_by_ctrl_c_keeps_the_old_run_and_resume_completes_it(
    tmp_path,
):
    data = _long(tmp_path)
    out = tmp_path / "run"
    base = ["train", data, "--out", out, *TINY, "--batch-size", "2", "--precision", "fp32"]
    assert invoke(*base, "--seed", "0", "-q").exit_code == 0
    (out / "forecast.zarr").mkdir()
    old_model = (out / "model.pt").read_bytes()
    proc = _spawn(*base, "--seed", "1", "--overwrite")
    partial = sibling(out, "minconv-partial", unique=False)
    start = time.monotonic()
    while not (partial / "config.yaml").exists():
        assert proc.poll() is None, proc.stderr.read()
        assert time.monotonic() - start < 120
        time.sleep(0.01)
    proc.send_signal(signal.SIGINT)
    code, err = proc.wait(), proc.stderr.read()
    assert code == 130, err
    assert "the old run in" in err and "--resume" in err, err
    assert (out / "model.pt").read_bytes() == old_model
    result = invoke(*base, "--seed", "1", "--resume", "-q", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["checkpoint"] == str(out / "model.pt")
    assert (out / "model.pt").read_bytes() != old_model
    assert (out / "forecast.zarr").is_dir() and not partial.exists()


# --------------------------------------------------------------------------- the swap itself


def test_commit_swaps_a_directory_in_and_keeps_files_that_are_not_the_outputs(tmp_path):
    out, new = tmp_path / "run", tmp_path / "new"
    out.mkdir()
    (out / "model.pt").write_text("old")
    (out / "mine.txt").write_text("user")
    new.mkdir()
    (new / "model.pt").write_text("new")
    commit(new, out, carry=lambda name: name != "model.pt")
    assert (out / "model.pt").read_text() == "new" and (out / "mine.txt").read_text() == "user"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


@pytest.mark.parametrize("left", ["minconv-swap", "minconv-old"])
def test_recover_puts_back_an_output_that_a_kill_left_between_two_renames(tmp_path, left):
    """Where the file system has no atomic exchange, a commit is two renames; a kill between
    them leaves no output at its path, and the next run puts the one beside it back."""
    out = tmp_path / "fc.zarr"
    beside = sibling(out, left, unique=False)
    beside.mkdir()
    (beside / "zarr.json").write_text("{}")
    recover(out)
    assert (out / "zarr.json").read_text() == "{}" and not beside.exists()


def test_recover_keeps_temporary_files_of_running_writers(tmp_path):
    out = tmp_path / "fc.zarr"
    mine = sibling(out)  # made by this (running) process
    mine.mkdir()
    dead = tmp_path / ".fc.zarr.tmp-999999999-abcdef12"
    dead.mkdir()
    assert recover(out) == [dead]
    assert mine.exists() and not dead.exists()


def test_output_lock_is_released_and_its_file_removed(tmp_path):
    out = tmp_path / "x.zarr"
    with output_lock(out, "test"):
        info = json.loads(sibling(out, "minconv-lock", unique=False).read_text())
        assert info["pid"] == os.getpid() and info["command"] == "test"
    assert not sibling(out, "minconv-lock", unique=False).exists()
    with output_lock(out):  # and can be taken again
        pass
    assert np.all([not p.name.startswith(".") for p in tmp_path.iterdir()])


def test_convert_refuses_a_zarr_source_with_a_missing_chunk_unless_allowed(tmp_path, data):
    src = tmp_path / "src.zarr"
    assert invoke("convert", data, src, "--chunks", "time=1", "-q").exit_code == 0
    shutil.rmtree(src / "z" / "c" / "5")  # the chunk(s) of 2000-01-06 (zarr v3 layout)
    line = one_error_line(invoke("convert", src, tmp_path / "out.nc", "-q"))
    assert str(src) in line and "'z'" in line and "2000-01-06" in line, line
    assert "--allow-missing-chunks" in line and not (tmp_path / "out.nc").exists()
    allowed = invoke("convert", src, tmp_path / "out.nc", "-q", "--allow-missing-chunks")
    assert allowed.exit_code == 0, allowed.output
    assert bool(xr.open_dataset(tmp_path / "out.nc")["z"].isel(time=5).isnull().all())


def test_a_convert_whose_output_is_removed_while_writing_is_an_error_not_exit_0(tmp_path):
    src = tmp_path / "big.nc"
    latlon_dataset(n_time=600, n_lat=16, n_lon=32).to_netcdf(src)
    out = tmp_path / "copy.zarr"
    proc = _spawn("convert", src, out, "-q", "--chunks", "time=1")
    start = time.monotonic()
    while True:
        temps = list(tmp_path.glob(".copy.zarr.tmp-*"))
        if temps and len(list(temps[0].rglob("*"))) > 100:
            shutil.rmtree(temps[0], ignore_errors=True)  # races with the writer: part is enough
            break
        assert proc.poll() is None, proc.stderr.read()
        assert time.monotonic() - start < 120
        time.sleep(0.005)
    code, err = proc.wait(), proc.stderr.read()
    assert code == 1, err
    assert "Traceback" not in err and str(out) in err, err
    assert not out.exists()


# --------------------------------------------------------------------------- plot


def test_plot_on_a_read_only_or_full_disk_is_one_line_naming_the_image(
    tmp_path, data, checkpoint, read_only, full_disk
):
    store = tmp_path / "fc.zarr"
    assert invoke("rollout", checkpoint, data, "--steps", 3, "--out", store, "-q").exit_code == 0
    (full_disk / "filler").write_bytes(bytes(56_000))  # leaves less than one image's room
    for out, cause in ((read_only / "m.png", "read-only"), (full_disk / "m.gif", "no space left")):
        line = one_error_line(invoke("plot", store, data, "--out", out, "-q"))
        assert cause in line and str(out.parent) in line, line
        assert [p.name for p in out.parent.iterdir() if p.name != "filler"] == []


def test_plot_keeps_the_old_image_until_the_new_one_reads_back_and_clears_killed_leftovers(
    tmp_path, data, checkpoint
):
    store, image = tmp_path / "fc.zarr", tmp_path / "m.png"
    assert invoke("rollout", checkpoint, data, "--steps", 3, "--out", store, "-q").exit_code == 0
    image.write_bytes(b"old")
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True
    )
    leftover = tmp_path / f".m.png.tmp-{int(dead.stdout)}-deadbeef"  # a killed plot's sibling
    leftover.write_bytes(b"half")
    bad = invoke("plot", store, data, "--out", image, "--init", "1900-01-01", "--overwrite")
    assert bad.exit_code == 1 and image.read_bytes() == b"old"
    assert invoke("plot", store, data, "--out", image, "--overwrite", "-q").exit_code == 0
    assert image.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".m.png")) == []
