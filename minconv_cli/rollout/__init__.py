"""Forecasts from initial conditions (the library side of `minconv rollout`).

`init_times` (which init times a spec names), `plan` (`ForecastPlan`: which rows, from which
initial frames, with which rule on every lead; `DeterministicPlan`, `EnsemblePlan`),
`forecast_loop` (`forecast`: the model from context frames to leads), `run` (`rollout`:
checkpoints and data checked, the store written batch by batch); the store layout itself is
`minconv_cli.rollout.store`.
"""

from minconv_cli.rollout.forecast_loop import forecast
from minconv_cli.rollout.init_times import select_init_times, time_labels
from minconv_cli.rollout.plan import DeterministicPlan, EnsemblePlan, ForecastPlan, make_plan
from minconv_cli.rollout.run import Job, RolloutResult, file_sha256, rollout

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
