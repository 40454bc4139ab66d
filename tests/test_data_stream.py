"""Lazily read windows come in chunk-aligned blocks: exactly the `WindowDataset`'s windows and values,
each once per epoch, in an order fixed by (seed, epoch) that a resumed epoch continues exactly."""

import numpy as np
import pytest
import torch
from test_data_windows import encoded, identity
from torch.utils.data import DataLoader

from minconv_cli.core.errors import MinconvError
from minconv_cli.data import Normalizer, WindowDataset, open_fields
from minconv_cli.data.memory import fits_in_memory, memory_budget, parse_size
from minconv_cli.data.stream import BlockStream, plan_blocks, time_blocks, time_chunks

LENGTH = 4


@pytest.fixture
def lazy(tmp_path, monkeypatch):
    """Windows of a Zarr store (3 trajectories with NaN holes, 40 times in chunks of 6), read lazily."""
    data = encoded(n_traj=3, n_time=40)
    data["u"][1, 3:5, 0, 1] = np.nan
    data.chunk({"trajectory": 1, "time": 6}).to_zarr(tmp_path / "d.zarr", zarr_format=3)
    monkeypatch.setattr("minconv_cli.data.open.LOAD_BELOW_BYTES", 0)
    fields = open_fields(tmp_path / "d.zarr")
    assert fields.is_lazy
    return WindowDataset(fields, LENGTH, Normalizer.fit(fields))


def serve(stream, workers=0):
    return list(DataLoader(stream, batch_size=None, num_workers=workers))


def where(batches):
    """(sample, start) of every window served, in order."""
    return [
        (int(s), int(t))
        for b in batches
        for s, t in zip(b["sample"].tolist(), b["start"].tolist(), strict=True)
    ]


def small(windows, **kw):
    """A stream whose buffer holds blocks of only a few chunks (so an epoch spans many blocks)."""
    frame = 4 * 4 * 4
    return BlockStream(windows, 5, buffer_bytes=8 * 2.5 * 14 * frame, **kw)


