"""The figures: the headline metrics of the metric table against lead time, and the rank histograms."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import xarray as xr

from minconv_cli.evaluate.events import parse_event_name
from minconv_cli.evaluate.labels import minutes_axis
from minconv_cli.evaluate.metric_table import drawn_on, event_panels, headline, row_of
from minconv_cli.evaluate.metrics import RANK_DIM

if TYPE_CHECKING:
    from minconv_cli.evaluate.scoring import Scores


def _lead_axis(scores: Scores) -> tuple[np.ndarray, str]:
    """x values and label: minutes for sub-hourly leads under 6 h, hours for other time leads."""
    table = scores.table
    if scores.lead_is_time and minutes_axis(table["lead"].values):
        return table["lead_hours"].values * 60.0, "lead time [min]"
    if scores.lead_is_time:
        return table["lead_hours"].values, "lead time [h]"
    unit = table["lead"].attrs.get("units", "time units")
    return table["lead"].values.astype(float), f"lead ({unit})"


def _ylabel(metric: str, unit: str) -> str:
    """`RMSE [K]`, `CSI (>= 1 mm h-1)`, `FSS (>= 1 mm h-1, 5 cells)`."""
    base, threshold, scale = parse_event_name(metric)
    if threshold is not None:
        where = f">= {threshold:g}" + (f" {unit}" if unit and unit != "1" else "")
        return f"{base.upper()} ({where}" + (f", {scale} cells)" if scale else ")")
    shown = row_of(metric).has_units and unit and unit != "1"
    return metric.upper() + (f" [{unit}]" if shown else "")


def _colors(names: list[str]) -> dict[str, tuple[Any, str, str]]:
    """(colour, line style, marker) per forecast: the first black, references grey and dashed."""
    import matplotlib.pyplot as plt

    styles = {
        "persistence": ("0.45", "--", "s"),
        "climatology": ("0.2", ":", "^"),
        "extrapolation": ("0.3", "-.", "D"),
    }
    others = [n for n in names[1:] if n not in styles]
    hues = plt.get_cmap("tab10" if len(others) <= 10 else "tab20").colors
    out = {
        names[0]: ("k", "-", "o"),
        **{n: (hues[k % len(hues)], "-", "o") for k, n in enumerate(others)},
    }
    return {**out, **{n: v for n, v in styles.items() if n in names}}


def _panel(ax: Any, scores: Scores, metric: str, ch: str, x: np.ndarray) -> None:
    """One metric of one variable against lead: a line per forecast (and an ensemble's spread)."""
    table = scores.table
    metric_names = [str(m) for m in table["metric"].values]
    names = [str(n) for n in table["forecast"].values]
    styles = _colors(names)
    for name in names:
        y = table.sel(forecast=name, metric=metric, variable=ch).values
        if not np.isfinite(y).any():
            continue
        color, ls, marker = styles[name]
        width = 2.2 if name == names[0] else 1.2
        (line,) = ax.plot(x, y, ls=ls, marker=marker, ms=3, lw=width, color=color, label=name)
        for extra in (e for e in drawn_on(metric) if e in metric_names):  # an ensemble's spread
            sp = table.sel(forecast=name, metric=extra, variable=ch).values
            if np.isfinite(sp).any():
                ax.plot(x, sp, ls="--", color=line.get_color(), label=f"{name} {extra}")
    ax.set_ylabel(_ylabel(metric, scores.units.get(ch, "")))
    ax.grid(alpha=0.3)
    if len(x) <= 12:
        ax.set_xticks(x)
    handles = ax.get_legend_handles_labels()[0]
    if handles and len(handles) <= 6:
        ax.legend(fontsize=8)
    elif handles:  # many forecasts: one legend beside the panel, off the lines
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))


def plot_scores(scores: Scores, path: Path) -> None:
    """Error (RMSE, else the first metric) and ACC against lead time, then CSI at each threshold
    and FSS at each window size when scored: one column per variable."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    table = scores.table
    metric_names = [str(m) for m in table["metric"].values]
    rows = list(dict.fromkeys([*headline(metric_names), *event_panels(metric_names)]))
    channels = [str(v) for v in table["variable"].values]
    x, xlabel = _lead_axis(scores)
    fig, axes = plt.subplots(
        len(rows), len(channels), figsize=(4.2 * len(channels), 3.2 * len(rows)), squeeze=False
    )
    for j, ch in enumerate(channels):
        for i, m in enumerate(rows):
            _panel(axes[i][j], scores, m, ch, x)
            axes[i][j].set_title(ch if i == 0 else "")
        axes[-1][j].set_xlabel(xlabel)
    fig.suptitle(f"scores against {Path(scores.truth).name}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110, format="png")
    plt.close(fig)


def plot_rank_histograms(
    hists: dict[tuple[str, str], xr.DataArray], path: Path, leads: Any
) -> None:
    """One panel per (forecast, variable): the rank histogram at the first, middle and last lead."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = list(hists)
    fig, axes = plt.subplots(1, len(keys), figsize=(4.2 * len(keys), 3.2), squeeze=False)
    for ax, key in zip(axes[0], keys, strict=True):
        h = hists[key]
        n_lead = h.sizes["lead"]
        picks = sorted({0, n_lead // 2, n_lead - 1})
        ranks = h[RANK_DIM].values
        width = 0.8 / len(picks)
        for j, i in enumerate(picks):
            ax.bar(
                ranks + (j - (len(picks) - 1) / 2) * width,
                h.isel(lead=i).values,
                width=width,
                label=f"lead {leads[i]}",
            )
        ax.axhline(1.0 / len(ranks), color="0.3", ls=":", lw=1, label="flat (calibrated)")
        ax.set_title(f"{key[0]}: {key[1]}", fontsize=9)
        ax.set_xlabel("rank of the truth among the members")
        ax.set_ylabel("relative frequency")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100, format="png")
    plt.close(fig)
