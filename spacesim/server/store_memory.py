"""The in-memory fake of :class:`~spacesim.server.store.Store`, for unit tests.

It behaves like :class:`~spacesim.server.store_sqlite.SqliteStore` (one behavioural test suite
runs against both) and keeps nothing on disk; see :mod:`spacesim.server.store` for the shared
conventions.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import replace
from typing import Any, TypeVar

from spacesim.policy import ModerationAction, Role, SpaceStatus, WhoMaySpeak
from spacesim.server.store import (
    _BLOCK_ARGS,
    _FOLLOW_ARGS,
    AlreadyExists,
    AuditEntry,
    Block,
    CaptionRecord,
    Clock,
    NotFound,
    Participation,
    Report,
    ReportStatus,
    SpaceRecord,
    StoreError,
    User,
    _attrs_view,
    _audit_args,
    _caption_args,
    _ClosesOnExit,
    _enum,
    _id,
    _new_space,
    _now,
    _opt_id,
    _pair,
    _report_args,
    _report_id,
    _resolution_args,
    _resolve,
    _space_user,
    _stint_args,
    _text,
    _transition,
)
from spacesim.server.store_posts import MemoryPosts
from spacesim.server.store_recording import MemoryRecordings

__all__ = ["MemoryStore"]

_V = TypeVar("_V")


class MemoryStore(MemoryRecordings, MemoryPosts, _ClosesOnExit):
    """The in-memory fake: same behaviour as :class:`SqliteStore`, nothing on disk."""

    def __init__(self, *, clock: Clock = time.time) -> None:
        self._clock = clock
        self._closed = False
        self._users: dict[str, User] = {}
        self._follows: dict[tuple[str, str], None] = {}
        self._spaces: dict[str, SpaceRecord] = {}
        self._parts: list[Participation] = []  # index = id - 1
        self._open: dict[tuple[str, str], int] = {}  # (space, user) -> participation id
        self._audit: list[tuple[int, str, str | None, str, str | None, str, float]] = []
        self._reports: list[Report] = []  # index = id - 1
        self._blocks: dict[tuple[str, str], Block] = {}
        self._recordings_init()
        self._posts_init()
        self._captions_on: set[str] = set()
        self._captions: list[CaptionRecord] = []  # index = id - 1

    # ------------------------------------------------------------------ plumbing

    def close(self) -> None:
        self._closed = True

    def _live(self) -> None:
        if self._closed:
            raise StoreError("the store is closed")

    def _user(self, user: str) -> User:
        self._live()
        found = self._users.get(user)
        if found is None:
            raise NotFound(f"unknown user {user!r}")
        return found

    def _space(self, space: str) -> SpaceRecord:
        self._live()
        found = self._spaces.get(space)
        if found is None:
            raise NotFound(f"unknown space {space!r}")
        return found

    def _check_space(self, space: str) -> None:
        self._space(space)

    def _check_space_user(self, space: str, user: str) -> None:
        self._space(space)
        self._user(user)

    # ------------------------------------------------------------------ two-user relations
    # follows and blocks: a dict keyed by (first user, second user); the value is what a
    # relation stores besides the two ids (None for follows, the Block for blocks).

    def _relation_add(self, rel: dict[tuple[str, str], _V], a: str, b: str, value: _V) -> bool:
        """Add (a, b) unless there; True if new (the first value is kept)."""
        self._user(a)
        self._user(b)
        if (a, b) in rel:
            return False
        rel[a, b] = value
        return True

    def _relation_remove(self, rel: dict[tuple[str, str], _V], a: str, b: str) -> bool:
        """Remove (a, b); True if it was there."""
        self._user(a)
        self._user(b)
        if (a, b) not in rel:
            return False
        del rel[a, b]
        return True

    def _related(self, rel: Mapping[tuple[str, str], object], user: str) -> set[str]:
        """The users that ``user`` relates to (follows, blocked)."""
        self._user(_id(user, "user id"))
        return {b for a, b in rel if a == user}

    # ------------------------------------------------------------------ users and follows

    def add_user(self, user_id: str, display_name: str, at: float | None = None) -> User:
        user_id = _id(user_id, "user id")
        display_name = _text(display_name, "display name")
        created = _now(at, self._clock)
        self._live()
        return self._users.setdefault(user_id, User(user_id, display_name, created))

    def get_user(self, user_id: str) -> User:
        return self._user(_id(user_id, "user id"))

    def follow(self, follower: str, followee: str) -> bool:
        follower, followee = _pair(follower, followee, *_FOLLOW_ARGS, "follow")
        return self._relation_add(self._follows, follower, followee, None)

    def unfollow(self, follower: str, followee: str) -> bool:
        return self._relation_remove(self._follows, *_pair(follower, followee, *_FOLLOW_ARGS))

    def follows_of(self, user: str) -> set[str]:
        return self._related(self._follows, user)

    def followers_of(self, user: str) -> set[str]:
        self._user(_id(user, "user id"))
        return {a for a, b in self._follows if b == user}

    # ------------------------------------------------------------------ spaces

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
    ) -> SpaceRecord:
        record = _new_space(
            space_id,
            host,
            title,
            status,
            who_may_speak,
            scheduled_for,
            _now(at, self._clock),
            listener_cap,
        )
        self._user(record.host)
        if record.id in self._spaces:
            raise AlreadyExists(f"space {record.id!r} already exists")
        self._spaces[record.id] = record
        return record

    def get_space(self, space_id: str) -> SpaceRecord:
        return self._space(_id(space_id, "space id"))

    def set_space_status(
        self, space_id: str, status: SpaceStatus | str, at: float | None = None
    ) -> SpaceRecord:
        space_id = _id(space_id, "space id")
        new_status = _enum(SpaceStatus, status, "status")
        now = _now(at, self._clock)
        current = self._space(space_id)
        updated = _transition(current, new_status, now)
        if updated is None:
            return current
        self._spaces[space_id] = updated
        if updated.status is SpaceStatus.ENDED:
            for key in [k for k in self._open if k[0] == space_id]:
                self._close(key, now)
        return updated

    def set_who_may_speak(self, space_id: str, setting: WhoMaySpeak | str) -> SpaceRecord:
        space_id = _id(space_id, "space id")
        who = _enum(WhoMaySpeak, setting, "who_may_speak")
        updated = replace(self._space(space_id), who_may_speak=who)
        self._spaces[space_id] = updated
        return updated

    def spaces_to_recover(self) -> list[SpaceRecord]:
        self._live()
        order = {sid: i for i, sid in enumerate(self._spaces)}
        wanted = [s for s in self._spaces.values() if s.status is not SpaceStatus.ENDED]
        return sorted(wanted, key=lambda s: (s.created_at, order[s.id]))

    # ------------------------------------------------------------------ participation

    def _close(self, key: tuple[str, str], at: float) -> Participation:
        part_id = self._open.pop(key)
        closed = replace(self._parts[part_id - 1], left_at=at)
        self._parts[part_id - 1] = closed
        return closed

    def _insert(self, space: str, user: str, role: Role, at: float) -> Participation:
        part = Participation(len(self._parts) + 1, space, user, role, at, None)
        self._parts.append(part)
        self._open[space, user] = part.id
        return part

    def record_join(
        self, space_id: str, user: str, role: Role | str = Role.LISTENER, at: float | None = None
    ) -> Participation:
        space_id, user, new_role, now = _stint_args(space_id, user, role, at, self._clock)
        self._check_space_user(space_id, user)
        if (space_id, user) in self._open:
            self._close((space_id, user), now)
        return self._insert(space_id, user, new_role, now)

    def record_role(
        self, space_id: str, user: str, role: Role | str, at: float | None = None
    ) -> Participation:
        space_id, user, new_role, now = _stint_args(space_id, user, role, at, self._clock)
        self._check_space_user(space_id, user)
        part_id = self._open.get((space_id, user))
        if part_id is None:
            raise NotFound(f"{user!r} is not present in space {space_id!r}")
        if self._parts[part_id - 1].role is new_role:
            return self._parts[part_id - 1]
        self._close((space_id, user), now)
        return self._insert(space_id, user, new_role, now)

    def record_leave(
        self, space_id: str, user: str, at: float | None = None
    ) -> Participation | None:
        space_id, user = _space_user(space_id, user)
        now = _now(at, self._clock)
        self._check_space_user(space_id, user)
        if (space_id, user) not in self._open:
            return None
        return self._close((space_id, user), now)

    def present(self, space_id: str) -> dict[str, Role]:
        space_id = _id(space_id, "space id")
        self._space(space_id)
        ids = sorted(pid for (sid, _), pid in self._open.items() if sid == space_id)
        return {self._parts[i - 1].user: self._parts[i - 1].role for i in ids}

    def participations(
        self, space: str | None = None, user: str | None = None
    ) -> list[Participation]:
        space, user = _opt_id(space, "space id"), _opt_id(user, "user id")
        self._live()
        if space is not None:
            self._space(space)
        if user is not None:
            self._user(user)
        return [
            p
            for p in self._parts
            if (space is None or p.space == space) and (user is None or p.user == user)
        ]

    # ------------------------------------------------------------------ audit

    def audit(
        self,
        space_id: str,
        actor: str | None,
        action: str,
        target: str | None = None,
        attrs: Mapping[str, Any] | None = None,
        at: float | None = None,
    ) -> AuditEntry:
        space_id, actor, action, target, text, now = _audit_args(
            space_id, actor, action, target, attrs, at, self._clock
        )
        self._space(space_id)
        row = (len(self._audit) + 1, space_id, actor, action, target, text, now)
        self._audit.append(row)
        return AuditEntry(row[0], space_id, actor, action, target, _attrs_view(text), now)

    def audit_log(self, space: str | None = None) -> list[AuditEntry]:
        space = _opt_id(space, "space id")
        self._live()
        if space is not None:
            self._space(space)
        return [
            AuditEntry(r[0], r[1], r[2], r[3], r[4], _attrs_view(r[5]), r[6])
            for r in self._audit
            if space is None or r[1] == space
        ]

    # ------------------------------------------------------------------ reports

    def file_report(
        self,
        space_id: str,
        reporter: str,
        target: str | None,
        reason: str = "",
        at: float | None = None,
    ) -> int:
        space_id, reporter, target, reason, now = _report_args(
            space_id, reporter, target, reason, at, self._clock
        )
        self._check_space_user(space_id, reporter)
        if target is not None:
            self._user(target)
        report = Report(
            id=len(self._reports) + 1,
            space=space_id,
            reporter=reporter,
            target=target,
            reason=reason,
            status=ReportStatus.OPEN,
            resolution=None,
            resolved_by=None,
            filed_at=now,
            resolved_at=None,
        )
        self._reports.append(report)
        return report.id

    def get_report(self, report_id: int) -> Report:
        report_id = _report_id(report_id)
        self._live()
        if not 1 <= report_id <= len(self._reports):
            raise NotFound(f"unknown report {report_id!r}")
        return self._reports[report_id - 1]

    def resolve_report(
        self,
        report_id: int,
        resolution: ModerationAction | str,
        resolved_by: str | None = None,
        at: float | None = None,
    ) -> Report:
        report_id, action, resolved_by, now = _resolution_args(
            report_id, resolution, resolved_by, at, self._clock
        )
        resolved = _resolve(self.get_report(report_id), action, resolved_by, now)
        self._reports[report_id - 1] = resolved
        return resolved

    def reports(
        self, space: str | None = None, status: ReportStatus | str | None = None
    ) -> list[Report]:
        space = _opt_id(space, "space id")
        wanted = None if status is None else _enum(ReportStatus, status, "status")
        self._live()
        if space is not None:
            self._space(space)
        return [
            r
            for r in self._reports
            if (space is None or r.space == space) and (wanted is None or r.status is wanted)
        ]

    # ------------------------------------------------------------------ blocks

    def block(self, blocker: str, blocked: str, at: float | None = None) -> bool:
        blocker, blocked = _pair(blocker, blocked, *_BLOCK_ARGS, "block")
        block = Block(blocker, blocked, _now(at, self._clock))
        return self._relation_add(self._blocks, blocker, blocked, block)

    def unblock(self, blocker: str, blocked: str) -> bool:
        return self._relation_remove(self._blocks, *_pair(blocker, blocked, *_BLOCK_ARGS))

    def blocked_by(self, user: str) -> set[str]:
        return self._related(self._blocks, user)

    def is_blocked(self, blocker: str, blocked: str) -> bool:
        blocker, blocked = _pair(blocker, blocked, *_BLOCK_ARGS)
        self._user(blocker)
        self._user(blocked)
        return (blocker, blocked) in self._blocks

    def blocks(self, user: str) -> list[Block]:
        self._user(_id(user, "user id"))
        mine = [b for (a, _), b in self._blocks.items() if a == user]
        return sorted(mine, key=lambda b: (b.at, b.blocked))

    # ------------------------------------------------------------------ captions

    def set_captions(self, space_id: str, enabled: bool) -> None:
        space_id = self._space(_id(space_id, "space id")).id
        if enabled:
            self._captions_on.add(space_id)
        else:
            self._captions_on.discard(space_id)

    def captions_enabled(self, space_id: str) -> bool:
        return self._space(_id(space_id, "space id")).id in self._captions_on

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
    ) -> int:
        space, who, t0, t1, text = _caption_args(space_id, speaker, start, end, text)
        self._space(space)
        record = CaptionRecord(
            len(self._captions) + 1, space, who, t0, t1, text, bool(gap), _now(at, self._clock)
        )
        self._captions.append(record)
        return record.id

    def captions(self, space_id: str) -> list[CaptionRecord]:
        space = self._space(_id(space_id, "space id")).id
        found = [c for c in self._captions if c.space == space]
        return sorted(found, key=lambda c: (c.start, c.id))
