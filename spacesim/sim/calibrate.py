"""Calibration: fit the model's server costs from load runs and the server's own records.

A load run (`spacesim load --out DIR`) holds the swarm's records (source=load) and the
embedded server's (``DIR/server``, source=server); both metas carry ``extra.t0_unix``
so their clocks line up. The fits are non-negative least squares:

* **CPU.** The server samples its CPU (cores) once a second. Each sample is regressed
  on what the server did in that second::

      node_cpu = cpu_fixed + cpu_per_packet x packets_forwarded
                 + cpu_per_join x joins + cpu_per_connection x connections
                 + cpu_per_event x events

  joins and connections come from the server's own ``participant_joined`` /
  ``participant_left`` records; events are the deliveries of the space's event stream
  in that second, the sum of the load run's ``events_received`` records (one per
  subscribed listener per tick) put on the server's clock. Runs where events dominate
  (many subscribers, a high reaction rate) separate ``cpu_per_event``; when no run
  delivered any event the term is left out of the fit and out of the file (the
  scenario's value stands). Seconds after the swarm stopped (its teardown storm)
  are left out. With one speaker, packets per second are proportional to connections,
  so the packet and connection costs trade off; runs with a different number of
  speakers separate them (the standard errors show how well they were separated).
  Such runs also part a sixth term from ``cpu_fixed``, ``cpu_per_publisher_packet``
  (``published``: the speakers' packets a second, in the seconds the server forwarded
  any): each packet a speaker sends costs the server its Python receive path before
  the fan-out, whatever the audience, so with few listeners it is most of the CPU.
* **Latency.** The reference SFU fans a packet out sequentially, so in a steady window
  with N listeners the q-quantile of publisher -> listener latency is about
  ``forward_delay + q x N x fanout_delay`` (listeners' positions in the fan-out are
  uniform). Quantiles q = 0.1 .. 0.5 of each run's steady window are fitted (the
  body of the distribution: the tail carries the rig's stalls). Runs where the swarm
  fell behind the server (`swarm_behind`) are left out.
  On loopback both terms include the clients' own receive path: the swarm's listeners
  share an event loop, so the k-th copy of a packet is also *read* k copies late.

* **Join time.** ``client_setup`` is the median join time of the latency runs' listeners
  less what the model puts around it: 2 RTT + max(20 ms ICE pacing, RTT) and the
  fitted ``cpu_per_join`` (`join_setup`; the median over those runs). On loopback the
  swarm's clients share one machine, so this is their own CPU per join plus their
  contention while joining.
* **Garbage-collection pauses.** The server records each second's collector pauses
  (``gc_pause``: seconds, with the sum of squared pauses, and the same for the full,
  generation-2, collections among them). ``gc_pause_per_packet`` is the slope of the
  young collections' pause seconds on packets forwarded, ``gc_full_per_join`` that of
  the full ones' on listeners joined (the heap grows with connections), and
  ``gc_pause_length`` / ``gc_full_length`` each kind's length-biased mean pause,
  sum(L^2) / sum(L): what a packet arriving in one sees.

* **Captions and recording.** Once a second the server also records its caption
  workers' CPU (``asr_cores``: their own processes) and the speech it sent them
  (``asr_audio_seconds``), and what its recordings wrote (``recording_bytes`` of role
  ``room``, ``packets_recorded``, ``silence_recorded``). ``asr_cost`` is the slope of::

      asr_cores = asr_cost x speech seconds per second

  over windows of `ASR_WINDOW` samples (a job's CPU lands a little after its audio was
  sent, and a backlog drains later still), from the first second any speech was sent
  (before it the workers load their model). Like the model, no fixed term: an idle
  worker waits on its queue. ``recorded_packet_bytes`` is the cost per packet of::

      recording_bytes = recorded_packet_bytes x packets_recorded
                        + silence_frame_bytes x silence_recorded

  per second (page headers spread over both; ``silence_frame_bytes`` is reported, not
  written: the model leaves silence out). Runs without captions (or recording) leave
  the term out of the file, so the scenario's value stands; `Calibration.notes` says so.
  The swarm's packets carry a measurement mark (`SWARM_MARK_BYTES`) that real clients'
  do not, so a fit from load runs is that much above real speech; the notes say so.

* **A cluster** (a load run against ``spacesim serve --cluster`` nodes: its server run
  holds each node's samples, `spacesim.load.nodes`). Each node's second is one CPU
  sample, its joins, connections and events those of the participants the load run's
  ``participant_joined`` records put on it (``attrs.node``), so the same CPU terms are
  per node, as the model's are. The cascade's own CPU is taken off each sample before
  the fit at the scenario's ``cpu_per_relay_send`` (per packet the node relayed) and
  ``cpu_per_relay_receive`` (per packet relayed to it): a few microseconds a packet,
  below what a per-second CPU sample resolves, so they are measured apart rather than
  fitted. One more CPU term is fitted there, ``cpu_per_publisher_packet``: the
  speakers' packets (``published``, their packets a second on the space's origin node,
  none elsewhere) cost the origin their receive path before any fan-out, which the
  nodes without publishers show apart (on one node, with a fixed number of speakers,
  it cannot be told from ``cpu_fixed`` and is left there; runs with different numbers
  of speakers part them, as above). The latency fit takes each
  node's listeners apart: the fan-out term counts
  the listeners *on that node*, and one more term, ``edge_delay``, is the latency
  common to every listener on a node other than the room's origin (the hop)::

      latency_q = forward_delay + q x listeners on the node x fanout_delay
                  + edge_delay x [not the origin]

For capacity questions about real listeners (each on their own device), the two
latency terms from a loopback rig overstate the fan-out: delete ``fanout_delay`` and
``forward_delay`` from the file and the node falls back to ``cpu_per_packet / cores``
per listener; the CPU terms carry over as they are.

The result is a YAML file whose ``server:`` section overrides a scenario's
(`apply_calibration`, ``spacesim simulate --calibration FILE``), plus provenance:
runs, residuals, machine.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import platform
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml
from pydantic import ValidationError

from spacesim.results import Run, load_run, packets_per_window, steady_window
from spacesim.scenario import Scenario, ScenarioError, Server, parse_scenario

__all__ = [
    "ASR_WINDOW",
    "CPU_TERMS",
    "Calibration",
    "CalibrationError",
    "apply_calibration",
    "asr_samples",
    "calibrate",
    "cpu_samples",
    "fit_asr",
    "fit_cluster_cpu",
    "fit_cpu",
    "fit_gc",
    "fit_latency",
    "fit_recording",
    "gc_samples",
    "join_setup",
    "latency_points",
    "load_calibration",
    "nnls",
    "origin_node",
    "recording_samples",
    "swarm_behind",
    "swarm_loop_lag",
    "swarm_pace",
]

#: Regressors of the CPU fit, in order, and the server field each coefficient sets.
CPU_TERMS: tuple[tuple[str, str], ...] = (
    ("fixed", "cpu_fixed"),
    ("packets", "cpu_per_packet"),
    ("joins", "cpu_per_join"),
    ("connections", "cpu_per_connection"),
    ("events", "cpu_per_event"),
)
MIN_PACE = 0.95  # below this share of packets taken in per window, the swarm fell behind
BACKLOG_INTERVALS = 5.0  # loopback median latency above this many packet intervals: backlog
# The fan-out law is fitted on the body of the distribution; the tail above it carries
# the rig's stalls (GC, scheduling), which the model does not have.
QUANTILES: tuple[float, ...] = (0.1, 0.2, 0.3, 0.4, 0.5)
# The fan-out fit reads latency quantiles as q x N fan-out steps, with no queue in
# front of them; a run whose server was busier than this share of its cores in the
# steady window has one (near saturation it is most of the latency), so it stays out.
LATENCY_FIT_MAX_LOAD = 0.75
#: Server samples (seconds) per window of the speech recognition fit.
ASR_WINDOW = 5
#: Bytes the swarm adds to each Opus packet it sends: a 20-byte mark in the padding of a
#: code-3 packet, plus its count and padding-length bytes (spacesim.client.opus.mark).
SWARM_MARK_BYTES = 22


class CalibrationError(ValueError):
    """Runs that cannot be calibrated from; the message says which and why."""


# --------------------------------------------------------------------------- maths


def nnls(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Non-negative least squares, exactly, for the few columns a calibration has.

    The optimum is the unconstrained least-squares fit on some subset of columns with
    every coefficient >= 0, so trying each subset (2^k for k <= 6 columns) finds it
    without an iterative solver. Columns are scaled to unit norm first.
    """
    a = np.asarray(a, dtype="float64")
    b = np.asarray(b, dtype="float64")
    k = a.shape[1]
    if k > 10:
        raise ValueError("nnls here is exhaustive: at most 10 columns")
    norms = np.linalg.norm(a, axis=0)
    norms[norms == 0] = 1.0
    s = a / norms
    best = np.zeros(k)
    best_rss = float(b @ b)
    for r in range(1, k + 1):
        for cols in itertools.combinations(range(k), r):
            idx = list(cols)
            x, *_ = np.linalg.lstsq(s[:, idx], b, rcond=None)
            if np.any(x < 0):
                continue
            rss = float(np.sum((s[:, idx] @ x - b) ** 2))
            if rss < best_rss - 1e-15 * max(best_rss, 1.0):
                best_rss = rss
                best = np.zeros(k)
                best[idx] = x
    out: np.ndarray = best / norms
    return out


