"""One rollout over several processes: torchrun ranks and `--shard I/N` job-array tasks write one
store that is, bit for bit, the store one process writes; killed parts resume, with another
number of processes too; bad shard specs, foreign stores and competing writers are refused."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
import zarr
from factories import hold_in_process, latlon_dataset, trajectory_dataset
from test_rollout import make_checkpoint, one_error_line
from typer.testing import CliRunner

from minconv_cli.cli import app
from minconv_cli.core.files import sibling

runner = CliRunner()
STEPS = ["--steps", "3", "--batch-size", "2"]
ENSEMBLE = ["--members", "3", "--perturbation", "0.2", "--step-noise", "0.5", "--seed", "4"]
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone"]


@pytest.fixture(scope="module")
def made(tmp_path_factory) -> dict[str, Path]:
    """Dated data and trajectory data (a sample dim), each with an untrained checkpoint."""
    tmp = tmp_path_factory.mktemp("shards")
    latlon_dataset(n_time=24, n_lat=4, n_lon=8, freq="6h").to_netcdf(tmp / "ll.nc")
    make_checkpoint(tmp / "ll.nc", tmp / "ll.pt")
    make_checkpoint(tmp / "ll.nc", tmp / "other.pt", model="convgru")
    trajectory_dataset(n_traj=5, n_time=12, n=8).to_netcdf(tmp / "traj.nc")
    make_checkpoint(tmp / "traj.nc", tmp / "traj.pt")
    return {"tmp": tmp, "ll": tmp / "ll.nc", "traj": tmp / "traj.nc"}


@pytest.fixture()
def one_thread(monkeypatch):
    """One torch thread in and out of process: the same numerics for one process and for ranks."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    yield
    torch.set_num_threads(threads)


def rollout(ckpt: Path, data: Path, out: Path, *args: str):
    return runner.invoke(app, ["rollout", str(ckpt), str(data), "--out", str(out), *STEPS, *args])


def assert_same_store(a: Path, b: Path) -> None:
    """Identical data, coordinates and attributes but the creation time and command line."""
    ds_a, ds_b = xr.open_zarr(a).load(), xr.open_zarr(b).load()
    for ds in (ds_a, ds_b):
        ds.attrs.pop("created")
        ds.attrs.pop("command")
    assert ds_a["minconv_done"].values.all()
    xr.testing.assert_identical(ds_a, ds_b)


def test_shards_of_a_job_array_write_the_one_process_store(made, tmp_path, one_thread):
    for data, extra in ((made["ll"], ENSEMBLE), (made["traj"], ["--init-times", "5"])):
        ckpt = data.with_suffix(".pt")
        single, split = tmp_path / f"one-{data.stem}.zarr", tmp_path / f"two-{data.stem}.zarr"
        assert rollout(ckpt, data, single, *extra, "-q").exit_code == 0
        first = rollout(ckpt, data, split, *extra, "--shard", "1/2", "--json")
        summary = json.loads(first.stdout)
        assert summary["shard"] == "1/2" and not summary["complete"] and summary["written"] > 0
        assert "--resume" not in first.output
        second = json.loads(rollout(ckpt, data, split, *extra, "--shard", "0/2", "--json").stdout)
        assert second["complete"] and second["frames_per_second"] > 0
        assert second["bytes_per_second"] > 0
        assert_same_store(single, split)
        assert not list(tmp_path.glob(".two-*"))  # no lock or temporary left beside the store


def torchrun(n: int, *args: str, **kw) -> subprocess.Popen:
    return subprocess.Popen(
        [*TORCHRUN, f"--nproc_per_node={n}", "-m", "minconv_cli", "rollout", *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        **kw,
    )


def test_torchrun_ranks_write_the_one_process_store(made, tmp_path, one_thread):
    cases = [(2, made["ll"], ENSEMBLE), (3, made["traj"], ["--init-times", "5"])]
    for n, data, extra in cases:
        ckpt = data.with_suffix(".pt")
        single, ranked = tmp_path / f"one-{n}.zarr", tmp_path / f"ranks-{n}.zarr"
        assert rollout(ckpt, data, single, *extra, "-q").exit_code == 0
        proc = torchrun(n, ckpt, data, "--out", ranked, *STEPS, *extra, "--json")
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-3000:]
        summary = json.loads(out)  # rank 0 alone prints, for all ranks
        assert summary["shard"] == f"0/{n}" and summary["complete"]
        assert summary["written"] == xr.open_zarr(single)["minconv_done"].size
        assert_same_store(single, ranked)


