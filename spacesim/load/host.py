"""A host's room: the space's lifecycle, its stage as written, moderation and the timeline.

`Room` is gevent-free asyncio over a `SpaceClient` (`spacesim.load.api`); every decision
is `spacesim.behaviour`'s. What it does, by scenario field:

* ``rooms.who_may_speak``, ``rooms.listener_cap``: passed when the space is created;
  so are ``captions`` and ``recording``, on for the ``features`` shares of the spaces
  (`behaviour.room_features`).
  ``rooms.starts_at``: the space is created scheduled (``scheduled_for`` = the run's t0
  + starts_at, unix seconds), the host connects, and at starts_at starts it and seats
  the stage. ``rooms.ends_at``: the host ends the space then (listeners' joins are then
  refused ``space_ended``, which is a quiet end, not a failure).
* The stage: the host, ``rooms.cohosts`` co-hosts (join, then the host's
  ``add_cohost``) and ``rooms.speakers`` speakers (join, ``invite``, ``accept_invite``),
  each on its own connection publishing a `spacesim.load.voice` track; the first
  ``speaking.active_speakers`` of [host, co-hosts..., speakers...] talk
  (``speaking.talk_spurt``, ``pause``, ``dtx``), the rest send nothing (as in the
  simulator's ``processes.stage``).
* Who is present: the host's event stream (``participant_joined`` / ``_left``,
  ``speaker_granted``, ``cohost_added``, ...); ``rooms.host_follows`` of joining
  listeners are followed (``POST /v1/follows``).
* Raised hands: answered after `behaviour.hand_response_delay`, approved by
  `behaviour.approves`, demoted after `behaviour.speaker_stint`.
* Reports: a desk of ``audience.moderators`` (an M/M/c queue) reviews each for
  `behaviour.review_time` and applies `behaviour.report_outcome`.
* ``moderation.*``: per 1 s tick `behaviour.moderation_due` gives the host's own actions
  (mute a random unmuted co-host or speaker, mute_all, demote a random speaker, invite /
  remove / block a random present listener, hand a co-host seat to a random listener);
  a muted member of the host's own stage unmutes after `behaviour.unmute_delay`
  (granted listeners unmute themselves, `spacesim.load.listener`). Each is a
  ``moderation_action`` record and a request named after the action.
* ``timeline``: each entry runs at its ``at`` (run time) with the same actions, plus
  start, end, host_leave and unmute (every muted member of the host's stage); a
  ``timeline_action`` record (attrs action, at) each.

A refusal the room can cause by racing (the target just left: HTTP 409) is recorded
in the action's attrs (``refused``) and reported as a success; anything else fails.

On a target that lacks something (`spacesim.load.targets`: Janus has no roles, hands,
reports or event stream), the space is created without the features its client
``lacks`` and every request the driver answers `Unsupported` is recorded
(``action_unsupported``, attrs.action) instead of performed; stage members then
publish without a role change, and the room goes on.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from spacesim import behaviour
from spacesim.client.session import ClientError
from spacesim.client.speaker import SpeakerTrack
from spacesim.load.api import WATCH, Context, Link, Silence, SpaceClient, Unsupported
from spacesim.load.voice import new_track
from spacesim.policy import MAX_COHOSTS
from spacesim.scenario import NetworkProfile

__all__ = ["ACTION_TIMEOUT", "TICK", "Member", "Room", "path_attrs", "quiet"]

log = logging.getLogger("spacesim.load")

TICK = 1.0  # seconds between the host's moderation draws
ACTION_TIMEOUT = 10.0
RACE = 409  # refusals a live room causes by itself: the target just left, the seat filled
UNSUPPORTED = "unsupported"  # `Room._timed`'s answer when the target lacks the action


def path_attrs(path: NetworkProfile | None) -> dict[str, float]:
    if path is None:
        return {"rtt": 0.0, "jitter": 0.0, "loss": 0.0}
    return {"rtt": path.rtt, "jitter": path.jitter, "loss": path.loss}


def node_attrs(join: dict[str, Any]) -> dict[str, str]:
    """Which cluster node carries the participant's audio (``node`` of the join answer;
    nothing from a single server)."""
    node = join.get("node")
    return {"node": str(node["id"])} if isinstance(node, dict) and "id" in node else {}


async def quiet(aw: Awaitable[Any]) -> None:
    """Await, ignoring failures (leaving, closing, best-effort clean-up)."""
    try:
        await asyncio.wait_for(aw, ACTION_TIMEOUT)
    except Exception as exc:
        log.debug("ignored: %r", exc)


def ignore_rtp(slot: int, packet: bytes, arrival_ns: int | None) -> None:
    return None


@dataclass
class Member:
    """One of the host's own stage clients (the host is the first)."""

    user: str
    client: SpaceClient
    role: str  # host, cohost or speaker, as seated
    talks: bool
    link: Link | None = None
    track: SpeakerTrack | None = None
    muted: bool = False
    on_stage: bool = True
    joined_at: float = 0.0

    def sending(self) -> bool:
        return self.on_stage and not self.muted