def _stderr(a: np.ndarray, resid: np.ndarray, coef: np.ndarray) -> list[float]:
    """Standard errors of the non-zero coefficients (OLS formula on the active columns)."""
    active = [i for i in range(a.shape[1]) if coef[i] > 0]
    out = [math.nan] * a.shape[1]
    dof = a.shape[0] - len(active)
    if not active or dof <= 0:
        return out
    sigma2 = float(resid @ resid) / dof
    sub = a[:, active]
    try:
        cov = np.linalg.inv(sub.T @ sub) * sigma2
    except np.linalg.LinAlgError:
        return out
    for j, i in enumerate(active):
        out[i] = float(math.sqrt(max(cov[j, j], 0.0)))
    return out


def _r2(y: np.ndarray, resid: np.ndarray) -> float:
    ss = float(np.sum((y - y.mean()) ** 2))
    return 1.0 - float(resid @ resid) / ss if ss > 0 else math.nan


# --------------------------------------------------------------------------- runs


@dataclass(frozen=True)
class _Pair:
    """A server run and, when there is one, the load run that drove it."""

    directory: Path
    server: Run
    load: Run | None
    offset: float  # server t = load t + offset


def _pair(directory: str | Path) -> _Pair:
    path = Path(directory)
    run = load_run(path)
    if run.meta.source == "server":
        return _Pair(path, run, None, 0.0)
    if run.meta.source != "load":
        raise CalibrationError(f"{path}: a {run.meta.source} run; calibrate from load runs")
    sub = path / str(run.meta.extra.get("server_run") or "server")
    if not (sub / "meta.json").is_file():
        raise CalibrationError(
            f"{path}: no server records ({sub}); run `spacesim load` with its embedded server"
        )
    server = load_run(sub)
    try:
        offset = float(run.meta.extra["t0_unix"]) - float(server.meta.extra["t0_unix"])
    except (KeyError, TypeError, ValueError):
        raise CalibrationError(
            f"{path}: a meta lacks extra.t0_unix; cannot line clocks up"
        ) from None
    return _Pair(path, server, run, offset)


def _end(pair: _Pair) -> float:
    """When the swarm stopped, on the server's clock (inf for a server run alone)."""
    if pair.load is None or pair.load.meta.duration is None:
        return math.inf
    return pair.load.meta.duration + pair.offset


def cpu_samples(directory: str | Path) -> pd.DataFrame:
    """One row per server CPU sample: ``t, cpu, packets, joins, connections, events,
    published, run_id``.

    `joins` are the server's ``participant_joined`` records in the sample's second;
    `connections` the participants connected, averaged over the second's two ends;
    `events` the events the load run's listeners received in it (0 without a load run);
    `published` the packets the run's speakers sent it a second (its scenario's
    ``active_speakers`` / ``packet_interval``) in a second it forwarded any, else 0.
    """
    return _cpu_samples(_pair(directory))


