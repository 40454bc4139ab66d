"""The training run behind `minconv train`: data, loop, validation, checkpoints, DDP."""

from minconv_cli.training.build import build_model
from minconv_cli.training.loop import Reporter, TrainResult, train_model

__all__ = ["Reporter", "TrainResult", "build_model", "train_model"]
