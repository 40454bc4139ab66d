"""`minconv plot`: images read back (size, frames, panels, NaN colour), the arrays handed to
matplotlib equal the store's values, and bad input is one line with nothing written."""

from __future__ import annotations

import json

import numpy as np
import pytest
import xarray as xr
from factories import latlon_dataset
from PIL import Image
from typer.testing import CliRunner

from minconv_cli.cli import app
from minconv_cli.data import open_fields
from minconv_cli.maps import panel_arrays, select
from minconv_cli.maps.panels import NAN_COLOR, colormap
from minconv_cli.rollout.store import open_forecast

runner = CliRunner()
DAY = np.timedelta64(1, "D")


def store_of(truth: xr.Dataset, init_idx, n_leads: int, members: int = 0, noise: float = 0.0):
    """A WeatherBench 2 store whose frame (init, lead) is the truth at init + lead (+ noise)."""
    rng = np.random.default_rng(3)
    init = truth.time.values[list(init_idx)]
    leads = np.arange(1, n_leads + 1) * DAY
    data = {}
    for v in truth.data_vars:
        frames = np.stack([truth[v].sel(time=init + lead).values for lead in leads], axis=1)
        dims = ("time", "prediction_timedelta", "latitude", "longitude")
        if members:
            frames = np.stack(
                [frames + noise * rng.standard_normal(frames.shape) for _ in range(members)], 1
            )
            dims = ("time", "number", *dims[1:])
        elif noise:
            frames = frames + noise * rng.standard_normal(frames.shape)
        data[v] = (dims, frames.astype(np.float32), truth[v].attrs)
    coords = {
        "time": init,
        "prediction_timedelta": leads,
        "latitude": truth.latitude,
        "longitude": truth.longitude,
    }
    if members:
        coords["number"] = np.arange(members)
    return xr.Dataset(data, coords=coords)


@pytest.fixture
def files(tmp_path):
    truth = latlon_dataset(n_time=20, n_lat=12, n_lon=16, variables=("z", "t"), nan_mask=True)
    truth.to_netcdf(tmp_path / "truth.nc")
    store_of(truth, [5, 6], 4, noise=30.0).to_zarr(tmp_path / "fc.zarr")
    store_of(truth, [5], 3, members=4, noise=30.0).to_zarr(tmp_path / "ens.zarr")
    return tmp_path


def plot(*args):
    return runner.invoke(app, ["plot", *map(str, args)])


def test_the_arrays_handed_to_matplotlib_are_the_stores_values_north_up(files):
    store = open_forecast(files / "fc.zarr")
    truth = open_fields(files / "truth.nc")
    sel = select(store, truth, variable="t", init="2000-01-07", leads="2,3")
    cols = panel_arrays(sel)
    assert [c.title for c in cols] == ["truth", "forecast", "forecast − truth"]
    want = store.ds.t.isel(time=1, prediction_timedelta=[1, 2]).values
    np.testing.assert_allclose(cols[1].values, want)
    # the truth column is the truth at the valid times init + lead
    raw = xr.open_dataset(files / "truth.nc").t.sel(time=["2000-01-09", "2000-01-10"]).values
    np.testing.assert_allclose(cols[0].values, raw, rtol=1e-6)
    assert sel.valid == ["2000-01-09T00:00:00", "2000-01-10T00:00:00"] and sel.leads == [
        "P2D",
        "P3D",
    ]
    # latitude is stored descending: drawn rows are ascending (north up with origin lower)
    from minconv_cli.maps.panels import grid_of

    grid = grid_of(sel)
    np.testing.assert_allclose(grid.arrange(cols[1].values[0]), want[0][::-1])
    assert grid.extent[2] < grid.extent[3]


