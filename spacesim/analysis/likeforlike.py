"""A measured run against its replay, and against independent draws of its scenario.

An independent simulation of a swarm's scenario differs from the swarm by its draws
(who arrived when, each participant's network path, who talked) as well as by its
model; a replay (`spacesim simulate --replay`, `spacesim.sim.replay`) differs only by
the server and network models. `gap_table` puts the two side by side: the replay's gap
is the model's error on this run, and the independent draws' spread across seeds (their
min and max) is how far chance alone moves the figures, so a reader can tell noise
from model error.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import pandas as pd

from spacesim.analysis import runs
from spacesim.results import Run, metric_table

__all__ = ["GAP_METRICS", "draws_of", "gap_table", "groups"]

#: (metric, unit) compared: the headline figures a planner reads.
GAP_METRICS: tuple[tuple[str, str], ...] = (
    ("audio_latency.p50", "s"),
    ("audio_latency.p95", "s"),
    ("node_cpu.mean", "cores"),
    ("join_time.p50", "s"),
    ("first_audio.p50", "s"),
    ("delivery_ratio.value", "ratio"),
)


def draws_of(run: Run) -> str:
    """``measured``, ``replay`` or ``independent`` (a sim run from before replays: the
    latter)."""
    if run.meta.source != "sim":
        return "measured"
    return "replay" if run.meta.extra.get("replay_of") else "independent"


def groups(items: Sequence[Run]) -> list[tuple[Run, list[Run], list[Run]]]:
    """Per measured run among `items`: its replays and the independent draws of its
    scenario (same scenario hash) among `items`; only measured runs with either."""
    out = []
    for m in items:
        if draws_of(m) != "measured" or m.meta.source != "load":
            continue
        replays = [r for r in items if r.meta.extra.get("replay_of") == m.meta.run_id]
        independent = [
            r
            for r in items
            if draws_of(r) == "independent" and r.meta.scenario_hash == m.meta.scenario_hash
        ]
        if replays or independent:
            out.append((m, replays, independent))
    return out


def _gap(sim: float, measured: float) -> float:
    if math.isnan(sim) or math.isnan(measured) or measured == 0:
        return math.nan
    return (sim - measured) / measured


def gap_table(measured: Run, replays: Sequence[Run], independent: Sequence[Run]) -> pd.DataFrame:
    """One row per `GAP_METRICS` metric: the measured value, the replay's (the first
    replay) and its relative gap, and the independent draws' min and max and their
    gaps' range (signed relative gaps: + means the simulation is higher)."""
    figures = [metric_table(runs.summary(r)) for r in (measured, *replays, *independent)]
    have, rep, ind = figures[0], figures[1 : 1 + len(replays)], figures[1 + len(replays) :]
    rows = []
    for metric, unit in GAP_METRICS:
        m = have.get(metric, math.nan)
        r = rep[0].get(metric, math.nan) if rep else math.nan
        values = [f.get(metric, math.nan) for f in ind]
        values = [v for v in values if not math.isnan(v)]
        lo, hi = (min(values), max(values)) if values else (math.nan, math.nan)
        rows.append(
            {
                "metric": metric,
                "unit": unit,
                "measured": m,
                "replay": r,
                "replay_gap": _gap(r, m),
                "independent_min": lo,
                "independent_max": hi,
                "independent_gap_min": _gap(lo, m),
                "independent_gap_max": _gap(hi, m),
                "seeds": len(values),
            }
        )
    return pd.DataFrame(rows).set_index("metric")
