"""The rules of a space (live audio room) as a pure state machine.

Why pure: the SimPy model and the real WebRTC room server must agree on every rule, so both
drive this one object and turn its events into their own side effects (clock, network,
records). Nothing here does I/O, reads a clock or logs, and nothing imports the rest of
``spacesim``.

Every transition returns an :class:`Outcome`. A refusal carries a human-readable ``reason``
and a machine-readable ``code`` and leaves the space exactly as it was; a success carries the
events that happened, in order. Space-level events (``space_started``, ``space_ended``,
``speak_setting_changed``, and reports/resolutions about the space itself) use the space id
as their ``participant``.
"""

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from types import MappingProxyType

__all__ = [
    "EVENT_KINDS",
    "HEARD_AT_ONCE",
    "MAX_COHOSTS",
    "MAX_PINNED_POSTS",
    "MAX_SPEAKERS",
    "REFUSAL_CODES",
    "Delivery",
    "Event",
    "Limits",
    "ModerationAction",
    "Outcome",
    "Role",
    "Space",
    "SpaceStatus",
    "WhoMaySpeak",
    "delivery",
    "may_message",
    "may_pin",
    "may_read_post",
    "may_share",
    "streams_reserved",
]


class Role(StrEnum):
    """A participant's place in the space; HOST, COHOST and SPEAKER are "on stage"."""

    HOST = "host"
    COHOST = "cohost"
    SPEAKER = "speaker"
    LISTENER = "listener"


class WhoMaySpeak(StrEnum):
    """Host setting deciding which listeners may raise a hand (invites always work)."""

    EVERYONE = "everyone"
    FOLLOWED = "followed"
    INVITED = "invited"


class SpaceStatus(StrEnum):
    """Lifecycle of a space; ENDED is terminal."""

    SCHEDULED = "scheduled"
    LIVE = "live"
    ENDED = "ended"


class ModerationAction(StrEnum):
    """Platform decision applied to a resolved report."""

    DISMISS = "dismiss"
    REMOVE = "remove"
    BLOCK = "block"
    END = "end"


MAX_COHOSTS = 2
MAX_SPEAKERS = 10  # stage seats besides host and co-hosts => 13 on stage
#: Speakers a participant hears at once: the server forwards each listener this many
#: streams (its slots, `spacesim serve --slots`); a further speaker's packets are dropped
#: until a slot frees (`spacesim.server.media`, "Slots").
HEARD_AT_ONCE = 3


def streams_reserved(audible: int, slots: int = HEARD_AT_ONCE) -> int:
    """Forwarded streams admission control reserves for one participant while `audible`
    stage members may be heard: one each up to the server's slots (a further speaker's
    packets are dropped, so they cost no forwarding), and at least one (a silent stage
    still needs the room's first talker). The server (`spacesim serve --capacity`) and the
    simulator (``server.max_streams``) both count this way."""
    return max(1, min(audible, slots))


#: The complete vocabulary of event kinds this module may emit.
EVENT_KINDS: frozenset[str] = frozenset(
    {
        "space_started",
        "space_ended",
        "participant_joined",
        "participant_left",
        "hand_raised",
        "hand_lowered",
        "speaker_granted",
        "hand_declined",
        "speaker_invited",
        "invite_declined",
        "speaker_revoked",
        "cohost_added",
        "cohost_removed",
        "muted",
        "unmuted",
        "removed",
        "blocked",
        "report_filed",
        "report_resolved",
        "speak_setting_changed",
        "recording_started",
        "recording_stopped",
        "captions_changed",
    }
)

#: Every machine-readable refusal code an :class:`Outcome` may carry.
REFUSAL_CODES: frozenset[str] = frozenset(
    {
        "not_allowed",
        "stage_full",
        "space_ended",
        "not_present",
        "blocked",
        "removed",
        "room_full",
        "not_started",
        "already_present",
        "hand_already_raised",
        "no_raised_hand",
        "not_on_stage",
        "not_a_listener",
        "cohosts_full",
        "speaking_restricted",
        "no_invite",
        "self_target",
        "bad_target",
        "already_live",
    }
)

_STAGE_ROLES = frozenset({Role.HOST, Role.COHOST, Role.SPEAKER})
_MODERATORS = frozenset({Role.HOST, Role.COHOST})
_HOST_ONLY = frozenset({Role.HOST})
_ANYONE = frozenset(Role)