def _cpu_samples(pair: _Pair) -> pd.DataFrame:
    if _nodes_of(pair):
        return _cluster_cpu_samples(pair)
    rec = pair.server.records
    cpu = rec[(rec["kind"] == "node_cpu")].sort_values("t")
    fwd = rec[(rec["kind"] == "packets_forwarded")].set_index("t")["value"]
    t = cpu["t"].to_numpy(dtype="float64")
    if t.size < 2:
        raise CalibrationError(f"{pair.directory}: fewer than two CPU samples")
    joined = np.sort(rec.loc[rec["kind"] == "participant_joined", "t"].to_numpy("float64"))
    left = np.sort(rec.loc[rec["kind"] == "participant_left", "t"].to_numpy("float64"))
    start = np.concatenate([[0.0], t[:-1]])

    def alive(at: np.ndarray) -> np.ndarray:
        return np.searchsorted(joined, at, "right") - np.searchsorted(left, at, "right")

    packets = fwd.reindex(t).fillna(0.0).to_numpy("float64")
    senders, interval = _speaking(pair.load or pair.server)
    frame = pd.DataFrame(
        {
            "t": t,
            "cpu": cpu["value"].to_numpy("float64"),
            "packets": packets,
            "joins": np.searchsorted(joined, t, "right") - np.searchsorted(joined, start, "right"),
            "connections": (alive(start) + alive(t)) / 2.0,
            "events": _events_between(pair, start, t),
            "published": np.where(packets > 0, senders / interval, 0.0),
            "run_id": pair.server.meta.run_id,
        }
    )
    frame["joins"] = frame["joins"].astype("float64")
    return frame[frame["t"] <= _end(pair)].reset_index(drop=True)


def _events_between(pair: _Pair, start: np.ndarray, end: np.ndarray) -> np.ndarray:
    """Events the load run's listeners received in each (start, end] of the server's clock."""
    if pair.load is None:
        return np.zeros(len(end))
    rec = pair.load.records
    got = rec[rec["kind"] == "events_received"].sort_values("t")
    if got.empty:
        return np.zeros(len(end))
    t = got["t"].to_numpy("float64") + pair.offset
    total = np.concatenate([[0.0], np.cumsum(got["value"].to_numpy("float64"))])
    out: np.ndarray = (
        total[np.searchsorted(t, end, "right")] - total[np.searchsorted(t, start, "right")]
    )
    return out


# --------------------------------------------------------------------------- a cluster


def _nodes_of(pair: _Pair) -> dict[str, str]:
    """participant -> node of a load run against a cluster (empty: not a cluster run, whose
    server run is the nodes' samples, `spacesim.load.nodes.NodeSampler`)."""
    if pair.load is None or "nodes" not in (pair.server.meta.extra or {}):
        return {}
    lrec = pair.load.records
    joined = lrec[lrec["kind"] == "participant_joined"]
    out: dict[str, str] = {}
    for pid, attrs in zip(joined["participant"], joined["attrs"], strict=True):
        node = json.loads(attrs).get("node") if isinstance(attrs, str) and attrs else None
        if node:
            out[str(pid)] = str(node)
    return out


def origin_node(run: Run) -> str | None:
    """The node a cluster run's host was on (its space's origin), None without one."""
    rec = run.records
    hosts = rec[(rec["kind"] == "participant_joined") & (rec["role"] == "host")]
    for attrs in hosts["attrs"]:
        node = json.loads(attrs).get("node") if isinstance(attrs, str) and attrs else None
        if node:
            return str(node)
    return None


def _cluster_cpu_samples(pair: _Pair) -> pd.DataFrame:
    """`_cpu_samples` of a cluster run: one row per node per second (``node`` says which),
    less the cascade's CPU at the scenario's relay costs (see the module docstring)."""
    assert pair.load is not None
    server = Server.model_validate(((pair.load.meta.scenario or {}).get("server")) or {})
    nodes = _nodes_of(pair)
    origin = origin_node(pair.load)
    senders, interval = _speaking(pair.load)
    published = senders / interval  # the speakers' packets a second, all to the origin
    rec = pair.server.records
    lrec = pair.load.records
    steady = steady_window(lrec, pair.load.meta.duration)
    frames = []
    relayed = rec[rec["kind"] == "packets_relayed"]
    sent = relayed.groupby("t")["value"].sum()  # every node's relays in each sample
    names = sorted(set(rec.loc[rec["kind"] == "node_cpu", "participant"]))
    for node in names:
        mine = rec[rec["participant"] == node]
        cpu = mine[mine["kind"] == "node_cpu"].sort_values("t")
        t = cpu["t"].to_numpy("float64")
        if t.size < 2:
            continue
        fwd = mine[mine["kind"] == "packets_forwarded"].set_index("t")["value"]
        out = mine[mine["kind"] == "packets_relayed"].set_index("t")["value"].reindex(t).fillna(0)
        # what the other nodes relayed, shared among the others (each packet goes to one)
        others = (sent.reindex(t).fillna(0.0) - out) / max(len(names) - 1, 1)
        who = lrec["participant"].map(nodes)
        here = lrec[who == node]
        joined = np.sort(
            here.loc[here["kind"] == "participant_joined", "t"].to_numpy("float64") + pair.offset
        )
        left = np.sort(
            here.loc[here["kind"] == "participant_left", "t"].to_numpy("float64") + pair.offset
        )
        start = np.concatenate([[t[0] - 1.0], t[:-1]])

        def alive(
            at: np.ndarray, joined: np.ndarray = joined, left: np.ndarray = left
        ) -> np.ndarray:
            return np.searchsorted(joined, at, "right") - np.searchsorted(left, at, "right")

        got = here[here["kind"] == "events_received"].sort_values("t")
        et = got["t"].to_numpy("float64") + pair.offset
        total = np.concatenate([[0.0], np.cumsum(got["value"].to_numpy("float64"))])
        events = total[np.searchsorted(et, t, "right")] - total[np.searchsorted(et, start, "right")]
        frame = pd.DataFrame(
            {
                "t": t,
                "published": np.full(t.size, published if node == origin else 0.0),
                "cpu": cpu["value"].to_numpy("float64")
                - out.to_numpy("float64") * server.cpu_per_relay_send
                - others.to_numpy("float64") * server.cpu_per_relay_receive,
                "packets": fwd.reindex(t).fillna(0.0).to_numpy("float64"),
                "joins": (
                    np.searchsorted(joined, t, "right") - np.searchsorted(joined, start, "right")
                ).astype("float64"),
                "connections": (alive(start) + alive(t)) / 2.0,
                "events": events,
                "node": node,
                "run_id": pair.server.meta.run_id,
                # the sample's second inside the load run's steady window (no joins)
                "steady": (t - 1.0 >= steady[0] + pair.offset) & (t <= steady[1] + pair.offset),
            }
        )
        frames.append(frame[frame["t"] <= _end(pair)])
    if not frames:
        raise CalibrationError(f"{pair.directory}: fewer than two CPU samples of any node")
    return pd.concat(frames, ignore_index=True)


