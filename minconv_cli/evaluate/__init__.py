"""Scoring forecast stores against the truth (the library side of `minconv evaluate`).

`align` (valid times and grids; `--compare` forecasts on the main one's cases), `checks` (units,
done flags against the stored chunks), `cases` (the one set of cells every forecast and
reference is scored on, and the cases dropped by reason), `climatology` (the climatology
reference), `metric_table` (one row per metric: how it is computed, what it needs, which way is
better; scoring, `--metrics`, the records and the plots read it), `metrics` (the score functions
the rows name), `scoring` (the rows reduced chunk-wise with dask, and the score table), `reports`
(the files), `plots` (the figures); the store layout itself is `minconv_cli.rollout.store`.
"""

from minconv_cli.evaluate.align import Aligned, align, to_forecast_grid
from minconv_cli.evaluate.labels import format_lead, lead_hours
from minconv_cli.evaluate.metric_table import METRICS, Metric
from minconv_cli.evaluate.reports import check_outputs, default_out_dir, write_reports
from minconv_cli.evaluate.scoring import REFERENCES, Scores, evaluate, parse_compare
from minconv_cli.rollout.store import ForecastStore, open_forecast

__all__ = [
    "METRICS",
    "REFERENCES",
    "Aligned",
    "Metric",
    "ForecastStore",
    "Scores",
    "align",
    "check_outputs",
    "default_out_dir",
    "evaluate",
    "format_lead",
    "lead_hours",
    "open_forecast",
    "parse_compare",
    "to_forecast_grid",
    "write_reports",
]
