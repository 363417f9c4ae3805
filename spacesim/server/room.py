"""A live room on the server: the rulebook's state plus who is listening to its events.

`Room` applies every action through `spacesim.policy` (the same rulebook the simulator
uses), persists what must survive a crash before acknowledging it, and fans the
resulting events out to WebSocket subscribers. It knows nothing of HTTP or WebRTC: the
app wires it to both.
"""

from __future__ import annotations

import asyncio
import bisect
import itertools
import json
import logging
import math
import struct
import time
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

from spacesim import policy
from spacesim.protocol import AUDIENCE, REACTIONS, ProtocolError, event_message

__all__ = [
    "AUDIENCE_INTERVAL",
    "EventSink",
    "RateLimiter",
    "Room",
    "Subscriber",
    "Throttles",
    "text_frame",
]

log = logging.getLogger("spacesim.server")

EventSink = Callable[[dict[str, Any]], None]

#: A subscriber whose socket has more than this many bytes of events not yet taken by
#: the operating system (beyond what its socket buffers hold) is cut off with ``too_slow``
#: rather than slowing the room down or growing without bound: about 1,000 typical events.
BUFFER_LIMIT = 256 * 1024
#: Frames held for a stream not yet attached (between subscribe and hello) at most.
PENDING_LIMIT = 1000

#: Seconds between two ``audience`` events of one space, at most one per interval.
AUDIENCE_INTERVAL = 1.0
#: Raised hands and pending invites listed in a snapshot (the oldest); counts say how many.
SNAPSHOT_HANDS = 20
SNAPSHOT_INVITES = 20
_PRESENCE = frozenset({"participant_joined", "participant_left", "removed", "space_ended"})

_BY_ACTOR = {
    "raise_hand",
    "lower_hand",
    "accept_invite",
    "decline_invite",
    "mute_all",
    "start_recording",
    "stop_recording",
    "captions_on",
    "captions_off",
}
_ON_TARGET = {
    "invite",
    "approve",
    "decline",
    "demote",
    "add_cohost",
    "remove_cohost",
    "mute",
    "unmute",
    "remove",
    "block",
}
#: Actions written to the audit log (moderation, not audience chatter).
_AUDITED = _ON_TARGET | {"mute_all", "report", "set_who_may_speak", "start", "end", "moderate"}
_AUDITED |= {"start_recording", "stop_recording"}
_AUDITED |= {"captions_on", "captions_off"}
_ROLE_CHANGES = {"speaker_granted", "speaker_revoked", "cohost_added", "cohost_removed"}


@dataclass
class RateLimiter:
    """Token buckets per key: `rate` tokens per second, bursts up to `burst`."""

    rate: float
    burst: float
    clock: Callable[[], float] = time.monotonic
    _buckets: dict[str, tuple[float, float]] = field(default_factory=dict)

    def allow(self, key: str) -> bool:
        return self.take(key) == 0.0

    def take(self, key: str) -> float:
        """Take a token for `key`: 0.0 if one was there, else seconds until the next one."""
        now = self.clock()
        tokens, last = self._buckets.get(key, (self.burst, now))
        tokens = min(self.burst, tokens + (now - last) * self.rate)
        if tokens < 1.0:
            self._buckets[key] = (tokens, now)
            return max((1.0 - tokens) / self.rate, 1e-9) if self.rate > 0 else math.inf
        self._buckets[key] = (tokens - 1.0, now)
        return 0.0

    def check(self, key: str, what: str) -> None:
        """Take a token for `key` or refuse with ``rate_limited`` and a whole-second wait."""
        wait = self.take(key)
        if wait > 0.0:
            seconds = math.ceil(wait) if math.isfinite(wait) else 3600
            raise ProtocolError(
                "rate_limited",
                f"too many {what}; retry in {seconds} s",
                retry_after=max(1, seconds),
            )