def _cluster_latency_points(pair: _Pair) -> pd.DataFrame:
    """`_latency_points` of a cluster run: each node's listeners apart, with ``remote``
    (1 on a node other than the origin) and ``listeners`` on that node."""
    cols = ["q", "listeners", "senders", "remote", "latency", "run_id"]
    assert pair.load is not None
    nodes = _nodes_of(pair)
    origin = origin_node(pair.load)
    rec = pair.load.records
    if swarm_behind(pair.load) or origin is None:
        return pd.DataFrame(columns=cols)
    start, end = steady_window(rec, pair.load.meta.duration)
    who = rec["participant"].map(nodes)
    senders, _ = _speaking(pair.load)
    frames = []
    for node in sorted(set(nodes.values())):
        here = rec[who == node]
        lat = here.loc[
            (here["kind"] == "audio_latency") & (here["t"] >= start) & (here["t"] <= end), "value"
        ].dropna()
        n = _listeners_in(here, start, end)
        if lat.size < 20 or n <= 0:
            continue
        frames.append(
            pd.DataFrame(
                {
                    "q": QUANTILES,
                    "listeners": n,
                    "senders": senders,
                    "remote": float(node != origin),
                    "latency": np.quantile(lat.to_numpy("float64"), QUANTILES),
                    "run_id": pair.load.meta.run_id,
                }
            )
        )
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=cols)


def _listeners_in(records: pd.DataFrame, start: float, end: float) -> float:
    lis = records[records["role"] == "listener"]
    joined = lis.loc[lis["kind"] == "participant_joined", "t"]
    left = lis.loc[lis["kind"] == "participant_left", "t"]
    return float((joined <= start).sum() - (left < end).sum())


def latency_points(directory: str | Path) -> pd.DataFrame:
    """Latency quantiles of a load run's steady window: ``q, listeners, senders, latency``."""
    return _latency_points(_pair(directory))


def _speaking(run: Run) -> tuple[float, float]:
    """(senders, packet interval) of the run's scenario."""
    speaking = (run.meta.scenario or {}).get("speaking") or {}
    return float(speaking.get("active_speakers") or 1), float(
        speaking.get("packet_interval") or 0.02
    )


def _steady(run: Run) -> pd.DataFrame:
    rec = run.records
    start, end = steady_window(rec, run.meta.duration)
    return rec[(rec["t"] >= start) & (rec["t"] <= end)]


def swarm_pace(run: Run) -> float:
    """Packets the listeners accounted for per window over what the senders sent: 1 = kept up."""
    senders, interval = _speaking(run)
    return packets_per_window(_steady(run)) * interval / senders


def swarm_loop_lag(run: Run) -> float:
    """p95 of the swarm's ``loop_lag`` records (s) in the steady window; NaN if none.

    Reported, not used to reject a run: each record is a second's *worst* lag, so its
    p95 passes 50 ms on a busy machine long before the swarm's median latency moves.
    """
    rec = _steady(run)
    lag = rec.loc[rec["kind"] == "loop_lag", "value"].dropna()
    return float(np.quantile(lag.to_numpy("float64"), 0.95)) if lag.size else math.nan


def swarm_behind(run: Run) -> str | None:
    """Why a load run's latencies measure the swarm rather than the server, or None.

    Either the listeners took in fewer packets than were sent (pace < `MIN_PACE`), or,
    on loopback (the embedded server), half the packets waited longer than
    `BACKLOG_INTERVALS` packet intervals although nothing on the path but the server
    and the swarm's own event loop can hold them: the swarm is working off a backlog.
    Such runs stay out of the latency fit (their CPU samples, the server's own, count).
    The backlog rule does not apply where the senders ran in their own process
    (``spacesim load --stage-cpus``): latency then runs from a mark taken when an
    on-time sender sent to the kernel's receive time at the listener's socket, so no
    wait in the listeners' process can enter it, and a long median is the server's.
    """
    pace = swarm_pace(run)
    if pace < MIN_PACE:
        return f"pace {pace:.2f} < {MIN_PACE}"
    if run.meta.extra.get("stage_cpus") is not None:
        return None
    _, interval = _speaking(run)
    rec = _steady(run)
    median = float(rec.loc[rec["kind"] == "audio_latency", "value"].median())
    if run.meta.extra.get("target") == "embedded" and median > BACKLOG_INTERVALS * interval:
        return f"median latency {median * 1000:.0f} ms on loopback: a backlog in the swarm"
    return None


def _latency_points(pair: _Pair) -> pd.DataFrame:
    cols = ["q", "listeners", "senders", "latency", "run_id"]
    if pair.load is None:
        return pd.DataFrame(columns=cols)
    if _nodes_of(pair):
        return _cluster_latency_points(pair)
    rec = pair.load.records
    start, end = steady_window(rec, pair.load.meta.duration)
    lat = rec.loc[
        (rec["kind"] == "audio_latency") & (rec["t"] >= start) & (rec["t"] <= end), "value"
    ].dropna()
    n = _listeners_in(rec, start, end)
    if lat.size < 20 or n <= 0 or swarm_behind(pair.load):
        return pd.DataFrame(columns=cols)
    if server_load(pair) > LATENCY_FIT_MAX_LOAD:
        return pd.DataFrame(columns=cols)
    qs = np.quantile(lat.to_numpy("float64"), QUANTILES)
    return pd.DataFrame(
        {
            "q": QUANTILES,
            "listeners": n,
            "senders": float(
                ((pair.load.meta.scenario or {}).get("speaking") or {}).get("active_speakers") or 1
            ),
            "latency": qs,
            "run_id": pair.load.meta.run_id,
        }
    )


