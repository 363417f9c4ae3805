"""Tidy views of a run's records: per role, per room, over time.

Every view takes a records frame (`spacesim.analysis.records(run)`, or any frame in
the `spacesim.results` schema) and returns a small DataFrame. Percentiles are always
computed by `spacesim.results.summarise` (through `distribution`), so a p95 here is
the p95 the CLI prints and the SLO gate judges.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any, Literal

import numpy as np
import pandas as pd

from spacesim.results import COLUMNS, summarise

__all__ = [
    "METRICS",
    "STATS",
    "concurrency",
    "distribution",
    "distribution_by",
    "ecdf",
    "loss",
    "moderation",
    "node_totals",
    "nodes",
    "over_time",
    "samples",
]

By = Literal["role", "room"] | None
STATS = ("count", "mean", "p50", "p95", "p99")
#: Metric -> (unit, plain-words meaning). `samples` builds each from records.
METRICS: Mapping[str, tuple[str, str]] = {
    "join_time": ("s", "join request to audio connected"),
    "first_audio": ("s", "join request to the first audio packet heard"),
    "audio_latency": (
        "s",
        "publisher -> listener, network + server; excludes the listener's jitter buffer",
    ),
    "jitter": (
        "s",
        "packet delay variation: |difference| of a listener's successive latency samples",
    ),
    "mouth_to_ear": (
        "s",
        "publisher -> played out at an aiortc probe: network + server + its fixed jitter "
        "buffer (prefetch=4, ~80 ms) + decode",
    ),
    "browser_mouth_to_ear": (
        "s",
        "publisher -> played out at a Chromium probe: network + server + NetEq's adaptive "
        "jitter buffer + Chromium's reported playout delay",
    ),
    "hand_wait": ("s", "raised hand to going on stage (granted hands only)"),
    "hand_declined": ("s", "raised hand to the host declining it"),
    "report_resolution": ("s", "report filed to a moderator resolving it"),
}
_SAMPLE_COLUMNS = ["t", "room", "participant", "role", "value"]
_CARRIER = "audio_latency"  # a plain distribution in summarise: no role filter, no value filter


def distribution(values: pd.Series | np.ndarray | list[float]) -> dict[str, float]:
    """count, mean, p50, p95, p99 of `values` (NaN ignored), as `summarise` computes them."""
    v = pd.Series(values, dtype="float64").dropna().to_numpy()
    frame = pd.DataFrame({c: pd.Series([""] * len(v), dtype=object) for c in COLUMNS})
    frame["kind"] = _CARRIER
    frame["t"] = 0.0
    frame["value"] = v
    frame["attrs"] = None
    row = summarise(frame).loc[_CARRIER, list(STATS)].to_numpy(dtype="float64")
    return {s: float(x) for s, x in zip(STATS, row, strict=True)}


def _kind(records: pd.DataFrame, kind: str) -> pd.DataFrame:
    return records[records["kind"] == kind]


def _tidy(frame: pd.DataFrame) -> pd.DataFrame:
    out = frame[_SAMPLE_COLUMNS].astype({"room": str, "role": str, "participant": str})
    return out.dropna(subset=["value"]).reset_index(drop=True)


def _jitter(records: pd.DataFrame) -> pd.DataFrame:
    lat = _kind(records, "audio_latency")[_SAMPLE_COLUMNS]
    lat = lat.astype({"room": str, "role": str, "participant": str})
    lat = lat[lat["participant"] != ""].sort_values(["participant", "t"], kind="stable")
    diff = lat.groupby("participant", sort=False)["value"].diff().abs()
    return _tidy(lat.assign(value=diff))


def samples(records: pd.DataFrame, metric: str) -> pd.DataFrame:
    """One row per observation of `metric` (a key of `METRICS`): t, room, participant, role, value.

    ``join_time`` covers every role (summarise's counts listeners only). ``jitter`` is
    estimated from sampled latencies: for independent packet delays the mean |ΔD| of
    two samples equals RFC 3550's interarrival jitter, so its mean reads like the
    jitter a receiver reports.
    """
    if metric == "join_time":
        return _tidy(_kind(records, "participant_joined"))
    if metric in (
        "first_audio",
        "audio_latency",
        "hand_declined",
        "mouth_to_ear",
        "browser_mouth_to_ear",
    ):
        return _tidy(_kind(records, metric))
    if metric == "hand_wait":
        return _tidy(_kind(records, "speaker_granted"))  # NaN = not an answered hand
    if metric == "report_resolution":
        return _tidy(_kind(records, "report_resolved"))
    if metric == "jitter":
        return _jitter(records)
    raise ValueError(f"unknown metric {metric!r}; choose from {sorted(METRICS)}")


def _stats_frame(groups: Mapping[Any, pd.Series], name: str) -> pd.DataFrame:
    table = pd.DataFrame.from_dict(
        {k: distribution(v) for k, v in groups.items()}, orient="index", columns=list(STATS)
    )
    table.index.name = name
    return table


def distribution_by(frame: pd.DataFrame, by: str | None = None) -> pd.DataFrame:
    """Percentiles of a `samples` frame per role, room or another column such as
    `moderation`'s ``timing`` (one row ``all`` when None; no rows for no samples)."""
    if by is None:
        return _stats_frame({"all": frame["value"]}, "group")
    groups = {k: g["value"] for k, g in frame.groupby(by, sort=True)}
    return _stats_frame(groups, by)


def over_time(frame: pd.DataFrame, window: float, by: By = None) -> pd.DataFrame:
    """Percentiles of a `samples` frame per time window of `window` seconds.

    Columns: ``t`` (window start, s), ``group`` (role, room or ``all``) and `STATS`.
    Empty windows are left out.
    """
    if window <= 0:
        raise ValueError(f"window must be > 0 s, got {window}")
    cols = ["t", "group", *STATS]
    if frame.empty:
        return pd.DataFrame(columns=cols)
    start = (frame["t"] // window) * window
    keys = [start] if by is None else [start, frame[by]]
    rows = []
    for key, g in frame.groupby(keys, sort=True):
        k: tuple[Any, ...] = key if isinstance(key, tuple) else (key,)
        group = "all" if by is None else str(k[1])
        rows.append({"t": float(k[0]), "group": group, **distribution(g["value"])})
    return pd.DataFrame(rows, columns=cols)


def ecdf(values: pd.Series | np.ndarray | list[float]) -> pd.DataFrame:
    """Empirical CDF: sorted ``value`` and the ``share`` of observations at or below it."""
    v = np.sort(pd.Series(values, dtype="float64").dropna().to_numpy())
    share = np.arange(1, v.size + 1, dtype="float64") / max(v.size, 1)
    return pd.DataFrame({"value": v, "share": share})


def loss(records: pd.DataFrame, window: float | None = None, by: By = None) -> pd.DataFrame:
    """Packets received and lost by sampled listeners, and the loss ratio lost / expected.

    Per window of `window` seconds (``t`` = window start) or over the whole run when
    None; per role or room with `by`. Loss is counted where the listener is, so it
    includes the network's and the server's drops.
    """
    rx, lost = _kind(records, "packets_received"), _kind(records, "packets_lost")
    both = pd.concat([rx.assign(lost=0.0, rx=rx["value"]), lost.assign(lost=lost["value"], rx=0.0)])
    both = both.astype({"room": str, "role": str})
    keys: list[pd.Series] = []
    if window is not None:
        if window <= 0:
            raise ValueError(f"window must be > 0 s, got {window}")
        keys.append(((both["t"] // window) * window).rename("t"))
    if by is not None:
        keys.append(both[by].rename("group"))
    if keys:
        table = both.groupby(keys, sort=True)[["rx", "lost"]].sum().reset_index()
    else:
        table = pd.DataFrame({"rx": [both["rx"].sum()], "lost": [both["lost"].sum()]})
    if by is None:
        table["group"] = "all"
    table = table.rename(columns={"rx": "received"})
    expected = table["received"] + table["lost"]
    table["loss"] = (table["lost"] / expected).where(expected > 0, math.nan)
    cols = (["t"] if window is not None else []) + ["group", "received", "lost", "loss"]
    return table[cols]


def _action(text: object) -> str:
    if not isinstance(text, str) or not text:
        return ""
    try:
        attrs = json.loads(text)
    except ValueError:
        return ""
    return str(attrs.get("action", "")) if isinstance(attrs, dict) else ""


def moderation(records: pd.DataFrame) -> pd.DataFrame:
    """Every moderation timing: hands granted, hands declined, reports resolved.

    Columns: t, room, participant, ``timing`` (a `METRICS` key), value (s) and
    ``outcome`` (what the moderator did with a report, when recorded).
    """
    parts = []
    for metric in ("hand_wait", "hand_declined", "report_resolution"):
        kind = {"hand_wait": "speaker_granted", "report_resolution": "report_resolved"}.get(
            metric, metric
        )
        raw = _kind(records, kind).dropna(subset=["value"])
        part = _tidy(raw).assign(timing=metric)
        part["outcome"] = [_action(a) for a in raw["attrs"]]
        parts.append(part)
    cols = ["t", "room", "participant", "timing", "value", "outcome"]
    return pd.concat(parts, ignore_index=True)[cols].sort_values("t", kind="stable")


def nodes(records: pd.DataFrame) -> pd.DataFrame:
    """Node load over time: one row per (source, node, t) with CPU and packet counts.

    ``node_cpu`` is in cores busy; ``packets_forwarded`` / ``packets_dropped`` are per
    record tick, and ``forwarded_per_s`` divides by the tick (the time since the node's
    previous row), since the simulator's tick is a scenario setting.
    """
    kinds = ["node_cpu", "node_utilisation", "packets_forwarded", "packets_dropped"]
    rows = records[records["kind"].isin(kinds)]
    cols = ["source", "node", "t", *kinds, "forwarded_per_s"]
    if rows.empty:
        return pd.DataFrame(columns=cols)
    rows = rows.astype({"kind": str, "source": str, "participant": str})
    wide = rows.pivot_table(
        index=["source", "participant", "t"], columns="kind", values="value", aggfunc="sum"
    )
    wide = wide.reindex(columns=kinds).reset_index().rename(columns={"participant": "node"})
    wide.columns.name = None
    dt = wide.groupby(["source", "node"])["t"].diff()
    dt = dt.fillna(dt.median() if dt.notna().any() else 1.0).where(lambda d: d > 0, math.nan)
    wide["forwarded_per_s"] = wide["packets_forwarded"] / dt
    return wide[cols]


def node_totals(records: pd.DataFrame) -> pd.DataFrame:
    """All nodes of each source at each t: node count, CPU mean / min / max, packets per s.

    What a capacity planner reads first: how busy the average and the busiest node are.
    """
    table = nodes(records)
    cols = ["source", "t", "nodes", "cpu_mean", "cpu_min", "cpu_max", "forwarded_per_s"]
    if table.empty:
        return pd.DataFrame(columns=cols)
    out = (
        table.groupby(["source", "t"], sort=True)
        .agg(
            nodes=("node", "nunique"),
            cpu_mean=("node_cpu", "mean"),
            cpu_min=("node_cpu", "min"),
            cpu_max=("node_cpu", "max"),
            forwarded_per_s=("forwarded_per_s", "sum"),
        )
        .reset_index()
    )
    return out[cols]


def concurrency(records: pd.DataFrame) -> pd.Series:
    """Listeners in all rooms over time (s -> count).

    From the simulator's ``concurrency`` samples when present, else counted from
    listeners' joins and leaves (the load test records no samples).
    """
    conc = _kind(records, "concurrency")
    if len(conc):
        return conc.groupby("t")["value"].sum().rename("listeners")
    ev = records[records["kind"].isin(["participant_joined", "participant_left"])]
    ev = ev[ev["role"] == "listener"]
    step = np.where(ev["kind"] == "participant_joined", 1.0, -1.0)
    s = pd.Series(step, index=ev["t"].to_numpy()).sort_index().cumsum()
    s.index.name = "t"
    return s.groupby(level=0).last().rename("listeners")