def wait_for_some_done(out: Path, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if (out / ".zmetadata").exists():
            with np.errstate(all="ignore"):
                done = zarr.open_group(str(out), mode="r")["minconv_done"][:]
            if done.any():
                return
        time.sleep(0.05)
    raise AssertionError(f"no sequence was written: {proc.stderr.read()[-2000:]}")


def test_a_killed_rank_resumes_with_another_number_of_processes(made, tmp_path, one_thread):
    data, ckpt = made["ll"], made["tmp"] / "ll.pt"
    killed, clean = tmp_path / "killed.zarr", tmp_path / "clean.zarr"
    args = ["--steps", "30", "--batch-size", "1", *ENSEMBLE]
    proc = torchrun(2, ckpt, data, "--out", killed, *args, "-q", start_new_session=True)
    try:
        wait_for_some_done(killed, proc)
        ranks = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True)
        os.kill(int(ranks.stdout.split()[-1]), signal.SIGKILL)  # one rank dies
        proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode != 0
    done = zarr.open_group(str(killed), mode="r")["minconv_done"][:]
    assert 0 < done.sum() < done.size
    for i in (2, 0, 1):  # three job-array tasks finish what two ranks began
        result = runner.invoke(
            app,
            [
                "rollout",
                str(ckpt),
                str(data),
                "--out",
                str(killed),
                *args,
                "--resume",
                "--shard",
                f"{i}/3",
                "-q",
            ],
        )
        assert result.exit_code == 0, result.output
    assert (
        runner.invoke(
            app, ["rollout", str(ckpt), str(data), "--out", str(clean), *args, "-q"]
        ).exit_code
        == 0
    )
    assert_same_store(clean, killed)


