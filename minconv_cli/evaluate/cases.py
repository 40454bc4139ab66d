"""The common case set: every forecast and reference is scored on the same cells, those where all
of them and the truth are finite; and how many cases that kept and dropped, by reason.

A case is one (init time, lead[, sample]) of a forecast: its fields at one valid time, all
variables, levels and ensemble members together. It is scored when at least one of its grid cells
is; a dropped case is counted under the first reason, in the order of `REASONS`, that leaves it
without a scored cell.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from dataclasses import dataclass

import xarray as xr

from minconv_cli.evaluate.align import Aligned
from minconv_cli.evaluate.batches import take_init
from minconv_cli.rollout.store import MEMBER_DIM

REASONS = {
    "outside": "outside the truth",
    "unfinished": "unfinished sequence",
    "nan_forecast": "NaN in the forecast",
    "nan_truth": "NaN in the truth",
    "nan_reference": "NaN in a reference",
    "other_forecast": "missing in another forecast",
}
# cases still scored after each cell-level condition, for one forecast: its own values finite,
# then the truth, then every reference (and the climatology ACC uses), then every other forecast
_STAGES = ("forecast", "truth", "reference", "all")


@dataclass
class CaseSet:
    """Forecasts, truth and references masked to the common cells, and the lazy case counts."""

    forecast: dict[tuple[str, str], xr.DataArray]  # (forecast name, variable)
    truth: dict[str, xr.DataArray]
    references: dict[tuple[str, str], xr.DataArray]  # (reference name, variable)
    # forecast name -> stage -> whether each case is still scored (lazy, over the case dims)
    alive: dict[str, dict[str, xr.DataArray]]
    fixed: dict[str, dict[str, int]]  # forecast name -> the counts before the stages (scope, ready)

    def stage_counts(self) -> dict[str, dict[str, xr.DataArray]]:
        """Forecast name -> the cases still scored after each stage (0-d, lazy)."""
        return {n: {s: m.sum() for s, m in stages.items()} for n, stages in self.alive.items()}

    def take(self, span: slice) -> CaseSet:
        """The cases of the init times `span` (their positions); the fixed counts stay."""
        return CaseSet(
            {k: take_init(x, span) for k, x in self.forecast.items()},
            {k: take_init(x, span) for k, x in self.truth.items()},
            {k: take_init(x, span) for k, x in self.references.items()},
            {n: {s: take_init(m, span) for s, m in st.items()} for n, st in self.alive.items()},
            self.fixed,
        )


def _finite(fc: xr.DataArray) -> xr.DataArray:
    """Where a forecast has a value: every member of an ensemble."""
    ok = fc.notnull()
    return ok.all(MEMBER_DIM) if MEMBER_DIM in ok.dims else ok


def _all(masks: list[xr.DataArray]) -> xr.DataArray | bool:
    out: xr.DataArray | bool = True
    for m in masks:
        out = m if out is True else out & m
    return out


def common_cases(
    aligned: list[Aligned],
    references: Mapping[str, Mapping[str, xr.DataArray]],
    climatology: Mapping[str, xr.DataArray] | None,
) -> CaseSet:
    """Mask every forecast (`aligned`, the main one first), the truth and every reference to the
    cells where all of them (and the climatology, when ACC or the reference uses it) are finite.

    `references` (name -> variable -> forecast broadcast like the truth) are those in use.
    """
    main = aligned[0]
    case_dims = list(main.ready.dims)
    forecast, truth, refs = {}, {}, {}
    alive: dict[str, dict[str, xr.DataArray]] = {a.store.name: {} for a in aligned}
    for v in main.store.variables:
        members = [a for a in aligned if v in a.forecast]
        finite = {a.store.name: _finite(a.forecast[v]) for a in members}
        truth_ok = main.truth[v].notnull()
        ref_ok = [r[v].notnull() for r in references.values() if v in r]
        if climatology is not None and v in climatology:
            ref_ok.append(climatology[v].notnull())
        reference_ok = _all(ref_ok)
        valid = _all([*finite.values(), truth_ok]) & reference_ok
        for a in members:
            forecast[(a.store.name, v)] = _restrict(a.forecast[v], valid)
            own = finite[a.store.name]
            stages = {
                "forecast": own,
                "truth": own & truth_ok,
                "reference": own & truth_ok & reference_ok,
                "all": valid,
            }
            cells = _cell_dims(valid, case_dims)
            for stage, mask in stages.items():
                scored = mask.any(cells) & a.ready
                seen = alive[a.store.name].get(stage)
                alive[a.store.name][stage] = scored if seen is None else seen | scored
        truth[v] = _restrict(main.truth[v], valid)
        for name, r in references.items():
            if v in r:
                refs[(name, v)] = _restrict(r[v], valid)
    fixed = {a.store.name: {"scope": a.scope, "ready": int(a.ready.sum())} for a in aligned}
    return CaseSet(forecast, truth, refs, alive, fixed)


def _restrict(x: xr.DataArray, valid: xr.DataArray) -> xr.DataArray:
    """`x` where `valid` (NaN elsewhere); in memory, `x` itself when that would change nothing."""
    if x.chunks is None and valid.chunks is None and bool((x.notnull() == valid).all()):
        return x
    return x.where(valid)


def _cell_dims(da: xr.DataArray, case_dims: list[Hashable]) -> list[Hashable]:
    return [d for d in da.dims if d not in case_dims and d != MEMBER_DIM]


def overlap_counts(aligned: Aligned, counts: Mapping[str, int]) -> dict:
    """`cases` scored of `of_cases`, and `dropped` by reason, from the computed stage counts."""
    order = [
        aligned.of_cases,
        counts["scope"],
        counts["ready"],
        *(counts[s] for s in _STAGES),
    ]
    order = [int(n) for n in order]
    dropped = {reason: a - b for reason, a, b in zip(REASONS, order[:-1], order[1:], strict=True)}
    return {"cases": order[-1], "of_cases": order[0], "dropped": dropped}