def server_load(pair: _Pair) -> float:
    """The server's mean CPU over its cores in its steady window (0 when unknown)."""
    rec = pair.server.records
    start, end = steady_window(rec, pair.server.meta.duration)
    cpu = rec.loc[
        (rec["kind"] == "node_cpu") & (rec["t"] >= start) & (rec["t"] <= end), "value"
    ].dropna()
    server = (pair.server.meta.scenario or {}).get("server") or {}
    cores = float(server.get("cores") or 1.0)
    return float(cpu.mean()) / cores if cpu.size else 0.0


def asr_samples(directory: str | Path) -> pd.DataFrame:
    """Windows of the caption workers' records: ``t, cores, audio, run_id`` (see
    `fit_asr`); empty when the run sent no speech to caption workers."""
    return _asr_samples(_pair(directory))


def _asr_samples(pair: _Pair, window: int = ASR_WINDOW) -> pd.DataFrame:
    cols = ["t", "cores", "audio", "run_id"]
    rec = pair.server.records
    cores = rec[rec["kind"] == "asr_cores"].sort_values("t")
    audio = rec[rec["kind"] == "asr_audio_seconds"].set_index("t")["value"]
    t = cores["t"].to_numpy("float64")
    frame = pd.DataFrame(
        {
            "t": t,
            "cpu": cores["value"].to_numpy("float64"),
            "audio": audio.reindex(t).fillna(0.0).to_numpy("float64"),
        }
    )
    frame = frame[frame["t"] <= _end(pair)]
    spoken = np.flatnonzero(frame["audio"].to_numpy() > 0)
    if spoken.size == 0 or t.size < 2:
        return pd.DataFrame(columns=cols)
    frame = frame.iloc[spoken[0] :].reset_index(drop=True)
    dt = np.diff(frame["t"].to_numpy(), prepend=frame["t"].iloc[0] - np.median(np.diff(t)))
    frame["cpu_s"] = frame["cpu"] * dt
    frame["dt"] = dt
    block = np.arange(len(frame)) // window
    sums = frame.groupby(block).agg(t=("t", "max"), cpu_s=("cpu_s", "sum"), dt=("dt", "sum"))
    sums["audio"] = frame.groupby(block)["audio"].sum()
    full = frame.groupby(block).size() == window  # a short last window is left out
    sums = sums[full.to_numpy()]
    return pd.DataFrame(
        {
            "t": sums["t"].to_numpy(),
            "cores": (sums["cpu_s"] / sums["dt"]).to_numpy(),
            "audio": (sums["audio"] / sums["dt"]).to_numpy(),
            "run_id": pair.server.meta.run_id,
        }
    )


def recording_samples(directory: str | Path) -> pd.DataFrame:
    """Per server sample: ``t, bytes, packets, silence, run_id`` of its recordings."""
    return _recording_samples(_pair(directory))


def _recording_samples(pair: _Pair) -> pd.DataFrame:
    rec = pair.server.records
    written = rec[(rec["kind"] == "recording_bytes") & (rec["role"] == "room")].sort_values("t")
    t = written["t"].to_numpy("float64")

    def at(kind: str) -> np.ndarray:
        values = rec[rec["kind"] == kind].set_index("t")["value"]
        out: np.ndarray = values.reindex(t).fillna(0.0).to_numpy("float64")
        return out

    frame = pd.DataFrame(
        {
            "t": t,
            "bytes": written["value"].to_numpy("float64"),
            "packets": at("packets_recorded"),
            "silence": at("silence_recorded"),
            "run_id": pair.server.meta.run_id,
        }
    )
    return frame[frame["t"] <= _end(pair)].reset_index(drop=True)


def join_setup(directory: str | Path, cpu_per_join: float) -> float | None:
    """A load run's ``client_setup``: its listeners' median join time less what the model
    puts around it (2 RTT + max(ICE pacing, RTT) of the run's first network path, and the
    server's join work); None without listeners' joins or when the swarm fell behind."""
    return _join_setup(_pair(directory), cpu_per_join)


def _join_setup(pair: _Pair, cpu_per_join: float) -> float | None:
    from spacesim.sim.world import _JOIN_ROUND_TRIPS, ICE_CHECK_PACING

    if pair.load is None or swarm_behind(pair.load):
        return None
    rec = pair.load.records
    joins = rec.loc[(rec["kind"] == "participant_joined") & (rec["role"] == "listener"), "value"]
    joins = joins.dropna()
    if joins.empty:
        return None
    paths = (pair.load.meta.scenario or {}).get("network") or [{}]
    first = paths[0] if isinstance(paths, list) else paths
    network = str(pair.load.meta.extra.get("network") or "scenario")
    rtt = 0.0 if network == "none" else float(first.get("rtt") or 0.0)  # seconds in the meta
    around = _JOIN_ROUND_TRIPS * rtt + max(ICE_CHECK_PACING, rtt) + cpu_per_join
    return max(float(joins.median()) - around, 0.0)


def gc_samples(directory: str | Path) -> pd.DataFrame:
    """Per server sample: ``t, pause, squares, full, full_squares, packets, joins, run_id``
    (its collector's pauses, all of them and the full collections' of them; the packets
    it forwarded and the listeners that joined it in the sample)."""
    return _gc_samples(_pair(directory))


