"""A measured run against its replay, and against independent draws of its scenario.

An independent simulation of a swarm's scenario differs from the swarm by its draws
(who arrived when, each participant's network path, who talked) as well as by its
model; a replay (`spacesim simulate --replay`, `spacesim.sim.replay`) differs only by
the server and network models. `gap_table` puts the two side by side: the replay's gap
is the model's error on this run, and the independent draws' spread across seeds (their
min and max) is how far chance alone moves the figures, so a reader can tell noise
from model error.

A run over several nodes (a cluster, or a simulation with ``server.nodes`` > 1) adds
per-node rows (`node_figures`): the node the room's host is on (its *origin*) and the
others, each with its CPU and its listeners' latency, and the cascade between them.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence

import numpy as np
import pandas as pd

from spacesim.analysis import runs
from spacesim.results import Run, metric_table, steady_window

__all__ = ["GAP_METRICS", "NODE_METRICS", "draws_of", "gap_table", "groups", "node_figures"]

#: (metric, unit) compared: the headline figures a planner reads.
GAP_METRICS: tuple[tuple[str, str], ...] = (
    ("audio_latency.p50", "s"),
    ("audio_latency.p95", "s"),
    ("node_cpu.mean", "cores"),
    ("join_time.p50", "s"),
    ("first_audio.p50", "s"),
    ("delivery_ratio.value", "ratio"),
)


#: (metric, unit) of a run over several nodes (`node_figures`).
NODE_METRICS: tuple[tuple[str, str], ...] = (
    ("origin.node_cpu.mean", "cores"),
    ("other.node_cpu.mean", "cores"),
    ("origin.audio_latency.p50", "s"),
    ("other.audio_latency.p50", "s"),
    ("origin.audio_latency.p95", "s"),
    ("other.audio_latency.p95", "s"),
    ("cascade_latency.p50", "s"),
    ("cascade_latency.p10", "s"),
)


def _node(attrs: object) -> str | None:
    if not isinstance(attrs, str) or not attrs:
        return None
    node = json.loads(attrs).get("node")
    return str(node) if node else None


def node_figures(run: Run, window: tuple[float, float] | None = None) -> dict[str, float]:
    """Per node of a run whose participants' joins say their node (``attrs.node``): the
    origin (the host's node) and the others together -- mean CPU of a node in the steady
    `window` (default the run's own), audio latency p50 / p95 of the listeners it
    carries -- and ``cascade_latency.p50``, the others' p50 less the origin's (and p10's:
    the hop alone, before the spread of the two fan-outs). Empty for
    a run on one node, or whose records do not say."""
    rec = runs.records(run)
    joined = rec[rec["kind"] == "participant_joined"]
    node_of = dict(zip(joined["participant"], joined["attrs"].map(_node), strict=True))
    hosts = joined[joined["role"] == "host"]["participant"].map(node_of).dropna()
    if hosts.empty or len({n for n in node_of.values() if n}) < 2:
        return {}
    origin = str(hosts.iloc[0])
    start, end = window or steady_window(rec, run.meta.duration)
    lat = rec[(rec["kind"] == "audio_latency") & (rec["t"] >= start) & (rec["t"] <= end)]
    where = lat["participant"].map(node_of)
    cpu = rec[(rec["kind"] == "node_cpu") & (rec["t"] > start) & (rec["t"] <= end)]
    out: dict[str, float] = {}
    for role in ("origin", "other"):
        pick = (where == origin) if role == "origin" else (where.notna() & (where != origin))
        values = lat.loc[pick, "value"].to_numpy("float64")
        for q in (10, 50, 95):
            v = float(np.quantile(values, q / 100)) if values.size else math.nan
            out[f"{role}.audio_latency.p{q}"] = v
        mine = cpu["participant"] == origin
        per = cpu.loc[mine if role == "origin" else ~mine, "value"]
        out[f"{role}.node_cpu.mean"] = float(per.mean()) if len(per) else math.nan
        out[f"{role}.listeners"] = float(lat.loc[pick, "participant"].nunique())
    for q in (50, 10):  # p10: the hop alone, before the fan-outs' spread and contention
        out[f"cascade_latency.p{q}"] = (
            out[f"other.audio_latency.p{q}"] - out[f"origin.audio_latency.p{q}"]
        )
    return out


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
    metrics = GAP_METRICS
    nodes = node_figures(measured)
    if nodes:  # a cluster: per node too; a replay on the measured run's window
        metrics = (*GAP_METRICS, *NODE_METRICS)
        window = steady_window(runs.records(measured), measured.meta.duration)
        figures[0] = {**figures[0], **nodes}
        for i, sim in enumerate((*replays, *independent), start=1):
            figures[i] = {**figures[i], **node_figures(sim, window if i <= len(replays) else None)}
    have, rep, ind = figures[0], figures[1 : 1 + len(replays)], figures[1 + len(replays) :]
    rows = []
    for metric, unit in metrics:
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