#: Per-user throttles of actions that cost others work (docs/protocol.md, Rate limits):
#: (tokens per second, burst). Generous: no legitimate client comes near them.
REPORTS = (10 / 60, 5.0)  # reports filed
BLOCKS = (10 / 60, 10.0)  # block actions (a personal block is anyone's to make)
TOGGLES = (1.0, 10.0)  # muting or unmuting oneself


class Throttles:
    """Per-user limiters shared by every room of a server (a user's reports count across
    spaces): see `REPORTS`, `BLOCKS`, `TOGGLES`."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.reports = RateLimiter(*REPORTS, clock)
        self.blocks = RateLimiter(*BLOCKS, clock)
        self.toggles = RateLimiter(*TOGGLES, clock)

    def check(self, actor: str, action: str, target: str | None) -> None:
        """Refuse with ``rate_limited`` (and a ``retry_after``) if `actor` is over a limit."""
        if action == "report":
            self.reports.check(actor, "reports")
        elif action == "block":
            self.blocks.check(actor, "blocks")
        elif action == "unmute" or (action == "mute" and target == actor):
            self.toggles.check(actor, "mute toggles")


_LEN1 = struct.Struct("!BB").pack
_LEN2 = struct.Struct("!BBH").pack
_LEN3 = struct.Struct("!BBQ").pack


def text_frame(payload: bytes) -> bytes:
    """One unfragmented, unmasked, uncompressed WebSocket text frame (RFC 6455 §5.2).

    A server's frames are never masked (§5.1), so one frame's bytes can go to every
    subscriber as they are.
    """
    n = len(payload)
    if n < 126:
        return _LEN1(0x81, n) + payload
    if n < 65536:
        return _LEN2(0x81, 126, n) + payload
    return _LEN3(0x81, 127, n) + payload


class Transport(Protocol):
    """What the fan-out writes to: the subset of `asyncio.WriteTransport` it uses."""

    def write(self, data: bytes, /) -> None: ...
    def is_closing(self) -> bool: ...
    def get_write_buffer_size(self) -> int: ...


class Stream(Protocol):
    """The WebSocket a subscriber reads (e.g. aiohttp's WebSocketResponse)."""

    @property
    def closed(self) -> bool: ...


class Subscriber:
    """One event stream. Until `Room.attach` its frames wait in `pending`; after, they are
    written straight to its transport. `ended`: it was cut off (its last frame is an error)
    and `on_end` closes it."""

    __slots__ = ("ended", "on_end", "pending", "stream", "transport", "user")

    def __init__(self, user: str) -> None:
        self.user = user
        self.transport: Transport | None = None
        self.stream: Stream | None = None
        self.pending: list[bytes] = []
        self.ended = False
        self.on_end: Callable[[], None] | None = None


_TOO_SLOW = "dropped: more than 256 KiB of events unsent"

#: Schedules a call after a delay (s); `loop.call_later` by default (see `Room`).
Schedule = Callable[[float, Callable[[], None]], object]


def _call_later(delay: float, fn: Callable[[], None]) -> None:
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:  # no loop (a synchronous caller): nothing to coalesce with
        fn()
        return
    loop.call_later(delay, fn)


def _seq_of(entry: tuple[int, str]) -> int:
    return entry[0]


class Room:
    """One space on the server.

    Fan-out: each event is serialised to JSON and framed as a WebSocket text frame once;
    those bytes are written to each subscriber's transport in turn, in the order of
    publication (no per-subscriber queue or task). A subscriber whose transport holds
    more than `BUFFER_LIMIT` unsent bytes is cut off with a ``too_slow`` error.
    A listener's join, and the leave of a listener the room did not otherwise notice
    (no raised hand, no invite), go only to the streams of users on stage and of
    platform moderators; every stream gets an ``audience`` count event instead, at most
    once per `audience_interval` seconds. Every other event goes to every stream, and
    every event (``audience`` too) to `sinks`.
    """

    def __init__(
        self,
        space: policy.Space,
        *,
        persist: Any,
        wall_clock: Callable[[], float] = time.time,
        mono_clock: Callable[[], float] = time.monotonic,
        ns_clock: Callable[[], int] = time.monotonic_ns,
        schedule: Schedule = _call_later,
        reactions_per_s: float = 2.0,
        hands_per_min: float = 6.0,
        audience_interval: float = AUDIENCE_INTERVAL,
        slots: int = 3,
    ) -> None:
        self.space = space
        self.slots = slots  # listen sections a join offer carries (the server's --slots)
        self.persist = persist  # the store facade: see spacesim.server.app.Persist
        self._wall = wall_clock
        self._t0 = mono_clock()
        self._mono = mono_clock
        self._ns = ns_clock
        self._schedule = schedule
        self._subscribers: dict[Subscriber, None] = {}  # in subscription order
        self._by_user: dict[str, set[Subscriber]] = {}
        self._moderators: set[Subscriber] = set()  # platform moderators' streams
        self._reactions = RateLimiter(reactions_per_s, reactions_per_s * 5, mono_clock)
        self._hands = RateLimiter(hands_per_min / 60, 2, mono_clock)
        # per-user throttles; the server shares one across its rooms (ServerState)
        self.throttles = Throttles(mono_clock)
        self.sinks: list[EventSink] = []  # e.g. the server's own record writer
        # with a cluster: every event, with the users it goes to (None: everyone) and
        # whether moderators' streams get it, for the other nodes' streams of this space
        self.remote: Callable[[dict[str, Any], list[str] | None, bool], None] | None = None
        # called with (this room, user) after a space-wide block here: the server bars
        # the user from the host's other spaces at once (the store holds the host's block)
        self.on_host_block: Callable[[Room, str], None] | None = None
        # Participants in join order, for the paginated listing: (seq, user), appended at
        # each join; an entry is live while `_seq[user]` is its seq and the user is
        # present. Dead entries are skipped and compacted away once they outnumber the live.
        self._next_seq = 1
        self._seq: dict[str, int] = {space.host: 0}
        self._order: list[tuple[int, str]] = [(0, space.host)]
        # listeners whose leave everyone hears of (they raised a hand or were invited)
        self._noticed: set[str] = set()
        self._audience_interval = audience_interval
        self._audience_due = False  # one is scheduled
        self._audience_sent: tuple[int, int] | None = None

    @property
    def id(self) -> str:
        return self.space.space_id

    # ------------------------------------------------------------------ events

    def subscribe(self, user: str, *, moderator: bool = False) -> Subscriber:
        """A stream of this room's events for `user`; refused (``blocked``, ``removed``) to
        users barred from the space, and once it has ended (``space_ended``).

        Its frames are held until `attach`. `moderator`: a platform moderator's stream,
        which gets every listener's join and leave as users on stage do.
        """
        if self.space.status is policy.SpaceStatus.ENDED:  # ended, not yet freed
            raise ProtocolError("space_ended", "the space has ended")
        if user in self.space.blocked:
            raise ProtocolError("blocked", f"{user} is blocked from this space")
        if user in self.space.removed:
            raise ProtocolError("removed", f"{user} was removed from this space")
        sub = Subscriber(user)
        self._subscribers[sub] = None
        self._by_user.setdefault(user, set()).add(sub)
        if moderator:
            self._moderators.add(sub)
        return sub

    def attach(
        self,
        sub: Subscriber,
        transport: Transport,
        stream: Stream,
        first: bytes,
        on_end: Callable[[], None],
    ) -> None:
        """Start writing `sub`'s frames to `transport`: `first` (the hello frame), then the
        frames held since `subscribe`, then each event as it is published.

        The caller guarantees that nothing else writes a data frame to `transport` except
        whole frames written synchronously, so frames never interleave. `on_end` is called
        (synchronously) once the stream's last frame, an error, has been written: it must
        close the socket. `stream.closed` stops the writes (no data after a close frame).
        """
        sub.on_end = on_end
        held, sub.pending = sub.pending, []
        if transport.is_closing() or stream.closed:
            self.unsubscribe(sub)
            return
        transport.write(first)
        for frame in held:
            transport.write(frame)
        if sub.ended:
            on_end()
            return
        sub.transport, sub.stream = transport, stream
        if transport.get_write_buffer_size() > BUFFER_LIMIT:
            self._end(sub, "too_slow", _TOO_SLOW)

    def unsubscribe(self, sub: Subscriber) -> None:
        if sub not in self._subscribers:
            return
        del self._subscribers[sub]
        self._moderators.discard(sub)
        subs = self._by_user.get(sub.user)
        if subs is not None:
            subs.discard(sub)
            if not subs:
                del self._by_user[sub.user]

    @property
    def n_subscribers(self) -> int:
        return len(self._subscribers)

    def has_stream(self, user: str) -> bool:
        """Whether `user` has an event stream open (subscribed, attached or not)."""
        return bool(self._by_user.get(user))

    def _cut_off(self, user: str, why: str) -> None:
        """A user barred from the space stops receiving its events at once."""
        for sub in list(self._by_user.get(user, ())):
            self._end(sub, why, f"{user} was {why} from the space")

    def _end(self, sub: Subscriber, code: str, reason: str) -> None:
        """Unsubscribe `sub`; its last frame is an error saying why, then it is closed."""
        self.unsubscribe(sub)
        if sub.ended:
            return
        sub.ended = True
        frame = text_frame(json.dumps({"type": "error", "error": code, "reason": reason}).encode())
        transport, stream = sub.transport, sub.stream
        if transport is None:  # not attached yet: `attach` writes it and closes
            sub.pending.append(frame)
            return
        if not transport.is_closing() and not (stream is not None and stream.closed):
            transport.write(frame)
        if sub.on_end is not None:
            sub.on_end()

    def now(self) -> float:
        """Seconds since the room was created on this server (event ``t``)."""
        return self._mono() - self._t0

    def publish(
        self,
        events: Iterable[policy.Event],
        extras: dict[int, dict[str, Any]] | None = None,
        *,
        quiet_leaves: Collection[str] = (),
    ) -> list[dict[str, Any]]:
        """Send events to their subscribers; `extras` adds attrs by event index (report ids).

        Who gets each event is `policy.delivery`'s rule; `quiet_leaves`: users whose
        ``participant_left`` the audience had not noticed (it goes to the stage only).
        """
        out = []
        changed = False
        for i, ev in enumerate(events):
            attrs = {**ev.attrs, **extras[i]} if extras and i in extras else ev.attrs
            msg = event_message(
                ev.kind,
                self.id,
                ev.participant,
                t=self.now(),
                actor=ev.actor,
                role=ev.role.value if ev.role is not None else None,
                attrs=attrs,
                clock_ns=self._ns(),
            )
            out.append(msg)
            self._index(ev)
            to = policy.delivery(ev, noticed=ev.participant not in quiet_leaves)
            if to is policy.Delivery.ACTOR:
                self._fan_out(msg, only=ev.actor or "")
            else:
                self._fan_out(msg, stage_only=to is policy.Delivery.STAGE)
            changed = changed or ev.kind in _PRESENCE
        if changed:
            self._audience_changed()
        return out

    def _fan_out(
        self, msg: dict[str, Any], *, stage_only: bool = False, only: str | None = None
    ) -> None:
        """Write `msg` to every subscriber, the stage's (and moderators') or `only` one
        user's (`policy.delivery` says which)."""
        for sink in self.sinks:
            sink(msg)
        if self.remote is not None:
            to = [only] if only is not None else list(self.space.stage()) if stage_only else None
            self.remote(msg, to, only is None and stage_only)
        frame = text_frame(json.dumps(msg).encode())  # once, whatever the number of subscribers
        targets: Iterable[Subscriber]
        if only is not None:
            targets = set(self._by_user.get(only, ()))
        elif stage_only:
            chosen = set(self._moderators)
            for user in self.space.stage():
                chosen.update(self._by_user.get(user, ()))
            targets = chosen
        else:
            targets = self._subscribers  # nothing below changes it while it is iterated
        gone: list[Subscriber] | None = None
        slow: list[Subscriber] | None = None
        limit = BUFFER_LIMIT
        for sub in targets:
            transport = sub.transport
            if transport is None:  # between subscribe and hello
                sub.pending.append(frame)
                if len(sub.pending) > PENDING_LIMIT:
                    slow = slow or []
                    slow.append(sub)
            elif transport.is_closing() or sub.stream.closed:  # type: ignore[union-attr]
                gone = gone or []
                gone.append(sub)
            else:
                # A write either goes to the kernel at once or is buffered by the
                # transport; it never waits and never calls back into the room.
                transport.write(frame)
                if transport.get_write_buffer_size() > limit:
                    slow = slow or []
                    slow.append(sub)
        for sub in gone or ():
            self.unsubscribe(sub)
        for sub in slow or ():  # a stuck client: cut it off, tell it why
            log.info("event stream of %s in %s dropped: too slow", sub.user, self.id)
            self._end(sub, "too_slow", _TOO_SLOW)
        kind = msg.get("kind")
        if kind == "removed":
            self._cut_off(str(msg.get("participant")), "removed")
        elif kind == "space_ended":  # nothing more will happen here: end every stream
            for sub in list(self._subscribers):
                self._end(sub, "space_ended", "the space has ended")

    # ------------------------------------------------------------------ audience

    def _audience_changed(self) -> None:
        """The audience changed: an audience event one interval later, with the counts then.

        Never at once: a burst of joins (a flash crowd, a batch) costs one O(subscribers)
        fan-out per interval, whatever its size.
        """
        if self._audience_due:
            return
        self._audience_due = True
        self._schedule(self._audience_interval, self._send_audience)

    def _send_audience(self) -> None:
        self._audience_due = False
        counts = (len(self.space.participants), self.space.n_listeners)
        if counts == self._audience_sent:
            return  # e.g. one joined and one left within the interval
        self._audience_sent = counts
        msg = event_message(
            AUDIENCE,
            self.id,
            self.id,
            t=self.now(),
            attrs={"participants": counts[0], "listeners": counts[1]},
            clock_ns=self._ns(),
        )
        self._fan_out(msg)

    # ------------------------------------------------------------------ participants

    def _index(self, ev: policy.Event) -> None:
        """Keep the join-order index and the noticed listeners in step with the events."""
        kind, user = ev.kind, ev.participant
        if kind == "participant_joined":
            self._seq[user] = self._next_seq
            self._order.append((self._next_seq, user))
            self._next_seq += 1
        elif kind in ("hand_raised", "speaker_invited"):
            self._noticed.add(user)
        elif kind in ("participant_left", "removed"):
            self._noticed.discard(user)
            self._seq.pop(user, None)
            if len(self._order) > 2 * len(self.space.participants) + 64:
                self._order = [e for e in self._order if self._live(e)]
        elif kind == "space_ended":
            self._noticed.clear()
            self._seq.clear()
            self._order.clear()

    def _live(self, entry: tuple[int, str]) -> bool:
        seq, user = entry
        return self._seq.get(user) == seq and self.space.role_of(user) is not None

    def count(self, role: policy.Role | None = None) -> int:
        """Participants present (with `role`, if given)."""
        s = self.space
        if role is None:
            return len(s.participants)
        if role is policy.Role.LISTENER:
            return s.n_listeners
        if role is policy.Role.SPEAKER:
            return s.n_speakers
        if role is policy.Role.COHOST:
            return len(s.cohosts())
        return 1 if s.role_of(s.host) is policy.Role.HOST else 0

    def participants_page(
        self, after: int | None = None, limit: int = 100, role: policy.Role | None = None
    ) -> tuple[list[tuple[str, policy.Role]], int | None]:
        """Up to `limit` participants in join order after cursor `after`, and the next cursor.

        The cursor is a join sequence number: a walk page by page lists everyone present
        throughout exactly once, in join order; later joiners come at the end, and those
        who left before their page are not listed. O(limit) per page (plus dead entries
        not yet compacted); a stage role reads the stage (at most 13 users).
        """
        s = self.space
        start = -1 if after is None else after
        page: list[tuple[int, str, policy.Role]] = []
        if role is not None and role is not policy.Role.LISTENER:
            members = (
                (s.host,) if role is policy.Role.HOST
                else s.cohosts() if role is policy.Role.COHOST
                else s.speakers()
            )  # fmt: skip
            ranked = sorted((self._seq[u], u) for u in members if u in self._seq)
            page = [(q, u, role) for q, u in ranked if q > start and s.role_of(u) is role]
            page = page[: limit + 1]
        else:
            order = self._order
            i = bisect.bisect_right(order, start, key=_seq_of)
            while i < len(order) and len(page) <= limit:
                seq, user = order[i]
                i += 1
                have = s.role_of(user)
                if have is None or self._seq.get(user) != seq:
                    continue
                if role is None or have is role:
                    page.append((seq, user, have))
        more = len(page) > limit
        page = page[:limit]
        return [(u, r) for _, u, r in page], (page[-1][0] if more else None)

    # ------------------------------------------------------------------ actions

    def _check(self, outcome: policy.Outcome) -> policy.Outcome:
        if not outcome.ok:
            raise ProtocolError(outcome.code or "bad_request", outcome.reason or "refused")
        return outcome

    def _commit(
        self,
        actor: str | None,
        action: str,
        outcome: policy.Outcome,
        fields: dict[str, str] | None = None,
        quiet_leaves: Collection[str] = (),
    ) -> list[dict[str, Any]]:
        """Persist an accepted outcome, then tell everyone: nothing is acknowledged unsaved."""
        fields = fields or {}
        extras = self._persist(actor, action, fields, outcome)
        events = self.publish(outcome.events, extras, quiet_leaves=quiet_leaves)
        if self.on_host_block is not None and action != "host_block":
            for ev in outcome.events:
                if ev.kind == "blocked" and ev.attrs.get("scope") != "personal":
                    self.on_host_block(self, ev.participant)
        return events

    def host_blocked(self, user: str) -> list[dict[str, Any]]:
        """The host blocked `user` space-wide in another space: bar (and remove) here too."""
        return self._commit(None, "host_block", self._check(self.space.host_blocked(user)))

    def apply(self, actor: str, action: str, fields: dict[str, str]) -> list[dict[str, Any]]:
        """Apply a validated action (see `spacesim.protocol.parse_action`); returns events.

        Raises ProtocolError for refusals, so a caller answers with the rulebook's reason.
        Reports and blocks are durable before this returns.
        """
        space = self.space
        target = fields.get("target")
        if action == "react":
            return self._react(actor, fields["emoji"])
        if action == "raise_hand":
            self._hands.check(actor, "hand raises")
        self.throttles.check(actor, action, target)
        if action in _BY_ACTOR:
            outcome = getattr(space, action)(actor)
        elif action in _ON_TARGET:
            assert target is not None  # parse_action guarantees it
            outcome = getattr(space, action)(actor, target)
        elif action == "report":
            outcome = space.report(actor, target, fields.get("reason", ""))
        elif action == "set_who_may_speak":
            try:
                setting = policy.WhoMaySpeak(fields["setting"])
            except ValueError:
                options = ", ".join(s.value for s in policy.WhoMaySpeak)
                raise ProtocolError("bad_request", f"'setting' must be one of {options}") from None
            outcome = space.set_who_may_speak(actor, setting)
        else:
            raise ProtocolError("unknown_action", f"unknown action {action!r}")
        return self._commit(actor, action, self._check(outcome), fields)

    def _persist(
        self,
        actor: str | None,
        action: str,
        fields: dict[str, str],
        outcome: policy.Outcome,
    ) -> dict[int, dict[str, Any]]:
        """Write what must survive a crash before anyone is told; returns event extras.

        A block with a space-wide effect (by the host, a co-host or platform moderation)
        is stored as the host's block: the user stays out of this host's spaces after a
        restart. A personal block is stored as the blocker's.
        """
        store = self.persist
        at = self._wall()
        extras: dict[int, dict[str, Any]] = {}
        audit_attrs: dict[str, str] = dict(fields)
        for i, ev in enumerate(outcome.events):
            kind = ev.kind
            if kind == "report_filed":
                target = fields.get("target")
                reporter = actor or ev.actor or ""
                report_id = store.file_report(
                    self.id, reporter, target, fields.get("reason", ""), at
                )
                extras[i] = {"report_id": report_id}  # an integer, as moderation takes it
            elif kind == "blocked":
                audit_attrs["scope"] = ev.attrs.get("scope", "space")
                personal = ev.attrs.get("scope") == "personal"
                blocker = (ev.actor or actor or self.space.host) if personal else self.space.host
                store.add_user(ev.participant, ev.participant, at)
                store.block(blocker, ev.participant, at)
            elif kind == "participant_joined":
                store.record_join(self.id, ev.participant, "listener", at)
            elif kind in ("participant_left", "removed"):
                store.record_leave(self.id, ev.participant, at)
            elif kind in _ROLE_CHANGES and ev.role is not None:
                store.record_role(self.id, ev.participant, ev.role.value, at)
            elif kind == "space_started":
                store.set_space_status(self.id, "live", at)
            elif kind == "space_ended":
                store.set_space_status(self.id, "ended", at)
            elif kind == "speak_setting_changed":
                store.set_who_may_speak(self.id, self.space.who_may_speak.value)
            elif kind in ("recording_started", "recording_stopped"):
                store.set_recording(self.id, kind == "recording_started", at)
            elif kind == "captions_changed":
                store.set_captions(self.id, self.space.captions)
        if action in _AUDITED:
            target = fields.get("target")
            store.audit(self.id, actor, action, target, audit_attrs, at)
        return extras

    def _react(self, actor: str, emoji: str) -> list[dict[str, Any]]:
        if self.space.role_of(actor) is None:
            raise ProtocolError("not_present", f"{actor} is not in the space")
        if emoji not in REACTIONS:
            raise ProtocolError("bad_request", f"unknown reaction; use one of {sorted(REACTIONS)}")
        self._reactions.check(actor, "reactions")
        msg = event_message(
            "reaction", self.id, actor, t=self.now(), attrs={"emoji": emoji}, clock_ns=self._ns()
        )
        self._fan_out(msg)
        return [msg]

    def post_pinned(self, actor: str, post: str, author: str, text: str) -> dict[str, Any]:
        """A host or co-host pinned a post (`spacesim.server.posts_api` checked the rule)."""
        attrs = {"post": post, "author": author, "text": text}
        msg = event_message(
            "post_pinned", self.id, actor, t=self.now(), attrs=attrs, clock_ns=self._ns()
        )
        self._fan_out(msg)
        return msg

    def post_unpinned(self, actor: str, post: str) -> dict[str, Any]:
        attrs = {"post": post}
        msg = event_message(
            "post_unpinned", self.id, actor, t=self.now(), attrs=attrs, clock_ns=self._ns()
        )
        self._fan_out(msg)
        return msg

    def post_shared(self, actor: str, post: str, author: str, text: str) -> dict[str, Any]:
        """Someone present shared a post into the space: everyone sees it."""
        attrs = {"post": post, "author": author, "text": text}
        msg = event_message(
            "post_shared", self.id, actor, t=self.now(), attrs=attrs, clock_ns=self._ns()
        )
        self._fan_out(msg)
        return msg

    # ------------------------------------------------------------------ membership

    def join(self, user: str) -> list[dict[str, Any]]:
        return self._commit(user, "join", self._check(self.space.join(user)))

    def leave(self, user: str) -> list[dict[str, Any]]:
        role = self.space.role_of(user)
        if role is None:
            return []
        quiet = (user,) if role is policy.Role.LISTENER and user not in self._noticed else ()
        return self._commit(user, "leave", self._check(self.space.leave(user)), quiet_leaves=quiet)

    def lifecycle(self, actor: str, action: str) -> list[dict[str, Any]]:
        """start / end, with the status persisted before the event goes out."""
        return self._commit(actor, action, self._check(getattr(self.space, action)(actor)))

    def moderate(
        self, moderator: str, action: policy.ModerationAction, target: str | None
    ) -> list[dict[str, Any]]:
        """Platform moderation (the caller checked the grant)."""
        outcome = self._check(self.space.moderate(action, target))
        fields = {"action": action.value} | ({"target": target} if target else {})
        return self._commit(moderator, "moderate", outcome, fields)

    def snapshot(self) -> dict[str, Any]:
        """The room's state as clients see it on join, on GET and in the hello: bounded.

        Counts instead of the participant list (`participants_page` lists them), the stage
        (at most 13), the oldest `SNAPSHOT_HANDS` raised hands and `SNAPSHOT_INVITES`
        pending invites.
        """
        s = self.space
        stage = s.stage()
        hands = s.hand_queue()
        invites = s.pending_invites()
        return {
            "id": s.space_id,
            "host": s.host,
            "status": s.status.value,
            "who_may_speak": s.who_may_speak.value,
            "counts": {
                "participants": len(s.participants),
                "listeners": s.n_listeners,
                "stage": len(stage),
                "hands": len(hands),
                "invites": len(invites),
            },
            "stage": [{"user": u, "role": s.participants[u].value} for u in stage],
            "muted": sorted(u for u in stage if s.is_muted(u)),
            "hands": list(hands[:SNAPSHOT_HANDS]),
            "invites": dict(itertools.islice(invites.items(), SNAPSHOT_INVITES)),
            "limits": {
                "max_cohosts": s.limits.max_cohosts,
                "max_speakers": s.limits.max_speakers,
                "listener_cap": s.limits.listener_cap,
            },
            "slots": self.slots,
            "recording": s.recording and s.status is not policy.SpaceStatus.ENDED,
            "captions": s.captions,
        }

    # ------------------------------------------------------------------ captions

    def caption(
        self,
        speaker: str,
        text: str,
        *,
        final: bool,
        start: float,
        end: float,
        gap: bool = False,
    ) -> dict[str, Any] | None:
        """Publish a live caption to every stream (`spacesim.server.captions` makes them).

        A final caption (or a gap: audio the recogniser had to skip) is stored before it
        goes out, so ``GET /v1/spaces/{id}/captions`` has it after the end. Once the space
        has ended (the recogniser finishing its last utterance) it is stored, not sent.
        """
        if final:
            self.persist.add_caption(self.id, speaker, start, end, text, gap=gap, at=self._wall())
        if self.space.status is policy.SpaceStatus.ENDED:
            return None
        attrs = {
            "speaker": speaker,
            "text": text,
            "final": final,
            "start": start,
            "end": end,
            "gap": gap,
        }
        msg = event_message(
            "caption", self.id, speaker, t=self.now(), attrs=attrs, clock_ns=self._ns()
        )
        self._fan_out(msg)
        return msg
