"""Capacity answers: the fewest server nodes that meet a scenario's SLOs for an audience.

A node count *meets* when every SLO of the scenario passes and at most `max_refused` of
the joins are refused (admission control that turns most of the audience away would
otherwise "pass" by serving nobody). Two ways to get the answer:

* `capacity_table` reads a sweep table (`spacesim.sim.sweep.sweep`) with a ``nodes``
  axis: per audience, the smallest tested count from which every larger tested count
  meets, so a lucky pass below a failure is not taken for the answer;
* `capacity` searches: it starts at the forwarding floor (the cores the audience needs
  at 100 % utilisation), doubles (or halves) the node count until it brackets a pass
  above a failure, then bisects. Each probe is one simulated point, kept as the curve behind
  the answer.

Captions and recording are sized apart from the nodes (`caption_and_disk`): one
simulation of the scenario (``rooms.count`` spaces, ``speaking.active_speakers`` talking
in each, every space captioned and recorded unless the scenario's ``features`` say
otherwise) gives the caption workers' cores per node and tick (``asr_cores``) and the
bytes recordings and clips write (``recording_bytes``): the answer is read off those
records, so it is the model's own figure, not a second formula beside it.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from spacesim.results import write_run
from spacesim.scenario import Scenario
from spacesim.sim.audience import forwarding_cores
from spacesim.sim.engine import simulate
from spacesim.sim.sweep import grid_points, run_point

__all__ = [
    "CapacityAnswer",
    "FeatureAnswer",
    "capacity",
    "capacity_table",
    "caption_and_disk",
    "feature_overrides",
    "format_bytes",
    "meets",
]


def meets(table: pd.DataFrame, max_refused: float = 0.0) -> pd.Series:
    """Per row of a sweep table: all SLOs pass and no more than `max_refused` refused."""
    return table["slo_pass"].astype(bool) & (table["refused_share"] <= max_refused + 1e-12)


def _answer(nodes: Sequence[int], ok: Sequence[bool]) -> int | None:
    """Smallest count from which every larger tested count meets (None if the top fails)."""
    answer = None
    for n, good in sorted(zip(nodes, ok, strict=True), reverse=True):
        if not good:
            break
        answer = n
    return answer


def capacity_table(
    table: pd.DataFrame, *, by: Sequence[str] = ("listeners",), max_refused: float = 0.0
) -> pd.DataFrame:
    """Nodes needed per audience (or per any `by` columns) from a sweep over ``nodes``.

    With several seeds per point, a node count meets only if every seed meets.
    Columns: the `by` columns, ``nodes_needed`` (<NA> when no tested count meets),
    ``tested`` (the node counts tried) and ``note``.
    """
    keys = list(by)
    t = table.assign(_ok=meets(table, max_refused))
    rows = []
    for key, group in t.groupby(keys, sort=True):
        per_n = group.groupby("nodes")["_ok"].all()
        nodes = [int(n) for n in per_n.index]
        answer = _answer(nodes, list(per_n.to_numpy()))
        if answer is None:
            note = f"no tested node count ({min(nodes)}..{max(nodes)}) meets the SLOs"
        elif any(per_n[n] for n in nodes if n < answer):
            note = "a smaller count passed below a failure (noise near the threshold)"
        else:
            note = ""
        values = key if isinstance(key, tuple) else (key,)
        rows.append(
            {
                **dict(zip(keys, values, strict=True)),
                "nodes_needed": answer,
                "tested": ",".join(map(str, nodes)),
                "note": note,
            }
        )
    out = pd.DataFrame(rows)
    out["nodes_needed"] = out["nodes_needed"].astype("Int64")
    return out


@dataclass(frozen=True)
class CapacityAnswer:
    """The fewest nodes meeting the SLOs for `listeners`, and every probe behind it."""

    scenario: str
    listeners: int
    nodes: int | None  # None: no count in the searched range meets the SLOs
    curve: pd.DataFrame  # one sweep row per probed node count, sorted, with a `meets` column
    searched: tuple[int, int]  # the range of candidate node counts

    def __str__(self) -> str:
        if self.nodes is None:
            lo, hi = self.searched
            top = self.curve.iloc[-1]
            metrics = [m for m in str(top["slo_failed"]).split(",") if m]
            failed = ", ".join(f"{m} = {top[m]:.3g}" for m in metrics) or (
                f"refused {top['refused_share']:.1%} of joins"
            )
            return (
                f"{self.scenario}: no node count in {lo}..{hi} meets the SLOs for "
                f"{self.listeners:,} listeners (at {int(top['nodes'])} nodes: {failed})"
            )
        nodes = "1 node" if self.nodes == 1 else f"{self.nodes:,} nodes"
        return f"{self.scenario}: {nodes} for {self.listeners:,} listeners"


Probe = Callable[[int, dict[str, Any]], None]


def capacity(
    scenario: Scenario,
    listeners: int,
    *,
    nodes: Sequence[int] | None = None,
    max_nodes: int = 10_000,
    out_dir: str | Path = "runs/capacity",
    seed: int | None = None,
    max_refused: float = 0.0,
    rel_tol: float = 0.0,
    known: pd.DataFrame | None = None,
    progress: Probe | None = None,
) -> CapacityAnswer:
    """Search the fewest nodes meeting `scenario`'s SLOs for `listeners` (see module doc).

    `nodes` lists the candidate counts (default 1..`max_nodes`); the search assumes more
    nodes never hurt. `rel_tol` stops the bisection once the bracket is within that
    share of the answer (0: exact), which saves probes at a million listeners.
    `known` holds earlier sweep rows (e.g. a coarse sweep over nodes): those of this
    audience bracket the answer, so only the gap is probed. `progress(nodes, row)`
    follows each probe. Probes land in `out_dir`/n<NODES>/runs.
    """
    if not scenario.slo.targets():
        raise ValueError(f"{scenario.name} has no SLOs: there is nothing to size against")
    cands = sorted({int(n) for n in (nodes if nodes is not None else range(1, max_nodes + 1))})
    if not cands or cands[0] < 1:
        raise ValueError("node counts must be whole numbers >= 1")
    rows: dict[int, dict[str, Any]] = {}

    def ok(i: int) -> bool:
        n = cands[i]
        if n not in rows:
            grid = {"listeners": [listeners], "nodes": [n]}
            (point,) = grid_points(scenario, grid, Path(out_dir) / f"n{n}", seed)
            rows[n] = run_point(point)
            if progress is not None:
                progress(n, rows[n])
        return bool(meets(pd.DataFrame([rows[n]]), max_refused).iloc[0])

    def down(hi: int) -> tuple[int, int]:  # halve the node count until one fails
        while hi > 0:
            j = min(max(bisect.bisect_right(cands, cands[hi] // 2) - 1, 0), hi - 1)
            if not ok(j):
                return j, hi
            hi = j
        return -1, hi

    def up(lo: int) -> tuple[int, int | None]:  # double the node count until one meets
        while lo < len(cands) - 1:
            j = min(max(bisect.bisect_left(cands, cands[lo] * 2), lo + 1), len(cands) - 1)
            if ok(j):
                return lo, j
            lo = j
        return lo, None

    hi: int | None  # index of the lowest count known to meet
    if known is not None:  # earlier points (a sweep) bracket the answer without probes
        same = known[(known["listeners"] == listeners) & known["nodes"].isin(cands)]
        if seed is not None and "seed" in same:
            same = same[same["seed"] == seed]
        for r in same.to_dict("records"):
            rows[int(r["nodes"])] = {str(k): v for k, v in r.items()}
    if rows:
        verdict = {n: bool(meets(pd.DataFrame([r]), max_refused).iloc[0]) for n, r in rows.items()}
        best = _answer(list(verdict), list(verdict.values()))
        if best is None:
            lo, hi = up(cands.index(max(verdict)))
        else:
            fails = [n for n, good in verdict.items() if n < best and not good]
            lo, hi = (
                (cands.index(max(fails)), cands.index(best)) if fails else down(cands.index(best))
            )
    else:
        # Start at the forwarding floor: below it the nodes are saturated.
        spare = max(scenario.server.cores - scenario.server.cpu_fixed, 1e-9)  # per node
        floor = math.ceil(forwarding_cores(scenario, listeners) / spare)
        start = next((i for i, n in enumerate(cands) if n >= floor), len(cands) - 1)
        lo, hi = down(start) if ok(start) else up(start)
    if hi is not None:
        while hi - lo > 1 and (lo < 0 or cands[hi] - cands[lo] > rel_tol * cands[hi]):
            mid = (lo + hi) // 2
            if ok(mid):
                hi = mid
            else:
                lo = mid
    curve = pd.DataFrame([rows[n] for n in sorted(rows)])
    curve["meets"] = meets(curve, max_refused)
    return CapacityAnswer(
        scenario.name,
        int(listeners),
        None if hi is None else cands[hi],
        curve,
        (cands[0], cands[-1]),
    )


# --------------------------------------------------------------------------- captions, disk


def feature_overrides(
    scenario: Scenario, spaces: int | None = None, speakers: int | None = None
) -> list[str]:
    """``--set`` overrides for "N spaces with K speakers", every one captioned and recorded.

    `spaces` sets ``rooms.count``; `speakers` is how many talk in each space
    (``speaking.active_speakers``), the stage grown to seat them if it is smaller (host,
    co-hosts and ``rooms.speakers``). ``features.captions`` and ``features.recording``
    become 1 where the scenario has them at 0 (a share it sets is kept).
    """
    out = []
    if spaces is not None:
        out.append(f"rooms.count={spaces}")
    if speakers is not None:
        out.append(f"speaking.active_speakers={speakers}")
        seats = 1 + scenario.rooms.cohosts + scenario.rooms.speakers
        if speakers > seats:
            out.append(f"rooms.speakers={speakers - 1 - scenario.rooms.cohosts}")
    if scenario.features.captions == 0:
        out.append("features.captions=1")
    if scenario.features.recording == 0:
        out.append("features.recording=1")
    return out


@dataclass(frozen=True)
class FeatureAnswer:
    """Caption workers and disk for a scenario, read off one simulation's records."""

    scenario: str
    spaces: int
    speakers: int  # talking in each space
    nodes: int
    seconds: float  # the simulated span the records cover (after the warm-up)
    asr_cost: float
    captioned: bool  # any space captioned (the model drew one)
    recorded_spaces: int
    asr_peak: float  # caption cores of the busiest node at its busiest tick
    asr_p95: float  # p95 over ticks of the busiest node's caption cores
    asr_total_peak: float  # every node's caption cores at the busiest tick
    streams_peak: int  # speaking streams of the busiest node at its busiest tick
    workers: int | None  # --caption-workers per node; None: one stream outruns a worker
    recording_bytes: float  # written by the recordings of the spaces over `seconds`
    clip_bytes: float  # written by clips cut over `seconds`
    clip_retention: float  # seconds a clip is kept
    run_dir: Path | None = None

    @property
    def write_rate(self) -> float:
        """Bytes per second recordings and clips write, all spaces."""
        return (self.recording_bytes + self.clip_bytes) / self.seconds

    @property
    def bytes_per_space_hour(self) -> float:
        """Recording bytes per recorded space per hour."""
        return self.recording_bytes / max(self.recorded_spaces, 1) / self.seconds * 3600

    @property
    def clips_retained(self) -> float:
        """Clip bytes kept at any time if spaces like these run around the clock: the
        clip write rate times the retention."""
        return self.clip_bytes / self.seconds * self.clip_retention

    def __str__(self) -> str:
        if not self.captioned:
            workers = "no space is captioned (features.captions = 0): no caption workers"
        elif self.workers is None:
            workers = (
                f"one stream needs {self.asr_cost:.2f} cores, more than a caption worker "
                "(one process, one core) can give: captions would shed"
            )
        else:
            workers = (
                f"--caption-workers {self.workers} on each of {self.nodes} node(s) "
                f"({self.workers * self.nodes} in all): caption cores peak "
                f"{self.asr_peak:.2f} (p95 {self.asr_p95:.2f}) on the busiest node, "
                f"{self.streams_peak} stream(s) at {self.asr_cost:.3g} core-s per audio s"
            )
        hours = self.seconds / 3600
        disk = (
            f"disk: {format_bytes(self.recording_bytes)} of recordings in {hours:.2g} h "
            f"({format_bytes(self.bytes_per_space_hour)} per recorded space-hour, "
            f"{format_bytes(self.write_rate * 3600)} an hour written in all)"
        )
        if self.clip_bytes:
            days = self.clip_retention / 86_400
            disk += (
                f"; clips {format_bytes(self.clip_bytes)}, kept {days:.0f} days: "
                f"{format_bytes(self.clips_retained)} held if this runs around the clock"
            )
        return (
            f"{self.scenario}: {self.spaces:,} space(s), {self.speakers} talking in each: "
            f"{workers}; {disk}"
        )


