"""Where the simulator's processes get their decisions: drawn, or replayed from a trace.

`Decisions` draws each one with a `spacesim.behaviour` function over the run's `Draws`
(an independent draw of the scenario, in the order the processes always drew). `Replay`
answers from a measured run's `Trace` instead (arrival instants, who arrives, session
lengths, network paths, subscriptions, talk spurts, the audience's and the host's
actions and answers) and falls back to the draw where the trace says nothing (a
listener the swarm refused but the model admits stays a drawn length; which listener
filed a report is not recorded). The processes (`spacesim.sim.processes`) and the world
call the same methods either way: one simulator, two sources.

Hints: the audience and host methods return, with each action, what the trace knows
of it (a participant id, a report's target); a hint naming someone who is not there in
the model (left earlier, refused) falls back to a draw, as does None.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from typing import TypeVar

from spacesim import behaviour
from spacesim.scenario import NetworkProfile, Scenario
from spacesim.sim.draws import Draws
from spacesim.sim.trace import Action, Member, Path, RoomTrace, Trace

__all__ = ["Decisions", "Replay", "ReportHint"]

T = TypeVar("T")

#: A report as the trace knows it: (about the space, the target's id or None).
ReportHint = tuple[bool, str | None] | None


class Decisions:
    """Every decision drawn from the scenario's laws (`spacesim.behaviour`)."""

    replayed = False  # answers from a measured run (the world then records paths)

    def __init__(self, scenario: Scenario, draws: Draws) -> None:
        self.sc = scenario
        self.draws = draws
        # Which spaces have captions or recording come from their own stream (spawned,
        # so the run's other draws are what they were before features existed).
        self.feature_draws = Draws(draws.rng.spawn(1)[0])
        # Replay listeners too (spawning leaves the parent's stream as it was).
        self.replay_draws = Draws(draws.rng.spawn(1)[0])

    def features(self, room: int) -> tuple[bool, bool]:
        """(captions, recording) of a space (`behaviour.room_features`)."""
        return behaviour.room_features(self.sc.features, self.feature_draws)

    def replay_arrivals(self, room: int, tick: float) -> int:
        """Replay listeners arriving at an ended recorded space (`behaviour.replay_arrivals`)."""
        return behaviour.replay_arrivals(self.sc.features, tick, self.replay_draws)

    def replay_listener(self, room: int, pid: str) -> tuple[bool, float, NetworkProfile]:
        """(over HTTP, session length, path) of a replay listener, drawn in the swarm's order."""
        d = self.replay_draws
        http = behaviour.replays_over_http(self.sc.features, d)
        length = behaviour.session_length(self.sc.session, d)
        return http, length, behaviour.network_path(self.sc.network, d)

    # ------------------------------------------------------------------ who comes

    def arrivals(self, room: int, times: Iterator[float]) -> Iterator[tuple[float, str | None]]:
        """Arrival instants with the arriving listener's id (None: the simulator names it);
        `times` are the scenario's drawn instants (`processes.arrival_times`)."""
        return ((t, None) for t in times)

    def session_length(self, room: int, pid: str) -> float:
        return behaviour.session_length(self.sc.session, self.draws)

    def network(self, room: int, pid: str) -> NetworkProfile:
        """A participant's path (`behaviour.network_path`)."""
        return behaviour.network_path(self.sc.network, self.draws)

    def subscribes(self, room: int, pid: str) -> bool:
        return behaviour.subscribes_to_events(self.sc.audience, self.draws)

    def place(
        self,
        room: int,
        pid: str,
        n: int,
        load: Callable[[int], float],
        admits: Callable[[int], bool],
    ) -> int | None:
        """Which of `n` nodes carries a joining listener (`behaviour.place_listener`)."""
        return behaviour.place_listener(n, load, admits, self.draws)

    # ------------------------------------------------------------------ stage

    def talk_phases(
        self, room: int, pid: str, now: Callable[[], float]
    ) -> Iterator[tuple[bool, float]]:
        return behaviour.talk_phases(self.sc.speaking, self.draws)

    def speaker_stint(self, room: int, pid: str) -> float:
        return behaviour.speaker_stint(self.sc.audience, self.draws)

    def hand_response_delay(self, room: int, pid: str) -> float:
        return behaviour.hand_response_delay(self.sc.audience, self.draws)

    def approves(self, room: int, pid: str) -> bool:
        return behaviour.approves(self.sc.audience, self.draws)

    def accepts_invite(self, room: int, pid: str) -> bool:
        return behaviour.accepts_invite(self.sc.moderation, self.draws)

    def unmute_delay(self, room: int, pid: str) -> float | None:
        return behaviour.unmute_delay(self.sc.moderation, self.draws)

    # ------------------------------------------------------------------ audience, per tick

    def reactions(self, room: int, now: float, tick: float, n: int) -> int:
        return behaviour.events_in(self.sc.audience.reaction_rate, tick, self.draws, n)

    def hand_raises(
        self, room: int, now: float, tick: float, n: int
    ) -> list[tuple[float, str | None]]:
        """(delay within the tick, who) of each raised hand."""
        k = behaviour.events_in(self.sc.audience.hand_raise_rate, tick, self.draws, n)
        return [(self.draws.uniform() * tick, None) for _ in range(k)]

    def reports(self, room: int, now: float, tick: float, n: int) -> list[tuple[float, ReportHint]]:
        k = behaviour.events_in(self.sc.audience.report_rate, tick, self.draws, n)
        return [(self.draws.uniform() * tick, None) for _ in range(k)]

    def blocks(self, room: int, now: float, tick: float, n: int) -> list[str | None]:
        """The blocked listener of each personal block (None: drawn)."""
        return [None] * behaviour.events_in(self.sc.audience.block_rate, tick, self.draws, n)

    def report_targets_space(self, room: int, hint: ReportHint) -> bool:
        return behaviour.report_targets_space(self.sc.audience, self.draws)

    def review_time(self, room: int) -> float:
        return behaviour.review_time(self.sc.audience, self.draws)

    def report_outcome(self, room: int, about_user: bool) -> str:
        return behaviour.report_outcome(self.sc.audience.outcomes, about_user, self.draws)

    # ------------------------------------------------------------------ the host

    def moderation_due(
        self, room: int, now: float, tick: float
    ) -> list[tuple[float, str, str | None]]:
        """(instant, action, target hint) of the host's own actions within the tick."""
        due = behaviour.moderation_due(self.sc.moderation, tick, self.draws)
        return sorted((now + self.draws.uniform() * tick, a, None) for a in due)

    def timeline(self, room: int) -> list[tuple[float, str, str | None, float]]:
        """(instant, action, target hint, scripted instant) of the timeline's actions."""
        return [
            (e.at, e.action, None, e.at) for e in behaviour.timeline_due(self.sc, 0.0, math.inf)
        ]

    def pick(self, candidates: Sequence[T], hint: T | None = None) -> T | None:
        """`hint` when it is a candidate, else a uniform choice (`behaviour.pick`)."""
        if hint is not None and hint in candidates:
            return hint
        return behaviour.pick(candidates, self.draws)