@dataclass(frozen=True, slots=True)
class Limits:
    """Seat limits; the caps mirror Twitter Spaces so simulated rooms stay realistic."""

    max_cohosts: int = MAX_COHOSTS
    max_speakers: int = MAX_SPEAKERS
    listener_cap: int | None = None  # None = unlimited

    def __post_init__(self) -> None:
        if not 0 <= self.max_cohosts <= MAX_COHOSTS:
            raise ValueError(f"max_cohosts must be in 0..{MAX_COHOSTS}, got {self.max_cohosts}")
        if not 0 <= self.max_speakers <= MAX_SPEAKERS:
            raise ValueError(f"max_speakers must be in 0..{MAX_SPEAKERS}, got {self.max_speakers}")
        if self.listener_cap is not None and self.listener_cap < 0:
            raise ValueError(f"listener_cap must be None or >= 0, got {self.listener_cap}")


_NO_ATTRS: Mapping[str, str] = MappingProxyType({})


@dataclass(frozen=True, slots=True)
class Event:
    """Something that happened; callers turn these into records and side effects.

    ``role`` is the participant's role after the event (None once they are gone, and for
    space-level events). ``attrs`` is copied into a read-only mapping so an event can be
    shared between consumers without anyone mutating it.
    """

    kind: str
    participant: str
    actor: str | None = None
    role: Role | None = None
    attrs: Mapping[str, str] = field(default_factory=lambda: _NO_ATTRS)

    def __post_init__(self) -> None:
        # Most events carry no attrs: share one empty read-only mapping (joins are hot).
        if self.attrs is not _NO_ATTRS:
            object.__setattr__(self, "attrs", MappingProxyType(dict(self.attrs)))


@dataclass(frozen=True, slots=True)
class Outcome:
    """Result of a transition; truthy iff it succeeded."""

    ok: bool
    reason: str | None = None
    code: str | None = None
    events: tuple[Event, ...] = ()

    def __post_init__(self) -> None:
        if self.ok and (self.reason is not None or self.code is not None):
            raise ValueError("a successful Outcome has no reason or code")
        if not self.ok and (not self.reason or not self.code or self.events):
            raise ValueError("a refusal needs a reason and a code, and has no events")

    def __bool__(self) -> bool:
        return self.ok


def _refuse(code: str, reason: str) -> Outcome:
    return Outcome(ok=False, reason=reason, code=code)


def _ok(*events: Event) -> Outcome:
    return Outcome(ok=True, events=events)


class Delivery(StrEnum):
    """Who a space's event stream tells of an event."""

    EVERYONE = "everyone"  # every subscriber
    STAGE = "stage"  # host, co-hosts, speakers (and platform moderators)
    ACTOR = "actor"  # only whoever acted


def delivery(event: Event, noticed: bool = False) -> Delivery:
    """The rule the server applies and the simulator prices, so both fan out alike.

    A listener's coming and going matters to the people running the room, not to
    thousands of other listeners (they get a periodic audience count instead: joins
    would otherwise cost O(N) deliveries each, O(N^2) over a flash crowd); a leave the
    audience had `noticed` (someone on stage, or who raised a hand or was invited) goes
    to everyone. Reports are for the host, co-hosts and moderators, who act on them; a
    personal block tells the blocker only. Everything else changes what everyone sees
    or hears.
    """
    kind = event.kind
    if kind == "participant_left" and noticed:
        return Delivery.EVERYONE
    if kind in ("participant_joined", "participant_left", "report_filed"):
        return Delivery.STAGE
    if kind == "blocked" and event.attrs.get("scope") == "personal":
        return Delivery.ACTOR
    return Delivery.EVERYONE


_DEFAULT_LIMITS = Limits()


