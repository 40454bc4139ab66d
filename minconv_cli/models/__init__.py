"""Minimal convolutional RNNs (MinConvGRU/LSTM/ExpLSTM) and the ConvGRU/ConvLSTM baselines."""

from minconv_cli.models.network import RecurrentForecaster
from minconv_cli.models.registry import (
    MODEL_NAMES,
    count_parameters,
    create_model,
    width_for_params,
    widths_for_params,
)

__all__ = [
    "MODEL_NAMES",
    "RecurrentForecaster",
    "count_parameters",
    "create_model",
    "width_for_params",
    "widths_for_params",
]
