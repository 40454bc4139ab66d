"""Fault injection: `--overwrite` killed with SIGKILL at random moments never loses the output.

For each of convert, rollout, evaluate and train: an old output is made, then the same command
with other settings and `--overwrite` is started in a real process and killed with SIGKILL after
a random delay (half of them spread over the whole run, half near its end, where the new output
is swapped in), at least 20 times. After every kill the output is either exactly the old one or
exactly the complete new one; the next run on it clears what the killed one left beside it.
"""

from __future__ import annotations

import json
import random
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import xarray as xr
from factories import latlon_dataset
from forkserver import ForkServer
from test_rollout import make_checkpoint
from test_rollout import tree_digest as digest

TRIALS = 20  # the issue asks for at least 20 kills of each command
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server() -> Iterator[ForkServer]:
    s = ForkServer()
    yield s
    s.close()


def leftovers(out: Path) -> list[str]:
    """Hidden siblings of `out` that a run leaves (temporary copies, swaps, partial builds)."""
    return sorted(p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}."))


def delays(full: float, seed: int) -> list[float]:
    """TRIALS kill moments: half anywhere in the run, half in its last fifth (the swap)."""
    rng = random.Random(seed)
    half = TRIALS // 2
    return [rng.uniform(0.0, full) for _ in range(half)] + [
        rng.uniform(0.8 * full, 1.02 * full) for _ in range(TRIALS - half)
    ]


def kill_at_random(
    server: ForkServer,
    tmp: Path,
    out: Path,
    args: list,
    is_old: Callable[[], bool],
    is_new: Callable[[], bool],
    restore_old: Callable[[], None],
    seed: int,
) -> None:
    """The fault-injection loop; every kill must leave the old or the complete new output."""
    log = tmp / "run.log"
    first = server.run(args, tmp, log=log)
    assert first["code"] == 0, log.read_text()
    assert is_new()
    full = first["seconds"]
    outcomes = {"old": 0, "new": 0}
    for i, delay in enumerate(delays(full, seed)):
        restore_old()
        result = server.run(args, tmp, kill_after=delay, log=log)
        assert result["code"] in (0, -9), log.read_text()
        if is_old():
            outcomes["old"] += 1
        else:
            assert is_new(), f"trial {i}: killed after {delay:.3f} s of {full:.3f} s: neither"
            outcomes["new"] += 1
    assert outcomes["old"] > 0  # the kills did land inside the runs
    restore_old()
    assert server.run(args, tmp, log=log)["code"] == 0, log.read_text()
    assert is_new()
    assert leftovers(out) == [], "a completed run clears what killed runs left"


@pytest.fixture()
def data(tmp_path: Path) -> Path:
    path = tmp_path / "data.nc"
    latlon_dataset(n_time=40).to_netcdf(path)
    return path


def saved(path: Path, keep: Path) -> Callable[[], None]:
    """A copy of `path` now, and the function that puts it back."""
    if path.is_dir():
        shutil.copytree(path, keep, symlinks=True)
    else:
        shutil.copy2(path, keep)

    kept = digest(keep)

    def restore() -> None:
        if path.exists() and digest(path) == kept:
            return
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
        if keep.is_dir():
            shutil.copytree(keep, path, symlinks=True)
        else:
            shutil.copy2(keep, path)

    return restore


def same_dataset(path: Path, reference: xr.Dataset) -> bool:
    try:
        with xr.open_zarr(path, consolidated=None) as ds:
            xr.testing.assert_identical(ds.load(), reference)
        return True
    except Exception:
        return False


def test_convert_overwrite_killed_anywhere_keeps_the_old_or_the_new_store(server, tmp_path, data):
    out = tmp_path / "out.zarr"
    assert server.run(["convert", data, out, "--variables", "z", "-q"], tmp_path)["code"] == 0
    old = digest(out)
    restore = saved(out, tmp_path / "old-copy.zarr")
    args = ["convert", data, out, "--overwrite", "--chunks", "time=1", "-q"]
    new_reference = xr.open_dataset(data).load()
    new_reference.encoding = {}

    def is_new() -> bool:
        try:
            with xr.open_zarr(out, consolidated=None) as ds:
                return set(ds.data_vars) == {"z", "t"} and bool(
                    (ds["t"].load() == new_reference["t"]).all()
                )
        except Exception:
            return False

    kill_at_random(server, tmp_path, out, args, lambda: digest(out) == old, is_new, restore, 1)