def test_a_killed_shard_is_rerun_with_resume(made, tmp_path, one_thread):
    data, ckpt = made["traj"], made["tmp"] / "traj.pt"
    out, clean = tmp_path / "fc.zarr", tmp_path / "clean.zarr"
    args = ["--steps", "30", "--batch-size", "1", "--init-times", "5/11"]
    assert rollout(ckpt, data, out, *args, "--shard", "0/2", "-q").exit_code == 0
    cli = [sys.executable, "-m", "minconv_cli", "rollout", str(ckpt), str(data)]
    proc = subprocess.Popen(
        [*cli, "--out", str(out), *args, "--shard", "1/2", "-q"],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120
        before = zarr.open_group(str(out), mode="r")["minconv_done"][:].sum()
        while time.monotonic() < deadline and proc.poll() is None:
            if zarr.open_group(str(out), mode="r")["minconv_done"][:].sum() > before:
                break
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not zarr.open_group(str(out), mode="r")["minconv_done"][:].all()
    resumed = json.loads(
        rollout(ckpt, data, out, *args, "--shard", "1/2", "--resume", "--json").stdout
    )
    assert resumed["complete"] and resumed["skipped"] > 0
    assert rollout(ckpt, data, clean, *args, "-q").exit_code == 0
    assert_same_store(clean, out)


@pytest.mark.parametrize(
    ("spec", "words"),
    [
        ("2/2", "out of range, I must be 0 to 1"),
        ("1/0", "N must be at least 1"),
        ("half", "expected I/N"),
    ],
)
def test_a_bad_shard_spec_is_one_line_and_writes_nothing(made, tmp_path, spec, words):
    out = tmp_path / "fc.zarr"
    line = one_error_line(rollout(made["tmp"] / "ll.pt", made["ll"], out, "--shard", spec))
    assert "--shard" in line and words in line
    assert not out.exists() and not list(tmp_path.iterdir())


def test_a_shard_refuses_a_store_made_with_another_model_untouched(made, tmp_path):
    out = tmp_path / "fc.zarr"
    assert rollout(made["tmp"] / "other.pt", made["ll"], out, "--shard", "0/2", "-q").exit_code == 0
    before = sorted(p.name for p in out.rglob("*"))
    line = one_error_line(rollout(made["tmp"] / "ll.pt", made["ll"], out, "--shard", "1/2"))
    assert str(out) in line and "other settings" in line and "checkpoint_sha256" in line
    assert sorted(p.name for p in out.rglob("*")) == before


HOLD = """
import sys, time
from pathlib import Path
from minconv_cli.rollout.shard_store import store_access
from minconv_cli.rollout.shards import Shard
shard = None if sys.argv[2] == "-" else Shard(*map(int, sys.argv[2].split("/")))
with store_access(Path(sys.argv[1]), "minconv rollout (the other one)", shard):
    print("held", flush=True); time.sleep(600)
"""


@pytest.fixture()
def holder():
    """Starts a real process holding a store's locks as a plain writer ('-') or a shard ('I/N')."""
    procs: list[subprocess.Popen] = []

    def hold(out: Path, shard: str) -> subprocess.Popen:
        procs.append(hold_in_process(HOLD, str(out), shard))
        return procs[-1]

    yield hold
    for proc in procs:
        proc.kill()
        proc.wait()


def test_competing_writers_are_refused_and_cooperating_shards_are_not(made, tmp_path, holder):
    ckpt, data = made["tmp"] / "ll.pt", made["ll"]
    out = tmp_path / "fc.zarr"
    proc = holder(out, "0/2")
    line = one_error_line(rollout(ckpt, data, out))  # a plain writer while a shard writes
    assert f"pid {proc.pid}" in line and "--shard 0/2" in line
    line = one_error_line(rollout(ckpt, data, out, "--shard", "0/2"))  # the same shard twice
    assert "another minconv command is writing it" in line and "--shard 0/2" in line
    line = one_error_line(rollout(ckpt, data, out, "--shard", "0/3"))  # another split
    assert "another split (--shard I/2)" in line
    assert not out.exists()
    shard = rollout(ckpt, data, out, "--shard", "1/2", "--json")  # its sibling runs
    assert shard.exit_code == 0 and not json.loads(shard.stdout)["complete"]
    other = tmp_path / "plain.zarr"
    holder(other, "-")
    assert "pid" in one_error_line(rollout(ckpt, data, other, "--shard", "0/2"))
    assert not other.exists()
    assert sibling(out, "minconv-lock", unique=False).exists()  # the live holder's lock stays


def test_a_store_of_an_older_minconv_is_completed_by_one_process_only(made, tmp_path):
    ckpt, data = made["tmp"] / "traj.pt", made["traj"]
    out = tmp_path / "fc.zarr"
    assert rollout(ckpt, data, out, "--init-times", "5", "--shard", "0/2", "-q").exit_code == 0
    group = zarr.open_group(str(out), mode="r+")
    flags = group["minconv_done"]
    values, attrs = flags[...], dict(flags.attrs)
    del group["minconv_done"]  # the layout before row chunks: one chunk per init time
    old = group.create_array(
        "minconv_done", shape=values.shape, chunks=values.shape, dtype=bool, fill_value=None
    )
    old[...] = values
    old.attrs.update(attrs)
    zarr.consolidate_metadata(str(out))
    line = one_error_line(rollout(ckpt, data, out, "--init-times", "5", "--shard", "1/2"))
    assert "older minconv" in line and "--resume without --shard" in line
    resumed = rollout(ckpt, data, out, "--init-times", "5", "--resume", "-q")
    assert resumed.exit_code == 0, resumed.output
    assert xr.open_zarr(out)["minconv_done"].values.all()


def test_shards_overwrite_beside_the_old_store_and_the_last_swaps_it_in(made, tmp_path, one_thread):
    ckpt, data = made["tmp"] / "ll.pt", made["ll"]
    out, clean = tmp_path / "fc.zarr", tmp_path / "clean.zarr"
    assert rollout(ckpt, data, out, "--steps", "2", "-q").exit_code == 0  # the old store
    old = xr.open_zarr(out).load()
    first = json.loads(rollout(ckpt, data, out, "--overwrite", "--shard", "0/2", "--json").stdout)
    assert not first["complete"]
    xr.testing.assert_identical(xr.open_zarr(out).load(), old)  # untouched until the last task
    assert sibling(out, "minconv-partial", unique=False).exists()
    last = json.loads(rollout(ckpt, data, out, "--overwrite", "--shard", "1/2", "--json").stdout)
    assert last["complete"] and not sibling(out, "minconv-partial", unique=False).exists()
    assert rollout(ckpt, data, clean, "-q").exit_code == 0
    assert_same_store(clean, out)