def _gc_samples(pair: _Pair) -> pd.DataFrame:
    rec = pair.server.records
    paused = rec[rec["kind"] == "gc_pause"].sort_values("t")
    if paused.empty:
        return pd.DataFrame(
            columns=["t", "pause", "squares", "full", "full_squares", "packets", "joins", "run_id"]
        )
    t = paused["t"].to_numpy("float64")
    packets = rec[rec["kind"] == "packets_forwarded"].set_index("t")["value"]
    attrs = [json.loads(a or "{}") for a in paused["attrs"]]
    joined = np.sort(rec.loc[rec["kind"] == "participant_joined", "t"].to_numpy("float64"))
    start = np.concatenate([[0.0], t[:-1]])
    frame = pd.DataFrame(
        {
            "t": t,
            "pause": paused["value"].to_numpy("float64"),
            "squares": np.asarray([float(a.get("squares", 0.0)) for a in attrs], "float64"),
            # records from before the split have no full-collection attrs: all young
            "full": np.asarray([float(a.get("full", 0.0)) for a in attrs], "float64"),
            "full_squares": np.asarray(
                [float(a.get("full_squares", 0.0)) for a in attrs], "float64"
            ),
            "packets": packets.reindex(t).fillna(0.0).to_numpy("float64"),
            "joins": (
                np.searchsorted(joined, t, "right") - np.searchsorted(joined, start, "right")
            ).astype("float64"),
            "run_id": pair.server.meta.run_id,
        }
    )
    return frame[frame["t"] <= _end(pair)].reset_index(drop=True)


# --------------------------------------------------------------------------- fits


@dataclass(frozen=True)
class Fit:
    """Coefficients of one fit with their residuals."""

    coef: dict[str, float]
    stderr: dict[str, float]
    rms: float
    r2: float
    samples: int
    per_run: dict[str, dict[str, float]] = field(default_factory=dict)


def _per_run(frame: pd.DataFrame, resid: np.ndarray) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    runs = frame["run_id"].to_numpy()
    for run in dict.fromkeys(runs):
        r = resid[runs == run]
        out[str(run)] = {
            "samples": int(r.size),
            "rms": float(np.sqrt(np.mean(r**2))),
            "bias": float(np.mean(r)),
        }
    return out


def fit_cpu(samples: pd.DataFrame) -> Fit:
    """Fit `CPU_TERMS` to per-second server CPU samples (see the module docstring).

    Without any event delivered (no ``events`` column, or all zero) the event term is
    left out: the samples say nothing about it.
    """
    terms = list(CPU_TERMS)
    if "events" not in samples or not samples["events"].to_numpy("float64").any():
        terms = [t for t in terms if t[0] != "events"]
    if _publishers_apart(samples):
        terms.append(("published", "cpu_per_publisher_packet"))
    if len(samples) < len(terms) + 2:
        raise CalibrationError(f"{len(samples)} CPU samples: too few to fit {len(terms)}")
    a = np.column_stack(
        [np.ones(len(samples))] + [samples[c].fillna(0.0).to_numpy("float64") for c, _ in terms[1:]]
    )
    y = samples["cpu"].to_numpy("float64")
    return _nnls_fit(a, y, [f for _, f in terms], samples)


def _publishers_apart(samples: pd.DataFrame) -> bool:
    """Whether the samples tell the speakers' packets (``cpu_per_publisher_packet``) from
    ``cpu_fixed``: a cluster's other nodes have none, and on one node runs with different
    numbers of speakers differ by them. One node with one number of speakers leaves them
    in ``cpu_fixed`` (the seconds before the stage joined are too few to part them)."""
    if "published" not in samples:
        return False
    published = samples["published"].fillna(0).to_numpy("float64")
    if "node" in samples:
        return bool(published.any())
    return np.unique(published[published > 0]).size >= 2


def fit_cluster_cpu(samples: pd.DataFrame) -> Fit:
    """`fit_cpu` for a cluster's per-node samples, in two steps: the steady terms on the
    seconds of the runs' steady windows (no joins), then ``cpu_per_join`` on what those
    leave of the other seconds.

    In a cluster a join's work is split between the node that answers its HTTP requests
    (the load's target, proxying to the origin) and the node that carries its media;
    the per-node join counts see only the latter. Fitted in one step, that misplaced
    work leaked into the steady terms (``cpu_per_packet`` 0 and ``cpu_fixed`` a third
    of an idle-to-loaded node's intercept, 37 % under on the other node at 40
    listeners); fitted on the steady seconds, each node's steady CPU is what its
    packets, connections and publishers cost. Without a steady second (a run too short
    for a steady window), `fit_cpu` as for one node.
    """
    steady = samples[samples["steady"].astype(bool)] if "steady" in samples else samples[:0]
    terms = [t for t in CPU_TERMS if t[0] != "joins"]
    if "events" not in steady or not steady["events"].to_numpy("float64").any():
        terms = [t for t in terms if t[0] != "events"]
    if "published" in steady and steady["published"].fillna(0).to_numpy("float64").any():
        terms.append(("published", "cpu_per_publisher_packet"))
    if len(steady) < len(terms) + 2:
        return fit_cpu(samples)
    a = np.column_stack(
        [np.ones(len(steady))] + [steady[c].fillna(0.0).to_numpy("float64") for c, _ in terms[1:]]
    )
    base = _nnls_fit(a, steady["cpu"].to_numpy("float64"), [f for _, f in terms], steady)
    full = np.column_stack(
        [np.ones(len(samples))] + [samples[c].fillna(0.0).to_numpy("float64") for c, _ in terms[1:]]
    )
    rest = samples["cpu"].to_numpy("float64") - full @ np.array([base.coef[f] for _, f in terms])
    ramp = ~samples["steady"].astype(bool).to_numpy() if "steady" in samples else None
    joins = samples["joins"].fillna(0.0).to_numpy("float64")
    coef = dict(base.coef)
    stderr = dict(base.stderr)
    if ramp is not None and joins[ramp].any():
        per_join = _nnls_fit(joins[ramp, None], rest[ramp], ["cpu_per_join"], samples[ramp])
        coef |= per_join.coef
        stderr |= per_join.stderr
    resid = rest - joins * coef.get("cpu_per_join", 0.0)
    y = samples["cpu"].to_numpy("float64")
    return Fit(
        coef=coef,
        stderr=stderr,
        rms=float(np.sqrt(np.mean(resid**2))),
        r2=_r2(y, resid),
        samples=len(y),
        per_run=_per_run(samples, resid),
    )


