"""Forecasts from initial conditions (the library side of `minconv rollout`).

`init_times` (which init times a spec names), `plan` (`ForecastPlan`: which rows, from which
initial frames, with which rule on every lead; `DeterministicPlan`, `EnsemblePlan`),
`forecast_loop` (`forecast`: the model from context frames to leads), `job` (the sequences and
their frames), `batch_loop` (the store opened, forecast batch by batch, finished), `run`
(`rollout`: checkpoints and data checked, then the loop), `shards` and `shard_store` (one store
written by torchrun ranks or `--shard I/N` tasks); the store layout itself is
`minconv_cli.rollout.store`.
"""

from minconv_cli.rollout.batch_loop import RolloutResult
from minconv_cli.rollout.forecast_loop import forecast
from minconv_cli.rollout.init_times import select_init_times, time_labels
from minconv_cli.rollout.job import Job, file_sha256
from minconv_cli.rollout.plan import DeterministicPlan, EnsemblePlan, ForecastPlan, make_plan
from minconv_cli.rollout.run import rollout

__all__ = [
    "DeterministicPlan",
    "EnsemblePlan",
    "ForecastPlan",
    "Job",
    "RolloutResult",
    "file_sha256",
    "forecast",
    "make_plan",
    "rollout",
    "select_init_times",
    "time_labels",
]
