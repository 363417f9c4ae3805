"""Figures for notebooks and `spacesim report`, one function per question.

Every function takes ``{label: records}`` (`spacesim.analysis.frames(runs)`), draws
each run in its own colour, labels every axis with its unit and returns a
`matplotlib.figure.Figure` built without pyplot: no global state, safe on the Agg
backend (a server, CI), shown inline in a notebook after ``%matplotlib inline``.
"""

from __future__ import annotations

from collections.abc import Mapping

import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from spacesim.analysis import views

__all__ = [
    "concurrency",
    "join_histograms",
    "latency_cdf",
    "loss_jitter",
    "moderation_timings",
    "node_load",
    "percentiles_over_time",
]

Frames = Mapping[str, pd.DataFrame]
_WIDTH = 9.0
_PCT_STYLE = {"p50": "-", "p95": "--", "p99": ":"}


def _figure(rows: int = 1, cols: int = 1, height: float = 4.0) -> tuple[Figure, list[Axes]]:
    fig = Figure(figsize=(_WIDTH, height * rows), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False)
    return fig, [ax for row in axes for ax in row]


def _colour(i: int) -> str:
    return f"C{i % 10}"


def _no_data(ax: Axes, what: str) -> None:
    ax.text(0.5, 0.5, f"no {what} in these runs", ha="center", va="center",
            transform=ax.transAxes, color="grey")  # fmt: skip


def _legend(ax: Axes) -> None:
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize="small")


def latency_cdf(
    frames: Frames,
    metric: str = "audio_latency",
    by_role: bool = False,
    slo: float | None = None,
) -> Figure:
    """Share of samples at or below each value of `metric` (ms), one curve per run.

    A curve further left is faster; where it crosses 0.95 is the p95. `slo` (s)
    draws the target as a vertical line.
    """
    fig, (ax,) = _figure()
    drawn = False
    for i, (name, rec) in enumerate(frames.items()):
        s = views.samples(rec, metric)
        groups = s.groupby("role") if by_role else [("", s)]
        for j, (role, g) in enumerate(groups):
            cdf = views.ecdf(g["value"])
            if cdf.empty:
                continue
            label = f"{name} · {role!s}" if by_role else name
            style = ["-", "--", ":", "-."][j % 4]
            ax.step(cdf["value"] * 1e3, cdf["share"], where="post", color=_colour(i),
                    linestyle=style, label=label)  # fmt: skip
            drawn = True
    if slo is not None:
        ax.axvline(slo * 1e3, color="red", linewidth=1, label=f"SLO p95 target {slo * 1e3:g} ms")
        ax.axhline(0.95, color="grey", linewidth=0.5)
    if not drawn:
        _no_data(ax, metric.replace("_", " "))
    ax.set_xlabel(f"{metric.replace('_', ' ')} (ms)")
    ax.set_ylabel("share of samples at or below (0-1)")
    ax.set_ylim(0, 1.01)
    ax.set_title(f"{metric.replace('_', ' ')}: cumulative distribution")
    ax.grid(alpha=0.3)
    _legend(ax)
    return fig


def mouth_to_ear_cdf(frames: Frames) -> Figure:
    """Mouth-to-ear at the swarm's aiortc probes (solid) and its browser probes (dashed),
    one colour per run: where the two jitter buffers part ways."""
    fig, (ax,) = _figure()
    drawn = False
    for i, (name, rec) in enumerate(frames.items()):
        for metric, style, who in (
            ("mouth_to_ear", "-", "aiortc probes"),
            ("browser_mouth_to_ear", "--", "browser probes"),
        ):
            cdf = views.ecdf(views.samples(rec, metric)["value"])
            if cdf.empty:
                continue
            ax.step(cdf["value"] * 1e3, cdf["share"], where="post", color=_colour(i),
                    linestyle=style, label=f"{name} · {who}")  # fmt: skip
            drawn = True
    if not drawn:
        _no_data(ax, "mouth to ear")
    ax.axhline(0.5, color="grey", linewidth=0.5)
    ax.set_xlabel("mouth to ear (ms)")
    ax.set_ylabel("share of samples at or below (0-1)")
    ax.set_ylim(0, 1.01)
    ax.set_title("mouth to ear: aiortc probes vs browser probes")
    ax.grid(alpha=0.3)
    _legend(ax)
    return fig


