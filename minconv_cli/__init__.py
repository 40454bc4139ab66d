"""minconv: forecasting gridded spatiotemporal fields with minimal convolutional RNNs."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("minconv-cli")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0.0.0+local"
