"""`minconv train`: real tiny training runs through the command, their run directory, resume, DDP."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from factories import latlon_dataset, trajectory_dataset
from typer.testing import CliRunner

from minconv_cli.cli import app
from minconv_cli.models import MODEL_NAMES
from minconv_cli.models.checkpoint import load_checkpoint, read_checkpoint
from minconv_cli.training.config import resolve_config
from minconv_cli.training.loop import horizon_at

runner = CliRunner()
WINDOWS = ["--context", "3", "--horizon", "2", "--epochs", "1", "--batch-size", "4"]
TINY = [*WINDOWS, "--width", "4"]


@pytest.fixture(scope="module")
def traj(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("data") / "traj.nc"
    trajectory_dataset(n_traj=5, n_time=10, n=8, splits=["train"] * 3 + ["val", "test"]).to_netcdf(
        path
    )
    return path


def invoke(*args):
    return runner.invoke(app, ["train", *map(str, args)])


def error_line(result) -> str:
    assert result.exit_code == 1, result.output
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), result.stderr
    return lines[0]


def test_a_run_writes_checkpoints_config_metrics_and_summary(traj, tmp_path):
    out = tmp_path / "run"
    result = invoke(traj, *TINY, "--epochs", 2, "--out", out, "--json", "--quiet")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary == json.loads((out / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["epochs_completed"] == 2
    assert summary["train_split"] == "split=train" and summary["val_split"] == "split=val"
    assert summary["train_windows"] == 3 * (10 - 6 + 1)
    rows = list(csv.DictReader((out / "metrics.csv").open()))
    assert [r["epoch"] for r in rows] == ["1", "2"]
    for key in ("train_loss", "val_rmse_tf", "val_rmse_cl", "persistence_rmse", "lr", "seconds"):
        assert float(rows[-1][key]) >= 0, key
    assert summary["best"]["val_rmse_cl"] == min(float(r["val_rmse_cl"]) for r in rows)
    assert summary["beats_persistence"] == (
        summary["best"]["val_rmse_cl"] < summary["best"]["persistence_rmse"]
    )
    saved = resolve_config(out / "config.yaml")
    assert saved.train.context == 3 and saved.model.width == 4 and saved.data.paths == [str(traj)]
    best = load_checkpoint(out / "model.pt")
    assert best.meta["context"] == 3 and best.meta["horizon"] == 2
    assert best.meta["config"] == saved.to_dict()
    assert best.meta.model.padding == "circular" and best.meta["time_step"] == 1.0
    assert best.meta["epoch"] == summary["best_epoch"]
    raw, meta = read_checkpoint(out / "last.pt")
    assert meta["epoch"] == 2 and "optimizer_state" in raw and "scheduler" in raw["extra"]
    assert not result.stderr  # --quiet


@pytest.mark.parametrize("model", MODEL_NAMES)
def test_every_model_trains_through_the_command(traj, tmp_path, model):
    result = invoke(traj, *TINY, "--model", model, "--out", tmp_path / "r", "--json", "-q")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["model"] == model and summary["steps"] == 4  # ceil(15 windows / 4)
    assert load_checkpoint(tmp_path / "r" / "model.pt").meta["model"]["name"] == model


def test_latlon_data_with_missing_values_statics_and_time_periods(tmp_path):
    path = tmp_path / "ll.nc"
    ds = latlon_dataset(n_time=40, nan_mask=True)
    ds["lsm"] = ds["z"].isel(time=0).notnull().astype("float32")
    ds.to_netcdf(path)
    out = tmp_path / "run"
    result = invoke(
        path, *WINDOWS, "--variables", "z,t", "--static", "lsm", "--train-period",
        "2000-01-01/2000-01-28", "--val-period", "2000-01-29/2000-02-09", "--params", "400",
        "--set", "train.noise=0.01", "--out", out, "--json", "-q",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert set(summary["channels"]) == {"z", "t"}
    for ch in summary["channels"].values():
        assert all(v == v for v in ch["rmse_by_lead"])  # masked cells do not poison the metrics
        assert len(ch["rmse_by_lead"]) == 3  # lead 1 (last teacher-forced output) + 2 closed loop
    meta = load_checkpoint(out / "model.pt").meta
    assert [c["name"] for c in meta["static_channels"]] == ["lsm"]
    assert 200 < summary["parameters"] < 800  # width chosen for the budget (default width: 20k)


def test_print_config_shows_the_resolved_config_and_trains_nothing(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("optim:\n  weight_decay: 0.1\n")
    result = invoke("--config", cfg, "--set", "train.noise=0.01", "--lr", "0.004", "--print-config")
    assert result.exit_code == 0, result.output
    printed = yaml.safe_load(result.stdout)
    assert printed["optim"] == {**printed["optim"], "weight_decay": 0.1, "lr": 0.004}
    assert printed["train"]["noise"] == 0.01
    assert [p.name for p in Path.cwd().iterdir()] == ["c.yaml"]  # nothing written where it ran


def test_print_config_is_unaffected_by_an_earlier_run_in_the_working_directory(tmp_path):
    # the README's order: `minconv train --out runs/sample`, then the tests, in the same folder
    earlier = tmp_path / "runs" / "sample"
    earlier.mkdir(parents=True)
    (earlier / "metrics.csv").write_text("epoch,loss\n1,0.5\n")
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    result = invoke("--print-config")
    assert result.exit_code == 0, result.output
    assert yaml.safe_load(result.stdout)["model"]["name"]
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before
    assert (earlier / "metrics.csv").read_text() == "epoch,loss\n1,0.5\n"


def test_config_errors_are_one_line_naming_the_key(traj, tmp_path):
    line = error_line(invoke(traj, "--set", "optim.wd=0.1", "--out", tmp_path / "r"))
    assert "optim.wd: unknown key" in line
    line = error_line(invoke(traj, "--model", "convgur", "--out", tmp_path / "r"))
    assert "model.name" in line and "did you mean 'convgru'" in line
    assert "--width and --params" in error_line(invoke(traj, "--width", 4, "--params", 900))
    assert not (tmp_path / "r").exists()


def test_bad_data_requests_fail_with_the_problem_named(traj, tmp_path):
    out = tmp_path / "r"
    assert "'nope' not found" in error_line(
        invoke(traj, *TINY, "--variables", "nope", "--out", out)
    )
    line = error_line(invoke(traj, *TINY, "--train-period", "50/60", "--out", out))
    assert "no times" in line and "50/60" in line
    line = error_line(invoke(traj, "--context", 8, "--horizon", 4, "--out", out))
    assert "too short for one window of 13 steps" in line
    assert not any((tmp_path / "r").glob("*.pt"))


def test_an_output_directory_holding_a_run_is_refused_unless_overwrite(traj, tmp_path):
    out = tmp_path / "run"
    assert invoke(traj, *TINY, "--out", out, "-q").exit_code == 0
    before = (out / "model.pt").read_bytes()
    assert "holds another run" in error_line(invoke(traj, *TINY, "--out", out, "-q"))
    assert (out / "model.pt").read_bytes() == before
    result = invoke(traj, *TINY, "--seed", 1, "--out", out, "--overwrite", "-q")
    assert result.exit_code == 0, result.output
    assert (out / "model.pt").read_bytes() != before


def test_resume_refuses_another_model_and_a_missing_run(traj, tmp_path):
    out = tmp_path / "run"
    assert "last.pt not found" in error_line(invoke(traj, "--out", out, "--resume"))
    assert invoke(traj, *TINY, "--out", out, "-q").exit_code == 0
    line = error_line(invoke(traj, "--out", out, "--resume", "--width", 5, "--epochs", 2))
    assert "holds another model (differs in width, widths)" in line
    meta_raw, _ = read_checkpoint(out / "last.pt")
    meta = json.loads(meta_raw["meta_json"])
    torch.save(
        {**meta_raw, "meta_json": json.dumps({**meta, "minconv_version": "0.0.1"})}, out / "last.pt"
    )
    assert "written by minconv 0.0.1" in error_line(invoke(traj, "--out", out, "--resume"))


def test_bf16_training_is_recorded_and_an_old_amp_run_resumes_in_fp32(traj, tmp_path):
    out = tmp_path / "run"
    result = invoke(traj, *TINY, "--precision", "bf16", "--out", out, "--json", "-q")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["precision"] == "bf16"
    meta = load_checkpoint(out / "model.pt").meta
    assert meta["precision"] == "bf16" and meta["config"]["train"]["precision"] == "bf16"
    # a run directory from before train.precision: its config says amp: false
    raw, meta = read_checkpoint(out / "last.pt")
    meta = meta.to_dict()  # the stored form
    train = meta["config"]["train"]
    train.pop("precision")
    train["amp"] = False
    torch.save({**raw, "meta_json": json.dumps(meta)}, out / "last.pt")
    result = invoke(traj, "--out", out, "--resume", "--epochs", 2, "--json", "-q")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["precision"] == "fp32" and summary["epochs_completed"] == 2
    assert "amp" not in yaml.safe_load((out / "config.yaml").read_text())["train"]


def test_a_diverging_run_stops_with_a_clear_message(traj, tmp_path):
    result = invoke(
        traj, *TINY, "--epochs", 3, "--lr", "1e30", "--set", "train.clip_grad=null",
        "--set", "optim.schedule=none", "--out", tmp_path / "r", "-q",
    )  # fmt: skip
    line = error_line(result)
    assert "training diverged: loss is" in line and "lower --lr" in line


def test_time_budget_and_early_stopping_end_the_run(traj, tmp_path):
    result = invoke(
        traj, *TINY, "--epochs", 5, "--max-time", 0.01, "--out", tmp_path / "a", "--json", "-q"
    )
    summary = json.loads(result.stdout)
    # the budget is checked after every step, so the run ends long before its 5 epochs, after
    # validating and saving, however fast the steps are on this machine
    steps_per_epoch = -(-summary["train_windows"] // 4)  # --batch-size 4
    assert summary["status"] == "time_budget" and 1 <= summary["epochs_completed"] < 5
    assert 1 <= summary["steps"] < 5 * steps_per_epoch
    assert (tmp_path / "a" / "model.pt").exists()  # validated, saved
    result = invoke(
        traj, *TINY, "--epochs", 6, "--lr", "1e-30", "--set", "train.patience=1",
        "--out", tmp_path / "b", "--json", "-q",
    )  # fmt: skip
    summary = json.loads(result.stdout)
    assert summary["status"] == "early_stopping" and summary["epochs_completed"] < 6


def test_the_curriculum_grows_the_horizon_to_its_target():
    cfg = resolve_config(
        overrides=["train.horizon=6", "train.curriculum_epochs=4", "train.curriculum_start=2"]
    )
    assert [horizon_at(cfg, e) for e in range(6)] == [2, 3, 4, 5, 6, 6]
    assert horizon_at(resolve_config(overrides=["train.horizon=3"]), 0) == 3


def _state(path: Path) -> dict:
    return load_checkpoint(path).model.state_dict()


@pytest.mark.parametrize("reading", [[], ["--memory-limit", "0"]], ids=["in-memory", "lazy-blocks"])
def test_resume_after_sigint_reaches_the_same_weights_as_an_uninterrupted_run(tmp_path, reading):
    # long enough epochs (~100 steps) that the signal always lands mid-run, however fast the machine
    traj = tmp_path / "long.nc"
    trajectory_dataset(n_traj=5, n_time=80, n=8, splits=["train"] * 3 + ["val", "test"]).to_netcdf(
        traj
    )
    common = [
        traj, "--context", 3, "--horizon", 2, "--width", 4, "--batch-size", 2, "--epochs", 3,
        "--set", "train.noise=0.01", "--set", "train.curriculum_epochs=2", "--seed", 3, "-q",
        *reading,
    ]  # fmt: skip
    whole = tmp_path / "whole"
    assert invoke(*common, "--out", whole).exit_code == 0
    cut = tmp_path / "cut"
    proc = subprocess.Popen(
        [sys.executable, "-m", "minconv_cli", "train", *map(str, common), "--out", str(cut)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 120
    while not (cut / "last.pt").exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)  # in epoch 2 of 3
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "interrupted" in err and "--resume" in err
    stopped = json.loads(read_checkpoint(cut / "last.pt")[0]["extra"]["position"])
    assert stopped["epoch"] < 3
    result = invoke("--out", cut, "--resume", "-q")
    assert result.exit_code == 0, result.output
    for name in ("last.pt", "model.pt"):
        a, b = _state(whole / name), _state(cut / name)
        assert all(torch.equal(a[k], b[k]) for k in a), name
    rows = lambda p: [r["epoch"] for r in csv.DictReader((p / "metrics.csv").open())]  # noqa: E731
    assert rows(cut) == rows(whole) == ["1", "2", "3"]


def test_data_over_the_memory_limit_is_streamed_and_the_run_says_so(tmp_path):
    trajectory_dataset(n_traj=5, n_time=10, n=8, splits=["train"] * 3 + ["val", "test"]).chunk(
        {"trajectory": 1, "time": 4}
    ).to_zarr(tmp_path / "traj.zarr")
    out = tmp_path / "run"
    result = invoke(tmp_path / "traj.zarr", *TINY, "--memory-limit", "1kB", "--out", out)
    assert result.exit_code == 0, result.output
    assert "data: read lazily from disk in blocks" in result.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["data_memory"]["in_memory"] is False
    assert summary["data_memory"]["memory_limit_bytes"] == 1024
    assert summary["train_windows"] == 3 * (10 - 6 + 1) and summary["status"] == "completed"
    assert (
        "data: in memory" in invoke(tmp_path / "traj.zarr", *TINY, "--out", tmp_path / "r2").stderr
    )
    bad = invoke(tmp_path / "traj.zarr", *TINY, "--memory-limit", "lots", "--out", tmp_path / "r3")
    assert "data.memory_limit: expected a size like 2GB" in error_line(bad)


def test_two_process_ddp_on_cpu_writes_a_loadable_checkpoint(traj, tmp_path):
    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node=2",
            "--standalone",
            "-m",
            "minconv_cli",
            "train",
            str(traj),
            *TINY,
            "--epochs",
            "2",
            "--device",
            "cpu",
            "--out",
            str(out),
            "--json",
            "-q",
        ],  # fmt: skip
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout)  # rank 0 only prints
    assert summary["world_size"] == 2 and summary["epochs_completed"] == 2
    assert summary["steps"] == 2 * 2  # 15 windows over 2 ranks: 8 each, batches of 4
    loaded = load_checkpoint(out / "model.pt")
    assert loaded.meta["model"]["name"] == "minconvgru"
    assert not any(k.startswith("module.") for k in loaded.raw["state_dict"])


THREADS_AFTER_TRAIN = """
import json, os, sys
from minconv_cli.cli import app