def percentiles_over_time(
    frames: Frames,
    metric: str = "audio_latency",
    window: float = 10.0,
    slo: float | None = None,
    by_role: bool = False,
) -> Figure:
    """p50 (solid), p95 (dashed) and p99 (dotted) of `metric` per `window` seconds (ms)."""
    fig, (ax,) = _figure()
    drawn = False
    for i, (name, rec) in enumerate(frames.items()):
        table = views.over_time(views.samples(rec, metric), window, "role" if by_role else None)
        for j, (group, g) in enumerate(table.groupby("group", sort=True)):
            label = f"{name} · {group}" if by_role else name
            for stat, style in _PCT_STYLE.items():
                ax.plot(g["t"] + window / 2, g[stat] * 1e3, linestyle=style, color=_colour(i + j),
                        label=f"{label} {stat}")  # fmt: skip
            drawn = True
    if slo is not None:
        ax.axhline(slo * 1e3, color="red", linewidth=1, label=f"SLO p95 target {slo * 1e3:g} ms")
    if not drawn:
        _no_data(ax, metric.replace("_", " "))
    ax.set_xlabel(f"time since run start (s), {window:g} s windows")
    ax.set_ylabel(f"{metric.replace('_', ' ')} (ms)")
    ax.set_title(f"{metric.replace('_', ' ')} percentiles over time")
    ax.grid(alpha=0.3)
    _legend(ax)
    return fig


def join_histograms(frames: Frames, bins: int = 30) -> Figure:
    """How long joining takes: join time and time to first audio (ms), per run."""
    fig, axes = _figure(1, 2)
    for ax, metric in zip(axes, ("join_time", "first_audio"), strict=True):
        values = {n: views.samples(r, metric)["value"] * 1e3 for n, r in frames.items()}
        present = [v for v in values.values() if len(v)]
        if not present:
            _no_data(ax, metric.replace("_", " "))
        else:
            lo = min(float(v.min()) for v in present)
            hi = max(float(v.max()) for v in present)
            edges = bins if hi <= lo else [lo + (hi - lo) * k / bins for k in range(bins + 1)]
            for i, (name, v) in enumerate(values.items()):
                if len(v):
                    ax.hist(v, bins=edges, histtype="step", color=_colour(i), label=name)
        ax.set_xlabel(f"{metric.replace('_', ' ')} (ms)")
        ax.set_ylabel("participants (count)")
        ax.set_title({"join_time": "join time", "first_audio": "time to first audio"}[metric])
        ax.grid(alpha=0.3)
        _legend(ax)
    return fig


def loss_jitter(frames: Frames, window: float = 10.0) -> Figure:
    """Packet loss (%) and jitter p50 / p95 (ms) per `window` seconds, per run."""
    fig, (top, bottom) = _figure(2, 1, height=3.2)
    any_loss = any_jitter = False
    for i, (name, rec) in enumerate(frames.items()):
        lost = views.loss(rec, window)
        if not lost.empty:
            top.plot(lost["t"] + window / 2, lost["loss"] * 100, color=_colour(i), label=name)
            any_loss = True
        jit = views.over_time(views.samples(rec, "jitter"), window)
        if not jit.empty:
            for stat in ("p50", "p95"):
                bottom.plot(jit["t"] + window / 2, jit[stat] * 1e3, color=_colour(i),
                            linestyle=_PCT_STYLE[stat], label=f"{name} {stat}")  # fmt: skip
            any_jitter = True
    if not any_loss:
        _no_data(top, "packet counts")
    if not any_jitter:
        _no_data(bottom, "latency samples")
    top.set_ylim(bottom=0)
    top.set_ylabel("packets lost (% of expected)")
    top.set_title("packet loss at sampled listeners")
    bottom.set_ylabel("jitter (ms)")
    bottom.set_title("jitter: delay variation between a listener's packets")
    for ax in (top, bottom):
        ax.set_xlabel(f"time since run start (s), {window:g} s windows")
        ax.grid(alpha=0.3)
        _legend(ax)
    return fig


