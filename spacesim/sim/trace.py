"""What a measured run actually had, as pure data the simulator can replay.

A swarm and an independent simulation of one scenario differ by their draws as much
as by their models: one demo's host drew the 150 ms path in the swarm and the 40 ms
one in the simulator, and the two runs' latencies differed by 2x for no fault of the
model. A `Trace` is what the swarm drew, read back from its records: per room the
stage (host, co-hosts, speakers, in seating order) and the listeners (in arrival order)
with each one's join request time, session length, network path, event-stream
subscription and talk spurts; the audience's actions (hand raises, reactions, reports,
personal blocks); the host's answers (hand decisions and waits, stints, invitations,
unmute delays, report reviews); the moderation and timeline actions. `spacesim.sim.
decisions.Replay` answers the simulator's decisions from it, so a replay differs from
the measured run only by the server and network models.

Read only from records (`spacesim.results` schema, ``source=load``), so anything the
swarm does not record (which listener reported, who follows whom) stays a draw.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from spacesim.results import Run

__all__ = ["Action", "Answer", "Member", "Path", "RoomTrace", "Trace", "trace_of"]

STAGE_ROLES = ("host", "cohost", "speaker")


@dataclass(frozen=True)
class Path:
    """A participant's network path as the swarm dealt it (`spacesim.load.host.path_attrs`)."""

    rtt: float
    jitter: float
    loss: float


@dataclass(frozen=True)
class Member:
    """One participant as measured.

    `arrived` is the join request (the join record's time less its join time); `length`
    the time in the room after the join (None: refused, or no leave recorded).
    """

    pid: str
    role: str
    arrived: float
    length: float | None
    path: Path | None
    refused: bool = False
    subscribed: bool = False
    spurts: tuple[tuple[float, float], ...] = ()  # (start, length) of each talk spurt
    node: str | None = None  # the cluster node that carried them (``attrs.node``)


@dataclass(frozen=True)
class Action:
    """Something the audience or the host did at `t`.

    `kind` is the record kind (``hand_raised``, ``reaction``, ``report_filed``,
    ``blocked``, ``moderation_action``, ``timeline_action``); `who` the participant the
    record names (the actor of a hand or reaction, the target of a report, block or host
    action; "" for none); `action` a host action's name or a report's target type;
    `at` a timeline entry's scripted time.
    """

    t: float
    kind: str
    who: str = ""
    action: str = ""
    at: float | None = None


@dataclass(frozen=True)
class Answer:
    """The host's answer to `pid`'s raised hand, `wait` s after it was raised."""

    pid: str
    t: float
    granted: bool
    wait: float


@dataclass(frozen=True)
class RoomTrace:
    name: str
    stage: tuple[Member, ...]  # host, co-hosts, speakers; each role in seating order
    listeners: tuple[Member, ...]  # in arrival order, refused joins included
    actions: tuple[Action, ...]  # in time order
    answers: tuple[Answer, ...] = ()  # in time order
    stints: tuple[tuple[str, float], ...] = ()  # (pid, seconds on stage after a grant)
    invites: tuple[tuple[str, bool], ...] = ()  # (pid, accepted), in time order
    unmutes: tuple[tuple[str, float], ...] = ()  # (pid, seconds muted before unmuting)
    reviews: tuple[tuple[float, str], ...] = ()  # (review time, outcome), in filing order


@dataclass(frozen=True)
class Trace:
    """A measured run's draws: `replay_of` names the run."""

    replay_of: str
    duration: float
    rooms: tuple[RoomTrace, ...]
    extra: dict[str, Any] = field(default_factory=dict)


_AUDIENCE = ("hand_raised", "reaction", "report_filed", "blocked")
_HOST = ("moderation_action", "timeline_action")


def _attrs(text: object) -> dict[str, Any]:
    if not isinstance(text, str) or not text:
        return {}
    try:
        out = json.loads(text)
    except ValueError:
        return {}
    return out if isinstance(out, dict) else {}


def _path(attrs: dict[str, Any]) -> Path | None:
    if not {"rtt", "jitter", "loss"} <= attrs.keys():
        return None
    return Path(float(attrs["rtt"]), float(attrs["jitter"]), float(attrs["loss"]))


def _num(x: object) -> float | None:
    v = float(x)  # type: ignore[arg-type]
    return None if math.isnan(v) else v