#: Policy events the host records from its stream (others are recorded where they start).
_STAGE_RECORDS = frozenset(
    {
        "muted",
        "unmuted",
        "speaker_invited",
        "invite_declined",
        "speaker_revoked",
        "cohost_removed",
        "hand_lowered",
        "speak_setting_changed",
    }
)


class Room:
    """A host's space and everything the host does in it (runs on one asyncio loop)."""

    def __init__(self, ctx: Context, n: int | None = None) -> None:
        self.ctx = ctx
        self.sc = sc = ctx.sc
        self.n = next(ctx.ids) if n is None else n
        self.user = f"host-{ctx.tag}-{self.n}"
        self.rng = behaviour.PyRng(random.Random(f"{sc.seed}/{ctx.tag}/{self.n}"))
        self.space = ""
        self.host: SpaceClient | None = None
        self.moderator: SpaceClient | None = None
        self.members: dict[str, Member] = {}
        self.roles: dict[str, str] = {}  # who is present, as the event stream says
        self.cohosts: list[str] = []  # in the order they became co-hosts
        self.muted: set[str] = set()
        self.raised: dict[str, float] = {}  # participant -> server t of the raise
        self.tasks: set[asyncio.Task[Any]] = set()
        self.live = False
        self.blind = False  # the target has no event stream: the room knows only its own acts
        self.seated = False
        self.ended = False
        self.closed = False
        self._closing: asyncio.Task[None] | None = None
        self.desk = asyncio.Semaphore(sc.audience.moderators)
        # Its own stream, so the room's other draws do not depend on the features.
        features = behaviour.PyRng(random.Random(f"{sc.seed}/{ctx.tag}/{self.n}/features"))
        self.captions, self.recording = behaviour.room_features(sc.features, features)

    # ------------------------------------------------------------------ helpers

    def _task(self, coro: Coroutine[Any, Any, Any]) -> None:
        t = asyncio.get_running_loop().create_task(coro)
        self.tasks.add(t)
        t.add_done_callback(self.tasks.discard)

    def _path(self) -> NetworkProfile | None:
        if not self.ctx.network:
            return None
        return behaviour.network_path(self.sc.network, self.rng)

    def _seed(self) -> int:
        return int(self.rng.uniform() * 2**32)

    async def _timed(self, name: str, aw: Awaitable[Any]) -> str | None:
        """Run a request, report it; returns the refusal code of a race (409), else None."""
        t = time.monotonic()
        try:
            await asyncio.wait_for(aw, ACTION_TIMEOUT)
        except Unsupported as exc:
            self.ctx.unsupported(exc.action, self.space, self.user, "host")
            return UNSUPPORTED
        except ClientError as exc:
            if exc.status == RACE:
                self.ctx.report(name, time.monotonic() - t, None)
                return exc.code
            self.ctx.report(name, time.monotonic() - t, exc)
            raise
        except Exception as exc:
            self.ctx.report(name, time.monotonic() - t, exc)
            raise
        self.ctx.report(name, time.monotonic() - t, None)
        return None

    # ------------------------------------------------------------------ start

    async def start(self) -> None:
        """Create the space and connect the host; seat the stage now or at starts_at."""
        ctx, rooms = self.ctx, self.sc.rooms
        self.host = host = ctx.clients(self.user)
        self.moderator = ctx.clients(f"mod-{ctx.tag}-{self.n}", moderator=True)
        scheduled = ctx.t0 + rooms.starts_at if rooms.starts_at is not None else None
        cap = rooms.listener_cap
        asked = {"schedule": scheduled is not None, "listener_cap": cap is not None,
                 "captions": self.captions, "recording": self.recording}  # fmt: skip
        lacking = [f for f, wanted in asked.items() if wanted and f in host.lacks]
        if "schedule" in lacking:
            scheduled = None
        if "listener_cap" in lacking:
            cap = None
        self.captions = self.captions and "captions" not in lacking
        self.recording = self.recording and "recording" not in lacking
        self.space = await host.create_space(
            f"load {self.sc.name}",
            rooms.who_may_speak,
            cap,
            scheduled,
            captions=self.captions,
            recording=self.recording,
        )
        for feature in lacking:
            ctx.unsupported(feature, self.space, self.user, "host")
        self.live = scheduled is None
        self.roles[self.user] = "host"
        await self._seat(Member(self.user, host, "host", self._talks(0)))
        self._task(self._watch())
        self._task(self._guard())
        self._task(self._tick())
        if self.sc.timeline:
            self._task(self._timeline())
        if rooms.ends_at is not None:
            self._task(self._end_at(rooms.ends_at))
        if self.live:
            await self._seat_stage()
        else:
            assert rooms.starts_at is not None
            self._task(self._start_at(rooms.starts_at))

    def _talks(self, k: int) -> bool:
        return k < self.sc.speaking.active_speakers

    async def _start_at(self, at: float) -> None:
        await asyncio.sleep(max(at - self.ctx.now(), 0.0))
        if not self.live and not self.closed:
            assert self.host is not None
            await self._timed("start", self.host.start_space(self.space))
            await self._started()

    async def _started(self) -> None:
        if self.live and self.seated:
            return
        self.live = True
        self.ctx.add("space_started", self.space, self.space, "host")
        await self._seat_stage()

    async def _seat_stage(self) -> None:
        """Co-hosts, then speakers, each joining on its own connection."""
        if self.seated:
            return
        self.seated = True
        rooms, ctx = self.sc.rooms, self.ctx
        k = 1
        for i in range(rooms.cohosts):
            who = f"{self.user}-co{i}"
            await self._seat(Member(who, ctx.clients(who), "cohost", self._talks(k)))
            k += 1
        for i in range(rooms.speakers):
            who = f"{self.user}-spk{i}"
            await self._seat(Member(who, ctx.clients(who), "speaker", self._talks(k)))
            k += 1

    async def _connect(self, m: Member, avoid: tuple[str, ...] = ()) -> NetworkProfile | None:
        """Connect a stage member with a fresh track (not on the cluster nodes in
        `avoid`); returns the path it was dealt."""
        m.track = new_track(
            self.ctx,
            self.space,
            m.user,
            lambda: self.roles.get(m.user, m.role),
            talks=m.talks,
            rng=self.rng,
            gate=m.sending,
        )
        path = self._path()
        m.link = await m.client.connect_audio(
            self.space, ignore_rtp, publish=m.track, path=path, seed=self._seed(), avoid=avoid
        )
        return path

    async def _seat(self, m: Member) -> None:
        ctx = self.ctx
        assert self.host is not None
        t = time.monotonic()
        self.members[m.user] = m
        path = await self._connect(m)
        try:
            if m.role == "cohost":
                await self.host.act(self.space, "add_cohost", target=m.user)
            elif m.role == "speaker":
                await self.host.act(self.space, "invite", target=m.user)
                await m.client.act(self.space, "accept_invite")
        except Unsupported as exc:  # no roles on the target: the member just publishes
            ctx.unsupported(exc.action, self.space, m.user, m.role)
        took = time.monotonic() - t
        m.joined_at = ctx.now()
        self.roles[m.user] = m.role
        attrs = path_attrs(path) | node_attrs(m.link.join if m.link else {})
        ctx.add("participant_joined", self.space, m.user, m.role, took, attrs)
        if m.role == "cohost":
            ctx.add("cohost_added", self.space, m.user, "cohost")
        elif m.role == "speaker":
            ctx.add("speaker_granted", self.space, m.user, "speaker")

    # ------------------------------------------------------------------ events

    async def _watch(self) -> None:
        """Follow the space's events; after the stream breaks (e.g. the server restarted),
        reopen it and rejoin every publisher, whose media died with the stream."""
        assert self.host is not None
        broke = False
        while not self.closed and not self.ended:
            try:
                async for ev in self.host.events(self.space):
                    if broke:
                        broke = False
                        await self._rejoin_media()
                    if ev.get("type") == "event":
                        self._on_event(ev)
                    if self.ended:
                        return
            except asyncio.CancelledError:
                raise
            except Unsupported as exc:  # the target has no event stream: nothing to follow
                self.ctx.unsupported(exc.action, self.space, self.user, "host")
                self.blind = True
                return
            except Exception as exc:  # the stream broke: reconnect unless closing
                log.warning("event stream of %s: %r", self.space, exc)
            broke = True
            if not self.closed:
                await asyncio.sleep(1.0)

    async def _guard(self) -> None:
        """The stage's links, as a listener watches its own (`spacesim.load.listener`):
        nothing from the server for `LIVENESS` s -- no packet, no RTCP sender report --
        means the node carrying that member's audio is gone. A member seated as a
        listener first may have been placed on a node other than the origin; it rejoins
        at once, naming that node (the join's ``avoid``)."""
        watched: dict[str, tuple[Link, Silence]] = {}
        moving: set[str] = set()
        while not self.closed and not self.ended:
            await asyncio.sleep(WATCH)
            for m in list(self.members.values()):
                link = m.link
                if link is None or m.user in moving:
                    continue
                seen = watched.get(m.user)
                if seen is None or seen[0] is not link:
                    seen = watched[m.user] = (link, Silence())
                if seen[1].lost(link) and not self.closed and m.link is link:
                    moving.add(m.user)  # each member on its own: none waits for another
                    self._task(self._move(m, link, seen[1], moving))

    async def _move(self, m: Member, link: Link, silence: Silence, moving: set[str]) -> None:
        """Rejoin member `m` away from the node its `link` died on."""
        t, last_heard = time.monotonic(), silence.at
        old = node_attrs(link.join).get("node")
        try:
            await quiet(link.close())
            await self._connect(m, (old,) if old else ())
        except Exception as exc:
            self.ctx.report("reconnect", time.monotonic() - t, exc)
            silence.reset()  # tried again after LIVENESS s
            return
        finally:
            moving.discard(m.user)
        now = time.monotonic()
        self.ctx.report("reconnect", now - t, None)
        attrs: dict[str, Any] = node_attrs(m.link.join if m.link else {}) | {"cause": "silence"}
        if old:
            attrs["from"] = old
        attrs |= {"outage": round(now - last_heard, 4), "detect": round(t - last_heard, 4)}
        self.ctx.add("reconnected", self.space, m.user, m.role, now - t, attrs)

    async def _rejoin_media(self) -> None:
        """Join again with each publisher (the server keeps roles across a rejoin)."""
        for m in list(self.members.values()):
            t = time.monotonic()
            if m.link is not None:
                await quiet(m.link.close())
            try:
                await self._connect(m)
            except Exception as exc:
                self.ctx.report("reconnect", time.monotonic() - t, exc)
                continue
            took = time.monotonic() - t
            self.ctx.report("reconnect", took, None)
            attrs = node_attrs(m.link.join) if m.link else {}
            self.ctx.add("reconnected", self.space, m.user, m.role, took, attrs)

    def _on_event(self, ev: dict[str, Any]) -> None:
        ctx = self.ctx
        kind, who = ev.get("kind"), str(ev.get("participant") or "")
        t = float(ev.get("t", 0))
        attrs = ev.get("attrs") or {}
        m = self.members.get(who)
        if kind in _STAGE_RECORDS or (kind in ("removed", "blocked") and ev.get("actor")):
            # As the simulator records every policy event: what the host saw happen on
            # stage (removals and blocks by a moderator desk are recorded by `_review`).
            extra = {**attrs, "actor": ev["actor"]} if ev.get("actor") else dict(attrs)
            ctx.add(str(kind), self.space, who, str(ev.get("role") or ""), attrs=extra or None)
        if kind == "participant_joined":
            if who not in self.members and ev.get("role", "listener") == "listener":
                self.roles[who] = "listener"
                if self.rng.uniform() < self.sc.rooms.host_follows:
                    self._task(self._follow(who))
        elif kind in ("participant_left", "removed") or (
            kind == "blocked" and attrs.get("scope") == "space"
        ):
            self._gone(who)
        elif kind == "hand_raised":
            self.raised[who] = t
            self._task(self._decide(who))
        elif kind == "speaker_granted":
            self.roles[who] = "speaker"
            if who in self.raised:
                wait = t - self.raised.pop(who)
                ctx.add("speaker_granted", self.space, who, "listener", wait)
                ctx.report("hand_wait", wait, None)
        elif kind == "hand_declined" and who in self.raised:
            wait = t - self.raised.pop(who)
            ctx.add("hand_declined", self.space, who, "listener", wait)
            ctx.report("hand_wait", wait, None)
        elif kind == "hand_lowered":
            self.raised.pop(who, None)
        elif kind == "speaker_revoked":
            self.roles[who] = "listener"
            self.muted.discard(who)
            if m is not None:
                m.on_stage = False
        elif kind == "cohost_added":
            self.roles[who] = "cohost"
            if who not in self.cohosts:
                self.cohosts.append(who)
        elif kind == "cohost_removed":
            role = str(ev.get("role") or "speaker")
            self.roles[who] = role
            if who in self.cohosts:
                self.cohosts.remove(who)
            if m is not None and role == "listener":
                m.on_stage = False
        elif kind == "muted":
            self.muted.add(who)
            if m is not None and not m.muted:
                m.muted = True
                delay = behaviour.unmute_delay(self.sc.moderation, self.rng)
                if delay is not None:
                    self._task(self._unmute(m, delay))
        elif kind == "unmuted":
            self.muted.discard(who)
            if m is not None:
                m.muted = False
        elif kind == "report_filed":
            report = attrs.get("report_id")
            target = who if attrs.get("target_type") == "user" else None
            if report is not None:
                self._task(self._review(int(report), target))
        elif kind == "space_ended":
            self._ended()

    def _gone(self, who: str) -> None:
        self.roles.pop(who, None)
        self.raised.pop(who, None)
        self.muted.discard(who)
        if who in self.cohosts:
            self.cohosts.remove(who)
        if who == self.user:
            self._ended()

    def _ended(self) -> None:
        if self.ended:
            return
        self.ended = True
        self.ctx.ended.add(self.space)
        self.ctx.add("space_ended", self.space, self.space, "host")
        asyncio.get_running_loop().create_task(self.close())

    async def _follow(self, who: str) -> None:
        assert self.host is not None
        try:
            await self._timed("follow", self.host.follow(who))
        except Exception as exc:
            log.debug("follow %s: %r", who, exc)

    def _unmute_call(self, m: Member) -> Callable[[], Awaitable[Any]]:
        return lambda: m.client.act(self.space, "unmute", target=m.user)

    async def _unmute(self, m: Member, delay: float) -> None:
        await asyncio.sleep(delay)
        if m.muted and not self.closed:
            try:
                refused = await self._timed("unmute", self._unmute_call(m)())
            except Exception as exc:
                log.debug("unmute %s: %r", m.user, exc)
                return
            if self.blind and refused is None:  # no event will say so: its request did
                self._echo("unmuted", [m.user])

    def _echo(self, kind: str, who: list[str]) -> None:
        """Without an event stream, the room learns what its own successful requests did
        (a mute, an unmute) as the stream would have told it."""
        for user in who:
            role = self.roles.get(user, "")
            self._on_event({"type": "event", "kind": kind, "participant": user, "role": role,
                            "actor": self.user, "t": self.ctx.now()})  # fmt: skip

    # ------------------------------------------------------------------ hands, reports

    async def _decide(self, who: str) -> None:
        aud = self.sc.audience
        await asyncio.sleep(behaviour.hand_response_delay(aud, self.rng))
        if who not in self.raised or self.closed or self.host is None:
            return
        approve = behaviour.approves(aud, self.rng)
        try:
            await self.host.act(self.space, "approve" if approve else "decline", target=who)
        except Unsupported as exc:
            self.ctx.unsupported(exc.action, self.space, self.user, "host")
            return
        except ClientError as exc:
            if approve and exc.code == "stage_full":
                await quiet(self.host.act(self.space, "decline", target=who))
            return
        if approve:
            await asyncio.sleep(behaviour.speaker_stint(aud, self.rng))
            if not self.closed and self.roles.get(who) == "speaker":
                await quiet(self.host.act(self.space, "demote", target=who))

    async def _review(self, report: int, target: str | None) -> None:
        """A moderator takes the report when free, reviews it, and applies an outcome."""
        ctx, aud = self.ctx, self.sc.audience
        filed = ctx.now()
        async with self.desk:
            queued = ctx.now() - filed
            await asyncio.sleep(behaviour.review_time(aud, self.rng))
            action = behaviour.report_outcome(aud.outcomes, target is not None, self.rng)
            if self.closed or self.moderator is None:
                return
            t = time.monotonic()
            try:
                await self.moderator.moderate(self.space, action, target, report)
            except Unsupported as exc:
                ctx.unsupported(exc.action, self.space, target or "", "moderator")
                return
            except ClientError as exc:  # e.g. the target left and was already gone
                ctx.report("moderate", time.monotonic() - t, exc)
                return
        ctx.report("moderate", time.monotonic() - t, None)
        ctx.report("report_resolution", ctx.now() - filed, None)
        attrs = {"action": action, "queue_wait": queued, "report_id": report}
        ctx.add("report_resolved", self.space, target or "", "", ctx.now() - filed, attrs)
        if action in ("remove", "block") and target is not None:
            kind = "removed" if action == "remove" else "blocked"
            ctx.add(kind, self.space, target, "listener", attrs=attrs)

    # ------------------------------------------------------------------ moderation, timeline

    async def _tick(self) -> None:
        loop = asyncio.get_running_loop()
        due = loop.time()
        while not self.closed:
            due += TICK
            await asyncio.sleep(max(due - loop.time(), 0.0))
            if not self.live or self.ended:
                continue
            for action in behaviour.moderation_due(self.sc.moderation, TICK, self.rng):
                try:
                    await self.do(action)
                except Exception as exc:
                    log.debug("moderation %s: %r", action, exc)

    async def _timeline(self) -> None:
        for entry in behaviour.timeline_due(self.sc, 0.0, math.inf):
            await asyncio.sleep(max(entry.at - self.ctx.now(), 0.0))
            if self.closed:
                return
            try:
                await self.do(entry.action, at=entry.at)
            except Exception as exc:
                log.warning("timeline %s at %g s: %r", entry.action, entry.at, exc)

    async def _end_at(self, at: float) -> None:
        await asyncio.sleep(max(at - self.ctx.now(), 0.0))
        if not self.closed and not self.ended and self.host is not None:
            await quiet(self._timed("end", self.host.end_space(self.space)))
            self._ended()

    def _listeners(self) -> list[str]:
        return [u for u, r in self.roles.items() if r == "listener" and u not in self.members]

    async def do(self, action: str, at: float | None = None) -> bool:
        """One host action (a moderation rate's or the timeline's); False when skipped."""
        host = self.host
        if host is None or self.closed:
            return False
        space, rng = self.space, self.rng
        target: str | None = None
        calls: list[Callable[[], Awaitable[Any]]] = []

        def on(name: str, who: str) -> Callable[[], Awaitable[Any]]:
            return lambda: host.act(space, name, target=who)

        if action == "start":
            calls.append(lambda: host.start_space(space))
        elif action == "end":
            calls.append(lambda: host.end_space(space))
        elif action == "host_leave":
            calls.append(lambda: host.leave(space))
        elif action == "mute":
            on_stage = [u for u, r in self.roles.items() if r in ("cohost", "speaker")]
            target = behaviour.pick([u for u in on_stage if u not in self.muted], rng)
            if target is None:
                return False
            calls.append(on("mute", target))
        elif action == "unmute":
            for m in self.members.values():
                if m.muted and m.on_stage:
                    calls.append(self._unmute_call(m))
        elif action == "mute_all":
            calls.append(lambda: host.act(space, "mute_all"))
        elif action == "demote":
            target = behaviour.pick([u for u, r in self.roles.items() if r == "speaker"], rng)
            if target is None:
                return False
            calls.append(on("demote", target))
        elif action in ("invite", "remove", "block"):
            target = behaviour.pick(self._listeners(), rng)
            if target is None:
                return False
            calls.append(on(action, target))
        elif action == "cohost_handover":
            target = behaviour.pick(self._listeners(), rng)
            if target is None:
                return False
            if len(self.cohosts) >= MAX_COHOSTS:
                calls.append(on("remove_cohost", self.cohosts[0]))
            calls.append(on("add_cohost", target))
        else:
            raise ValueError(f"unknown host action {action!r}")
        refused: str | None = None
        for call in calls:
            refused = await self._timed(action, call()) or refused
            if refused == UNSUPPORTED:
                return False  # recorded as action_unsupported, not as performed
        attrs: dict[str, Any] = {"action": action}
        if target is not None:
            attrs["target"] = target
        if refused is not None:
            attrs["refused"] = refused
        if at is not None:
            attrs["at"] = at
            self.ctx.add("timeline_action", space, target or "", "host", attrs=attrs)
        else:
            self.ctx.add("moderation_action", space, target or "", "host", attrs=attrs)
        if refused is None and self.blind:
            stage = [u for u, r in self.roles.items() if r in ("cohost", "speaker")]
            if action == "mute" and target is not None:
                self._echo("muted", [target])
            elif action == "mute_all":
                self._echo("muted", [u for u in stage if u not in self.muted])
            elif action == "unmute":
                self._echo("unmuted", [m.user for m in self.members.values() if m.muted])
        if refused is None:
            if action == "start":
                await self._started()
            elif action in ("end", "host_leave"):
                self._ended()
        return True

    # ------------------------------------------------------------------ close

    async def close(self) -> None:
        if self._closing is None:
            self._closing = asyncio.get_running_loop().create_task(self._close())
        await asyncio.shield(self._closing)

    async def _close(self) -> None:
        self.closed = True
        me = asyncio.current_task()
        for t in list(self.tasks):
            if t is not me:
                t.cancel()
        ctx = self.ctx
        for m in reversed(list(self.members.values())):
            if self.space and not self.ended:
                await quiet(m.client.leave(self.space))
        for m in self.members.values():
            if m.link is not None:
                await quiet(m.link.close())
            ctx.add("participant_left", self.space, m.user, m.role, ctx.now() - m.joined_at)
