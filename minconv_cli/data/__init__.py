"""The data layer: open NetCDF/Zarr files, recognise dims, split, normalise, and cut training windows."""

from minconv_cli.data.fields import Channel, Fields
from minconv_cli.data.formats import detect_format
from minconv_cli.data.normalize import Normalizer
from minconv_cli.data.open import open_dataset, open_fields
from minconv_cli.data.splits import split_fields
from minconv_cli.data.windows import WindowDataset, window_starts

__all__ = [
    "Channel",
    "Fields",
    "Normalizer",
    "WindowDataset",
    "detect_format",
    "open_dataset",
    "open_fields",
    "split_fields",
    "window_starts",
]