app(sys.argv[2:], standalone_mode=False)
names = [open(f"/proc/self/task/{t}/comm").read().strip() for t in os.listdir("/proc/self/task")]
with open(os.path.join(sys.argv[1], f"threads-{os.environ['RANK']}.json"), "w") as f:
    json.dump(names, f)
"""


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="reads thread names from /proc")
def test_ddp_train_leaves_no_gloo_threads_to_abort_at_exit(traj, tmp_path):
    """A gloo worker still alive at interpreter exit can abort the process (SIGABRT) while it
    drops its last collective; train must stop them before returning."""
    script = tmp_path / "train_then_list_threads.py"
    script.write_text(THREADS_AFTER_TRAIN)
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--standalone"]
    args = ["train", str(traj), *TINY, "--device", "cpu", "--out", str(tmp_path / "ddp"), "-q"]
    proc = subprocess.run(
        [*torchrun, str(script), str(tmp_path), *args],
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    for rank in (0, 1):
        names = json.loads((tmp_path / f"threads-{rank}.json").read_text())
        assert not [n for n in names if "gloo" in n], names


def test_bad_data_never_costs_an_existing_run_or_leaves_a_directory(traj, tmp_path):
    out = tmp_path / "run"
    assert invoke(traj, *TINY, "--epochs", 1, "--out", out, "--quiet").exit_code == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    bad = tmp_path / "missing.nc"
    line = error_line(invoke(bad, *TINY, "--out", out, "--overwrite", "--quiet"))
    assert "missing.nc" in line
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    fresh = tmp_path / "fresh"
    error_line(invoke(bad, *TINY, "--out", fresh, "--quiet"))
    assert not fresh.exists()
