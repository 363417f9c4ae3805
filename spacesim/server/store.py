"""Persistence for the room server: SQLite by default (embedded, WAL mode), plus an in-memory fake.

The store persists what :mod:`spacesim.policy` decides; it does not apply the rules of a space
again. It only keeps its own data consistent: ids must exist, a space's status only moves
forward (scheduled -> live -> ended), a report is resolved once, the audit log is append-only.

:class:`Store` is the seam (a Protocol). :class:`SqliteStore` is the real thing and
:class:`MemoryStore` the fake for unit tests; both pass one behavioural test suite.

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
  few joins/leaves on power loss.
* **Threads.** One connection, used from the server's asyncio thread only.
"""

from __future__ import annotations

import json
import math
import sqlite3
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, suppress
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
    "Conflict",
    "InvalidArgument",
    "MemoryStore",
    "NotFound",
    "Participation",
    "Report",
    "ReportStatus",
    "SpaceRecord",
    "SqliteStore",
    "Store",
    "StoreError",
    "User",
]

#: Stored in ``PRAGMA user_version``; bump it with a migration when the schema changes.
SCHEMA_VERSION = 1

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


# --------------------------------------------------------------------------- SQLite

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS users (
        id           TEXT PRIMARY KEY,
        display_name TEXT NOT NULL,
        created_at   REAL NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS follows (
        follower TEXT NOT NULL REFERENCES users(id),
        followee TEXT NOT NULL REFERENCES users(id),
        PRIMARY KEY (follower, followee),
        CHECK (follower <> followee)
    ) WITHOUT ROWID""",
    "CREATE INDEX IF NOT EXISTS follows_followee ON follows(followee)",
    """CREATE TABLE IF NOT EXISTS spaces (
        id            TEXT PRIMARY KEY,
        host          TEXT NOT NULL REFERENCES users(id),
        title         TEXT NOT NULL,
        status        TEXT NOT NULL CHECK (status IN ('scheduled', 'live', 'ended')),
        who_may_speak TEXT NOT NULL CHECK (who_may_speak IN ('everyone', 'followed', 'invited')),
        scheduled_for REAL,
        created_at    REAL NOT NULL,
        started_at    REAL,
        ended_at      REAL
    )""",
    "CREATE INDEX IF NOT EXISTS spaces_status ON spaces(status)",
    """CREATE TABLE IF NOT EXISTS participations (
        id        INTEGER PRIMARY KEY,
        space     TEXT NOT NULL REFERENCES spaces(id),
        user      TEXT NOT NULL REFERENCES users(id),
        role      TEXT NOT NULL CHECK (role IN ('host', 'cohost', 'speaker', 'listener')),
        joined_at REAL NOT NULL,
        left_at   REAL
    )""",
    """CREATE UNIQUE INDEX IF NOT EXISTS participations_open
        ON participations(space, user) WHERE left_at IS NULL""",
    "CREATE INDEX IF NOT EXISTS participations_user ON participations(user)",
    """CREATE TABLE IF NOT EXISTS audit_log (
        id     INTEGER PRIMARY KEY AUTOINCREMENT,
        space  TEXT NOT NULL REFERENCES spaces(id),
        actor  TEXT,
        action TEXT NOT NULL,
        target TEXT,
        attrs  TEXT NOT NULL,
        at     REAL NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS audit_log_space ON audit_log(space)",
    """CREATE TRIGGER IF NOT EXISTS audit_log_no_update BEFORE UPDATE ON audit_log
        BEGIN SELECT RAISE(ABORT, 'audit_log is append-only'); END""",
    """CREATE TRIGGER IF NOT EXISTS audit_log_no_delete BEFORE DELETE ON audit_log
        BEGIN SELECT RAISE(ABORT, 'audit_log is append-only'); END""",
    """CREATE TABLE IF NOT EXISTS reports (
        id          INTEGER PRIMARY KEY AUTOINCREMENT,
        space       TEXT NOT NULL REFERENCES spaces(id),
        reporter    TEXT NOT NULL REFERENCES users(id),
        target      TEXT REFERENCES users(id),
        reason      TEXT NOT NULL,
        status      TEXT NOT NULL CHECK (status IN ('open', 'resolved')),
        resolution  TEXT CHECK (resolution IN ('dismiss', 'remove', 'block', 'end')),
        resolved_by TEXT,
        filed_at    REAL NOT NULL,
        resolved_at REAL,
        CHECK ((status = 'open') = (resolution IS NULL))
    )""",
    "CREATE INDEX IF NOT EXISTS reports_space_status ON reports(space, status)",
    """CREATE TABLE IF NOT EXISTS blocks (
        blocker TEXT NOT NULL REFERENCES users(id),
        blocked TEXT NOT NULL REFERENCES users(id),
        at      REAL NOT NULL,
        PRIMARY KEY (blocker, blocked),
        CHECK (blocker <> blocked)
    ) WITHOUT ROWID""",
    "CREATE INDEX IF NOT EXISTS blocks_blocked ON blocks(blocked)",
)

_SPACE_COLS = (
    "id, host, title, status, who_may_speak, scheduled_for, created_at, started_at, ended_at"
)
_PART_COLS = "id, space, user, role, joined_at, left_at"
_REPORT_COLS = (
    "id, space, reporter, target, reason, status, resolution, resolved_by, filed_at, resolved_at"
)


def _space_row(row: tuple[Any, ...]) -> SpaceRecord:
    return SpaceRecord(
        id=row[0],
        host=row[1],
        title=row[2],
        status=SpaceStatus(row[3]),
        who_may_speak=WhoMaySpeak(row[4]),
        scheduled_for=row[5],
        created_at=row[6],
        started_at=row[7],
        ended_at=row[8],
    )


def _part_row(row: tuple[Any, ...]) -> Participation:
    return Participation(
        id=row[0], space=row[1], user=row[2], role=Role(row[3]), joined_at=row[4], left_at=row[5]
    )


def _report_row(row: tuple[Any, ...]) -> Report:
    return Report(
        id=row[0],
        space=row[1],
        reporter=row[2],
        target=row[3],
        reason=row[4],
        status=ReportStatus(row[5]),
        resolution=None if row[6] is None else ModerationAction(row[6]),
        resolved_by=row[7],
        filed_at=row[8],
        resolved_at=row[9],
    )


class SqliteStore:
    """The embedded store: one SQLite file in WAL mode, one connection.

    ``path`` may be ``":memory:"`` (no WAL then; handy for quick experiments). The schema is
    created on open; a database written by a newer schema version is refused.
    """

    def __init__(self, path: str | Path, *, clock: Clock = time.time) -> None:
        self.path = str(path)
        self._clock = clock
        self._sync: str | None = None
        try:
            # isolation_level=None: no implicit transactions; every mutation runs inside an
            # explicit BEGIN IMMEDIATE ... COMMIT (see _tx), reads run in autocommit.
            conn = sqlite3.connect(self.path, isolation_level=None)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open database {self.path!r}: {exc}") from exc
        self._conn: sqlite3.Connection | None = conn
        try:
            conn.execute("PRAGMA busy_timeout = 5000")
            row = conn.execute("PRAGMA journal_mode = WAL").fetchone()
            self.journal_mode: str = str(row[0]).lower()
            conn.execute("PRAGMA foreign_keys = ON")
            self._migrate()
        except sqlite3.Error as exc:
            self.close()
            raise StoreError(f"cannot open database {self.path!r}: {exc}") from exc
        except BaseException:
            self.close()
            raise

    # ------------------------------------------------------------------ plumbing

    def close(self) -> None:
        """Close the connection; idempotent. Later calls raise StoreError."""
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            raise StoreError("the store is closed")
        return self._conn

    def _migrate(self) -> None:
        conn = self._db()
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"database {self.path!r} has schema version {version}; "
                f"this code supports up to {SCHEMA_VERSION}"
            )
        if version == SCHEMA_VERSION:
            return
        with self._tx() as db:
            for statement in _SCHEMA:
                db.execute(statement)
            db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    def _set_synchronous(self, durable: bool) -> None:
        # Why FULL for what the API acknowledges (reports, blocks, ...): in WAL mode,
        # synchronous=NORMAL does not sync the WAL at commit, so a committed transaction
        # survives a process crash but may roll back after a power loss or OS crash;
        # FULL syncs the WAL file at every commit, making the commit durable before we
        # return. See https://www.sqlite.org/pragma.html#pragma_synchronous
        # The pragma is a per-connection setting read at commit time; it is changed only
        # outside a transaction, and only when it differs from the current value.
        want = "FULL" if durable else "NORMAL"
        if self._sync != want:
            self._db().execute(f"PRAGMA synchronous = {want}")
            self._sync = want

    @contextmanager
    def _tx(self, *, durable: bool = True) -> Iterator[sqlite3.Connection]:
        """One write transaction; sqlite3 errors become StoreError, anything raised rolls back."""
        conn = self._db()
        try:
            self._set_synchronous(durable)
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            raise StoreError(f"database error: {exc}") from exc
        try:
            yield conn
            conn.execute("COMMIT")
        except BaseException as exc:
            if conn.in_transaction:
                with suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
            if isinstance(exc, sqlite3.Error):
                raise StoreError(f"database error: {exc}") from exc
            raise

    def _read(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        try:
            return self._db().execute(sql, params).fetchall()
        except sqlite3.Error as exc:
            raise StoreError(f"database error: {exc}") from exc

    @staticmethod
    def _exists(db: sqlite3.Connection, table: str, key: str, what: str) -> None:
        if db.execute(f"SELECT 1 FROM {table} WHERE id = ?", (key,)).fetchone() is None:
            raise NotFound(f"unknown {what} {key!r}")

    def _check_user(self, user: str) -> None:
        if not self._read("SELECT 1 FROM users WHERE id = ?", (user,)):
            raise NotFound(f"unknown user {user!r}")

    def _check_space(self, space: str) -> None:
        if not self._read("SELECT 1 FROM spaces WHERE id = ?", (space,)):
            raise NotFound(f"unknown space {space!r}")

    # ------------------------------------------------------------------ users and follows

    def add_user(self, user_id: str, display_name: str, at: float | None = None) -> User:
        """Register a user; an existing id is returned unchanged (idempotent)."""
        user_id = _id(user_id, "user id")
        display_name = _text(display_name, "display name")
        created = _now(at, self._clock)
        # Fast path without a write transaction (and its fsync): the server calls this for
        # every authenticated request.
        rows = self._read("SELECT id, display_name, created_at FROM users WHERE id = ?", (user_id,))
        if rows:
            return User(*rows[0])
        with self._tx() as db:
            db.execute(
                "INSERT OR IGNORE INTO users (id, display_name, created_at) VALUES (?, ?, ?)",
                (user_id, display_name, created),
            )
            row = db.execute(
                "SELECT id, display_name, created_at FROM users WHERE id = ?", (user_id,)
            ).fetchone()
        return User(*row)

    def get_user(self, user_id: str) -> User:
        user_id = _id(user_id, "user id")
        rows = self._read("SELECT id, display_name, created_at FROM users WHERE id = ?", (user_id,))
        if not rows:
            raise NotFound(f"unknown user {user_id!r}")
        return User(*rows[0])

    def follow(self, follower: str, followee: str) -> bool:
        """``follower`` follows ``followee``; True if this is new."""
        follower, followee = _id(follower, "follower"), _id(followee, "followee")
        if follower == followee:
            raise InvalidArgument("a user cannot follow themself")
        with self._tx() as db:
            self._exists(db, "users", follower, "user")
            self._exists(db, "users", followee, "user")
            cur = db.execute(
                "INSERT OR IGNORE INTO follows (follower, followee) VALUES (?, ?)",
                (follower, followee),
            )
            return cur.rowcount == 1

    def unfollow(self, follower: str, followee: str) -> bool:
        """Stop following; True if there was something to remove."""
        follower, followee = _id(follower, "follower"), _id(followee, "followee")
        with self._tx() as db:
            self._exists(db, "users", follower, "user")
            self._exists(db, "users", followee, "user")
            cur = db.execute(
                "DELETE FROM follows WHERE follower = ? AND followee = ?", (follower, followee)
            )
            return cur.rowcount == 1

    def follows_of(self, user: str) -> set[str]:
        """Users that ``user`` follows."""
        user = _id(user, "user id")
        self._check_user(user)
        return {
            r[0] for r in self._read("SELECT followee FROM follows WHERE follower = ?", (user,))
        }

    def followers_of(self, user: str) -> set[str]:
        """Users who follow ``user``."""
        user = _id(user, "user id")
        self._check_user(user)
        return {
            r[0] for r in self._read("SELECT follower FROM follows WHERE followee = ?", (user,))
        }

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
    ) -> SpaceRecord:
        """Create a SCHEDULED or LIVE space (a LIVE one has ``started_at`` = ``at``)."""
        record = _new_space(
            space_id, host, title, status, who_may_speak, scheduled_for, _now(at, self._clock)
        )
        with self._tx() as db:
            self._exists(db, "users", record.host, "user")
            if db.execute("SELECT 1 FROM spaces WHERE id = ?", (record.id,)).fetchone():
                raise AlreadyExists(f"space {record.id!r} already exists")
            db.execute(
                f"INSERT INTO spaces ({_SPACE_COLS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    record.id,
                    record.host,
                    record.title,
                    record.status.value,
                    record.who_may_speak.value,
                    record.scheduled_for,
                    record.created_at,
                    record.started_at,
                    record.ended_at,
                ),
            )
        return record

    def get_space(self, space_id: str) -> SpaceRecord:
        space_id = _id(space_id, "space id")
        rows = self._read(f"SELECT {_SPACE_COLS} FROM spaces WHERE id = ?", (space_id,))
        if not rows:
            raise NotFound(f"unknown space {space_id!r}")
        return _space_row(rows[0])

    def set_space_status(
        self, space_id: str, status: SpaceStatus | str, at: float | None = None
    ) -> SpaceRecord:
        """Move a space forward (scheduled -> live -> ended, or scheduled -> ended).

        Setting the current status is a no-op. Ending a space closes its open participation
        rows at ``at`` (policy empties an ended space).
        """
        space_id = _id(space_id, "space id")
        new_status = _enum(SpaceStatus, status, "status")
        now = _now(at, self._clock)
        with self._tx() as db:
            row = db.execute(f"SELECT {_SPACE_COLS} FROM spaces WHERE id = ?", (space_id,))
            found = row.fetchone()
            if found is None:
                raise NotFound(f"unknown space {space_id!r}")
            current = _space_row(found)
            updated = _transition(current, new_status, now)
            if updated is None:
                return current
            db.execute(
                "UPDATE spaces SET status = ?, started_at = ?, ended_at = ? WHERE id = ?",
                (updated.status.value, updated.started_at, updated.ended_at, space_id),
            )
            if updated.status is SpaceStatus.ENDED:
                db.execute(
                    "UPDATE participations SET left_at = ? WHERE space = ? AND left_at IS NULL",
                    (now, space_id),
                )
        return updated

    def set_who_may_speak(self, space_id: str, setting: WhoMaySpeak | str) -> SpaceRecord:
        space_id = _id(space_id, "space id")
        who = _enum(WhoMaySpeak, setting, "who_may_speak")
        with self._tx() as db:
            self._exists(db, "spaces", space_id, "space")
            db.execute("UPDATE spaces SET who_may_speak = ? WHERE id = ?", (who.value, space_id))
        return self.get_space(space_id)

    def spaces_to_recover(self) -> list[SpaceRecord]:
        """Scheduled and live spaces, oldest first: what a restarted server brings back."""
        rows = self._read(
            f"SELECT {_SPACE_COLS} FROM spaces WHERE status IN ('scheduled', 'live') "
            "ORDER BY created_at, rowid"
        )
        return [_space_row(r) for r in rows]

    # ------------------------------------------------------------------ participation

    def _open_part(self, db: sqlite3.Connection, space: str, user: str) -> Participation | None:
        row = db.execute(
            f"SELECT {_PART_COLS} FROM participations "
            "WHERE space = ? AND user = ? AND left_at IS NULL",
            (space, user),
        ).fetchone()
        return None if row is None else _part_row(row)

    def _insert_part(
        self, db: sqlite3.Connection, space: str, user: str, role: Role, at: float
    ) -> Participation:
        cur = db.execute(
            "INSERT INTO participations (space, user, role, joined_at) VALUES (?, ?, ?, ?)",
            (space, user, role.value, at),
        )
        assert cur.lastrowid is not None
        return Participation(cur.lastrowid, space, user, role, at, None)

    def _close_part(self, db: sqlite3.Connection, part: Participation, at: float) -> Participation:
        db.execute("UPDATE participations SET left_at = ? WHERE id = ?", (at, part.id))
        return replace(part, left_at=at)

    def record_join(
        self, space_id: str, user: str, role: Role | str = Role.LISTENER, at: float | None = None
    ) -> Participation:
        """Open a participation row; a stale open row (crash, missed leave) is closed at ``at``."""
        space_id, user = _id(space_id, "space id"), _id(user, "user id")
        new_role = _enum(Role, role, "role")
        now = _now(at, self._clock)
        with self._tx(durable=False) as db:
            self._exists(db, "spaces", space_id, "space")
            self._exists(db, "users", user, "user")
            stale = self._open_part(db, space_id, user)
            if stale is not None:
                self._close_part(db, stale, now)
            return self._insert_part(db, space_id, user, new_role, now)

    def record_role(
        self, space_id: str, user: str, role: Role | str, at: float | None = None
    ) -> Participation:
        """A present user changes role: their stint closes and one with the new role opens."""
        space_id, user = _id(space_id, "space id"), _id(user, "user id")
        new_role = _enum(Role, role, "role")
        now = _now(at, self._clock)
        with self._tx(durable=False) as db:
            self._exists(db, "spaces", space_id, "space")
            self._exists(db, "users", user, "user")
            current = self._open_part(db, space_id, user)
            if current is None:
                raise NotFound(f"{user!r} is not present in space {space_id!r}")
            if current.role is new_role:
                return current
            self._close_part(db, current, now)
            return self._insert_part(db, space_id, user, new_role, now)

    def record_leave(
        self, space_id: str, user: str, at: float | None = None
    ) -> Participation | None:
        """Close the user's open row; None if they were not present (idempotent)."""
        space_id, user = _id(space_id, "space id"), _id(user, "user id")
        now = _now(at, self._clock)
        with self._tx(durable=False) as db:
            self._exists(db, "spaces", space_id, "space")
            self._exists(db, "users", user, "user")
            current = self._open_part(db, space_id, user)
            return None if current is None else self._close_part(db, current, now)

    def present(self, space_id: str) -> dict[str, Role]:
        """Users with an open participation row, in join order, and their role."""
        space_id = _id(space_id, "space id")
        self._check_space(space_id)
        rows = self._read(
            "SELECT user, role FROM participations WHERE space = ? AND left_at IS NULL ORDER BY id",
            (space_id,),
        )
        return {user: Role(role) for user, role in rows}

    def participations(
        self, space: str | None = None, user: str | None = None
    ) -> list[Participation]:
        """Participation history, oldest first, optionally filtered by space and/or user."""
        space, user = _opt_id(space, "space id"), _opt_id(user, "user id")
        if space is not None:
            self._check_space(space)
        if user is not None:
            self._check_user(user)
        rows = self._read(
            f"SELECT {_PART_COLS} FROM participations "
            "WHERE (?1 IS NULL OR space = ?1) AND (?2 IS NULL OR user = ?2) ORDER BY id",
            (space, user),
        )
        return [_part_row(r) for r in rows]

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
        """Append a moderation action. ``actor``/``target`` are free ids (not checked)."""
        space_id = _id(space_id, "space id")
        actor, target = _opt_id(actor, "actor"), _opt_id(target, "target")
        action = _id(action, "action")
        text = _attrs_json(attrs)
        now = _now(at, self._clock)
        with self._tx() as db:
            self._exists(db, "spaces", space_id, "space")
            cur = db.execute(
                "INSERT INTO audit_log (space, actor, action, target, attrs, at) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (space_id, actor, action, target, text, now),
            )
            assert cur.lastrowid is not None
            entry_id = cur.lastrowid
        return AuditEntry(entry_id, space_id, actor, action, target, _attrs_view(text), now)

    def audit_log(self, space: str | None = None) -> list[AuditEntry]:
        """Audit entries, oldest first, optionally of one space."""
        space = _opt_id(space, "space id")
        if space is not None:
            self._check_space(space)
        rows = self._read(
            "SELECT id, space, actor, action, target, attrs, at FROM audit_log "
            "WHERE ?1 IS NULL OR space = ?1 ORDER BY id",
            (space,),
        )
        return [AuditEntry(r[0], r[1], r[2], r[3], r[4], _attrs_view(r[5]), r[6]) for r in rows]

    # ------------------------------------------------------------------ reports

    def file_report(
        self,
        space_id: str,
        reporter: str,
        target: str | None,
        reason: str = "",
        at: float | None = None,
    ) -> int:
        """File an OPEN report; durable on return. ``target`` None reports the space."""
        space_id, reporter = _id(space_id, "space id"), _id(reporter, "reporter")
        target = _opt_id(target, "target")
        reason = _text(reason, "reason")
        now = _now(at, self._clock)
        with self._tx() as db:
            self._exists(db, "spaces", space_id, "space")
            self._exists(db, "users", reporter, "user")
            if target is not None:
                self._exists(db, "users", target, "user")
            cur = db.execute(
                "INSERT INTO reports (space, reporter, target, reason, status, filed_at) "
                "VALUES (?, ?, ?, ?, 'open', ?)",
                (space_id, reporter, target, reason, now),
            )
            assert cur.lastrowid is not None
            return cur.lastrowid

    def get_report(self, report_id: int) -> Report:
        report_id = _report_id(report_id)
        rows = self._read(f"SELECT {_REPORT_COLS} FROM reports WHERE id = ?", (report_id,))
        if not rows:
            raise NotFound(f"unknown report {report_id!r}")
        return _report_row(rows[0])

    def resolve_report(
        self,
        report_id: int,
        resolution: ModerationAction | str,
        resolved_by: str | None = None,
        at: float | None = None,
    ) -> Report:
        """Resolve an OPEN report; again with the same resolution is a no-op, else Conflict."""
        report_id = _report_id(report_id)
        action = _enum(ModerationAction, resolution, "resolution")
        resolved_by = _opt_id(resolved_by, "resolved_by")
        now = _now(at, self._clock)
        with self._tx() as db:
            found = db.execute(
                f"SELECT {_REPORT_COLS} FROM reports WHERE id = ?", (report_id,)
            ).fetchone()
            if found is None:
                raise NotFound(f"unknown report {report_id!r}")
            report = _report_row(found)
            resolved = _resolve(report, action, resolved_by, now)
            if resolved is report:
                return report
            db.execute(
                "UPDATE reports SET status = 'resolved', resolution = ?, resolved_by = ?, "
                "resolved_at = ? WHERE id = ?",
                (action.value, resolved_by, now, report_id),
            )
        return resolved

    def reports(
        self, space: str | None = None, status: ReportStatus | str | None = None
    ) -> list[Report]:
        """Reports, oldest first, optionally of one space and/or with one status."""
        space = _opt_id(space, "space id")
        wanted = None if status is None else _enum(ReportStatus, status, "status").value
        if space is not None:
            self._check_space(space)
        rows = self._read(
            f"SELECT {_REPORT_COLS} FROM reports "
            "WHERE (?1 IS NULL OR space = ?1) AND (?2 IS NULL OR status = ?2) ORDER BY id",
            (space, wanted),
        )
        return [_report_row(r) for r in rows]

    # ------------------------------------------------------------------ blocks

    def block(self, blocker: str, blocked: str, at: float | None = None) -> bool:
        """``blocker`` blocks ``blocked``; durable on return. True if new (first ``at`` kept)."""
        blocker, blocked = _id(blocker, "blocker"), _id(blocked, "blocked user")
        if blocker == blocked:
            raise InvalidArgument("a user cannot block themself")
        now = _now(at, self._clock)
        with self._tx() as db:
            self._exists(db, "users", blocker, "user")
            self._exists(db, "users", blocked, "user")
            cur = db.execute(
                "INSERT OR IGNORE INTO blocks (blocker, blocked, at) VALUES (?, ?, ?)",
                (blocker, blocked, now),
            )
            return cur.rowcount == 1

    def unblock(self, blocker: str, blocked: str) -> bool:
        """Lift a block; True if there was one."""
        blocker, blocked = _id(blocker, "blocker"), _id(blocked, "blocked user")
        with self._tx() as db:
            self._exists(db, "users", blocker, "user")
            self._exists(db, "users", blocked, "user")
            cur = db.execute(
                "DELETE FROM blocks WHERE blocker = ? AND blocked = ?", (blocker, blocked)
            )
            return cur.rowcount == 1

    def blocked_by(self, user: str) -> set[str]:
        """Users that ``user`` has blocked."""
        user = _id(user, "user id")
        self._check_user(user)
        return {r[0] for r in self._read("SELECT blocked FROM blocks WHERE blocker = ?", (user,))}

    def is_blocked(self, blocker: str, blocked: str) -> bool:
        blocker, blocked = _id(blocker, "blocker"), _id(blocked, "blocked user")
        self._check_user(blocker)
        self._check_user(blocked)
        return bool(
            self._read("SELECT 1 FROM blocks WHERE blocker = ? AND blocked = ?", (blocker, blocked))
        )

    def blocks(self, user: str) -> list[Block]:
        """The blocks ``user`` made, oldest first (with their timestamps)."""
        user = _id(user, "user id")
        self._check_user(user)
        rows = self._read(
            "SELECT blocker, blocked, at FROM blocks WHERE blocker = ? ORDER BY at, blocked",
            (user,),
        )
        return [Block(*r) for r in rows]


