"""The metric table: one row per score, read by scoring, `--metrics`, the records, the plots and the docs.

A row says how its metric is computed (a lazy reduction over cases and space, or derived from other
reductions once they are computed), what it needs (a climatology, ensemble members) and which way is
better. Adding a metric is one function (in `metrics.py`) and one row in `ROWS`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import xarray as xr

import minconv_cli.evaluate.events as ev
import minconv_cli.evaluate.metrics as m  # not `from minconv_cli.evaluate`: that is the package
from minconv_cli.evaluate.events import Events, parse_event_name

LOWER, HIGHER, NEARER, NONE = "lower", "higher", "nearer", ""  # which way is better
MEAN, SUM, MAX, MIN = "mean", "sum", "max", "min"  # how batches of cases combine (`pooled`)
UNDEFINED_EMPTY = "undefined: no valid cells to score"


@dataclass(frozen=True)
class Metric:
    """One score. `reduce(forecast, truth, [climatology,] space, cases, weights)` is lazy and may
    return None where it does not apply; `derive(reductions, members)` runs on computed ones."""

    name: str
    reduce: Callable[..., xr.DataArray | None] | None = None
    better: str = LOWER  # LOWER, HIGHER, NEARER (to `best`) or NONE (read against another score)
    best: float | None = 0.0  # the score of a perfect forecast (None: no such value)
    derive: Callable[..., xr.DataArray] | None = None
    derived_from: tuple[str, ...] = ()  # the reductions `derive` reads
    needs_climatology: bool = False  # left out without a climatology
    needs_members: bool = False  # an ensemble score: reduced on the members, not their mean
    chosen: bool = True  # named in `--metrics` (else: always there when its inputs are)
    in_table: bool = True  # a score per lead in the records, scores.nc and the plot's data
    headline: bool = False  # a panel of scores.png and a row of the terminal summary
    drawn_on: str | None = None  # drawn as a dashed line on that metric's panel instead
    has_units: bool = True  # in the variable's units (the plot's axis label shows them)
    per_reference: bool = (
        False  # one score per reference: derive(forecast's, reference's reductions)
    )
    undefined: str = UNDEFINED_EMPTY  # the note when it is NaN although cells were scored
    per_threshold: bool = False  # one score per `--thresholds` event threshold (`csi@1`)
    per_scale: bool = False  # and per `--fss-scales` window size (`fss@1/s5`)
    # how batches of cases combine (`evaluate/batches.py`): sums add up, maxima and minima take
    # theirs, a mean is weighted by `weight(...)` (the arguments of `reduce`: what it divides by)
    pooled: str = MEAN
    weight: Callable[..., xr.DataArray] | None = None

    def __post_init__(self) -> None:
        if self.reduce is not None and self.pooled == MEAN and self.weight is None:
            raise ValueError(
                f"metric {self.name!r}: a mean needs weight= (what it divides by), else give "
                f"pooled= one of {SUM!r}, {MAX!r}, {MIN!r}"
            )

    def compute(
        self,
        forecast: xr.DataArray,
        truth: xr.DataArray,
        climatology: xr.DataArray | None,
        space: Sequence,
        cases: Sequence,
        weights: xr.DataArray | None,
        events: Events | None = None,
        weight: bool = False,
    ) -> xr.DataArray | None:
        """The lazy reduction, or with `weight` its pooling weight (what a mean divides by); None
        where it does not apply (e.g. no climatology for ACC) or has none (a sum)."""
        fn = self.weight if weight else self.reduce
        if fn is None:
            return None
        if self.per_threshold:
            return fn(forecast, truth, space, cases, weights, events=events)
        if self.needs_climatology:
            if climatology is None:
                return None
            return fn(forecast, truth, climatology, space, cases, weights)
        return fn(forecast, truth, space, cases, weights)

    def applies(self, wanted: Sequence[str], members: bool) -> bool:
        """Whether this forecast gets it: chosen rows when asked for, the others when they fit."""
        if self.chosen:
            return self.name in wanted
        return members or not self.needs_members


ROWS = (
    Metric("rmse", derive=m.rmse_of, derived_from=("mse",), headline=True),
    Metric("mae", m.mae, weight=m.cell_weight),
    Metric("bias", m.bias, better=NEARER, weight=m.cell_weight),
    Metric(
        "acc",
        m.acc,
        weight=m.acc_cases,
        better=HIGHER,
        best=1.0,
        needs_climatology=True,
        headline=True,
        has_units=False,
        undefined="undefined: forecast or truth anomalies are zero in every case "
        "(e.g. the climatology itself)",
    ),
    Metric(
        "rel_l2",
        m.rel_l2,
        weight=m.rel_l2_cases,
        has_units=False,
        undefined="undefined: the truth is zero in every case",
    ),
    Metric(
        "skill",  # reported as skill_vs_REF for each reference REF
        better=HIGHER,
        best=1.0,
        derive=m.skill_of,
        derived_from=("mse",),
        chosen=False,
        per_reference=True,
        has_units=False,
        undefined="undefined: the reference's MSE is 0 (it is exact here)",
    ),
    Metric("mse", m.mse, chosen=False, in_table=False, weight=m.cell_weight),
    Metric(
        "spread_mse",
        m.spread_mse,
        weight=m.member_cell_weight,
        better=NONE,
        best=None,
        needs_members=True,
        chosen=False,
        in_table=False,
    ),
    Metric(
        "spread",
        derive=m.spread_of,
        derived_from=("spread_mse",),
        better=NONE,
        best=None,
        needs_members=True,
        chosen=False,
        drawn_on="rmse",
    ),
    Metric(
        "spread_skill",
        derive=m.spread_skill_of,
        derived_from=("spread", "mse"),
        better=NEARER,
        best=1.0,
        needs_members=True,
        chosen=False,
        has_units=False,
    ),
    Metric("crps", m.crps, needs_members=True, chosen=False, weight=m.member_cell_weight),
    Metric("crps_fair", m.crps_fair, needs_members=True, chosen=False, weight=m.member_cell_weight),
    Metric(
        m.RANK_HISTOGRAM,
        m.rank_histogram,
        weight=m.member_cell_weight,
        better=NONE,
        best=None,
        needs_members=True,
        chosen=False,
        in_table=False,
    ),
    Metric(
        "contingency", ev.contingency, chosen=False, in_table=False, per_threshold=True, pooled=SUM
    ),
    Metric("fss_sums", ev.fss_sums, chosen=False, in_table=False, per_threshold=True, pooled=SUM),
    *(
        Metric(
            name,
            derive=derive,
            derived_from=("contingency",),
            better=better,
            best=best,
            has_units=False,
            per_threshold=True,
            undefined=f"undefined: {why} at this threshold",
        )
        for name, derive, better, best, why in (
            ("pod", ev.pod_of, HIGHER, 1.0, "the truth has no event"),
            ("far", ev.far_of, LOWER, 0.0, "the forecast has no event"),
            ("csi", ev.csi_of, HIGHER, 1.0, "neither the forecast nor the truth has an event"),
            ("ets", ev.ets_of, HIGHER, 1.0, "hits + misses + false alarms equal the random hits"),
        )
    ),
    Metric(
        "fss",
        derive=ev.fss_of,
        derived_from=("fss_sums",),
        better=HIGHER,
        best=1.0,
        has_units=False,
        per_threshold=True,
        per_scale=True,
        undefined="undefined: neither the forecast nor the truth has an event at this threshold",
    ),
)
METRICS: dict[str, Metric] = {row.name: row for row in ROWS}


def choices() -> list[str]:
    """The names `--metrics` accepts, in table order (also its default: all of them), event
    scores aside (`event_choices`)."""
    return [name for name, row in METRICS.items() if row.chosen and not row.per_threshold]


def event_choices() -> list[str]:
    """The event scores `--metrics` accepts with `--thresholds` (pod, far, csi, ets, fss)."""
    return [name for name, row in METRICS.items() if row.chosen and row.per_threshold]


def row_of(name: str) -> Metric:
    """The row of a reported name (`skill_vs_persistence` is the `skill` row, `csi@1` `csi`)."""
    name = parse_event_name(name)[0]
    base, vs, _ = name.partition("_vs_")
    return (
        METRICS[base] if vs and base in METRICS and METRICS[base].per_reference else METRICS[name]
    )


def reference_names(references: Sequence[str]) -> list[str]:
    """The per-reference scores reported for these references (`skill_vs_persistence`, ...)."""
    rows = [n for n, r in METRICS.items() if r.per_reference]
    return [f"{n}_vs_{ref}" for n in rows for ref in references]


def member_names() -> list[str]:
    """The ensemble scores of the score table, in table order."""
    return [n for n, r in METRICS.items() if r.needs_members and r.in_table and not r.chosen]


def headline(names: Sequence[str]) -> list[str]:
    """The metrics shown in the plot and the terminal summary: the headline rows, else the first."""
    return [n for n, r in METRICS.items() if r.headline and n in names] or list(names[:1])


def drawn_on(panel: str) -> list[str]:
    """The metrics drawn as dashed lines on `panel` (an ensemble's spread on the RMSE)."""
    return [n for n, r in METRICS.items() if r.drawn_on == panel]


def event_panels(names: Sequence[str]) -> list[str]:
    """The event scores plotted: CSI at every threshold, then FSS at each scale at the first
    threshold >= 1 (else the first threshold)."""
    parsed = [(n, *parse_event_name(n)) for n in names]
    csi = [n for n, base, _, _ in parsed if base == "csi"]
    fss = [(n, t) for n, base, t, _ in parsed if base == "fss"]
    thresholds = list(dict.fromkeys(t for _, t in fss))
    pick = next((t for t in thresholds if t >= 1), thresholds[0] if thresholds else None)
    return csi + [n for n, t in fss if t == pick]


def event_names(wanted: Sequence[str], events: Events | None) -> list[str]:
    """`wanted` with each event score as its reported names: `csi@1`, `fss@1/s5`, ..."""
    out: list[str] = []
    for name in wanted:
        row = METRICS[name]
        if not row.per_threshold or events is None:
            out.append(name)
            continue
        for t in events.thresholds:
            scales = events.scales if row.per_scale else (None,)
            out += [ev.event_name(name, t, s) for s in scales]
    return out