class Space:
    """One space and its rules.

    All state is read-only from outside; it changes only through the transition methods
    (plus the :meth:`follow`/:meth:`unfollow` setters for the host's follow list, which is
    part of the caller's user model). Refusals never change state.
    """

    def __init__(
        self,
        space_id: str,
        host: str,
        *,
        limits: Limits = _DEFAULT_LIMITS,
        who_may_speak: WhoMaySpeak = WhoMaySpeak.EVERYONE,
        host_follows: Iterable[str] = (),
        blocked: Iterable[str] = (),
        status: SpaceStatus = SpaceStatus.LIVE,
        removed: Iterable[str] = (),
        past_participants: Iterable[str] = (),
        recording: bool = False,
        captions: bool = False,
    ) -> None:
        if not space_id or not host:
            raise ValueError("space_id and host must be non-empty")
        status = SpaceStatus(status)
        if status is SpaceStatus.ENDED:
            raise ValueError("a space is created SCHEDULED or LIVE, never ENDED")
        blocked_set = set(blocked)
        if host in blocked_set:
            raise ValueError("the host cannot be blocked from their own space")
        self._space_id = space_id
        self._host = host
        self._limits = limits
        self._status: SpaceStatus = status
        self._who = WhoMaySpeak(who_may_speak)
        self._follows: set[str] = set(host_follows)
        self._blocked: set[str] = blocked_set
        # Restored after a restart: removals keep users out, and past participants can
        # still be reported.
        self._removed: set[str] = set(removed)
        self._ever: set[str] = {host, *past_participants, *self._removed}
        self._roles: dict[str, Role] = {}
        # Per-role insertion-ordered membership, so counts are O(1) with many listeners.
        self._members: dict[Role, dict[str, None]] = {r: {} for r in Role}
        self._hands: dict[str, None] = {}  # ordered set: FIFO raise order
        self._invites: dict[str, str] = {}  # invitee -> inviter
        self._muted: set[str] = set()
        self._recording = bool(recording)  # the host records the space (server: Ogg/Opus)
        self._captions = bool(captions)
        self._set_role(host, Role.HOST)

    # ------------------------------------------------------------------ read-only state

    @property
    def space_id(self) -> str:
        """Identifier of this space (also the ``participant`` of space-level events)."""
        return self._space_id

    @property
    def host(self) -> str:
        """The user who owns the space; their leaving ends it."""
        return self._host

    @property
    def limits(self) -> Limits:
        """Seat limits fixed at creation."""
        return self._limits

    @property
    def status(self) -> SpaceStatus:
        """Current lifecycle status."""
        return self._status

    @property
    def who_may_speak(self) -> WhoMaySpeak:
        """Which listeners may raise a hand."""
        return self._who

    @property
    def captions(self) -> bool:
        """Whether live captions are on (the server transcribes whoever may be heard)."""
        return self._captions

    @property
    def host_follows(self) -> frozenset[str]:
        """Snapshot of users the host follows (gates hands when FOLLOWED)."""
        return frozenset(self._follows)

    @property
    def blocked(self) -> frozenset[str]:
        """Snapshot of users barred from joining this space."""
        return frozenset(self._blocked)

    @property
    def removed(self) -> frozenset[str]:
        """Snapshot of users removed from this space; they cannot rejoin it."""
        return frozenset(self._removed)

    @property
    def ever_joined(self) -> frozenset[str]:
        """Snapshot of everyone who was ever a participant (valid report targets)."""
        return frozenset(self._ever)

    @property
    def participants(self) -> Mapping[str, Role]:
        """Live read-only view of present users and their roles."""
        return MappingProxyType(self._roles)

    @property
    def n_listeners(self) -> int:
        """Number of present LISTENERs."""
        return len(self._members[Role.LISTENER])

    @property
    def n_speakers(self) -> int:
        """Number of occupied speaker seats (SPEAKER role only; host/cohosts excluded)."""
        return len(self._members[Role.SPEAKER])

    def role_of(self, user: str) -> Role | None:
        """The user's role, or None if they are not present."""
        return self._roles.get(user)

    def cohosts(self) -> tuple[str, ...]:
        """Co-hosts in the order they became co-hosts."""
        return tuple(self._members[Role.COHOST])

    def speakers(self) -> tuple[str, ...]:
        """Speakers (SPEAKER role) in the order they got a seat."""
        return tuple(self._members[Role.SPEAKER])

    def listeners(self) -> tuple[str, ...]:
        """Listeners in the order they became listeners."""
        return tuple(self._members[Role.LISTENER])

    def stage(self) -> tuple[str, ...]:
        """Everyone on stage: host first, then co-hosts, then speakers."""
        return tuple(self._members[Role.HOST]) + self.cohosts() + self.speakers()

    def hand_queue(self) -> tuple[str, ...]:
        """Listeners with a raised hand, oldest first (FIFO)."""
        return tuple(self._hands)

    def pending_invites(self) -> Mapping[str, str]:
        """Snapshot of outstanding speaker invites: invitee -> inviter."""
        return MappingProxyType(dict(self._invites))

    def is_muted(self, user: str) -> bool:
        """True if the user is on stage and muted."""
        return user in self._muted

    @property
    def recording(self) -> bool:
        """Whether the host has the space recorded (set at creation or by an action)."""
        return self._recording

    def may_be_heard(self, user: str) -> bool:
        """Whether the media plane may forward this user's audio: live, on stage, unmuted."""
        return (
            self._status is SpaceStatus.LIVE
            and self._roles.get(user) in _STAGE_ROLES
            and user not in self._muted
        )

    # ------------------------------------------------------------------ private helpers

    def _set_role(self, user: str, role: Role | None) -> None:
        """Single place that changes roles, so hand/invite/mute invariants always hold."""
        old = self._roles.pop(user, None)
        if old is not None:
            del self._members[old][user]
        if role is not None:
            self._roles[user] = role
            self._members[role][user] = None
        if role is not Role.LISTENER:
            self._hands.pop(user, None)
            self._invites.pop(user, None)
        if role not in _STAGE_ROLES:
            self._muted.discard(user)

    def _gate(
        self, actor: str | None, roles: frozenset[Role], *, scheduled_ok: bool = False
    ) -> Outcome | None:
        """Common refusals: space status, then actor presence, then actor role."""
        if self._status is SpaceStatus.ENDED:
            return _refuse("space_ended", "the space has ended")
        if self._status is SpaceStatus.SCHEDULED and not scheduled_ok:
            return _refuse("not_started", "the space has not started yet")
        if actor is None:
            return None
        role = self._roles.get(actor)
        if role is None:
            return _refuse("not_present", f"{actor} is not in the space")
        if role not in roles:
            return _refuse("not_allowed", f"a {role} may not do this")
        return None

    def _may_raise(self, user: str) -> bool:
        if self._who is WhoMaySpeak.EVERYONE:
            return True
        return self._who is WhoMaySpeak.FOLLOWED and user in self._follows

    def _seat_free(self) -> bool:
        return self.n_speakers < self._limits.max_speakers

    def _end_now(self, actor: str | None, why: str) -> Event:
        """Terminate: nobody remains present, so nothing can be heard or changed."""
        self._status = SpaceStatus.ENDED
        for user in list(self._roles):
            self._set_role(user, None)
        return Event("space_ended", self._space_id, actor=actor, attrs={"reason": why})

    def _evict(self, target: str, actor: str | None, why: str) -> list[Event]:
        """Take a present target out and bar re-entry; removing the host ends the space."""
        was_host = self._roles.get(target) is Role.HOST
        self._set_role(target, None)
        self._removed.add(target)
        events = [Event("removed", target, actor=actor, attrs={"reason": why})]
        if was_host:
            events.append(self._end_now(actor, "host_removed"))
        return events

    @staticmethod
    def _by(actor: str, participant: str) -> str | None:
        return None if actor == participant else actor

    # ------------------------------------------------------------------ lifecycle

    def start(self, actor: str) -> Outcome:
        """Host takes a SCHEDULED space LIVE."""
        if (refusal := self._gate(actor, _HOST_ONLY, scheduled_ok=True)) is not None:
            return refusal
        if self._status is SpaceStatus.LIVE:
            return _refuse("already_live", "the space is already live")
        self._status = SpaceStatus.LIVE
        return _ok(Event("space_started", self._space_id, actor=actor))

    def end(self, actor: str) -> Outcome:
        """Host ends the space (also cancels a SCHEDULED one); ENDED is terminal."""
        if (refusal := self._gate(actor, _HOST_ONLY, scheduled_ok=True)) is not None:
            return refusal
        return _ok(self._end_now(actor, "host_ended"))

    def join(self, user: str) -> Outcome:
        """A user enters as a LISTENER."""
        if (refusal := self._gate(None, _ANYONE)) is not None:
            return refusal
        if user in self._blocked:
            return _refuse("blocked", f"{user} is blocked from this space")
        if user in self._removed:
            return _refuse("removed", f"{user} was removed from this space")
        if user in self._roles:
            return _refuse("already_present", f"{user} is already in the space")
        cap = self._limits.listener_cap
        if cap is not None and self.n_listeners >= cap:
            return _refuse("room_full", "the space has reached its listener cap")
        self._set_role(user, Role.LISTENER)
        self._ever.add(user)
        return _ok(Event("participant_joined", user, role=Role.LISTENER))

    def leave(self, user: str) -> Outcome:
        """A participant leaves; the host leaving ends the space."""
        if (refusal := self._gate(user, _ANYONE)) is not None:
            return refusal
        was_host = self._roles[user] is Role.HOST
        self._set_role(user, None)
        events = [Event("participant_left", user)]
        if was_host:
            events.append(self._end_now(user, "host_left"))
        return _ok(*events)

    # ------------------------------------------------------------------ speaking requests

    def raise_hand(self, user: str) -> Outcome:
        """A listener asks to speak, if the speak setting lets them."""
        if (refusal := self._gate(user, _ANYONE)) is not None:
            return refusal
        if self._roles[user] is not Role.LISTENER:
            return _refuse("not_a_listener", "only listeners raise hands")
        if not self._may_raise(user):
            return _refuse("speaking_restricted", f"requests are limited to {self._who}")
        if user in self._hands:
            return _refuse("hand_already_raised", "hand is already raised")
        self._hands[user] = None
        return _ok(Event("hand_raised", user, role=Role.LISTENER))

    def lower_hand(self, user: str) -> Outcome:
        """A listener withdraws their own request."""
        if (refusal := self._gate(user, _ANYONE)) is not None:
            return refusal
        if user not in self._hands:
            return _refuse("no_raised_hand", f"{user} has no raised hand")
        del self._hands[user]
        return _ok(Event("hand_lowered", user, role=Role.LISTENER))

    def approve(self, actor: str, target: str) -> Outcome:
        """A moderator grants a raised hand a speaker seat."""
        if (refusal := self._gate(actor, _MODERATORS)) is not None:
            return refusal
        if target not in self._hands:
            return _refuse("no_raised_hand", f"{target} has no raised hand")
        if not self._seat_free():
            return _refuse("stage_full", "all speaker seats are taken")
        self._set_role(target, Role.SPEAKER)
        return _ok(Event("speaker_granted", target, actor=actor, role=Role.SPEAKER))

    def decline(self, actor: str, target: str) -> Outcome:
        """A moderator turns a raised hand down."""
        if (refusal := self._gate(actor, _MODERATORS)) is not None:
            return refusal
        if target not in self._hands:
            return _refuse("no_raised_hand", f"{target} has no raised hand")
        del self._hands[target]
        return _ok(Event("hand_declined", target, actor=actor, role=Role.LISTENER))

    def invite(self, actor: str, target: str) -> Outcome:
        """A moderator invites a listener to speak; works under every speak setting.

        Re-inviting someone already invited succeeds with no events (first inviter kept).
        A full stage does not block the invite; accepting it needs a free seat.
        """
        if (refusal := self._gate(actor, _MODERATORS)) is not None:
            return refusal
        if target == actor:
            return _refuse("self_target", "cannot invite yourself")
        role = self._roles.get(target)
        if role is None:
            return _refuse("not_present", f"{target} is not in the space")
        if role is not Role.LISTENER:
            return _refuse("not_a_listener", f"{target} is already on stage")
        if target in self._invites:
            return _ok()
        self._invites[target] = actor
        return _ok(Event("speaker_invited", target, actor=actor, role=Role.LISTENER))

    def accept_invite(self, user: str) -> Outcome:
        """An invited listener takes a speaker seat (the event's actor is the inviter)."""
        if (refusal := self._gate(user, _ANYONE)) is not None:
            return refusal
        inviter = self._invites.get(user)
        if inviter is None:
            return _refuse("no_invite", f"{user} has no pending invite")
        if not self._seat_free():
            return _refuse("stage_full", "all speaker seats are taken")
        self._set_role(user, Role.SPEAKER)
        return _ok(Event("speaker_granted", user, actor=inviter, role=Role.SPEAKER))

    def decline_invite(self, user: str) -> Outcome:
        """An invited listener says no; the inviter is in ``attrs``."""
        if (refusal := self._gate(user, _ANYONE)) is not None:
            return refusal
        inviter = self._invites.pop(user, None)
        if inviter is None:
            return _refuse("no_invite", f"{user} has no pending invite")
        return _ok(Event("invite_declined", user, role=Role.LISTENER, attrs={"inviter": inviter}))

    # ------------------------------------------------------------------ stage management

    def demote(self, actor: str, target: str) -> Outcome:
        """A moderator moves a speaker back to listening, or a speaker steps down."""
        if (refusal := self._gate(actor, _ANYONE)) is not None:
            return refusal
        role = self._roles.get(target)
        if role is None:
            return _refuse("not_present", f"{target} is not in the space")
        if role not in _STAGE_ROLES:
            return _refuse("not_on_stage", f"{target} is not on stage")
        if role is not Role.SPEAKER:
            return _refuse("bad_target", f"a {role} is not demoted; use remove_cohost")
        if actor != target and self._roles[actor] not in _MODERATORS:
            return _refuse("not_allowed", "only moderators demote other speakers")
        self._set_role(target, Role.LISTENER)
        return _ok(
            Event("speaker_revoked", target, actor=self._by(actor, target), role=Role.LISTENER)
        )

    def add_cohost(self, actor: str, target: str) -> Outcome:
        """The host makes a present participant a co-host (frees their speaker seat)."""
        if (refusal := self._gate(actor, _HOST_ONLY)) is not None:
            return refusal
        if target == actor:
            return _refuse("self_target", "the host cannot co-host themself")
        role = self._roles.get(target)
        if role is None:
            return _refuse("not_present", f"{target} is not in the space")
        if role is Role.COHOST:
            return _refuse("bad_target", f"{target} is already a co-host")
        if len(self._members[Role.COHOST]) >= self._limits.max_cohosts:
            return _refuse("cohosts_full", "all co-host seats are taken")
        self._set_role(target, Role.COHOST)
        return _ok(Event("cohost_added", target, actor=actor, role=Role.COHOST))

    def remove_cohost(self, actor: str, target: str) -> Outcome:
        """The host (or the co-host themself) ends co-hosting; they keep a seat if one is free."""
        if (refusal := self._gate(actor, _ANYONE)) is not None:
            return refusal
        role = self._roles.get(target)
        if role is None:
            return _refuse("not_present", f"{target} is not in the space")
        if role is not Role.COHOST:
            return _refuse("bad_target", f"{target} is not a co-host")
        if actor != target and self._roles[actor] is not Role.HOST:
            return _refuse("not_allowed", "only the host removes other co-hosts")
        new_role = Role.SPEAKER if self._seat_free() else Role.LISTENER
        self._set_role(target, new_role)
        return _ok(Event("cohost_removed", target, actor=self._by(actor, target), role=new_role))

    def mute(self, actor: str, target: str) -> Outcome:
        """Mute someone on stage; idempotent (already muted => ok, no events).

        Anyone on stage may mute themself; the host may mute anyone on stage; a co-host may
        mute speakers but not the host or other co-hosts.
        """
        if (refusal := self._gate(actor, _ANYONE)) is not None:
            return refusal
        role = self._roles.get(target)
        if role is None:
            return _refuse("not_present", f"{target} is not in the space")
        if role not in _STAGE_ROLES:
            return _refuse("not_on_stage", f"{target} is not on stage")
        actor_role = self._roles[actor]
        if not (
            actor == target
            or actor_role is Role.HOST
            or (actor_role is Role.COHOST and role is Role.SPEAKER)
        ):
            return _refuse("not_allowed", f"a {actor_role} may not mute a {role}")
        if target in self._muted:
            return _ok()
        self._muted.add(target)
        return _ok(Event("muted", target, actor=self._by(actor, target), role=role))

    def unmute(self, actor: str, target: str) -> Outcome:
        """Unmute yourself; nobody can unmute someone else (as in Twitter Spaces)."""
        if (refusal := self._gate(actor, _ANYONE)) is not None:
            return refusal
        if actor != target:
            return _refuse("not_allowed", "only the user can unmute themself")
        role = self._roles[target]
        if role not in _STAGE_ROLES:
            return _refuse("not_on_stage", f"{target} is not on stage")
        if target not in self._muted:
            return _ok()
        self._muted.discard(target)
        return _ok(Event("unmuted", target, role=role))

    def mute_all(self, actor: str) -> Outcome:
        """A moderator mutes every co-host and speaker except the host and themself."""
        if (refusal := self._gate(actor, _MODERATORS)) is not None:
            return refusal
        events: list[Event] = []
        for user in self.cohosts() + self.speakers():
            if user != actor and user not in self._muted:
                self._muted.add(user)
                events.append(Event("muted", user, actor=actor, role=self._roles[user]))
        return _ok(*events)

    # ------------------------------------------------------------------ safety

    def remove(self, actor: str, target: str) -> Outcome:
        """A moderator removes a participant, who then cannot rejoin this space."""
        if (refusal := self._gate(actor, _MODERATORS)) is not None:
            return refusal
        if target == actor:
            return _refuse("self_target", "use leave to exit the space")
        role = self._roles.get(target)
        if role is None:
            return _refuse("not_present", f"{target} is not in the space")
        if self._roles[actor] is Role.COHOST and role in _MODERATORS:
            return _refuse("not_allowed", f"a co-host may not remove a {role}")
        return _ok(*self._evict(target, actor, "removed"))

    def block(self, actor: str, target: str) -> Outcome:
        """Block a user; ``attrs["scope"]`` says whether it affects the space.

        Scope is "space" when the actor has authority over the target (host over anyone,
        co-host over anyone but the host and co-hosts): the target is barred from joining and
        removed if present. Otherwise the block is "personal": the event only.
        """
        if (refusal := self._gate(actor, _ANYONE)) is not None:
            return refusal
        if target == actor:
            return _refuse("self_target", "cannot block yourself")
        actor_role = self._roles[actor]
        target_role = self._roles.get(target)
        space_wide = actor_role is Role.HOST or (
            actor_role is Role.COHOST and target_role not in _MODERATORS
        )
        if not space_wide:
            return _ok(
                Event("blocked", target, actor=actor, role=target_role, attrs={"scope": "personal"})
            )
        self._blocked.add(target)
        events = [Event("blocked", target, actor=actor, role=target_role, attrs={"scope": "space"})]
        if target_role is not None:
            events += self._evict(target, actor, "blocked")
        return _ok(*events)

    def host_blocked(self, target: str) -> Outcome:
        """The host's space-wide block of ``target`` made in another of the host's spaces
        (or by platform moderation there): bar them here too, removing them if present."""
        if target == self._host or target in self._blocked or self._status is SpaceStatus.ENDED:
            return _ok()
        self._blocked.add(target)
        role = self._roles.get(target)
        events = [Event("blocked", target, role=role, attrs={"scope": "space"})]
        if role is not None:
            events += self._evict(target, None, "blocked")
        return _ok(*events)

    def report(self, actor: str, target: str | None, reason: str = "") -> Outcome:
        """A participant reports a user who is or was here, or (target None) the space."""
        if (refusal := self._gate(actor, _ANYONE)) is not None:
            return refusal
        if target == actor:
            return _refuse("self_target", "cannot report yourself")
        if target is not None and target not in self._ever:
            return _refuse("bad_target", f"{target} was never in this space")
        subject = self._space_id if target is None else target
        role = None if target is None else self._roles.get(target)
        attrs = {"reason": reason, "target_type": "space" if target is None else "user"}
        return _ok(Event("report_filed", subject, actor=actor, role=role, attrs=attrs))

    def moderate(self, action: ModerationAction, target: str | None) -> Outcome:
        """Apply a platform decision on a report; the caller has checked the moderator.

        Works on SCHEDULED and LIVE spaces. REMOVE/BLOCK need a target; removing the host
        ends the space.
        """
        if (refusal := self._gate(None, _ANYONE, scheduled_ok=True)) is not None:
            return refusal
        action = ModerationAction(action)
        if target is None and action in (ModerationAction.REMOVE, ModerationAction.BLOCK):
            return _refuse("bad_target", f"{action} needs a target user")
        events: list[Event] = []
        if target is not None and action is ModerationAction.BLOCK:
            self._blocked.add(target)
            events.append(
                Event("blocked", target, role=self._roles.get(target), attrs={"scope": "space"})
            )
        if target is not None and action in (ModerationAction.REMOVE, ModerationAction.BLOCK):
            if target in self._roles:
                events += self._evict(target, None, "moderation")
            else:
                self._removed.add(target)
        if action is ModerationAction.END:
            events.append(self._end_now(None, "moderation"))
        events.append(
            Event(
                "report_resolved",
                self._space_id if target is None else target,
                role=None if target is None else self._roles.get(target),
                attrs={"action": action.value},
            )
        )
        return _ok(*events)

    # ------------------------------------------------------------------ settings

    def set_who_may_speak(self, actor: str, setting: WhoMaySpeak) -> Outcome:
        """Host changes who may request; hands no longer allowed are dropped.

        Allowed before the space starts. Setting the current value succeeds with no events.
        """
        if (refusal := self._gate(actor, _HOST_ONLY, scheduled_ok=True)) is not None:
            return refusal
        setting = WhoMaySpeak(setting)
        if setting is self._who:
            return _ok()
        self._who = setting
        events = [
            Event(
                "speak_setting_changed",
                self._space_id,
                actor=actor,
                attrs={"setting": setting.value},
            )
        ]
        for user in list(self._hands):
            if not self._may_raise(user):
                del self._hands[user]
                events.append(
                    Event(
                        "hand_lowered",
                        user,
                        actor=actor,
                        role=Role.LISTENER,
                        attrs={"reason": "speaking_restricted"},
                    )
                )
        return _ok(*events)

    def captions_on(self, actor: str) -> Outcome:
        """The host turns live captions on (allowed before the start; idempotent)."""
        return self._set_captions(actor, True)

    def captions_off(self, actor: str) -> Outcome:
        """The host turns live captions off (allowed before the start; idempotent)."""
        return self._set_captions(actor, False)

    def _set_captions(self, actor: str, on: bool) -> Outcome:
        if (refusal := self._gate(actor, _HOST_ONLY, scheduled_ok=True)) is not None:
            return refusal
        if on is self._captions:
            return _ok()
        self._captions = on
        return _ok(
            Event(
                "captions_changed",
                self._space_id,
                actor=actor,
                attrs={"captions": "on" if on else "off"},
            )
        )

    def follow(self, user: str) -> None:
        """Record that the host follows ``user`` (plain setter, no events)."""
        self._follows.add(user)

    def unfollow(self, user: str) -> None:
        """Record that the host no longer follows ``user``; raised hands are kept."""
        self._follows.discard(user)

    # ------------------------------------------------------------------ recording

    def start_recording(self, actor: str) -> Outcome:
        """The host starts recording (also before the space starts); idempotent."""
        if (refusal := self._gate(actor, _HOST_ONLY, scheduled_ok=True)) is not None:
            return refusal
        if self._recording:
            return _ok()
        self._recording = True
        return _ok(Event("recording_started", self._space_id, actor=actor))

    def stop_recording(self, actor: str) -> Outcome:
        """The host stops recording; what was recorded is kept; idempotent."""
        if (refusal := self._gate(actor, _HOST_ONLY, scheduled_ok=True)) is not None:
            return refusal
        if not self._recording:
            return _ok()
        self._recording = False
        return _ok(Event("recording_stopped", self._space_id, actor=actor))


