"""Data behind fsspec URLs (https://, s3://, gs://, ...): telling URLs from local paths, opening
Zarr stores there read-only, and turning network failures into one-line errors.

Credentials and options come from fsspec's own configuration (e.g. `FSSPEC_S3_ANON=true`, the
standard AWS/Google environment variables), so none end up in configs, checkpoints or stores.
"""

from __future__ import annotations

import atexit
import os
import re
import sys
import warnings
from pathlib import Path
from typing import Any

import xarray as xr

from minconv_cli.core.errors import MinconvError, one_line
from minconv_cli.core.files import NETCDF_SUFFIXES

# `scheme://...` (or a chained `simplecache::s3://...`, refused: zarr 3 cannot read through
# one); two letters at least, so `C:/` stays a path.
URL_PATTERN = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]+(://|::)")
# A URL that went through `pathlib.Path` (`s3://b/x` -> `s3:/b/x`): refused where output goes.
MANGLED_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]+:/")
TIMEOUT_ENV = "MINCONV_REMOTE_TIMEOUT"
DEFAULT_TIMEOUT_S = 60.0
# The package each common protocol needs; all are in the `remote` extra.
PACKAGES = {
    "http": "aiohttp",
    "https": "aiohttp",
    "s3": "s3fs",
    "s3a": "s3fs",
    "gs": "gcsfs",
    "gcs": "gcsfs",
    "az": "adlfs",
    "abfs": "adlfs",
    "abfss": "adlfs",
}
EXTRA = "pip install 'minconv-cli[remote]'"


def is_url(path: str | Path) -> bool:
    """True for an fsspec URL given as a string (a `Path` is always local)."""
    return isinstance(path, str) and bool(URL_PATTERN.match(path))


def as_source(path: str | Path) -> str | Path:
    """A data source as the readers take it: the URL string unchanged, else a local `Path`."""
    return path if is_url(path) else Path(path)


def local_path(path: str | Path, what: str) -> Path:
    """`path` as a local `Path`; a URL (where only a local file can go) is one clear error."""
    if MANGLED_URL.match(str(path)):
        raise MinconvError(
            f"{path}: {what} must be a local path (URLs are read only as input data)"
        )
    return Path(path)


def protocol(url: str) -> str:
    """The URL's fsspec protocol: `s3://bucket/x.zarr` -> `s3`."""
    return url.split("://", 1)[0].lower()


def check_protocol(url: str) -> None:
    """The protocol must be known to fsspec and its package installed (one line naming the extra)."""
    import fsspec

    if "::" in url:
        raise MinconvError(
            f"{url}: chained URLs (a::b://) are not supported; give the store's plain URL"
        )
    proto = protocol(url)
    try:
        fsspec.get_filesystem_class(proto)
    except ValueError:
        raise MinconvError(
            f"{url}: unknown URL scheme {proto!r} (use a local path or a URL fsspec reads, "
            "e.g. https://, s3://, gs://)"
        ) from None
    except ImportError:
        package = PACKAGES.get(proto, f"the fsspec implementation of {proto}://")
        raise MinconvError(
            f"{url}: reading {proto}:// needs {package}; install it with {EXTRA}"
        ) from None


def timeout_s() -> float:
    """Seconds to wait for a connection or a read before giving up (`MINCONV_REMOTE_TIMEOUT`)."""
    text = os.environ.get(TIMEOUT_ENV, "")
    try:
        value = float(text) if text.strip() else DEFAULT_TIMEOUT_S
    except ValueError:
        raise MinconvError(f"{TIMEOUT_ENV}={text!r}: expected a number of seconds") from None
    if not value > 0:
        raise MinconvError(f"{TIMEOUT_ENV}={text!r}: must be positive")
    return value


def storage_options(url: str) -> dict[str, Any]:
    """Options for the URL's file system: a connect/read timeout over HTTP(S), so an unreachable
    server fails instead of hanging; everything else comes from fsspec's configuration."""
    import fsspec.config

    proto = protocol(url)
    if proto not in ("http", "https") or "client_kwargs" in fsspec.config.conf.get(proto, {}):
        return {}
    import aiohttp

    limit = timeout_s()
    timeout = aiohttp.ClientTimeout(total=None, connect=limit, sock_read=limit)
    return {"client_kwargs": {"timeout": timeout}}


def store_url(url: str) -> str:
    """The store's root URL (a trailing `/`, `/zarr.json`, `/.zgroup` or `/.zmetadata` removed)."""
    root = url.rstrip("/")
    for name in ("zarr.json", ".zgroup", ".zmetadata"):
        if root.endswith("/" + name):
            return root[: -len(name) - 1]
    return root


def detect_url_format(url: str) -> str:
    """`"zarr"` for a URL we can read; NetCDF and unknown schemes are one-line errors."""
    check_protocol(url)
    path = url.split("?", 1)[0].rstrip("/")
    if Path(path).suffix.lower() in NETCDF_SUFFIXES:
        raise MinconvError(
            f"{url}: NetCDF files cannot be read from a URL (only Zarr stores); download it first"
        )
    return "zarr"


def open_url(url: str, chunks: Any) -> xr.Dataset:
    """Open the Zarr store at `url` read-only and lazily (v2 or v3, consolidated or not)."""
    detect_url_format(url)
    root = store_url(url)
    options = storage_options(root)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = xr.open_zarr(root, consolidated=None, chunks=chunks, storage_options=options)
    except MinconvError:
        raise
    except Exception as err:  # a network or reader failure, told in one line
        _forget_pending_reads()
        raise url_error(root, err) from None
    ds.encoding["source_format"] = "zarr"
    return ds


def url_error(url: str, err: BaseException) -> MinconvError:
    """One line for a failure reading `url`: no store there, unreachable, too slow, or unreadable."""
    names = {cls.__name__ for cls in type(err).__mro__}
    if "TimeoutError" in names:
        return MinconvError(
            f"{url}: no answer within {timeout_s():g} s ({TIMEOUT_ENV} sets the limit)"
        )
    if names & {"ClientConnectionError", "ConnectionError"}:  # aiohttp's, botocore's, builtin
        return MinconvError(f"{url}: cannot reach the server ({one_line(err)})")
    if names & {"NodeNotFoundError", "GroupNotFoundError", "FileNotFoundError"}:
        return MinconvError(
            f"{url}: no Zarr store there (no zarr.json, .zgroup or .zmetadata found)"
        )
    return MinconvError(f"{url}: cannot read as a Zarr store ({one_line(err)})")


def zarr_format_of_url(url: str) -> int:
    """2 or 3: the Zarr format of the store at `url`."""
    import zarr

    root = store_url(url)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            group = zarr.open_group(root, mode="r", storage_options=storage_options(root))
    except Exception as err:
        _forget_pending_reads()
        raise url_error(root, err) from None
    return int(group.metadata.zarr_format)


def _forget_pending_reads() -> None:
    """After a failed open, reads still pending in the storage layer's event loop are dropped at
    exit, each printing an "Exception ignored in coroutine" traceback under the one-line error:
    silence those (only then, only at exit)."""
    atexit.unregister(_quiet_exit)  # once is enough, however many opens failed
    atexit.register(_quiet_exit)


def _quiet_exit() -> None:
    sys.unraisablehook = lambda _: None