# --------------------------------------------------------------------------- replay


def _profile(path: Path) -> NetworkProfile:
    return NetworkProfile(rtt=path.rtt, jitter=path.jitter, loss=path.loss)


class _Spurts:
    """Talk phases read off measured spurts at the simulator's clock.

    Each phase is answered for the time it is asked (the talker asks again after any
    interruption), so a replayed speaker talks exactly when the measured one did.
    """

    def __init__(
        self, spurts: Sequence[tuple[float, float]], now: Callable[[], float], end: float
    ) -> None:
        self.spurts = sorted(spurts)
        self.now = now
        self.end = end
        self.i = 0

    def __iter__(self) -> Iterator[tuple[bool, float]]:
        return self

    def __next__(self) -> tuple[bool, float]:
        t = self.now()
        while self.i < len(self.spurts) and sum(self.spurts[self.i]) <= t:
            self.i += 1
        if self.i == len(self.spurts):
            return False, max(self.end - t, 0.0) + 1.0
        start, length = self.spurts[self.i]
        if start <= t:
            return True, start + length - t
        return False, start - t


def _node_order(members: dict[str, Member]) -> list[str]:
    """A room's measured nodes: its origin (the host's) first, the others by name."""
    seen = sorted({m.node for m in members.values() if m.node})
    hosts = [m.node for m in members.values() if m.role == "host" and m.node]
    if hosts:
        seen.remove(hosts[0])
        seen.insert(0, hosts[0])
    return seen


