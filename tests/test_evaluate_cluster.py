"""`minconv evaluate` on dask.distributed: a LocalCluster (`--workers N`) or a running scheduler
(`--scheduler ADDRESS`) scores exactly what the process scores, in-memory and block by block;
`--memory-limit` decides what is read lazily; run.json says how fast; bad options, an
unreachable scheduler and a missing `distributed` are one line with nothing written."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pytest
import xarray as xr
from factories import latlon_dataset
from test_evaluate import wb2_forecast
from typer.testing import CliRunner

from minconv_cli.cli import app
from minconv_cli.core.errors import MinconvError
from minconv_cli.evaluate import cluster, evaluate

distributed = pytest.importorskip("distributed")
runner = CliRunner()
INITS, LEADS, GRID = range(10, 20), 3, (4, 8)
METRICS = "rmse,mae,bias,acc,csi,fss"  # an ensemble adds its member scores (crps_fair, spread)
EVENTS = {"thresholds": "54000", "fss_scales": "3"}


def _noisy(fc: xr.Dataset, seed: int) -> xr.Dataset:
    noise = np.random.default_rng(seed).normal(0, 30.0, fc.z.shape)
    return (fc + noise).astype(np.float32)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A NetCDF truth, a noisy deterministic forecast store and a 3-member ensemble store."""
    root = tmp_path_factory.mktemp("cluster")
    truth = latlon_dataset(n_time=30, n_lat=GRID[0], n_lon=GRID[1], variables=("z",))
    truth.to_netcdf(root / "truth.nc")
    perfect = wb2_forecast(truth, init_idx=INITS, n_leads=LEADS)
    _noisy(perfect, 1).to_zarr(root / "fc.zarr")
    members = [_noisy(perfect, seed) for seed in (2, 3, 4)]
    ens = xr.concat(members, dim="number").assign_coords(number=np.arange(3))
    ens.to_zarr(root / "ens.zarr")
    return root


@pytest.fixture(scope="module")
def lazy_here(files):
    """The scores of this process's threads with the forecast read block by block, as workers do."""
    return evaluate(
        files / "fc.zarr",
        files / "truth.nc",
        compare=[f"ens={files / 'ens.zarr'}"],
        metrics_=METRICS,
        load_below=0,
        **EVENTS,
    )


@pytest.fixture(scope="module")
def scheduler():
    """A running scheduler with two worker processes, as `dask scheduler` + `dask worker` give."""
    with distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
    ) as running:
        yield running.scheduler_address


def _cli(files, out: str, *options: str):
    args = ["evaluate", str(files / "fc.zarr"), str(files / "truth.nc")]
    args += ["--compare", f"ens={files / 'ens.zarr'}", "-m", METRICS]
    args += ["--thresholds", EVENTS["thresholds"], "--fss-scales", EVENTS["fss_scales"]]
    return runner.invoke(app, [*args, "--out", str(files / out), "-q", *options])


def _values(records: list[dict]) -> dict:
    return {(r["forecast"], r["variable"], r["lead"], r["metric"]): r["value"] for r in records}


def _assert_same_scores(got: list[dict], expected: list[dict], rel: float = 1e-12) -> None:
    a, b = _values(got), _values(expected)
    assert a.keys() == b.keys() and len(a) > 50
    for key, value in b.items():
        if value is None or (isinstance(value, float) and math.isnan(value)):
            assert a[key] is None or math.isnan(a[key]), key
        else:
            assert a[key] == pytest.approx(value, rel=rel, abs=rel), key


def _read(files, out: str, name: str):
    return json.loads((files / out / name).read_text())


def _one_line(result, *words: str) -> None:
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert result.exit_code != 0 and len(lines) == 1, result.output
    assert lines[0].startswith("error:") and "Traceback" not in result.output
    assert all(w in lines[0] for w in words), lines[0]


