"""Minimal convolutional RNNs (MinConvGRU/LSTM/ExpLSTM) and the ConvGRU/ConvLSTM baselines."""

from minconv_cli.models.network import RecurrentForecaster
from minconv_cli.models.registry import (
    MODEL_NAMES,
    NORM_CHOICES,
    auto_norm,
    count_parameters,
    create_model,
    grid_norm_parameters,
    width_for_params,
    widths_for_params,
)

__all__ = [
    "MODEL_NAMES",
    "NORM_CHOICES",
    "RecurrentForecaster",
    "auto_norm",
    "count_parameters",
    "create_model",
    "grid_norm_parameters",
    "width_for_params",
    "widths_for_params",
]