def fit_latency(points: pd.DataFrame) -> Fit | None:
    """Fit ``latency_q = forward_delay + q x fan-out x fanout_delay``; None without points.

    The fan-out of a packet is listeners (every listener hears every sender here). Points
    of a cluster's other nodes (``remote`` = 1) fit one more term, ``edge_delay``.
    """
    if len(points) < 3:
        return None
    x = (points["q"] * points["listeners"]).to_numpy("float64")
    cols = [np.ones(len(points)), x]
    names = ["forward_delay", "fanout_delay"]
    if "remote" in points and (points["remote"].fillna(0) > 0).any():
        cols.append(points["remote"].fillna(0).to_numpy("float64"))
        names.append("edge_delay")
    a = np.column_stack(cols)
    y = points["latency"].to_numpy("float64")
    if np.ptp(x) <= 0:
        return None
    return _nnls_fit(a, y, names, points)


def fit_asr(samples: pd.DataFrame) -> Fit | None:
    """Fit ``cores = asr_cost x audio`` (caption workers' cores on speech seconds per
    second, windows of `asr_samples`); None when no window had speech."""
    if len(samples) < 2 or not (samples["audio"].to_numpy("float64") > 0).any():
        return None
    a = samples[["audio"]].to_numpy("float64")
    return _nnls_fit(a, samples["cores"].to_numpy("float64"), ["asr_cost"], samples)


def fit_recording(samples: pd.DataFrame) -> Fit | None:
    """Fit ``bytes = recorded_packet_bytes x packets + silence_frame_bytes x silence`` per
    second of a recording's writes; None when nothing was recorded."""
    if len(samples) < 3 or not (samples["packets"].to_numpy("float64") > 0).any():
        return None
    a = samples[["packets", "silence"]].to_numpy("float64")
    y = samples["bytes"].to_numpy("float64")
    return _nnls_fit(a, y, ["recorded_packet_bytes", "silence_frame_bytes"], samples)


def fit_gc(samples: pd.DataFrame) -> Fit | None:
    """Young collections (generations 0 and 1): ``pause seconds = gc_pause_per_packet x
    packets`` per second; full ones (generation 2): ``= gc_full_per_join x joins`` (the
    heap grows with connections: `spacesim.sim.node`); per kind the pause a packet
    arriving in one sees, ``gc_*_length = sum(L^2) / sum(L)`` (length-biased mean). The
    returned fit's residuals are the young fit's. None when the server recorded no pause
    while forwarding."""
    if len(samples) < 3 or samples["pause"].sum() <= 0 or samples["packets"].sum() <= 0:
        return None
    n = len(samples)
    full = samples["full"].to_numpy("float64") if "full" in samples else np.zeros(n)
    full_sq = samples["full_squares"].to_numpy("float64") if "full_squares" in samples else 0 * full
    joins = samples["joins"].to_numpy("float64") if "joins" in samples else np.zeros(n)
    pause = samples["pause"].to_numpy("float64")
    young = np.maximum(pause - full, 0.0)
    young_sq = np.maximum(samples["squares"].to_numpy("float64") - full_sq, 0.0)
    fit = _nnls_fit(
        samples[["packets"]].to_numpy("float64"), young, ["gc_pause_per_packet"], samples
    )
    per_join = float(nnls(joins[:, None], full)[0]) if full.sum() > 0 and joins.sum() > 0 else 0.0
    fit.coef["gc_pause_length"] = float(young_sq.sum() / young.sum()) if young.sum() > 0 else 0.0
    fit.coef["gc_full_per_join"] = per_join
    fit.coef["gc_full_length"] = float(full_sq.sum() / full.sum()) if per_join > 0 else 0.0
    return fit


def _nnls_fit(a: np.ndarray, y: np.ndarray, names: list[str], rows: pd.DataFrame) -> Fit:
    """Non-negative least squares of y on the columns of a, with its residual figures."""
    coef = nnls(a, y)
    resid = y - a @ coef
    se = _stderr(a, resid, coef)
    return Fit(
        coef=dict(zip(names, map(float, coef), strict=True)),
        stderr=dict(zip(names, se, strict=True)),
        rms=float(np.sqrt(np.mean(resid**2))),
        r2=_r2(y, resid),
        samples=len(y),
        per_run=_per_run(rows, resid),
    )


# --------------------------------------------------------------------------- the file


@dataclass(frozen=True)
class Calibration:
    """Fitted server fields plus where they came from and how well they fit."""

    server: dict[str, float]
    cpu: Fit
    latency: Fit | None
    runs: list[dict[str, Any]]
    machine: dict[str, Any]
    created: str
    asr: Fit | None = None  # None: no run sent speech to caption workers
    recording: Fit | None = None  # None: no run recorded
    gc: Fit | None = None  # None: no run recorded garbage-collector pauses
    # for people: terms left at the scenario's value, and caveats about fitted ones
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "server": dict(self.server),
            "provenance": {
                "created": self.created,
                "machine": self.machine,
                "runs": self.runs,
                "fit": {
                    "cpu": _fit_dict(self.cpu, "cores"),
                    "latency": _fit_dict(self.latency, "s") if self.latency else None,
                    "asr": _fit_dict(self.asr, "cores") if self.asr else None,
                    "recording": _fit_dict(self.recording, "bytes") if self.recording else None,
                    "gc": _fit_dict(self.gc, "s") if self.gc else None,
                },
                "notes": list(self.notes),
            },
        }

    def to_yaml(self) -> str:
        head = (
            "# spacesim calibration: `server:` overrides a scenario's server section\n"
            "# (spacesim simulate SCENARIO --calibration THIS_FILE); provenance is for humans.\n"
        )
        return head + yaml.safe_dump(self.to_dict(), sort_keys=False)

    def write(self, path: str | Path) -> Path:
        out = Path(path)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(self.to_yaml(), encoding="utf-8")
        return out


def _fit_dict(fit: Fit, unit: str) -> dict[str, Any]:
    d = asdict(fit)
    d["unit"] = unit
    return d


def _machine() -> dict[str, Any]:
    return {
        "node": platform.node(),
        "system": f"{platform.system()} {platform.release()} {platform.machine()}",
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
    }


