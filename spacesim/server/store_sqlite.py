"""The embedded SQLite implementation of :class:`~spacesim.server.store.Store`.

See :mod:`spacesim.server.store` for the conventions (time, errors, idempotence, transactions)
it shares with :class:`~spacesim.server.store_memory.MemoryStore`.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import replace
from pathlib import Path
from typing import Any

from spacesim.policy import ModerationAction, Role, SpaceStatus, WhoMaySpeak
from spacesim.server.store import (
    _BLOCK_ARGS,
    _FOLLOW_ARGS,
    SCHEMA_VERSION,
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
from spacesim.server.store_posts import SqlitePosts
from spacesim.server.store_recording import SqliteRecordings

__all__ = ["SqliteStore"]


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
        ended_at      REAL,
        listener_cap  INTEGER CHECK (listener_cap IS NULL OR listener_cap >= 0)
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
    "id, host, title, status, who_may_speak, scheduled_for, created_at, started_at, ended_at, "
    "listener_cap"
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
        listener_cap=row[9],
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


# (table, first user column, second user column, further columns)
_Relation = tuple[str, str, str, tuple[str, ...]]
_FOLLOWS: _Relation = ("follows", "follower", "followee", ())
_BLOCKS: _Relation = ("blocks", "blocker", "blocked", ("at",))


class SqliteStore(SqliteRecordings, SqlitePosts, _ClosesOnExit):
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
            with self._tx() as db:  # its own step, whatever the version: store_recording
                self._migrate_recordings(db)
                self._migrate_posts(db)  # store_posts: the same kind of step
            self._ensure_captions()
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
            for statement in _SCHEMA:  # a new file gets every table; old tables stay
                db.execute(statement)
            # version 1 -> 2: spaces.listener_cap (existing spaces have no cap)
            columns = {row[1] for row in db.execute("PRAGMA table_info(spaces)")}
            if "listener_cap" not in columns:
                db.execute(
                    "ALTER TABLE spaces ADD COLUMN listener_cap INTEGER "
                    "CHECK (listener_cap IS NULL OR listener_cap >= 0)"
                )
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

    def _check(self, table: str, key: str, what: str) -> None:
        if not self._read(f"SELECT 1 FROM {table} WHERE id = ?", (key,)):
            raise NotFound(f"unknown {what} {key!r}")

    def _check_user(self, user: str) -> None:
        self._check("users", user, "user")

    def _check_space(self, space: str) -> None:
        self._check("spaces", space, "space")

    def _exists_space_user(self, db: sqlite3.Connection, space: str, user: str) -> None:
        """Inside a transaction: both the space and the user exist (else NotFound)."""
        self._exists(db, "spaces", space, "space")
        self._exists(db, "users", user, "user")

    # ------------------------------------------------------------------ two-user relations
    # follows (follower -> followee) and blocks (blocker -> blocked) share one shape: a table
    # keyed by two user ids. Table and column names below are constants, never user input.

    def _relation_add(self, rel: _Relation, a: str, b: str, *extra: object) -> bool:
        """Insert (a, b, *extra) unless (a, b) is there; True if new. Both users must exist."""
        table, col_a, col_b, extra_cols = rel
        cols = (col_a, col_b, *extra_cols)
        marks = ", ".join("?" for _ in cols)
        with self._tx() as db:
            self._exists(db, "users", a, "user")
            self._exists(db, "users", b, "user")
            cur = db.execute(
                f"INSERT OR IGNORE INTO {table} ({', '.join(cols)}) VALUES ({marks})",
                (a, b, *extra),
            )
            return cur.rowcount == 1

    def _relation_remove(self, rel: _Relation, a: str, b: str) -> bool:
        """Delete (a, b); True if it was there. Both users must exist."""
        table, col_a, col_b, _ = rel
        with self._tx() as db:
            self._exists(db, "users", a, "user")
            self._exists(db, "users", b, "user")
            cur = db.execute(f"DELETE FROM {table} WHERE {col_a} = ? AND {col_b} = ?", (a, b))
            return cur.rowcount == 1

    def _related(self, sql: str, user: str) -> set[str]:
        """The user ids that ``sql`` (one ``?``: the checked ``user``) selects."""
        user = _id(user, "user id")
        self._check_user(user)
        return {r[0] for r in self._read(sql, (user,))}

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
        return self._relation_add(_FOLLOWS, *_pair(follower, followee, *_FOLLOW_ARGS, "follow"))

    def unfollow(self, follower: str, followee: str) -> bool:
        """Stop following; True if there was something to remove."""
        return self._relation_remove(_FOLLOWS, *_pair(follower, followee, *_FOLLOW_ARGS))

    def follows_of(self, user: str) -> set[str]:
        """Users that ``user`` follows."""
        return self._related("SELECT followee FROM follows WHERE follower = ?", user)

    def followers_of(self, user: str) -> set[str]:
        """Users who follow ``user``."""
        return self._related("SELECT follower FROM follows WHERE followee = ?", user)

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
        """Create a SCHEDULED or LIVE space (a LIVE one has ``started_at`` = ``at``)."""
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
        with self._tx() as db:
            self._exists(db, "users", record.host, "user")
            if db.execute("SELECT 1 FROM spaces WHERE id = ?", (record.id,)).fetchone():
                raise AlreadyExists(f"space {record.id!r} already exists")
            db.execute(
                f"INSERT INTO spaces ({_SPACE_COLS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
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
                    record.listener_cap,
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
        """The user's open row in the space, if any; NotFound for an unknown space or user."""
        self._exists_space_user(db, space, user)
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
        space_id, user, new_role, now = _stint_args(space_id, user, role, at, self._clock)
        with self._tx(durable=False) as db:
            stale = self._open_part(db, space_id, user)
            if stale is not None:
                self._close_part(db, stale, now)
            return self._insert_part(db, space_id, user, new_role, now)

    def record_role(
        self, space_id: str, user: str, role: Role | str, at: float | None = None
    ) -> Participation:
        """A present user changes role: their stint closes and one with the new role opens."""
        space_id, user, new_role, now = _stint_args(space_id, user, role, at, self._clock)
        with self._tx(durable=False) as db:
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
        space_id, user = _space_user(space_id, user)
        now = _now(at, self._clock)
        with self._tx(durable=False) as db:
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
        space_id, actor, action, target, text, now = _audit_args(
            space_id, actor, action, target, attrs, at, self._clock
        )
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
        space_id, reporter, target, reason, now = _report_args(
            space_id, reporter, target, reason, at, self._clock
        )
        with self._tx() as db:
            self._exists_space_user(db, space_id, reporter)
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
        report_id, action, resolved_by, now = _resolution_args(
            report_id, resolution, resolved_by, at, self._clock
        )
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
        blocker, blocked = _pair(blocker, blocked, *_BLOCK_ARGS, "block")
        return self._relation_add(_BLOCKS, blocker, blocked, _now(at, self._clock))

    def unblock(self, blocker: str, blocked: str) -> bool:
        """Lift a block; True if there was one."""
        return self._relation_remove(_BLOCKS, *_pair(blocker, blocked, *_BLOCK_ARGS))

    def blocked_by(self, user: str) -> set[str]:
        """Users that ``user`` has blocked."""
        return self._related("SELECT blocked FROM blocks WHERE blocker = ?", user)

    def is_blocked(self, blocker: str, blocked: str) -> bool:
        blocker, blocked = _pair(blocker, blocked, *_BLOCK_ARGS)
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

    # ------------------------------------------------------------------ captions

    def _ensure_captions(self) -> None:
        """The caption tables, created on every open (idempotent) rather than by a schema
        version bump: they are new tables only, which older code reading the file ignores."""
        with self._tx() as db:
            for statement in _CAPTION_SCHEMA:
                db.execute(statement)

    def set_captions(self, space_id: str, enabled: bool) -> None:
        space_id = _id(space_id, "space id")
        with self._tx() as db:
            self._exists(db, "spaces", space_id, "space")
            db.execute(
                "INSERT INTO space_captions(space, enabled) VALUES (?, ?) "
                "ON CONFLICT(space) DO UPDATE SET enabled = excluded.enabled",
                (space_id, int(bool(enabled))),
            )

    def captions_enabled(self, space_id: str) -> bool:
        space_id = _id(space_id, "space id")
        self._check("spaces", space_id, "space")
        rows = self._read("SELECT enabled FROM space_captions WHERE space = ?", (space_id,))
        return bool(rows and rows[0][0])

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
        now = _now(at, self._clock)
        # not durable (synchronous=NORMAL): a caption lost to a power cut is not worth an
        # fsync per sentence; a process crash still keeps every committed one
        with self._tx(durable=False) as db:
            self._exists(db, "spaces", space, "space")
            cur = db.execute(
                "INSERT INTO captions(space, speaker, start, end_, text, gap, at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (space, who, t0, t1, text, int(bool(gap)), now),
            )
            return int(cur.lastrowid or 0)

    def captions(self, space_id: str) -> list[CaptionRecord]:
        space_id = _id(space_id, "space id")
        self._check("spaces", space_id, "space")
        rows = self._read(
            "SELECT id, space, speaker, start, end_, text, gap, at FROM captions "
            "WHERE space = ? ORDER BY start, id",
            (space_id,),
        )
        return [
            CaptionRecord(int(i), s, who, float(t0), float(t1), text, bool(g), float(a))
            for i, s, who, t0, t1, text, g, a in rows
        ]


_CAPTION_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS space_captions (
        space TEXT PRIMARY KEY REFERENCES spaces(id),
        enabled INTEGER NOT NULL CHECK (enabled IN (0, 1))
    )""",
    """CREATE TABLE IF NOT EXISTS captions (
        id INTEGER PRIMARY KEY,
        space TEXT NOT NULL REFERENCES spaces(id),
        speaker TEXT NOT NULL,
        start REAL NOT NULL,
        end_ REAL NOT NULL,
        text TEXT NOT NULL,
        gap INTEGER NOT NULL CHECK (gap IN (0, 1)),
        at REAL NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS captions_space ON captions(space, start)",
)