def test_rollout_overwrite_killed_anywhere_keeps_the_old_or_the_new_store(server, tmp_path, data):
    ckpt = tmp_path / "model.pt"
    make_checkpoint(data, ckpt)
    out = tmp_path / "fc.zarr"
    base = ["rollout", ckpt, data, "--out", out, "--precision", "fp32", "-q", "--batch-size", "4"]
    base += ["--init-times", "2000-01-10/2000-01-25"]
    assert server.run([*base, "--steps", "3"], tmp_path)["code"] == 0
    old = digest(out)
    restore = saved(out, tmp_path / "old-copy.zarr")
    reference = tmp_path / "reference.zarr"
    ref_args = [*base[:4], reference, *base[5:]]
    assert server.run([*ref_args, "--steps", "5"], tmp_path)["code"] == 0
    with xr.open_zarr(reference) as ref:
        expected = ref.drop_attrs().load()

    def is_new() -> bool:
        try:
            with xr.open_zarr(out, consolidated=None) as ds:
                ds = ds.drop_attrs().load()
                return bool(ds["minconv_done"].all()) and ds.equals(expected)
        except Exception:
            return False

    args = [*base, "--steps", "5", "--overwrite"]
    kill_at_random(server, tmp_path, out, args, lambda: digest(out) == old, is_new, restore, 2)


def test_evaluate_overwrite_killed_anywhere_keeps_the_old_or_the_new_scores(server, tmp_path, data):
    ckpt = tmp_path / "model.pt"
    make_checkpoint(data, ckpt)
    for steps, name in ((3, "a.zarr"), (5, "b.zarr")):
        args = ["rollout", ckpt, data, "--out", name, "--steps", steps, "-q"]
        assert server.run([*args, "--init-times", "2000-01-20/2000-02-05"], tmp_path)["code"] == 0
    out = tmp_path / "scores"
    base = ["evaluate", "--out", out, "-q", "--references", "persistence"]
    assert server.run([*base[:1], "a.zarr", data, *base[1:]], tmp_path)["code"] == 0
    (out / "notes.txt").write_text("a user's own file in the score folder\n")
    old = digest(out)
    restore = saved(out, tmp_path / "old-scores")
    new_dir = tmp_path / "new-scores"
    ref_args = ["evaluate", "b.zarr", data, "--out", new_dir, "-q", "--references", "persistence"]
    assert server.run(ref_args, tmp_path)["code"] == 0
    expected = {f: (new_dir / f).read_bytes() for f in ("scores.json", "scores.csv")}

    def is_new() -> bool:
        try:
            return all((out / f).read_bytes() == b for f, b in expected.items()) and (
                (out / "scores.nc").is_file()
                and (out / "scores.png").is_file()
                and (out / "notes.txt").read_text().startswith("a user's own file")
            )
        except OSError:
            return False

    args = ["evaluate", "b.zarr", data, *base[1:], "--overwrite"]
    kill_at_random(server, tmp_path, out, args, lambda: digest(out) == old, is_new, restore, 3)


def test_train_overwrite_killed_anywhere_keeps_the_old_or_the_new_run(server, tmp_path):
    data = tmp_path / "long.nc"
    latlon_dataset(n_time=80, n_lon=8).to_netcdf(data)
    out = tmp_path / "run"
    tiny = ["--epochs", "1", "--width", "4", "--layers", "1", "--context", "4", "--horizon", "2"]
    base = ["train", data, "--out", out, "-q", *tiny, "--batch-size", "8", "--precision", "fp32"]
    assert server.run([*base, "--seed", "0"], tmp_path)["code"] == 0
    (out / "forecast.zarr").mkdir()  # a user's forecast inside the run directory
    (out / "forecast.zarr" / "zarr.json").write_text("{}")
    old = digest(out)
    restore = saved(out, tmp_path / "old-run")

    def is_new() -> bool:
        from minconv_cli.models.checkpoint import read_checkpoint

        try:
            summary = json.loads((out / "summary.json").read_text())
            _, meta = read_checkpoint(out / "model.pt")
            read_checkpoint(out / "last.pt")
            return (
                summary["status"] == "completed"
                and meta.config["train"]["seed"] == 1
                and (out / "forecast.zarr" / "zarr.json").read_text() == "{}"
            )
        except Exception:
            return False

    args = [*base, "--seed", "1", "--overwrite"]
    kill_at_random(server, tmp_path, out, args, lambda: digest(out) == old, is_new, restore, 4)
