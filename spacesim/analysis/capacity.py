"""Capacity curves for notebooks: latency against node count, nodes against audience.

They read sweep tables (`spacesim.sim.sweep.sweep`) and capacity answers
(`spacesim.sim.capacity.capacity_table`): plain DataFrames, so nothing here runs a
simulation. Figures are built without pyplot (no global state; safe on Agg) and need
matplotlib, the ``notebooks`` extra.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import pandas as pd
from matplotlib.axis import Axis
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator, NullFormatter

__all__ = ["curves", "latency_vs_nodes", "nodes_needed"]


def curves(
    table: pd.DataFrame, metric: str = "audio_latency.p95", by: str = "listeners"
) -> pd.DataFrame:
    """`metric` per node count (rows) and audience (columns); the worst seed per point.

    The worst, not the mean: a node count is only as good as its unluckiest run.
    """
    if metric.startswith("delivery"):
        return table.pivot_table(index="nodes", columns=by, values=metric, aggfunc="min")
    return table.pivot_table(index="nodes", columns=by, values=metric, aggfunc="max")


def _plain_log(axis: Axis, values: Iterable[float]) -> None:
    """Log ticks labelled 20, 50, 1,000 rather than 2 x 10^1: planners read counts.

    Within a decade, a log axis has no major tick at all: use a few plain ones instead.
    """
    vals = [v for v in values if v > 0]
    narrow = bool(vals) and max(vals) / min(vals) < 10
    axis.set_major_locator(
        MaxNLocator(nbins=6, integer=True) if narrow else LogLocator(subs=(1.0, 2.0, 5.0))
    )
    axis.set_major_formatter(FuncFormatter(lambda v, _pos: f"{v:,.0f}"))
    axis.set_minor_formatter(NullFormatter())


def latency_vs_nodes(
    table: pd.DataFrame,
    metric: str = "audio_latency.p95",
    by: str = "listeners",
    slo: float | None = None,
) -> Figure:
    """`metric` (a time, drawn in ms) against server nodes, one line per audience.

    `slo` (s) draws the target; where a line dips below it, that audience is served.
    """
    fig = Figure(figsize=(9, 4.5), layout="constrained")
    ax = fig.subplots()
    for i, (audience, series) in enumerate(curves(table, metric, by).items()):
        s = series.dropna()
        label = f"{audience:,.0f} {by}" if isinstance(audience, int | float) else str(audience)
        ax.plot(s.index, s.to_numpy() * 1e3, "o-", color=f"C{i % 10}", label=label)
    if slo is not None:
        ax.axhline(slo * 1e3, color="red", linewidth=1, label=f"SLO {slo * 1e3:g} ms")
    ax.set_xscale("log")
    _plain_log(ax.xaxis, table["nodes"])
    ax.set_xlabel("server nodes (log scale)")
    ax.set_ylabel(f"{metric} (ms)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize="small")
    return fig


def nodes_needed(answers: Mapping[str, pd.DataFrame], by: str = "listeners") -> Figure:
    """Nodes needed against audience, log-log, one line per scenario (label -> answers).

    A straight line of slope 1 means nodes grow in proportion to listeners; an audience
    no tested count serves is left out of its line.
    """
    fig = Figure(figsize=(9, 4.5), layout="constrained")
    ax = fig.subplots()
    for i, (label, table) in enumerate(answers.items()):
        t = table.dropna(subset=["nodes_needed"]).sort_values(by)
        ax.plot(t[by], t["nodes_needed"].astype(float), "o-", color=f"C{i % 10}", label=label)
        for x, y in zip(t[by], t["nodes_needed"], strict=True):
            ax.annotate(f"{int(y):,}", (x, y), textcoords="offset points", xytext=(4, -12))
    ax.set_xscale("log")
    ax.set_yscale("log")
    drawn = pd.concat([t.dropna(subset=["nodes_needed"]) for t in answers.values()])
    _plain_log(ax.xaxis, drawn[by].astype(float))
    _plain_log(ax.yaxis, drawn["nodes_needed"].astype(float))
    ax.set_xlabel(f"{by} (peak concurrent, log scale)")
    ax.set_ylabel("server nodes needed (log scale)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize="small")
    return fig
