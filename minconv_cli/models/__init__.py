"""Minimal convolutional RNNs (MinConvGRU/LSTM/ExpLSTM) and the ConvGRU/ConvLSTM baselines."""

from minconv_cli.models.network import RecurrentForecaster
from minconv_cli.models.registry import (
    auto_norm,
    count_parameters,
    create_model,
    fit_width,
    fit_widths,
    grid_norm_parameters,
    width_for_params,
    widths_for_params,
)
from minconv_cli.models.spec import MODEL_NAMES, NORM_CHOICES, ModelSpec

__all__ = [
    "MODEL_NAMES",
    "NORM_CHOICES",
    "ModelSpec",
    "RecurrentForecaster",
    "auto_norm",
    "count_parameters",
    "create_model",
    "fit_width",
    "fit_widths",
    "grid_norm_parameters",
    "width_for_params",
    "widths_for_params",
]
