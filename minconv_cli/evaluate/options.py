"""The options of `evaluate` that choose scores: `--metrics`, `--thresholds`, `--fss-scales`,
checked (one line per mistake) before anything is read or written."""

from __future__ import annotations

import math
from collections.abc import Sequence

from minconv_cli.core.errors import MinconvError
from minconv_cli.evaluate.events import Events
from minconv_cli.evaluate.metric_table import choices, event_choices

Listed = Sequence[str] | Sequence[float] | str | None


def parse_list(
    value: Sequence[str] | str,
    allowed: Sequence[str],
    option: str,
    known: Sequence[str] = (),
) -> list[str]:
    """Comma-separated (or listed) names, lower-cased and de-duplicated; unknown ones refused
    (`known` ones too, unless allowed, by the caller: they need another option)."""
    items = value.split(",") if isinstance(value, str) else list(value)
    items = [s.strip().lower() for s in items if s.strip()]
    bad = [s for s in items if s not in allowed and s not in known]
    if bad:
        raise MinconvError(f"{option}: unknown {', '.join(bad)}; choose from {', '.join(allowed)}")
    return list(dict.fromkeys(items))


def _items(value: Listed) -> list[str]:
    if value is None:
        return []
    items = value.split(",") if isinstance(value, str) else [str(v) for v in value]
    return [s.strip() for s in items if s.strip()]


def parse_thresholds(value: Listed) -> tuple[float, ...]:
    """`--thresholds 0.1,1,5`: event thresholds (>= 0, in the variable's units)."""
    out = []
    for item in _items(value):
        try:
            t = float(item)
        except ValueError:
            raise MinconvError(f"--thresholds: {item!r} is not a number") from None
        if not math.isfinite(t) or t < 0:
            raise MinconvError(
                f"--thresholds: {item} is not a threshold; give numbers >= 0 in the variable's units"
            )
        out.append(t)
    return tuple(dict.fromkeys(out))


def parse_scales(value: Listed) -> tuple[int, ...]:
    """`--fss-scales 1,5,10`: FSS window sizes in grid cells (whole numbers >= 1)."""
    out = []
    for item in _items(value):
        try:
            s = float(item)
        except ValueError:
            s = math.nan
        if not math.isfinite(s) or s != int(s) or s < 1:
            raise MinconvError(
                f"--fss-scales: {item} is not a window size; give whole numbers of grid cells >= 1"
            )
        out.append(int(s))
    return tuple(dict.fromkeys(out))


def metric_options(
    metrics_: Sequence[str] | str | None, thresholds: Listed, fss_scales: Listed
) -> tuple[list[str], Events | None]:
    """The metrics asked for and the events they are scored at. `--thresholds` adds pod, far,
    csi and ets (and fss with `--fss-scales`) unless `--metrics` names some of them."""
    events = Events(parse_thresholds(thresholds), parse_scales(fss_scales))
    if events.scales and not events.thresholds:
        raise MinconvError("--fss-scales: fss needs --thresholds (the events it compares)")
    base, per_event = choices(), event_choices()
    allowed = [*base, *per_event] if events.thresholds else base
    items = parse_list(base if metrics_ is None else metrics_, allowed, "--metrics", per_event)
    named = [m for m in items if m in per_event]
    if named and not events.thresholds:
        raise MinconvError(f"--metrics: {', '.join(named)} need(s) --thresholds (e.g. 0.1,1,5)")
    if "fss" in named and not events.scales:
        raise MinconvError("--metrics: fss needs --fss-scales (window sizes in grid cells)")
    if named and events.scales and "fss" not in named:
        raise MinconvError("--fss-scales: fss is not among --metrics; add it or drop the scales")
    if events.thresholds and not named:
        named = [m for m in per_event if m != "fss" or events.scales]
    wanted = [m for m in items if m in base] + named
    if not wanted:
        raise MinconvError("--metrics: give at least one of " + ", ".join(allowed))
    return wanted, events if events.thresholds else None


def check_scales(events: Events | None, grid: tuple[int, int], store: str) -> None:
    """Refuse an FSS window larger than the grid (the smaller of its two sizes)."""
    if events is None:
        return
    too_big = [s for s in events.scales if s > min(grid)]
    if too_big:
        raise MinconvError(
            f"--fss-scales: {too_big[0]} cells is larger than the grid of {store} "
            f"({grid[0]} x {grid[1]} cells)"
        )