def moderation_timings(frames: Frames) -> Figure:
    """Cumulative distributions of hand wait and report resolution times (s), per run."""
    fig, axes = _figure(1, 2)
    titles = {"hand_wait": "raised hand -> on stage", "report_resolution": "report -> resolved"}
    for ax, metric in zip(axes, titles, strict=True):
        drawn = False
        for i, (name, rec) in enumerate(frames.items()):
            cdf = views.ecdf(views.samples(rec, metric)["value"])
            if len(cdf):
                ax.step(cdf["value"], cdf["share"], where="post", color=_colour(i),
                        marker=".", label=f"{name} (n={len(cdf)})")  # fmt: skip
                drawn = True
        if not drawn:
            _no_data(ax, metric.replace("_", " "))
        ax.set_xlabel(f"{metric.replace('_', ' ')} (s)")
        ax.set_ylabel("share at or below (0-1)")
        ax.set_ylim(0, 1.01)
        ax.set_title(titles[metric])
        ax.grid(alpha=0.3)
        _legend(ax)
    return fig


def node_load(frames: Frames) -> Figure:
    """CPU per server node (cores busy; mean line, min-max band) and packets forwarded / s."""
    fig, (top, bottom) = _figure(2, 1, height=3.2)
    drawn = False
    for i, (name, rec) in enumerate(frames.items()):
        table = views.node_totals(rec)
        for j, (source, g) in enumerate(table.groupby("source", sort=True)):
            style = ["-", "--", ":", "-."][j % 4]
            n = int(g["nodes"].max())
            own = " (server's own)" if source == "server" else ""
            label = f"{name}{own}, " + ("1 node" if n == 1 else f"mean of {n} nodes")
            top.plot(g["t"], g["cpu_mean"], color=_colour(i), linestyle=style, label=label)
            if n > 1:
                band = f"{name}: idlest to busiest node"
                top.fill_between(g["t"], g["cpu_min"], g["cpu_max"], color=_colour(i),
                                 alpha=0.2, linewidth=0, label=band)  # fmt: skip
            bottom.plot(g["t"], g["forwarded_per_s"], color=_colour(i), linestyle=style,
                        label=f"{name}{own}, all nodes")  # fmt: skip
            drawn = True
    if not drawn:
        _no_data(top, "node records")
        _no_data(bottom, "node records")
    top.set_ylabel("CPU per node (cores busy)")
    top.set_title("server CPU per node")
    bottom.set_ylabel("packets forwarded (per s)")
    bottom.set_title("packets forwarded, all nodes together")
    for ax in (top, bottom):
        ax.set_xlabel("time since run start (s)")
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        _legend(ax)
    return fig


def concurrency(frames: Frames) -> Figure:
    """Listeners present over time (all rooms), per run."""
    fig, (ax,) = _figure(height=3.2)
    drawn = False
    for i, (name, rec) in enumerate(frames.items()):
        s = views.concurrency(rec)
        if len(s):
            ax.step(s.index, s.to_numpy(), where="post", color=_colour(i), label=name)
            drawn = True
    if not drawn:
        _no_data(ax, "joins")
    ax.set_xlabel("time since run start (s)")
    ax.set_ylabel("listeners (count)")
    ax.set_title("listeners in the room(s)")
    ax.grid(alpha=0.3)
    _legend(ax)
    return fig