def test_a_local_cluster_scores_exactly_what_the_process_scores(files, lazy_here):
    on_cluster = _cli(files, "cluster", "--workers", "2")
    assert on_cluster.exit_code == 0, on_cluster.output
    in_memory = _cli(files, "here")  # today's default: a small forecast is loaded
    assert in_memory.exit_code == 0, in_memory.output

    scores = _read(files, "cluster", "scores.json")
    _assert_same_scores(scores, lazy_here.records)  # the same graph on this process's threads
    _assert_same_scores(scores, _read(files, "here", "scores.json"), rel=1e-5)  # float32 sums
    assert _read(files, "cluster", "overlap.json") == _read(files, "here", "overlap.json")
    assert {"crps_fair", "spread"} <= {r["metric"] for r in scores if r["forecast"] == "ens"}
    run = _read(files, "cluster", "run.json")
    assert run["scheduler"] == "local cluster" and run["workers"] == 2 and run["threads"] == 2
    # 10 init times x 3 leads of a 4 x 8 float32 grid: 30 frames, and 3 members of them
    assert run["forecast_bytes"] == 4 * 30 * 32 * 4 and run["frames"] == 4 * 30
    assert run["bytes_per_s"] == pytest.approx(run["forecast_bytes"] / run["seconds"], rel=1e-3)
    assert run["frames_per_s"] > 0 and run["lazy"] is True
    assert _read(files, "here", "run.json")["scheduler"] == "in-process"


def test_a_running_scheduler_scores_lazy_blocks_like_the_process(files, scheduler):
    # on a cluster the workers read the forecast block by block; the truth (3840 bytes) is over
    # a quarter of 8 KB, so they read it too
    result = _cli(files, "remote", "--scheduler", scheduler, "--memory-limit", "8KB")
    assert result.exit_code == 0, result.output
    expected = evaluate(
        files / "fc.zarr",
        files / "truth.nc",
        compare=[f"ens={files / 'ens.zarr'}"],
        metrics_=METRICS,
        load_below=0,
        truth_memory=cluster._truth_memory(8 * 1024),
        **EVENTS,
    )
    assert expected.run["lazy"] is True
    _assert_same_scores(_read(files, "remote", "scores.json"), expected.records)
    run = _read(files, "remote", "run.json")
    assert run["scheduler"] == scheduler and run["workers"] == 2 and run["lazy"] is True
    assert run["memory_limit_bytes"] == 8 * 1024


def test_a_running_scheduler_scores_batch_by_batch_what_the_process_scores_in_one_pass(
    files, scheduler, lazy_here
):
    with cluster.dask_engine(scheduler=scheduler) as engine:
        frames = LEADS * GRID[0] * GRID[1] * 4  # bytes of one init time of one member
        engine.block_bytes = 2 * frames  # blocks of two init times (one of the ensemble's)
        engine.batch_bytes = 4 * (1 + 3) * frames  # batches of four init times of both stores
        batched = engine.evaluate(
            files / "fc.zarr",
            files / "truth.nc",
            compare=[f"ens={files / 'ens.zarr'}"],
            metrics_=METRICS,
            **EVENTS,
        )
    assert batched.run["batches"] == 3 and batched.run["scheduler"] == scheduler
    _assert_same_scores(batched.records, lazy_here.records, rel=1e-6)
    assert batched.overlap == lazy_here.overlap


def test_the_progress_bar_counts_every_task_on_the_workers(scheduler):
    import dask.array as da

    seen: list[tuple[int, int]] = []
    with distributed.Client(scheduler) as client:
        compute = cluster.client_compute(client)
        x = da.arange(100, chunks=10)
        (total, parts) = compute(
            [x.sum(), {"max": x.max(), "two": 2}], lambda d, t: seen.append((d, t))
        )
    assert total == 4950 and parts == {"max": 99, "two": 2}
    done, tasks = seen[-1]
    assert done == tasks and tasks > 10  # every chunk's task, not just the two results