def calibrate(
    directories: Sequence[str | Path], latency_from: Sequence[str | Path] | None = None
) -> Calibration:
    """Fit server costs from load runs (or server runs); see the module docstring.

    `latency_from` limits the latency fit to some of the runs (default: all), e.g. to
    leave out a run that is there to separate CPU terms but loads the swarm harder.
    """
    if not directories:
        raise CalibrationError("no runs given")
    pairs = [_pair(d) for d in directories]
    samples = pd.concat([_cpu_samples(p) for p in pairs], ignore_index=True)
    cpu = fit_cluster_cpu(samples) if "node" in samples else fit_cpu(samples)
    chosen = None if latency_from is None else {Path(d).resolve() for d in latency_from}
    timed = [p for p in pairs if chosen is None or p.directory.resolve() in chosen]
    frames = [f for f in (_latency_points(p) for p in timed) if len(f)]
    points = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    latency = fit_latency(points) if len(points) else None
    fitted = dict(cpu.coef) | (latency.coef if latency is not None else {})
    asr_frames = [f for f in (_asr_samples(p) for p in pairs) if len(f)]
    asr = fit_asr(pd.concat(asr_frames, ignore_index=True)) if asr_frames else None
    rec_frames = [f for f in (_recording_samples(p) for p in pairs) if len(f)]
    recording = fit_recording(pd.concat(rec_frames, ignore_index=True)) if rec_frames else None
    setups = [
        x for x in (_join_setup(p, fitted.get("cpu_per_join", 0.0)) for p in timed) if x is not None
    ]
    if setups:
        fitted["client_setup"] = float(np.median(setups))
    gc_frames = [f for f in (_gc_samples(p) for p in pairs) if len(f)]
    gc = fit_gc(pd.concat(gc_frames, ignore_index=True)) if gc_frames else None
    notes = []
    if "cpu_per_publisher_packet" not in cpu.coef:
        # the speakers' packets are in cpu_fixed: the scenario's own cost would count twice
        fitted["cpu_per_publisher_packet"] = 0.0
        notes.append(
            "cpu_per_publisher_packet: one number of speakers on one node, so their packets "
            "are in cpu_fixed (set to 0); runs with different numbers of speakers part them"
        )
    if gc is not None:
        fitted.update(gc.coef)
    else:
        notes.append("gc_pause_*: no run recorded collector pauses; the scenario's values stand")
    if asr is not None:
        fitted["asr_cost"] = asr.coef["asr_cost"]
    else:
        notes.append(
            "asr_cost: no run sent speech to caption workers (captions off); the "
            "scenario's value stands"
        )
    if recording is not None:
        fitted["recorded_packet_bytes"] = recording.coef["recorded_packet_bytes"]
        if any(p.load is not None for p, f in zip(pairs, rec_frames, strict=False) if len(f)):
            notes.append(
                f"recorded_packet_bytes: the swarm's packets carry a {SWARM_MARK_BYTES}-byte "
                "measurement mark each (spacesim.client.opus.mark), which the recording "
                "keeps; for real clients take about "
                f"{recording.coef['recorded_packet_bytes'] - SWARM_MARK_BYTES:.3g}"
            )
    else:
        notes.append("recorded_packet_bytes: no run recorded a space; the scenario's value stands")
    server = {k: float(f"{v:.4g}") for k, v in fitted.items()}  # more digits are noise
    runs = []
    for p in pairs:
        entry: dict[str, Any] = {
            "dir": str(p.directory),
            "server_run": p.server.meta.run_id,
            "load_run": p.load.meta.run_id if p.load else None,
        }
        if p.load is not None:
            start, end = steady_window(p.load.records, p.load.meta.duration)
            entry["listeners"] = _listeners_in(p.load.records, start, end)
            entry["swarm_pace"] = round(swarm_pace(p.load), 4)
            entry["swarm_loop_lag"] = round(swarm_loop_lag(p.load), 4)
            entry["swarm_behind"] = swarm_behind(p.load)
            entry["server_load"] = round(server_load(p), 4)
            entry["in_latency_fit"] = (
                entry["swarm_behind"] is None
                and entry["server_load"] <= LATENCY_FIT_MAX_LOAD
                and p in timed
            )
            entry["users"] = p.load.meta.extra.get("users")
        runs.append(entry)
    return Calibration(
        server=server,
        cpu=cpu,
        latency=latency,
        runs=runs,
        machine=_machine(),
        created=datetime.now(UTC).isoformat(timespec="seconds"),
        asr=asr,
        recording=recording,
        gc=gc,
        notes=notes,
    )


def load_calibration(path: str | Path) -> dict[str, Any]:
    """The ``server:`` overrides of a calibration file, checked against `Server`.

    Errors are `ScenarioError` s naming the file and the field, like a scenario's.
    """
    source = str(path)
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise ScenarioError(source, [("", f"cannot read file: {exc.strerror}")]) from None
    except yaml.YAMLError as exc:
        raise ScenarioError(source, [("", f"invalid YAML: {exc}")]) from None
    if not isinstance(data, dict) or not isinstance(data.get("server"), dict):
        raise ScenarioError(source, [("server", "a calibration needs a `server:` mapping")])
    unknown = sorted(set(data) - {"server", "provenance"})
    if unknown:
        raise ScenarioError(
            source, [(k, "unknown section (expected server, provenance)") for k in unknown]
        )
    overrides: dict[str, Any] = data["server"]
    try:
        Server.model_validate(overrides)
    except ValidationError as exc:
        problems = []
        for e in exc.errors():
            loc = ".".join(str(x) for x in e["loc"] if not str(x).startswith("function-"))
            problems.append(
                (f"server.{loc}" if loc else "server", e["msg"].removeprefix("Value error, "))
            )
        raise ScenarioError(source, problems) from None
    return overrides


def apply_calibration(scenario: Scenario, path: str | Path) -> Scenario:
    """`scenario` with its server section overridden by a calibration file's."""
    overrides = load_calibration(path)
    data = scenario.model_dump(mode="json")
    server: Mapping[str, Any] = data.get("server") or {}
    data["server"] = {**server, **overrides}
    return parse_scenario(data, str(path))