# --------------------------------------------------------------------------- posts

#: Posts a space may have pinned at once; hosts and co-hosts pin them.
MAX_PINNED_POSTS = 3


def may_pin(role: Role | None, pinned: int, limits_pinned: int = MAX_PINNED_POSTS) -> Outcome:
    """Hosts and co-hosts pin posts to their space, up to `limits_pinned` at once."""
    if role not in _MODERATORS:
        return _refuse("not_allowed", "only the host and co-hosts pin posts")
    if pinned >= limits_pinned:
        return _refuse("pins_full", f"the space has {limits_pinned} pinned posts; unpin one")
    return _ok()


def may_share(role: Role | None) -> Outcome:
    """Anyone present in a space may share a post into it."""
    if role is None:
        return _refuse("not_present", "join the space to share a post into it")
    return _ok()


def may_message(sender_blocked: bool, recipient_blocked: bool) -> Outcome:
    """A direct message goes unless either user has blocked the other
    (`sender_blocked`: the recipient blocked the sender; `recipient_blocked`: the
    sender blocked the recipient)."""
    if sender_blocked:
        return _refuse("blocked", "this user has blocked you")
    if recipient_blocked:
        return _refuse("blocked", "you have blocked this user; unblock them to message")
    return _ok()


def may_read_post(
    viewer: str,
    kind: str,
    author: str,
    recipient: str | None,
    *,
    follows_author: bool,
    blocked_by_author: bool,
) -> bool:
    """Who reads what: a DM only its two users; a Fleet its author and their
    followers; a post anyone the author has not blocked."""
    if viewer == author:
        return True
    if kind == "dm":
        return viewer == recipient
    if blocked_by_author:
        return False
    return follows_author if kind == "fleet" else True
