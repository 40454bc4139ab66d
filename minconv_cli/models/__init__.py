"""Minimal convolutional RNNs (MinConvGRU/LSTM/ExpLSTM) and the ConvGRU/ConvLSTM baselines.

`spec.py`: `ModelSpec` and the model table `MODELS`; `cells.py` / `gates.py` / `gate_maps.py`
(the CPU fused recurrence from the conv output) / `scan.py` / `padding.py`: the layers; `network.py`: the shared network; `create.py`: `create_model`;
`sizing.py`: widths for a parameter budget; `checkpoint.py` / `data_contract.py`: files.
"""

from minconv_cli.models.create import (
    auto_norm,
    count_parameters,
    create_model,
    grid_norm_parameters,
)
from minconv_cli.models.network import RecurrentForecaster
from minconv_cli.models.sizing import fit_width, fit_widths, width_for_params, widths_for_params
from minconv_cli.models.spec import MODEL_NAMES, MODELS, NORM_CHOICES, ModelRow, ModelSpec

__all__ = [
    "MODELS",
    "MODEL_NAMES",
    "NORM_CHOICES",
    "ModelRow",
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