def test_served_windows_are_exactly_the_datasets_each_once(lazy):
    stream = small(lazy, shuffle=True, seed=1)
    assert stream.frames == 14 - (LENGTH - 1) and len(stream.blocks) > 3 * 3
    for epoch in (0, 1):
        stream.set_epoch(epoch)
        batches = serve(stream)
        assert len(batches) == len(stream) == -(-len(lazy) // 5)
        seen = []
        for batch in batches:
            for j, (sample, start) in enumerate(zip(batch["sample"], batch["start"], strict=True)):
                i = int(sample) * len(lazy.starts) + int(np.searchsorted(lazy.starts, int(start)))
                item = lazy[i]
                assert torch.equal(batch["x"][j], item["x"])
                assert torch.equal(batch["mask"][j], item["mask"])
                assert torch.equal(batch["static"][j], item["static"])
                seen.append(i)
        assert sorted(seen) == list(range(len(lazy)))


def test_windows_across_files_and_gaps_and_a_stride(tmp_path, monkeypatch):
    encoded(n_time=6, t0=0).to_netcdf(tmp_path / "a.nc")
    encoded(n_time=9, t0=6).to_netcdf(tmp_path / "b.nc")
    encoded(n_time=7, t0=20).to_netcdf(tmp_path / "c.nc")  # a gap: times 15..19 are missing
    monkeypatch.setattr("minconv_cli.data.open.LOAD_BELOW_BYTES", 0)
    fields = open_fields([tmp_path / p for p in ("a.nc", "b.nc", "c.nc")])
    windows = WindowDataset(fields, LENGTH, identity(), stride=2)
    assert time_chunks(windows) == [6, 9, 7]
    stream = BlockStream(windows, 3, shuffle=False)
    assert where(serve(stream)) == [
        windows.locate(i) for i in range(len(windows))
    ]  # validation: dataset order
    x = torch.cat([b["x"] for b in serve(stream)])
    assert torch.equal(x, torch.stack([windows[i]["x"] for i in range(len(windows))]))


def test_blocks_follow_the_chunks_and_read_each_time_about_once(lazy):
    assert time_chunks(lazy) == [6] * 6 + [4]
    assert time_blocks([6] * 6 + [4], 14) == [(0, 12), (12, 24), (24, 36), (36, 40)]
    assert time_blocks([10, 3], 4) == [(0, 4), (4, 8), (8, 10), (10, 13)]  # big chunks are cut
    blocks = plan_blocks(lazy, 14)
    assert [(b.start, b.stop) for b in blocks if b.sample == 0] == [
        (0, 15),
        (12, 27),
        (24, 39),
        (36, 40),
    ]
    windows = np.concatenate([b.windows for b in blocks])
    assert sorted(windows.tolist()) == list(range(len(lazy)))
    read = sum(b.stop - b.start for b in blocks)
    assert read <= 3 * 40 * (1 + (LENGTH - 1) / 12)


def test_the_order_is_a_function_of_seed_and_epoch(lazy):
    def order(seed, epoch):
        stream = small(lazy, shuffle=True, seed=seed)
        stream.set_epoch(epoch)
        return where(serve(stream))

    assert order(0, 1) == order(0, 1)
    assert order(0, 1) != order(0, 2) and order(0, 1) != order(1, 1)
    first = order(0, 0)[:10]
    assert len({sample for sample, _ in first}) > 1  # batches mix blocks, not one trajectory's run


@pytest.mark.parametrize("workers", [0, 2])
def test_a_resumed_epoch_serves_exactly_the_rest_of_the_epoch(lazy, workers):
    stream = small(lazy, shuffle=True, seed=3, workers=workers)
    stream.set_epoch(4)
    whole = serve(stream, workers)
    assert sorted(where(whole)) == [lazy.locate(i) for i in range(len(lazy))]
    for skip in (1, 2, 3, len(whole) - 1):
        stream.set_epoch(4, skip)
        rest = serve(stream, workers)
        assert len(rest) == len(whole) - skip == len(stream)
        for a, b in zip(rest, whole[skip:], strict=True):
            assert torch.equal(a["x"], b["x"]) and torch.equal(a["start"], b["start"])


def test_ranks_split_the_epoch_into_equal_shares_of_every_window(lazy):
    shares = []
    for rank in (0, 1):
        stream = small(lazy, shuffle=True, seed=0, rank=rank, world=2)
        stream.set_epoch(2)
        shares.append(where(serve(stream)))
    assert len(shares[0]) == len(shares[1]) == -(-len(lazy) // 2)
    assert set(shares[0]) | set(shares[1]) == {lazy.locate(i) for i in range(len(lazy))}
    val = [BlockStream(lazy, 5, shuffle=False, rank=r, world=2) for r in (0, 1)]
    served = [w for v in val for w in where(serve(v))]
    assert served == [lazy.locate(i) for i in range(len(lazy))]  # validation: no padding


def test_memory_sizes_and_the_budget():
    assert parse_size("512MB") == 512 * 2**20 and parse_size("1.5GiB") == int(1.5 * 2**30)
    assert parse_size(1000) == 1000 and parse_size("2g") == 2 * 2**30
    with pytest.raises(MinconvError, match="data.memory_limit: expected a size like 2GB"):
        parse_size("lots")
    assert memory_budget() > 0 and memory_budget("1GB") == 2**30
    assert fits_in_memory(2**20, 2**30) and not fits_in_memory(2**30, 2**30)


def test_the_memory_limit_decides_between_loading_and_reading_lazily(tmp_path):
    encoded().to_zarr(tmp_path / "d.zarr", zarr_format=3)
    assert not open_fields(tmp_path / "d.zarr", memory_limit="1GB").is_lazy
    assert open_fields(tmp_path / "d.zarr", memory_limit=1000).is_lazy