def test_png_has_one_row_per_lead_nan_cells_in_the_nan_colour_and_differing_panels(files):
    out = files / "map.png"
    r = plot(files / "fc.zarr", files / "truth.nc", "--out", out, "--leads", "1,4", "--json")
    assert r.exit_code == 0, r.output
    record = json.loads(r.stdout)
    assert record["rows"] == 2 and record["path"] == str(out) and len(record["columns"]) == 3
    img = np.asarray(Image.open(out).convert("RGB"))
    short = np.asarray(Image.open(_plot_png(files, "1")).convert("RGB"))
    assert img.shape[0] > 1.5 * short.shape[0] and img.shape[1] == short.shape[1]
    nan_rgb = np.array([int(NAN_COLOR[i : i + 2], 16) for i in (1, 3, 5)])
    assert (np.abs(img.astype(int) - nan_rgb).sum(axis=2) == 0).sum() > 100
    # the left (truth) and right (difference) halves of the picture differ
    w = img.shape[1]
    assert np.abs(img[:, : w // 3].astype(int) - img[:, w - w // 3 :].astype(int)).mean() > 5


def _plot_png(files, leads):
    out = files / f"one{leads}.png"
    assert (
        plot(files / "fc.zarr", files / "truth.nc", "--out", out, "--leads", leads).exit_code == 0
    )
    return out


def test_nan_colour_is_what_the_colormap_draws_for_nan():
    rgba = colormap("viridis")(np.ma.masked_invalid([np.nan]))[0]
    assert "#" + "".join(f"{round(c * 255):02x}" for c in rgba[:3]) == NAN_COLOR


def test_gif_has_one_frame_per_lead_and_frames_differ(files):
    out = files / "anim.gif"
    r = plot(files / "fc.zarr", files / "truth.nc", "--out", out, "--quiet", "--json")
    assert r.exit_code == 0, r.output
    gif = Image.open(out)
    assert gif.n_frames == 4 == json.loads(r.stdout)["frames"]
    frames = []
    for k in range(gif.n_frames):
        gif.seek(k)
        frames.append(np.asarray(gif.convert("RGB"), dtype=int))
    assert np.abs(frames[0] - frames[3]).mean() > 1


def test_ensemble_panels_mean_spread_members_and_spaghetti(files):
    store = open_forecast(files / "ens.zarr")
    sel = select(store, None, variable="z")
    cols = panel_arrays(sel)
    assert [c.title for c in cols][:2] == ["ensemble mean", "spread (std)"]
    values = store.ds.z.isel(time=0).values.copy()
    values[:, np.isnan(values).all(axis=0)] = 0.0  # land: every member NaN
    land = np.isnan(cols[0].values)
    np.testing.assert_allclose(cols[0].values[~land], values.mean(axis=0)[~land], rtol=1e-6)
    np.testing.assert_allclose(cols[1].values[~land], values.std(axis=0, ddof=1)[~land], rtol=1e-5)
    assert len(cols) == 5  # mean, spread, three members
    assert plot(files / "ens.zarr", "--out", files / "e.png").exit_code == 0
    r = plot(
        files / "ens.zarr", files / "truth.nc", "--out", files / "s.png", "--spaghetti", "54000"
    )
    assert r.exit_code == 0, r.output
    assert Image.open(files / "s.png").size[0] > 200


@pytest.mark.parametrize(
    ("store", "args", "message"),
    [
        ("fc.zarr", ["--init", "1999-01-01"], "--init"),
        ("fc.zarr", ["--leads", "9"], "--leads"),
        ("fc.zarr", ["--member", "0"], "--member"),
        ("ens.zarr", ["--member", "7"], "--member"),
        ("fc.zarr", ["--variable", "q"], "--variable"),
        ("fc.zarr", ["--level", "500"], "--level"),
        ("fc.zarr", ["--out-suffix", ".jpg"], "--out"),
    ],
)
def test_bad_input_is_one_line_and_nothing_is_written(files, store, args, message):
    out = files / "bad.png"
    if args[0] == "--out-suffix":
        out, args = files / "bad.jpg", []
    r = plot(files / store, files / "truth.nc", "--out", out, *args)
    assert r.exit_code != 0
    lines = [ln for ln in r.output.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and message in lines[0], r.output
    assert not any(p.name.startswith(("bad", ".bad")) for p in files.iterdir())


def test_an_mp4_has_one_frame_per_lead_at_the_figure_size(files):
    imageio_ffmpeg = pytest.importorskip("imageio_ffmpeg")
    out = files / "anim.mp4"
    r = plot(files / "fc.zarr", files / "truth.nc", "--out", out, "--json")
    assert r.exit_code == 0, r.output
    frames, _ = imageio_ffmpeg.count_frames_and_secs(str(out))  # decoded by ffmpeg itself
    assert frames == 4
    reader = imageio_ffmpeg.read_frames(str(out))
    meta = next(reader)
    first = np.frombuffer(next(reader), dtype=np.uint8)
    reader.close()
    assert first.size == meta["size"][0] * meta["size"][1] * 3 and first.std() > 10


def test_mp4_without_ffmpeg_is_one_line(files, monkeypatch):
    import matplotlib
    from matplotlib import animation

    monkeypatch.setattr(animation.writers, "is_available", lambda name: False)
    monkeypatch.setitem(matplotlib.rcParams, "animation.ffmpeg_path", "ffmpeg")
    r = plot(files / "fc.zarr", "--out", files / "a.mp4")
    assert r.exit_code != 0 and "ffmpeg" in r.output
    assert not (files / "a.mp4").exists()


def test_an_existing_image_is_kept_without_overwrite(files):
    out = files / "keep.png"
    out.write_bytes(b"old")
    assert plot(files / "fc.zarr", "--out", out).exit_code != 0
    assert out.read_bytes() == b"old"
    assert plot(files / "fc.zarr", "--out", out, "--overwrite").exit_code == 0
    assert Image.open(out).format == "PNG"


def test_longitudes_are_wrapped_and_projected_metres_drawn_in_km():
    from minconv_cli.maps.grid import map_grid

    lon = np.arange(16) * 22.5
    grid = map_grid(np.array([10.0, 0.0]), lon, "latitude", "longitude", {}, {})
    assert grid.extent[0] < -170 and grid.extent[1] < 180 and grid.geographic
    frame = np.arange(32.0).reshape(2, 16)
    drawn = grid.arrange(frame)
    assert drawn[0, 0] == frame[1, 8] and drawn[1, -1] == frame[0, 7]  # 180°E first, north up
    km = map_grid(
        np.arange(3) * 1000.0, np.arange(4) * 1000.0, "y", "x", {"units": "m"}, {"units": "m"}
    )
    assert km.extent == (-0.5, 3.5, -0.5, 2.5) and km.x_label == "x (km)"


def test_coastlines_are_drawn_from_natural_earth_files_already_on_disk(files, tmp_path, monkeypatch):
    pytest.importorskip("cartopy")
    import cartopy
    import shapefile

    from minconv_cli.maps.grid import add_coastlines, map_grid
    from minconv_cli.maps.panels import figure

    lat, lon = np.linspace(-60, 60, 12), np.linspace(0, 350, 16)
    grid = map_grid(lat, lon, "latitude", "longitude", {}, {})
    monkeypatch.setitem(cartopy.config, "data_dir", str(tmp_path / "cartopy"))
    fig, axes = figure(1, 1)
    assert not add_coastlines(axes[0, 0], grid)  # no files on disk: nothing drawn, nothing fetched
    folder = tmp_path / "cartopy" / "shapefiles" / "natural_earth" / "physical"
    folder.mkdir(parents=True)
    with shapefile.Writer(str(folder / "ne_110m_coastline"), shapeType=shapefile.POLYLINE) as w:
        w.field("name", "C")
        w.line([[[-20.0, 35.0], [20.0, 50.0]]])  # across the fixture's map
        w.record("coast")
    assert add_coastlines(axes[0, 0], grid)
    (line,) = axes[0, 0].lines
    np.testing.assert_allclose(line.get_xydata(), [[-20.0, 35.0], [20.0, 50.0]])
    plain = files / "plain.png"
    monkeypatch.setitem(cartopy.config, "data_dir", str(tmp_path / "empty"))
    assert plot(files / "fc.zarr", "--out", plain).exit_code == 0
    monkeypatch.setitem(cartopy.config, "data_dir", str(tmp_path / "cartopy"))
    coast = files / "coast.png"
    assert plot(files / "fc.zarr", "--out", coast).exit_code == 0
    a, b = (np.asarray(Image.open(p).convert("L"), dtype=int) for p in (plain, coast))
    assert a.shape == b.shape and ((b < 40) & (a >= 40)).sum() > 20  # new black pixels: the line