def _new_space(
    space_id: object,
    host: object,
    title: object,
    status: object,
    who_may_speak: object,
    scheduled_for: object,
    now: float,
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
    )


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


# --------------------------------------------------------------------------- in-memory fake


class MemoryStore:
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

    # ------------------------------------------------------------------ plumbing

    def close(self) -> None:
        self._closed = True

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

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
        follower, followee = _id(follower, "follower"), _id(followee, "followee")
        if follower == followee:
            raise InvalidArgument("a user cannot follow themself")
        self._user(follower)
        self._user(followee)
        new = (follower, followee) not in self._follows
        self._follows[follower, followee] = None
        return new

    def unfollow(self, follower: str, followee: str) -> bool:
        follower, followee = _id(follower, "follower"), _id(followee, "followee")
        self._user(follower)
        self._user(followee)
        if (follower, followee) not in self._follows:
            return False
        del self._follows[follower, followee]
        return True

    def follows_of(self, user: str) -> set[str]:
        self._user(_id(user, "user id"))
        return {b for a, b in self._follows if a == user}

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
    ) -> SpaceRecord:
        record = _new_space(
            space_id, host, title, status, who_may_speak, scheduled_for, _now(at, self._clock)
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

    def _checked(self, space_id: str, user: str) -> tuple[str, str]:
        space_id, user = _id(space_id, "space id"), _id(user, "user id")
        self._space(space_id)
        self._user(user)
        return space_id, user

    def record_join(
        self, space_id: str, user: str, role: Role | str = Role.LISTENER, at: float | None = None
    ) -> Participation:
        space_id, user = _id(space_id, "space id"), _id(user, "user id")
        new_role = _enum(Role, role, "role")
        now = _now(at, self._clock)
        self._checked(space_id, user)
        if (space_id, user) in self._open:
            self._close((space_id, user), now)
        return self._insert(space_id, user, new_role, now)

    def record_role(
        self, space_id: str, user: str, role: Role | str, at: float | None = None
    ) -> Participation:
        space_id, user = _id(space_id, "space id"), _id(user, "user id")
        new_role = _enum(Role, role, "role")
        now = _now(at, self._clock)
        self._checked(space_id, user)
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
        space_id, user = _id(space_id, "space id"), _id(user, "user id")
        now = _now(at, self._clock)
        self._checked(space_id, user)
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
        space_id = _id(space_id, "space id")
        actor, target = _opt_id(actor, "actor"), _opt_id(target, "target")
        action = _id(action, "action")
        text = _attrs_json(attrs)
        now = _now(at, self._clock)
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
        space_id, reporter = _id(space_id, "space id"), _id(reporter, "reporter")
        target = _opt_id(target, "target")
        reason = _text(reason, "reason")
        now = _now(at, self._clock)
        self._space(space_id)
        self._user(reporter)
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
        report_id = _report_id(report_id)
        action = _enum(ModerationAction, resolution, "resolution")
        resolved_by = _opt_id(resolved_by, "resolved_by")
        now = _now(at, self._clock)
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
        blocker, blocked = _id(blocker, "blocker"), _id(blocked, "blocked user")
        if blocker == blocked:
            raise InvalidArgument("a user cannot block themself")
        now = _now(at, self._clock)
        self._user(blocker)
        self._user(blocked)
        if (blocker, blocked) in self._blocks:
            return False
        self._blocks[blocker, blocked] = Block(blocker, blocked, now)
        return True

    def unblock(self, blocker: str, blocked: str) -> bool:
        blocker, blocked = _id(blocker, "blocker"), _id(blocked, "blocked user")
        self._user(blocker)
        self._user(blocked)
        return self._blocks.pop((blocker, blocked), None) is not None

    def blocked_by(self, user: str) -> set[str]:
        self._user(_id(user, "user id"))
        return {b for a, b in self._blocks if a == user}

    def is_blocked(self, blocker: str, blocked: str) -> bool:
        blocker, blocked = _id(blocker, "blocker"), _id(blocked, "blocked user")
        self._user(blocker)
        self._user(blocked)
        return (blocker, blocked) in self._blocks

    def blocks(self, user: str) -> list[Block]:
        self._user(_id(user, "user id"))
        mine = [b for (a, _), b in self._blocks.items() if a == user]
        return sorted(mine, key=lambda b: (b.at, b.blocked))
