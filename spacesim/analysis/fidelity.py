"""Sim-vs-real fidelity: the same metrics from a measured and a simulated run, and errors.

Both runs are cut to their steady window (`spacesim.results.steady_window`: from a
few seconds after the last listener joined to the end) and summarised with
`spacesim.results.summarise`, so percentiles are computed once, one way. Server CPU
is the mean of ``node_cpu`` in the window: from the server's own run (``server/``,
lined up on ``extra.t0_unix``) for a load run, from the simulated node for a sim run.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from spacesim.results import (
    Run,
    load_run,
    metric_table,
    steady_window,
    summarise,
)

__all__ = [
    "METRICS",
    "Level",
    "knee",
    "latency_samples",
    "level_metrics",
    "open_level",
    "relative_errors",
]

#: Compared metrics: name -> (label, unit for display).
METRICS: Mapping[str, tuple[str, str]] = {
    "audio_latency.p50": ("latency p50", "s"),
    "audio_latency.p95": ("latency p95", "s"),
    "audio_latency.p99": ("latency p99", "s"),
    "delivery_ratio.value": ("delivery ratio", "ratio"),
    "join_time.p95": ("join time p95", "s"),
    "server_cpu.mean": ("server CPU", "cores"),
}


@dataclass(frozen=True)
class Level:
    """A run cut to its steady window, with its server's CPU samples in that window."""

    run: Run
    records: pd.DataFrame  # the steady window's records
    cpu: pd.Series  # node_cpu samples (cores) in the window
    window: tuple[float, float]


def open_level(directory: str | Path) -> Level:
    """A load run (with its ``server/`` run) or a sim run, cut to its steady window."""
    path = Path(directory)
    run = load_run(path)
    start, end = steady_window(run.records, run.meta.duration)
    rec = run.records
    steady = rec[(rec["t"] >= start) & (rec["t"] <= end)]
    if run.meta.source == "load":
        sub = path / str(run.meta.extra.get("server_run") or "server")
        server = load_run(sub)
        offset = float(run.meta.extra["t0_unix"]) - float(server.meta.extra["t0_unix"])
        srec = server.records
        lo, hi = start + offset, end + offset
        cpu = srec.loc[(srec["kind"] == "node_cpu") & (srec["t"] >= lo) & (srec["t"] <= hi)]
    else:
        cpu = steady[steady["kind"] == "node_cpu"]
    return Level(run, steady.reset_index(drop=True), cpu["value"].astype("float64"), (start, end))


def level_metrics(level: Level) -> dict[str, float]:
    """`METRICS` of one level: the summary's latency and delivery, the server's mean CPU.

    Join time is of every listener's join, which all happen before the steady window.
    """
    start, end = level.window
    flat = metric_table(summarise(level.records, end - start))
    whole = metric_table(summarise(level.run.records, level.run.meta.duration))
    flat["join_time.p95"] = whole.get("join_time.p95", math.nan)
    out = {m: flat.get(m, math.nan) for m in METRICS if not m.startswith("server_cpu")}
    out["server_cpu.mean"] = float(level.cpu.mean()) if len(level.cpu) else math.nan
    return out


def relative_errors(measured: Mapping[str, float], simulated: Mapping[str, float]) -> pd.DataFrame:
    """One row per metric: measured, simulated, relative error |sim - real| / real."""
    rows = []
    for m in METRICS:
        real, sim = measured.get(m, math.nan), simulated.get(m, math.nan)
        err = abs(sim - real) / abs(real) if real else math.nan
        rows.append({"metric": m, "measured": real, "simulated": sim, "rel_error": err})
    return pd.DataFrame(rows)


def knee(
    loads: Sequence[float] | np.ndarray,
    values: Sequence[float] | np.ndarray,
    factor: float = 2.0,
    base: float | None = None,
) -> float:
    """The load at which `values` (e.g. p95 latency, ordered by load) first reach `factor`
    times `base` (default: the value at the lowest load), by linear interpolation between
    the points around the crossing; NaN if they never do.

    Planners ask "how far can this server be loaded before latency bends": the knee is
    that answer, and its error between the measured and the simulated curve is the
    model's error where it matters.
    """
    x = np.asarray(loads, dtype="float64")
    y = np.asarray(values, dtype="float64")
    keep = ~(np.isnan(x) | np.isnan(y))
    x, y = x[keep], y[keep]
    if x.size == 0:
        return math.nan
    order = np.argsort(x, kind="stable")
    x, y = x[order], y[order]
    threshold = factor * (y[0] if base is None else base)
    above = np.flatnonzero(y >= threshold)
    if above.size == 0:
        return math.nan
    i = int(above[0])
    if i == 0:
        return float(x[0])
    x0, x1, y0, y1 = x[i - 1], x[i], y[i - 1], y[i]
    return float(x0 + (threshold - y0) * (x1 - x0) / (y1 - y0))


def latency_samples(level: Level) -> np.ndarray:
    """The steady window's audio_latency samples (s), sorted: for CDF overlays."""
    rec = level.records
    v = rec.loc[rec["kind"] == "audio_latency", "value"].dropna().to_numpy("float64")
    return np.sort(v)