def format_bytes(n: float) -> str:
    """Bytes for people: 1.23 GB (decimal units, as disks are sold)."""
    for unit, size in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= size:
            return f"{n / size:,.3g} {unit}"
    return f"{n:,.0f} B"


def caption_and_disk(
    scenario: Scenario,
    *,
    clip_retention: float,
    seed: int | None = None,
    out_dir: str | Path | None = None,
    progress: Callable[[float, float], None] | None = None,
) -> FeatureAnswer:
    """Caption workers per node and disk for `scenario` (apply `feature_overrides` first).

    Workers: a worker is one process, so one core at most, and a speaking stream stays on
    one worker (`spacesim.server.captions.Captioner`), so a node needs enough workers for
    its caption cores at the busiest tick and for its streams then, at most
    ``floor(1 / asr_cost)`` a worker. Streams are the busiest tick's cores over
    ``asr_cost`` (the simulator prices captions at ``asr_cost`` per talking stream).
    `clip_retention` is the server's (`spacesim.protocol.CLIP_RETENTION_S`).
    """
    run = simulate(scenario, seed=seed, progress=progress)
    run_dir = None
    if out_dir is not None:
        run_dir = write_run(out_dir, run.records, run.meta)
    rec = run.records
    seconds = scenario.duration - min(scenario.sim.warmup, scenario.duration)
    cost = scenario.server.asr_cost
    asr = rec[rec["kind"] == "asr_cores"]
    per_node = asr.groupby("participant", observed=True)["value"]
    peak = float(per_node.max().max()) if len(asr) else 0.0
    p95 = float(per_node.quantile(0.95).max()) if len(asr) else 0.0
    total = float(asr.groupby("t")["value"].sum().max()) if len(asr) else 0.0
    streams = math.ceil(peak / cost - 1e-9) if cost > 0 else 0
    workers: int | None
    if cost > 1:
        workers = None
    elif not len(asr) or peak <= 0:
        workers = 0
    else:
        per_worker = math.floor(1 / cost)  # streams one worker keeps up with (cost <= 1)
        workers = max(math.ceil(peak - 1e-9), math.ceil(streams / per_worker), 1)
    written = rec[rec["kind"] == "recording_bytes"]
    rooms = written[written["role"] == "room"]
    clips = written[written["role"] == "clip"]
    return FeatureAnswer(
        scenario=scenario.name,
        spaces=scenario.rooms.count,
        speakers=scenario.speaking.active_speakers,
        nodes=scenario.server.nodes,
        seconds=seconds,
        asr_cost=cost,
        captioned=bool(len(asr)),
        recorded_spaces=int(rooms["room"].nunique()),
        asr_peak=peak,
        asr_p95=p95,
        asr_total_peak=total,
        streams_peak=streams,
        workers=workers,
        recording_bytes=float(rooms["value"].sum()),
        clip_bytes=float(clips["value"].sum()),
        clip_retention=clip_retention,
        run_dir=run_dir,
    )
