"""Persistence for the room server: SQLite by default (embedded, WAL mode), PostgreSQL for
nodes that share state without sharing a disk, plus an in-memory fake.

The store persists what :mod:`spacesim.policy` decides; it does not apply the rules of a space
again. It only keeps its own data consistent: ids must exist, a space's status only moves
forward (scheduled -> live -> ended), a report is resolved once, the audit log is append-only.

:class:`Store` is the seam (a Protocol). :class:`SqliteStore` (:mod:`.store_sqlite`) is the real
thing on one machine (nodes there share its file), :class:`PostgresStore` (:mod:`.store_postgres`)
the one several machines share, and :class:`MemoryStore` (:mod:`.store_memory`) the fake for
unit tests; all three pass one behavioural test suite. This module holds what they share
(records, errors, validation) and `open_store`, which picks one from a path or a URL.

Conventions shared by both implementations:

* **Time.** Every mutating method takes an optional ``at`` (unix seconds). When it is None the
  store reads its ``clock`` (``time.time`` unless another is given to the constructor), so tests
  control time either per call or per store.
* **Errors.** Bad input raises a :class:`StoreError` subclass: :class:`NotFound` for unknown ids,
  :class:`InvalidArgument` for malformed values, :class:`Conflict` for a change the stored state
  forbids. ``sqlite3`` errors never leak raw: they surface as :class:`StoreError`.
* **Idempotence.** Adding an existing user, following, blocking twice, unfollowing or unblocking
  what is not there, setting the current status again, leaving twice and resolving a report
  again with the same resolution all succeed without changing anything.
* **Transactions.** Each mutating method is one transaction. Reports, blocks, resolutions,
  audit entries, users, follows and space changes are on disk when the method returns
  (``synchronous=FULL``); participation rows (the hot path: every join and leave) use
  ``synchronous=NORMAL``, which in WAL mode survives a process crash but may lose the last
  few joins/leaves on power loss. PostgreSQL's counterparts are ``synchronous_commit`` on and
  off (:mod:`.store_postgres`).
* **Threads.** One connection, used from the server's asyncio thread only.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from enum import StrEnum
from pathlib import Path
from types import MappingProxyType, TracebackType
from typing import Any, Protocol, Self, TypeVar, runtime_checkable

from spacesim.policy import ModerationAction, Role, SpaceStatus, WhoMaySpeak

__all__ = [
    "SCHEMA_VERSION",
    "AlreadyExists",
    "AuditEntry",
    "Block",
    "CaptionRecord",
    "Conflict",
    "InvalidArgument",
    "NotFound",
    "Participation",
    "Report",
    "ReportStatus",
    "SpaceRecord",
    "Store",
    "StoreError",
    "User",
    "is_postgres_url",
    "open_store",
]

#: Stored in ``PRAGMA user_version``; bump it with a migration when the schema changes.
#: 2: ``spaces.listener_cap`` (a version-1 file gains the column, NULL = no cap).
SCHEMA_VERSION = 2

Clock = Callable[[], float]
_E = TypeVar("_E", bound=StrEnum)


# --------------------------------------------------------------------------- errors


class StoreError(Exception):
    """Anything the store refuses or fails to do."""


class NotFound(StoreError, LookupError):
    """An id (user, space, report, open participation) that the store does not know."""


class InvalidArgument(StoreError, ValueError):
    """A malformed value: empty id, unknown status or role, non-finite time, non-JSON attrs."""


class Conflict(StoreError):
    """A change the stored state forbids (e.g. reviving an ended space)."""


class AlreadyExists(Conflict):
    """An id that is already taken (e.g. creating a space twice)."""


# --------------------------------------------------------------------------- records


class ReportStatus(StrEnum):
    """A report is OPEN until a platform moderator resolves it."""

    OPEN = "open"
    RESOLVED = "resolved"


@dataclass(frozen=True, slots=True)
class User:
    id: str
    display_name: str
    created_at: float


@dataclass(frozen=True, slots=True)
class SpaceRecord:
    id: str
    host: str
    title: str
    status: SpaceStatus
    who_may_speak: WhoMaySpeak
    scheduled_for: float | None
    created_at: float
    started_at: float | None
    ended_at: float | None
    listener_cap: int | None = None  # None = no cap (policy.Limits.listener_cap)


@dataclass(frozen=True, slots=True)
class Participation:
    """One stint of a user in a space with one role; ``left_at`` is None while present."""

    id: int
    space: str
    user: str
    role: Role
    joined_at: float
    left_at: float | None


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """One moderation action; ``actor`` None means the platform, ``target`` None the space."""

    id: int
    space: str
    actor: str | None
    action: str
    target: str | None
    attrs: Mapping[str, Any]
    at: float


@dataclass(frozen=True, slots=True)
class Report:
    """A report about a user (``target``) or, when ``target`` is None, about the space."""

    id: int
    space: str
    reporter: str
    target: str | None
    reason: str
    status: ReportStatus
    resolution: ModerationAction | None
    resolved_by: str | None
    filed_at: float
    resolved_at: float | None


@dataclass(frozen=True, slots=True)
class Block:
    blocker: str
    blocked: str
    at: float


@dataclass(frozen=True, slots=True)
class CaptionRecord:
    """One final live caption (or a ``gap``: speech the recogniser had to skip); ``start``
    and ``end`` are audio times in seconds on the room's clock (the events' ``t``)."""

    id: int
    space: str
    speaker: str
    start: float
    end: float
    text: str
    gap: bool
    at: float


# --------------------------------------------------------------------------- the seam


@runtime_checkable
class Store(Protocol):
    """What the server needs from persistence; see the module docstring for conventions."""

    def close(self) -> None: ...

    # users and follows
    def add_user(self, user_id: str, display_name: str, at: float | None = None) -> User: ...
    def get_user(self, user_id: str) -> User: ...
    def follow(self, follower: str, followee: str) -> bool: ...
    def unfollow(self, follower: str, followee: str) -> bool: ...
    def follows_of(self, user: str) -> set[str]: ...
    def followers_of(self, user: str) -> set[str]: ...

    # spaces
    def create_space(
        self,
        space_id: str,
        host: str,
        title: str,
        *,
        status: SpaceStatus | str = SpaceStatus.SCHEDULED,
        who_may_speak: WhoMaySpeak | str = WhoMaySpeak.EVERYONE,
        scheduled_for: float | None = None,
        at: float | None = None,
        listener_cap: int | None = None,
    ) -> SpaceRecord: ...
    def get_space(self, space_id: str) -> SpaceRecord: ...
    def set_space_status(
        self, space_id: str, status: SpaceStatus | str, at: float | None = None
    ) -> SpaceRecord: ...
    def set_who_may_speak(self, space_id: str, setting: WhoMaySpeak | str) -> SpaceRecord: ...
    def spaces_to_recover(self) -> list[SpaceRecord]: ...

    # participation history
    def record_join(
        self, space_id: str, user: str, role: Role | str = Role.LISTENER, at: float | None = None
    ) -> Participation: ...
    def record_role(
        self, space_id: str, user: str, role: Role | str, at: float | None = None
    ) -> Participation: ...
    def record_leave(
        self, space_id: str, user: str, at: float | None = None
    ) -> Participation | None: ...
    def present(self, space_id: str) -> dict[str, Role]: ...
    def participations(
        self, space: str | None = None, user: str | None = None
    ) -> list[Participation]: ...

    # moderation
    def audit(
        self,
        space_id: str,
        actor: str | None,
        action: str,
        target: str | None = None,
        attrs: Mapping[str, Any] | None = None,
        at: float | None = None,
    ) -> AuditEntry: ...
    def audit_log(self, space: str | None = None) -> list[AuditEntry]: ...
    def file_report(
        self,
        space_id: str,
        reporter: str,
        target: str | None,
        reason: str = "",
        at: float | None = None,
    ) -> int: ...
    def get_report(self, report_id: int) -> Report: ...
    def resolve_report(
        self,
        report_id: int,
        resolution: ModerationAction | str,
        resolved_by: str | None = None,
        at: float | None = None,
    ) -> Report: ...
    def reports(
        self, space: str | None = None, status: ReportStatus | str | None = None
    ) -> list[Report]: ...
    def block(self, blocker: str, blocked: str, at: float | None = None) -> bool: ...
    def unblock(self, blocker: str, blocked: str) -> bool: ...
    def blocked_by(self, user: str) -> set[str]: ...
    def is_blocked(self, blocker: str, blocked: str) -> bool: ...
    def blocks(self, user: str) -> list[Block]: ...

    # captions (spacesim.server.captions)
    def set_captions(self, space_id: str, enabled: bool) -> None: ...
    def captions_enabled(self, space_id: str) -> bool: ...
    def add_caption(
        self,
        space_id: str,
        speaker: str,
        start: float,
        end: float,
        text: str,
        *,
        gap: bool = False,
        at: float | None = None,
    ) -> int: ...
    def captions(self, space_id: str) -> list[CaptionRecord]: ...


def is_postgres_url(target: str | Path) -> bool:
    """Whether a `--store` value names a PostgreSQL database rather than a SQLite file."""
    return str(target).startswith(("postgresql://", "postgres://"))


def open_store(target: str | Path, *, clock: Clock = time.time) -> Store:
    """The store `spacesim serve --store TARGET` uses: a ``postgresql://`` (or
    ``postgres://``) URL opens :class:`PostgresStore`, anything else is a SQLite file."""
    text = str(target)
    if is_postgres_url(text):
        from spacesim.server.store_postgres import PostgresStore

        return PostgresStore(text, clock=clock)
    from spacesim.server.store_sqlite import SqliteStore

    return SqliteStore(target, clock=clock)


