"""A live room on the server: the rulebook's state plus who is listening to its events.

`Room` applies every action through `spacesim.policy` (the same rulebook the simulator
uses), persists what must survive a crash before acknowledging it, and fans the
resulting events out to WebSocket subscribers. It knows nothing of HTTP or WebRTC: the
app wires it to both.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from spacesim import policy
from spacesim.protocol import REACTIONS, ProtocolError, event_message

__all__ = ["EventSink", "RateLimiter", "Room"]

EventSink = Callable[[dict[str, Any]], None]

# Subscribers that fall this far behind are cut off rather than slowing the room down.
_QUEUE_LIMIT = 1000

_BY_ACTOR = {"raise_hand", "lower_hand", "accept_invite", "decline_invite", "mute_all"}
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
_ROLE_CHANGES = {"speaker_granted", "speaker_revoked", "cohost_added", "cohost_removed"}


@dataclass
class RateLimiter:
    """Token buckets per key: `rate` tokens per second, bursts up to `burst`."""

    rate: float
    burst: float
    clock: Callable[[], float] = time.monotonic
    _buckets: dict[str, tuple[float, float]] = field(default_factory=dict)

    def allow(self, key: str) -> bool:
        now = self.clock()
        tokens, last = self._buckets.get(key, (self.burst, now))
        tokens = min(self.burst, tokens + (now - last) * self.rate)
        if tokens < 1.0:
            self._buckets[key] = (tokens, now)
            return False
        self._buckets[key] = (tokens - 1.0, now)
        return True


class Room:
    """One space on the server."""

    def __init__(
        self,
        space: policy.Space,
        *,
        persist: Any,
        wall_clock: Callable[[], float] = time.time,
        mono_clock: Callable[[], float] = time.monotonic,
        reactions_per_s: float = 2.0,
        hands_per_min: float = 6.0,
    ) -> None:
        self.space = space
        self.persist = persist  # the store facade: see spacesim.server.app.Persist
        self._wall = wall_clock
        self._t0 = mono_clock()
        self._mono = mono_clock
        self._subscribers: dict[asyncio.Queue[dict[str, Any]], str] = {}  # queue -> user
        self._reactions = RateLimiter(reactions_per_s, reactions_per_s * 5, mono_clock)
        self._hands = RateLimiter(hands_per_min / 60, 2, mono_clock)
        self.sinks: list[EventSink] = []  # e.g. the server's own record writer

    @property
    def id(self) -> str:
        return self.space.space_id

    # ------------------------------------------------------------------ events

    def subscribe(self, user: str) -> asyncio.Queue[dict[str, Any]]:
        """A queue of this room's events for `user`; refused to users barred from it."""
        if user in self.space.blocked or user in self.space.removed:
            raise ProtocolError("forbidden", f"{user} is barred from this space")
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(maxsize=_QUEUE_LIMIT)
        self._subscribers[queue] = user
        return queue

    def unsubscribe(self, queue: asyncio.Queue[dict[str, Any]]) -> None:
        self._subscribers.pop(queue, None)

    def _cut_off(self, user: str, why: str) -> None:
        """A user barred from the space stops receiving its events at once."""
        for queue, who in list(self._subscribers.items()):
            if who == user:
                self._subscribers.pop(queue, None)
                self._say_error(queue, why, f"{user} was {why} from the space")

    @staticmethod
    def _say_error(queue: asyncio.Queue[dict[str, Any]], code: str, reason: str) -> None:
        with contextlib.suppress(asyncio.QueueFull):
            if queue.full():
                queue.get_nowait()
            queue.put_nowait({"type": "error", "error": code, "reason": reason})

    def now(self) -> float:
        """Seconds since the room was created on this server (event ``t``)."""
        return self._mono() - self._t0

    def publish(
        self, events: Iterable[policy.Event], extras: dict[int, dict[str, str]] | None = None
    ) -> list[dict[str, Any]]:
        """Send events to every subscriber; `extras` adds attrs by event index (report ids)."""
        out = []
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
            )
            out.append(msg)
            self._fan_out(msg)
        return out

    def _fan_out(self, msg: dict[str, Any]) -> None:
        for sink in self.sinks:
            sink(msg)
        for queue in list(self._subscribers):
            try:
                queue.put_nowait(msg)
            except asyncio.QueueFull:  # a stuck client: cut it off, tell it why
                self._subscribers.pop(queue, None)
                self._say_error(queue, "too_slow", "dropped: 1,000 events behind")
        if msg.get("kind") == "removed":
            self._cut_off(str(msg.get("participant")), "removed")

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
    ) -> list[dict[str, Any]]:
        """Persist an accepted outcome, then tell everyone: nothing is acknowledged unsaved."""
        fields = fields or {}
        extras = self._persist(actor, action, fields, outcome)
        return self.publish(outcome.events, extras)

    def apply(self, actor: str, action: str, fields: dict[str, str]) -> list[dict[str, Any]]:
        """Apply a validated action (see `spacesim.protocol.parse_action`); returns events.

        Raises ProtocolError for refusals, so a caller answers with the rulebook's reason.
        Reports and blocks are durable before this returns.
        """
        space = self.space
        target = fields.get("target")
        if action == "react":
            return self._react(actor, fields["emoji"])
        if action == "raise_hand" and not self._hands.allow(actor):
            raise ProtocolError("rate_limited", "too many hand raises; wait a few seconds")
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
    ) -> dict[int, dict[str, str]]:
        """Write what must survive a crash before anyone is told; returns event extras.

        A block with a space-wide effect (by the host, a co-host or platform moderation)
        is stored as the host's block: the user stays out of this host's spaces after a
        restart. A personal block is stored as the blocker's.
        """
        store = self.persist
        at = self._wall()
        extras: dict[int, dict[str, str]] = {}
        audit_attrs: dict[str, str] = dict(fields)
        for i, ev in enumerate(outcome.events):
            kind = ev.kind
            if kind == "report_filed":
                target = fields.get("target")
                reporter = actor or ev.actor or ""
                report_id = store.file_report(
                    self.id, reporter, target, fields.get("reason", ""), at
                )
                extras[i] = {"report_id": str(report_id)}
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
        if action in _AUDITED:
            target = fields.get("target")
            store.audit(self.id, actor, action, target, audit_attrs, at)
        return extras

    def _react(self, actor: str, emoji: str) -> list[dict[str, Any]]:
        if self.space.role_of(actor) is None:
            raise ProtocolError("not_present", f"{actor} is not in the space")
        if emoji not in REACTIONS:
            raise ProtocolError("bad_request", f"unknown reaction; use one of {sorted(REACTIONS)}")
        if not self._reactions.allow(actor):
            raise ProtocolError("rate_limited", "too many reactions; slow down")
        msg = event_message("reaction", self.id, actor, t=self.now(), attrs={"emoji": emoji})
        self._fan_out(msg)
        return [msg]

    # ------------------------------------------------------------------ membership

    def join(self, user: str) -> list[dict[str, Any]]:
        return self._commit(user, "join", self._check(self.space.join(user)))

    def leave(self, user: str) -> list[dict[str, Any]]:
        if self.space.role_of(user) is None:
            return []
        return self._commit(user, "leave", self._check(self.space.leave(user)))

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
        """The room's state as clients see it on join and on GET."""
        s = self.space
        return {
            "id": s.space_id,
            "host": s.host,
            "status": s.status.value,
            "who_may_speak": s.who_may_speak.value,
            "participants": {u: r.value for u, r in s.participants.items()},
            "muted": sorted(u for u in s.stage() if s.is_muted(u)),
            "hands": list(s.hand_queue()),
            "invites": dict(s.pending_invites()),
            "limits": {
                "max_cohosts": s.limits.max_cohosts,
                "max_speakers": s.limits.max_speakers,
                "listener_cap": s.limits.listener_cap,
            },
        }
