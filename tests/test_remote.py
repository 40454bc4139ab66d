"""Data behind URLs: Zarr stores served over real HTTP from 127.0.0.1 train, roll out, evaluate and
convert exactly like the same stores on disk; bad URLs are one line, a non-zero exit, nothing written."""

from __future__ import annotations

import functools
import http.server
import importlib.util
import json
import shutil
import socket
import threading
import time
from pathlib import Path

import pytest
import torch
import xarray as xr
from factories import latlon_dataset
from typer.testing import CliRunner

from minconv_cli.cli import app
from minconv_cli.models.checkpoint import load_checkpoint

runner = CliRunner()
TRAIN = ["--context", "3", "--horizon", "2", "--epochs", "1", "--batch-size", "4", "--width", "4"]
TRAIN += [
    "--train-period",
    "0.0:0.7",
    "--val-period",
    "0.7:1.0",
    "--seed",
    "7",
    "--device",
    "cpu",
    "-q",
]
ROLLOUT = ["--steps", "3", "--init-times", "2000-02-01/2000-02-05", "--device", "cpu", "--quiet"]


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:  # keep the test output clean
        pass


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A directory of data served over HTTP on 127.0.0.1: (directory, base URL).

    era2.zarr is Zarr v2 with consolidated metadata, era3.zarr Zarr v3 without (read by listing).
    """
    root = tmp_path_factory.mktemp("served")
    ds = latlon_dataset(n_time=40)
    ds.to_zarr(root / "era2.zarr", zarr_format=2, consolidated=True)
    ds.to_zarr(root / "era3.zarr", zarr_format=3, consolidated=False)
    ds.to_netcdf(root / "era.nc")
    handler = functools.partial(QuietHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def nothing_in(path: Path) -> bool:
    """True when no file was written under `path`."""
    return not any(p.is_file() for p in path.rglob("*")) if path.exists() else True


def error_line(result) -> str:
    assert result.exit_code == 1, result.output
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), result.output
    return lines[0]


def weights(run: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(run / "model.pt").model.state_dict()


@pytest.fixture(scope="module")
def trained(served, tmp_path_factory) -> Path:
    """A run trained from the store on disk (era2.zarr; era3.zarr holds the same data)."""
    root, _ = served
    run = tmp_path_factory.mktemp("runs") / "local"
    result = runner.invoke(app, ["train", str(root / "era2.zarr"), *TRAIN, "--out", str(run)])
    assert result.exit_code == 0, result.output
    return run


@pytest.mark.slow
@pytest.mark.parametrize("store", ["era2.zarr", "era3.zarr"])
def test_a_served_store_trains_and_rolls_out_exactly_like_the_store_on_disk(
    served, trained, tmp_path, store
):
    root, base = served
    url = f"{base}/{store}"
    result = runner.invoke(app, ["train", url, *TRAIN, "--out", str(tmp_path / "remote")])
    assert result.exit_code == 0, result.output
    local, remote = weights(trained), weights(tmp_path / "remote")
    assert local.keys() == remote.keys()
    assert all(torch.equal(local[k], remote[k]) for k in local)
    meta = load_checkpoint(tmp_path / "remote" / "model.pt").meta
    assert meta["config"]["data"]["paths"] == [url]  # provenance keeps the URL as given

    ckpt = str(trained / "model.pt")
    for name, data in (("local", str(root / store)), ("remote", url)):
        out = str(tmp_path / f"{name}.zarr")
        result = runner.invoke(app, ["rollout", ckpt, data, "--out", out, *ROLLOUT])
        assert result.exit_code == 0, result.output
    with (
        xr.open_zarr(tmp_path / "local.zarr") as a,
        xr.open_zarr(tmp_path / "remote.zarr") as b,
    ):
        assert a.sizes["time"] == 5 and a.sizes["prediction_timedelta"] == 3
        xr.testing.assert_identical(a.drop_attrs(), b.drop_attrs())
        assert b.attrs["source"] == url
        assert json.loads(b.attrs["minconv_rollout"])["data"] == [url]


@pytest.mark.slow
def test_evaluate_reads_forecast_truth_and_climatology_from_urls(
    served, trained, tmp_path, monkeypatch
):
    root, base = served
    run = trained
    forecasts = root / "forecasts"  # served as well
    result = runner.invoke(
        app,
        ["rollout", str(run / "model.pt"), str(root / "era2.zarr"), "--out",
         str(forecasts / "fc.zarr"), *ROLLOUT],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    latlon_dataset(n_time=40).mean("time").to_zarr(forecasts / "clim.zarr", zarr_format=2)

    scores = {}
    for name, fc, truth, clim in (
        ("local", forecasts / "fc.zarr", root / "era2.zarr", forecasts / "clim.zarr"),
        ("remote", f"{base}/forecasts/fc.zarr", f"{base}/era3.zarr", f"{base}/forecasts/clim.zarr"),
    ):
        args = ["evaluate", str(fc), str(truth), "--climatology", str(clim)]
        args += ["--compare", f"again={fc}", "--out", str(tmp_path / name), "--json", "--quiet"]
        result = runner.invoke(app, args)
        assert result.exit_code == 0, result.output
        scores[name] = json.loads(result.stdout)
    assert scores["local"] == scores["remote"]
    assert {r["forecast"] for r in scores["remote"]} >= {"fc", "again", "climatology"}

    # a URL forecast's scores go to FORECAST_scores in the current directory, not beside the URL
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(
        app, ["evaluate", f"{base}/forecasts/fc.zarr", f"{base}/era2.zarr", "--quiet"]
    )
    assert result.exit_code == 0, result.output
    assert (tmp_path / "fc_scores" / "scores.json").is_file()


@pytest.mark.parametrize("store", ["era2.zarr", "era3.zarr/"])
def test_convert_copies_a_served_store_to_a_local_file_unchanged(served, tmp_path, store):
    _, base = served
    out = tmp_path / "copy.nc"
    result = runner.invoke(app, ["convert", f"{base}/{store}", str(out), "--quiet"])
    assert result.exit_code == 0, result.output
    with xr.open_dataset(out) as copy:
        xr.testing.assert_identical(copy.load(), latlon_dataset(n_time=40))
    result = runner.invoke(app, ["convert", f"{base}/{store}", str(tmp_path / "copy.zarr"), "-q"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "copy.zarr" / ("zarr.json" if "3" in store else ".zgroup")).is_file()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_an_unknown_scheme_a_missing_store_and_a_netcdf_url_are_one_line_each(served, tmp_path):
    _, base = served
    out = tmp_path / "run"
    cases = {
        "foo://bucket/era.zarr": "unknown URL scheme 'foo'",
        f"{base}/missing.zarr": "no Zarr store there",
        f"{base}/era.nc": "NetCDF files cannot be read from a URL",
        f"simplecache::{base}/era2.zarr": "chained URLs (a::b://) are not supported",
    }
    for url, message in cases.items():
        line = error_line(runner.invoke(app, ["train", url, *TRAIN, "--out", str(out)]))
        assert url in line and message in line, line
        assert nothing_in(out)
        line = error_line(runner.invoke(app, ["convert", url, str(tmp_path / "x.nc")]))
        assert message in line, line
        assert not (tmp_path / "x.nc").exists()
    assert not (tmp_path / "x.nc").exists() and nothing_in(tmp_path)


def test_an_unreachable_server_fails_fast(tmp_path):
    url = f"http://127.0.0.1:{free_port()}/era.zarr"  # nothing listens there
    started = time.monotonic()
    line = error_line(runner.invoke(app, ["train", url, *TRAIN, "--out", str(tmp_path / "run")]))
    assert "cannot reach the server" in line and url in line, line
    assert time.monotonic() - started < 20
    assert nothing_in(tmp_path)


def test_a_server_that_never_answers_times_out(tmp_path, monkeypatch):
    monkeypatch.setenv("MINCONV_REMOTE_TIMEOUT", "1")
    with socket.socket() as silent:  # accepts connections (backlog) but never replies
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        url = f"http://127.0.0.1:{silent.getsockname()[1]}/era.zarr"
        started = time.monotonic()
        result = runner.invoke(app, ["convert", url, str(tmp_path / "x.nc")])
        line = error_line(result)
    assert "no answer within 1 s" in line and "MINCONV_REMOTE_TIMEOUT" in line, line
    assert time.monotonic() - started < 20
    assert nothing_in(tmp_path)


def test_outputs_must_be_local(served, trained, tmp_path):
    _, base = served
    run = trained
    before = sorted(tmp_path.rglob("*"))
    for args, option in (
        (["rollout", str(run / "model.pt"), f"{base}/era2.zarr", "--out", "s3://b/fc.zarr",
          "--steps", "2"], "--out"),
        (["rollout", f"{base}/model.pt", f"{base}/era2.zarr", "--out", str(tmp_path / "fc.zarr"),
          "--steps", "2"], "CHECKPOINT"),
        (["convert", f"{base}/era2.zarr", "gs://b/copy.zarr"], "DST"),
        (["train", f"{base}/era2.zarr", "--out", "s3://b/run"], "--out"),
        (["evaluate", f"{base}/era2.zarr", f"{base}/era2.zarr", "--out", "s3://b/scores"], "--out"),
    ):  # fmt: skip
        line = error_line(runner.invoke(app, args))
        assert f"{option} must be a local path" in line, line
    assert sorted(tmp_path.rglob("*")) == before  # nothing written, not even a directory


@pytest.mark.skipif(importlib.util.find_spec("s3fs") is not None, reason="s3fs is installed")
def test_a_missing_protocol_package_names_the_extra(tmp_path):
    line = error_line(
        runner.invoke(app, ["convert", "s3://bucket/era.zarr", str(tmp_path / "x.nc")])
    )
    assert "needs s3fs" in line and "minconv-cli[remote]" in line, line
    assert not (tmp_path / "x.nc").exists()


def test_local_paths_keep_working_when_they_look_unusual(tmp_path, monkeypatch):
    """A relative path with a colon is still a local path (only `scheme://` is a URL)."""
    monkeypatch.chdir(tmp_path)
    latlon_dataset(n_time=12).to_netcdf(tmp_path / "a:b.nc")
    result = runner.invoke(app, ["convert", "a:b.nc", "copy.zarr", "--quiet"])
    assert result.exit_code == 0, result.output
    shutil.rmtree(tmp_path / "copy.zarr")


def test_a_bad_timeout_setting_is_named(served, tmp_path, monkeypatch):
    _, base = served
    monkeypatch.setenv("MINCONV_REMOTE_TIMEOUT", "soon")
    line = error_line(runner.invoke(app, ["convert", f"{base}/era2.zarr", str(tmp_path / "x.nc")]))
    assert "MINCONV_REMOTE_TIMEOUT='soon': expected a number of seconds" in line, line
    assert nothing_in(tmp_path)
