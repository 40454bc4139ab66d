"""One home each for the format suffixes and the error line: the readers and writers that tell
formats by name agree with `core.files`, and `core.errors.one_line` is the one error line."""

from pathlib import Path

import pytest

from minconv_cli.core.errors import MinconvError, one_line
from minconv_cli.core.files import (
    NETCDF_OUTPUT_SUFFIXES,
    NETCDF_SUFFIXES,
    SIMULATED_NETCDF_SUFFIXES,
    ZARR_SUFFIX,
)
from minconv_cli.data.convert import output_format as convert_output_format
from minconv_cli.data.formats import detect_format
from minconv_cli.data.remote import detect_url_format
from minconv_cli.simulate.files import output_format as simulated_output_format


def test_output_suffixes_are_subsets_of_what_is_read_as_netcdf():
    assert set(NETCDF_OUTPUT_SUFFIXES) <= set(NETCDF_SUFFIXES)
    assert set(SIMULATED_NETCDF_SUFFIXES) <= set(NETCDF_OUTPUT_SUFFIXES)


@pytest.mark.parametrize("suffix", NETCDF_OUTPUT_SUFFIXES)
def test_convert_writes_netcdf_for_each_output_suffix(suffix):
    assert convert_output_format(Path(f"out{suffix}"), None) == "netcdf"
    assert convert_output_format(Path(f"out{ZARR_SUFFIX}"), None) == "zarr"


def test_simulate_writes_netcdf_only_for_its_own_suffixes():
    for suffix in SIMULATED_NETCDF_SUFFIXES:
        assert simulated_output_format(Path(f"out{suffix}")) == "netcdf"
    with pytest.raises(MinconvError, match="unknown output format"):
        simulated_output_format(Path("out.netcdf"))


@pytest.mark.parametrize("suffix", NETCDF_SUFFIXES)
def test_a_netcdf_name_with_a_bad_header_is_named_as_such(tmp_path, suffix):
    path = tmp_path / f"broken{suffix}"
    path.write_bytes(b"not netcdf")
    with pytest.raises(MinconvError, match="not a readable NetCDF file"):
        detect_format(path)


def test_a_netcdf_url_is_refused_for_every_netcdf_suffix():
    for suffix in NETCDF_SUFFIXES:
        with pytest.raises(MinconvError, match="cannot be read from a URL"):
            detect_url_format(f"https://example.org/data{suffix}")


def test_one_line_joins_lines_names_empty_errors_and_cuts_long_ones():
    assert one_line(ValueError("a\n  b")) == "a b"
    assert one_line(KeyError()) == "KeyError"
    assert len(one_line(ValueError("x" * 500))) == 300