def test_an_unreachable_scheduler_is_one_line_and_nothing_is_written(files, monkeypatch):
    monkeypatch.setattr(cluster, "CONNECT_TIMEOUT_S", 1.0)
    result = _cli(files, "nowhere", "--scheduler", "tcp://127.0.0.1:1")
    _one_line(result, "--scheduler tcp://127.0.0.1:1", "cannot connect")
    assert not (files / "nowhere").exists()


@pytest.mark.parametrize(
    ("options", "words"),
    [
        (["--workers", "0"], ["--workers", "1 or more"]),
        (["--workers", "2", "--scheduler", "tcp://127.0.0.1:8786"], ["--scheduler and --workers"]),
        (["--memory-limit", "lots"], ["--memory-limit", "lots"]),
        (["--memory-limit", "0"], ["--memory-limit", "more than 0"]),
        (["--memory-limit", "1MB"], ["--memory-limit 1 MB", "too small"]),
        (["--workers", "2", "--memory-limit", "600MB"], ["300 MB per worker", "too small"]),
    ],
)
def test_bad_cluster_options_are_one_line_and_nothing_is_written(files, options, words):
    _one_line(_cli(files, "bad", *options), *words)
    assert not (files / "bad").exists()


def test_a_memory_limit_sets_what_is_loaded_and_the_threads_in_flight():
    import psutil

    held = psutil.Process().memory_info().rss
    per_thread = cluster.BLOCKS_PER_THREAD * cluster.BLOCK_BYTES

    def limit_for(threads: float) -> int:  # room for that many threads beside the truth's share
        return int((held + threads * per_thread) / (1 - 1 / cluster.TRUTH_SHARE))

    one = cluster.in_process(limit_for(1.5))
    assert one.threads == 1 and one.memory_limit == limit_for(1.5)
    assert one.load_below == min(cluster.LOAD_BELOW_BYTES, limit_for(1.5) // cluster.LOAD_SHARE)
    # open_fields loads the truth when IN_MEMORY_FACTOR copies fit: it does when it fits its share
    assert one.truth_memory == cluster.IN_MEMORY_FACTOR * (limit_for(1.5) // cluster.TRUTH_SHARE)
    assert cluster.in_process(limit_for(64)).threads == cluster._cpus()
    unlimited = cluster.in_process(None)
    assert unlimited.load_below == cluster.LOAD_BELOW_BYTES and unlimited.truth_memory is None
    with pytest.raises(MinconvError, match="too small"):
        cluster.in_process(limit_for(0.5))


def test_without_distributed_the_cluster_options_name_the_extra(files, tmp_path):
    code = (
        "import sys; sys.modules['distributed'] = None\n"
        "from minconv_cli.cli import app\n"
        "app(sys.argv[1:])\n"
    )
    args = ["evaluate", str(files / "fc.zarr"), str(files / "truth.nc"), "--workers", "2"]
    args += ["--out", str(tmp_path / "out")]
    proc = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True)
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode != 0 and len(lines) == 1, proc.stderr
    assert "cluster extra" in lines[0] and "pip install" in lines[0]
    assert not (tmp_path / "out").exists() and proc.stdout == ""


def test_under_a_memory_limit_the_process_scores_block_by_block(files, lazy_here, monkeypatch):
    import psutil

    limit = 4 * psutil.Process().memory_info().rss  # room for a thread or more beside the process
    monkeypatch.setattr(
        cluster, "LOAD_SHARE", limit
    )  # so that even this forecast is over its share
    result = _cli(files, "limited", "--memory-limit", str(limit))
    assert result.exit_code == 0, result.output
    run = _read(files, "limited", "run.json")
    assert run["scheduler"] == "in-process" and run["lazy"] is True
    assert run["memory_limit_bytes"] == limit and run["threads"] >= 1
    _assert_same_scores(_read(files, "limited", "scores.json"), lazy_here.records)