class Replay(Decisions):
    """Decisions answered from a measured run's `Trace` (see the module's docstring).

    Room i of the model replays the trace's room i; the model's stage members
    (``room-i/host``, ``/cohost<k>``, ``/speaker<k>``) are the trace's by role and
    seating order, listeners keep their measured ids.
    """

    replayed = True

    def __init__(
        self, scenario: Scenario, draws: Draws, trace: Trace, room_names: Sequence[str]
    ) -> None:
        super().__init__(scenario, draws)
        self.trace = trace
        self.members: list[dict[str, Member]] = []  # model id -> measured member, per room
        self.ids: list[dict[str, str]] = []  # measured id -> model id, per room
        self.pending: list[dict[str, deque[Action]]] = []
        self.answers: list[dict[str, deque[tuple[float, bool]]]] = []
        self.decided: list[dict[str, bool]] = []
        self.stints: list[dict[str, deque[float]]] = []
        self.invites: list[dict[str, deque[bool]]] = []
        self.unmutes: list[dict[str, deque[float]]] = []
        self.reviews: list[deque[tuple[float, str]]] = []
        self.outcome: list[str | None] = []
        for i, name in enumerate(room_names):
            rt = trace.rooms[i] if i < len(trace.rooms) else RoomTrace(name, (), (), ())
            members: dict[str, Member] = {}
            ids: dict[str, str] = {}
            slots = {"host": 0, "cohost": 0, "speaker": 0}
            for m in rt.stage:
                k = slots[m.role]
                slots[m.role] += 1
                model = f"{name}/host" if m.role == "host" and k == 0 else f"{name}/{m.role}{k}"
                members[model] = m
                ids[m.pid] = model
            for m in rt.listeners:
                members[m.pid] = m
                ids[m.pid] = m.pid
            self.members.append(members)
            self.ids.append(ids)
            pending: dict[str, deque[Action]] = {}
            for a in rt.actions:
                pending.setdefault(a.kind, deque()).append(a)
            self.pending.append(pending)
            answers: dict[str, deque[tuple[float, bool]]] = {}
            for ans in rt.answers:
                answers.setdefault(ans.pid, deque()).append((ans.wait, ans.granted))
            self.answers.append(answers)
            self.decided.append({})
            self.stints.append(_per(rt.stints, ids))
            self.invites.append(_per(rt.invites, ids))
            self.unmutes.append(_per(rt.unmutes, ids))
            self.reviews.append(deque(rt.reviews))
            self.outcome.append(None)
        self.listeners = [
            [m for m in (trace.rooms[i].listeners if i < len(trace.rooms) else ())]
            for i in range(len(room_names))
        ]
        self.nodes = [_node_order(members) for members in self.members]

    def _member(self, room: int, pid: str) -> Member | None:
        return self.members[room].get(pid)

    def _due(self, room: int, kind: str, until: float) -> list[Action]:
        q = self.pending[room].get(kind)
        out: list[Action] = []
        while q and q[0].t < until:
            out.append(q.popleft())
        return out

    # ------------------------------------------------------------------ who comes

    def arrivals(self, room: int, times: Iterator[float]) -> Iterator[tuple[float, str | None]]:
        return ((m.arrived, m.pid) for m in self.listeners[room])

    def session_length(self, room: int, pid: str) -> float:
        m = self._member(room, pid)
        if m is not None and m.length is not None:
            return m.length
        return super().session_length(room, pid)

    def network(self, room: int, pid: str) -> NetworkProfile:
        m = self._member(room, pid)
        if m is not None and m.path is not None:
            return _profile(m.path)
        return super().network(room, pid)

    def subscribes(self, room: int, pid: str) -> bool:
        m = self._member(room, pid)
        if m is not None and not m.refused:
            return m.subscribed
        return super().subscribes(room, pid)

    def place(
        self,
        room: int,
        pid: str,
        n: int,
        load: Callable[[int], float],
        admits: Callable[[int], bool],
    ) -> int | None:
        """The node the measured run placed them on: its k-th node (the room's origin
        first, the others by name) is the model's node ``(room + k) mod n``, as the
        model's room ``room`` has its origin on node ``room mod n``. A listener the
        measured run did not place (refused, a single node), a node the model does not
        have, or one that does not admit them now: the drawn placement."""
        m = self._member(room, pid)
        order = self.nodes[room]
        if m is not None and m.node in order and len(order) <= n:
            i = (room + order.index(m.node)) % n
            if admits(i):
                return i
        return super().place(room, pid, n, load, admits)

    # ------------------------------------------------------------------ stage

    def talk_phases(
        self, room: int, pid: str, now: Callable[[], float]
    ) -> Iterator[tuple[bool, float]]:
        m = self._member(room, pid)
        if m is None:
            return super().talk_phases(room, pid, now)
        return _Spurts(m.spurts, now, self.trace.duration)

    def speaker_stint(self, room: int, pid: str) -> float:
        q = self.stints[room].get(pid)
        return q.popleft() if q else super().speaker_stint(room, pid)

    def hand_response_delay(self, room: int, pid: str) -> float:
        q = self.answers[room].get(pid)
        if not q:
            return super().hand_response_delay(room, pid)
        wait, granted = q.popleft()
        self.decided[room][pid] = granted
        return wait

    def approves(self, room: int, pid: str) -> bool:
        granted = self.decided[room].pop(pid, None)
        return super().approves(room, pid) if granted is None else granted

    def accepts_invite(self, room: int, pid: str) -> bool:
        q = self.invites[room].get(pid)
        return q.popleft() if q else super().accepts_invite(room, pid)

    def unmute_delay(self, room: int, pid: str) -> float | None:
        q = self.unmutes[room].get(pid)
        return q.popleft() if q else super().unmute_delay(room, pid)

    # ------------------------------------------------------------------ audience, per tick

    def reactions(self, room: int, now: float, tick: float, n: int) -> int:
        return len(self._due(room, "reaction", now + tick))

    def hand_raises(
        self, room: int, now: float, tick: float, n: int
    ) -> list[tuple[float, str | None]]:
        return [(max(a.t - now, 0.0), a.who) for a in self._due(room, "hand_raised", now + tick)]

    def reports(self, room: int, now: float, tick: float, n: int) -> list[tuple[float, ReportHint]]:
        out: list[tuple[float, ReportHint]] = []
        for a in self._due(room, "report_filed", now + tick):
            target = self.ids[room].get(a.who, a.who) if a.who else None
            out.append((max(a.t - now, 0.0), (a.action == "space", target)))
        return out

    def blocks(self, room: int, now: float, tick: float, n: int) -> list[str | None]:
        return [self.ids[room].get(a.who, a.who) for a in self._due(room, "blocked", now + tick)]

    def report_targets_space(self, room: int, hint: ReportHint) -> bool:
        return super().report_targets_space(room, hint) if hint is None else hint[0]

    def review_time(self, room: int) -> float:
        q = self.reviews[room]
        if not q:
            return super().review_time(room)
        seconds, self.outcome[room] = q.popleft()
        return seconds

    def report_outcome(self, room: int, about_user: bool) -> str:
        outcome, self.outcome[room] = self.outcome[room], None
        if outcome is None or (outcome != "dismiss" and not about_user):
            return super().report_outcome(room, about_user)
        return outcome

    # ------------------------------------------------------------------ the host

    def moderation_due(
        self, room: int, now: float, tick: float
    ) -> list[tuple[float, str, str | None]]:
        ids = self.ids[room]
        return [
            (max(a.t, now), a.action, ids.get(a.who, a.who) if a.who else None)
            for a in self._due(room, "moderation_action", now + tick)
        ]

    def timeline(self, room: int) -> list[tuple[float, str, str | None, float]]:
        ids = self.ids[room]
        q = self.pending[room].get("timeline_action", deque())
        return [
            (a.t, a.action, ids.get(a.who, a.who) if a.who else None, a.t if a.at is None else a.at)
            for a in q
        ]


def _per(items: Sequence[tuple[str, T]], ids: dict[str, str]) -> dict[str, deque[T]]:
    """Per model id, the values in order."""
    out: dict[str, deque[T]] = {}
    for pid, v in items:
        out.setdefault(ids.get(pid, pid), deque()).append(v)
    return out