# --------------------------------------------------------------------------- validation


def _id(value: object, what: str) -> str:
    if not isinstance(value, str) or not value:
        raise InvalidArgument(f"{what} must be a non-empty string, got {value!r}")
    return value


def _opt_id(value: object, what: str) -> str | None:
    return None if value is None else _id(value, what)


def _text(value: object, what: str) -> str:
    if not isinstance(value, str):
        raise InvalidArgument(f"{what} must be a string, got {value!r}")
    return value


def _time(value: object, what: str) -> float:
    if not isinstance(value, bool) and isinstance(value, int | float):
        try:
            number = float(value)  # OverflowError for ints beyond the float range
        except OverflowError:
            pass
        else:
            if math.isfinite(number):
                return number
    raise InvalidArgument(f"{what} must be a finite number of unix seconds, got {value!r}")


def _now(at: float | None, clock: Clock) -> float:
    return _time(clock() if at is None else at, "at")


def _enum(cls: type[_E], value: object, what: str) -> _E:
    try:
        return cls(value)  # type: ignore[arg-type]  # any object: bad ones raise ValueError
    except ValueError:
        options = ", ".join(m.value for m in cls)
        raise InvalidArgument(f"{what} must be one of {options}, got {value!r}") from None


def _report_id(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidArgument(f"report id must be an int, got {value!r}")
    return value


def _attrs_json(attrs: Mapping[str, Any] | None) -> str:
    if attrs is None:
        return "{}"
    if not isinstance(attrs, Mapping):
        raise InvalidArgument(f"attrs must be a mapping, got {type(attrs).__name__}")
    try:
        return json.dumps(dict(attrs), sort_keys=True, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise InvalidArgument(f"attrs must be JSON-serialisable: {exc}") from None


def _attrs_view(text: str) -> Mapping[str, Any]:
    return MappingProxyType(json.loads(text))


_NEXT_STATUS: Mapping[SpaceStatus, frozenset[SpaceStatus]] = {
    SpaceStatus.SCHEDULED: frozenset({SpaceStatus.LIVE, SpaceStatus.ENDED}),
    SpaceStatus.LIVE: frozenset({SpaceStatus.ENDED}),
    SpaceStatus.ENDED: frozenset(),
}


def _transition(space: SpaceRecord, status: SpaceStatus, at: float) -> SpaceRecord | None:
    """The record after ``status`` is applied; None if unchanged; Conflict if not allowed."""
    if status is space.status:
        return None
    if status not in _NEXT_STATUS[space.status]:
        raise Conflict(f"space {space.id!r} cannot go from {space.status} to {status}")
    if status is SpaceStatus.LIVE:
        return replace(space, status=status, started_at=at)
    return replace(space, status=status, ended_at=at)


def _new_space(
    space_id: object,
    host: object,
    title: object,
    status: object,
    who_may_speak: object,
    scheduled_for: object,
    now: float,
    listener_cap: object = None,
) -> SpaceRecord:
    initial = _enum(SpaceStatus, status, "status")
    if initial is SpaceStatus.ENDED:
        raise InvalidArgument("a space is created scheduled or live, never ended")
    return SpaceRecord(
        id=_id(space_id, "space id"),
        host=_id(host, "host"),
        title=_text(title, "title"),
        status=initial,
        who_may_speak=_enum(WhoMaySpeak, who_may_speak, "who_may_speak"),
        scheduled_for=None if scheduled_for is None else _time(scheduled_for, "scheduled_for"),
        created_at=now,
        started_at=now if initial is SpaceStatus.LIVE else None,
        ended_at=None,
        listener_cap=_cap(listener_cap),
    )


def _cap(value: object) -> int | None:
    """A listener cap: None (no cap) or an integer in 0..2**63-1 (SQLite's INTEGER)."""
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 2**63:
        raise InvalidArgument(f"listener_cap must be None or an integer >= 0, got {value!r}")
    return value


def _resolve(
    report: Report, action: ModerationAction, resolved_by: str | None, now: float
) -> Report:
    """The resolved report; ``report`` itself if already resolved the same way."""
    if report.status is ReportStatus.RESOLVED:
        if report.resolution is action:
            return report
        raise Conflict(f"report {report.id} was already resolved as {report.resolution}")
    return replace(
        report,
        status=ReportStatus.RESOLVED,
        resolution=action,
        resolved_by=resolved_by,
        resolved_at=now,
    )


# --------------------------------------------------------------------------- shared argument shapes


# how the two user ids of a relation are named in error messages
_FOLLOW_ARGS = ("follower", "followee")
_BLOCK_ARGS = ("blocker", "blocked user")


def _pair(a: object, b: object, what_a: str, what_b: str, self_verb: str = "") -> tuple[str, str]:
    """Two user ids of a relation (follow, block); with ``self_verb``, a user may not relate
    to themself ("a user cannot <self_verb> themself")."""
    a, b = _id(a, what_a), _id(b, what_b)
    if self_verb and a == b:
        raise InvalidArgument(f"a user cannot {self_verb} themself")
    return a, b


def _space_user(space_id: object, user: object) -> tuple[str, str]:
    """The (space id, user id) of a participation."""
    return _id(space_id, "space id"), _id(user, "user id")


def _stint_args(
    space_id: object, user: object, role: object, at: float | None, clock: Clock
) -> tuple[str, str, Role, float]:
    """``record_join`` / ``record_role``: (space id, user id, role, now)."""
    space_id, user = _space_user(space_id, user)
    return space_id, user, _enum(Role, role, "role"), _now(at, clock)


def _audit_args(
    space_id: object,
    actor: object,
    action: object,
    target: object,
    attrs: Mapping[str, Any] | None,
    at: float | None,
    clock: Clock,
) -> tuple[str, str | None, str, str | None, str, float]:
    """``audit``: (space id, actor, action, target, attrs as JSON text, now)."""
    space_id = _id(space_id, "space id")
    actor, target = _opt_id(actor, "actor"), _opt_id(target, "target")
    action = _id(action, "action")
    return space_id, actor, action, target, _attrs_json(attrs), _now(at, clock)


def _report_args(
    space_id: object,
    reporter: object,
    target: object,
    reason: object,
    at: float | None,
    clock: Clock,
) -> tuple[str, str, str | None, str, float]:
    """``file_report``: (space id, reporter, target, reason, now)."""
    space_id, reporter = _id(space_id, "space id"), _id(reporter, "reporter")
    target = _opt_id(target, "target")
    return space_id, reporter, target, _text(reason, "reason"), _now(at, clock)


def _resolution_args(
    report_id: object, resolution: object, resolved_by: object, at: float | None, clock: Clock
) -> tuple[int, ModerationAction, str | None, float]:
    """``resolve_report``: (report id, resolution, resolved by, now)."""
    report_id = _report_id(report_id)
    action = _enum(ModerationAction, resolution, "resolution")
    return report_id, action, _opt_id(resolved_by, "resolved_by"), _now(at, clock)


class _ClosesOnExit:
    """``with store: ...`` closes the store on exit; the implementations provide ``close``."""

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _caption_args(
    space_id: object, speaker: object, start: object, end: object, text: object
) -> tuple[str, str, float, float, str]:
    space, who = _space_user(space_id, speaker)
    t0, t1 = _time(start, "caption start"), _time(end, "caption end")
    if t1 < t0:
        raise InvalidArgument("a caption cannot end before it starts")
    if not isinstance(text, str) or len(text) > 10_000:
        raise InvalidArgument("caption text must be a string of at most 10,000 characters")
    return space, who, t0, t1, text