def _room(name: str, rec: pd.DataFrame) -> RoomTrace:
    kinds = rec["kind"].astype(str).to_numpy()
    rows = list(
        zip(
            kinds,
            rec["t"].to_numpy("float64"),
            rec["participant"].astype(str),
            rec["role"].astype(str),
            rec["value"].to_numpy("float64"),
            rec["attrs"],
            strict=True,
        )
    )
    spurts: dict[str, list[tuple[float, float]]] = {}
    left: dict[str, float] = {}
    subscribed: set[str] = set()
    joins: list[tuple[str, str, float, float | None, Path | None, str | None]] = []
    refused: list[tuple[str, float]] = []
    actions: list[Action] = []
    answers: list[Answer] = []
    granted_at: dict[str, float] = {}
    stints: list[tuple[str, float]] = []
    invited: set[str] = set()
    invites: list[tuple[str, bool]] = []
    muted_at: dict[str, float] = {}
    unmutes: list[tuple[str, float]] = []
    reviews: list[tuple[float, str]] = []
    seen: set[str] = set()
    for kind, t, pid, role, value, text in rows:
        if kind == "participant_joined" and pid not in seen:
            seen.add(pid)
            a = _attrs(text)
            node = a.get("node")
            joins.append((pid, role, t, _num(value), _path(a), str(node) if node else None))
        elif kind == "join_refused" and pid not in seen:
            seen.add(pid)
            refused.append((pid, t))
        elif kind == "participant_left" and pid not in left:
            left[pid] = value
        elif kind == "talk_spurt":
            spurts.setdefault(pid, []).append((t, value))
        elif kind == "events_received":
            subscribed.add(pid)
        elif kind in _AUDIENCE:
            a = _attrs(text)
            if kind == "blocked" and a.get("scope") != "personal":
                continue  # a moderator's or the host's block: recorded by its action
            actions.append(Action(t, kind, pid, str(a.get("target_type", ""))))
        elif kind in _HOST:
            a = _attrs(text)
            at = a.get("at")
            at = float(at) if isinstance(at, int | float) else None
            actions.append(Action(t, kind, str(a.get("target", "")), str(a.get("action")), at))
        elif kind == "speaker_granted" and role == "listener" and not math.isnan(value):
            answers.append(Answer(pid, t, True, value))
            granted_at[pid] = t
        elif kind == "hand_declined" and not math.isnan(value):
            answers.append(Answer(pid, t, False, value))
        elif kind == "speaker_revoked" and pid in granted_at:
            stints.append((pid, t - granted_at.pop(pid)))
        elif kind == "speaker_invited":
            invited.add(pid)
        elif kind == "invite_declined" and pid in invited:
            invited.discard(pid)
            invites.append((pid, False))
        elif kind in ("speaker_granted", "cohost_added") and pid in invited:
            invited.discard(pid)
            invites.append((pid, True))
        elif kind == "muted":
            muted_at.setdefault(pid, t)
        elif kind == "unmuted" and pid in muted_at:
            unmutes.append((pid, t - muted_at.pop(pid)))
        elif kind == "report_resolved":
            a = _attrs(text)
            wait = a.get("queue_wait")
            queued = float(wait) if isinstance(wait, int | float) else 0.0
            reviews.append((max(value - queued, 0.0), str(a.get("action", "dismiss"))))

    def member(
        pid: str, role: str, t: float, took: float | None, path: Path | None, node: str | None
    ) -> Member:
        stay = left.get(pid)
        return Member(
            pid,
            role,
            t - (took or 0.0),
            None if stay is None or math.isnan(stay) else stay,
            path,
            subscribed=pid in subscribed,
            spurts=tuple(spurts.get(pid, ())),
            node=node,
        )

    order = {r: i for i, r in enumerate(STAGE_ROLES)}
    stage = sorted((j for j in joins if j[1] in order), key=lambda j: (order[j[1]], j[2]))
    listeners = [member(*j) for j in joins if j[1] not in order]
    listeners += [Member(pid, "listener", t, None, None, refused=True) for pid, t in refused]
    return RoomTrace(
        name,
        tuple(member(*j) for j in stage),
        tuple(sorted(listeners, key=lambda m: m.arrived)),
        tuple(sorted(actions, key=lambda a: a.t)),
        tuple(answers),
        tuple(stints),
        tuple(invites),
        tuple(unmutes),
        tuple(reviews),
    )


def trace_of(run: Run) -> Trace:
    """The trace of a measured run; rooms in the order their hosts joined.

    Raises ValueError for a run with nobody in it (nothing to replay).
    """
    rec = run.records
    if rec.empty:
        raise ValueError(f"run {run.meta.run_id} has no records to replay")
    rec = rec.sort_values("t", kind="stable")
    joined = rec[rec["kind"].astype(str) == "participant_joined"]
    if joined.empty:
        raise ValueError(f"run {run.meta.run_id} has no participant_joined records to replay")
    hosts = joined[joined["role"].astype(str) == "host"]
    first = (hosts if not hosts.empty else joined).groupby("room", observed=True)["t"].min()
    names = [str(r) for r in first.sort_values(kind="stable").index]
    names += sorted({str(r) for r in joined["room"]} - set(names))
    # The swarm's clock starts before its users and its records run past the nominal
    # duration (users leave after it): the replay covers all of them.
    duration = max(float(run.meta.duration or 0.0), float(rec["t"].max()))
    by_room = {str(k): g for k, g in rec.groupby("room", observed=True)}
    return Trace(
        run.meta.run_id,
        duration,
        tuple(_room(name, by_room[name]) for name in names),
        {"source": run.meta.source, "network": run.meta.extra.get("network")},
    )
