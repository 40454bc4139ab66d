"""`split_fields`: time ranges (inclusive), sample index ranges, fractions and named splits."""

import numpy as np
import pytest
from factories import latlon_dataset, trajectory_dataset

from minconv_cli.core.errors import MinconvError
from minconv_cli.data import open_fields, split_fields


@pytest.fixture
def daily(tmp_path):
    latlon_dataset(n_time=40, start="2000-01-01").to_netcdf(tmp_path / "daily.nc")
    return open_fields(tmp_path / "daily.nc")


@pytest.fixture
def runs(tmp_path):
    trajectory_dataset(
        n_traj=10, n_time=8, splits=["train"] * 7 + ["val"] * 2 + ["test"]
    ).to_netcdf(tmp_path / "runs.nc")
    return open_fields(tmp_path / "runs.nc")


def test_time_range_is_inclusive_and_open_ended(daily):
    part = split_fields(daily, "2000-01-05/2000-01-09")
    assert part.n_times == 5 and str(part.times[-1])[:10] == "2000-01-09"
    assert split_fields(daily, "2000-02-01/").n_times == 9
    assert split_fields(daily, "/2000-01-02").n_times == 2
    assert part.time_step == daily.time_step and "[2000-01-05/2000-01-09]" in part.path_label


def test_fraction_is_of_time_without_sample_dims_and_of_samples_with_them(daily, runs):
    assert split_fields(daily, "0.0:0.75").n_times == 30
    assert split_fields(daily, "0.75:1.0").n_times == 10
    part = split_fields(runs, "0.8:1.0")
    assert part.n_samples == 2 and part.n_times == 8
    assert [part.sample_labels(i)["trajectory"] for i in range(2)] == [8, 9]


def test_sample_index_range_and_named_split(runs):
    assert split_fields(runs, "trajectory=2:5").sample_labels(0) == {"trajectory": 2}
    assert split_fields(runs, "trajectory=9").n_samples == 1
    val = split_fields(runs, "split=val")
    assert [val.sample_labels(i)["trajectory"] for i in range(val.n_samples)] == [7, 8]
    np.testing.assert_array_equal(val.frames(1, 0, 8), runs.frames(8, 0, 8))


@pytest.mark.parametrize(
    "spec, message",
    [
        ("2010-01-01/2010-12-31", "no times"),
        ("split=holdout", r"no split == 'holdout' \(values: test, train, val\)"),
        ("member=0:3", "no sample dim or coordinate 'member'"),
        ("0.8:0.2", "0 <= start < end <= 1"),
        ("trajectory=a:b", "integer positions"),
        ("banana", "expected START/END"),
    ],
)
def test_bad_split_specs_are_errors(daily, runs, spec, message):
    fields = daily if spec.startswith("2010") else runs
    with pytest.raises(MinconvError, match=message):
        split_fields(fields, spec)
