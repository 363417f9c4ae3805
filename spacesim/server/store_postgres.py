"""The PostgreSQL implementation of :class:`~spacesim.server.store.Store`, for nodes that
do not share a disk (``spacesim serve --store postgresql://...``).

It behaves like :class:`~spacesim.server.store_sqlite.SqliteStore` (one behavioural suite
runs against memory, SQLite and PostgreSQL) and keeps its conventions
(:mod:`spacesim.server.store`), with these PostgreSQL counterparts:

* **One writer at a time.** Every write transaction first takes one transaction-level
  advisory lock, so writes from all the nodes sharing a database are serialised as
  SQLite's ``BEGIN IMMEDIATE`` serialises them: a check and the write it guards (a space id
  is free, a user is not present yet) see the same state, whichever node runs them.
* **Durability.** A write returns after its COMMIT, which with PostgreSQL's defaults
  (``fsync=on``, ``synchronous_commit=on``) has flushed the WAL to disk: what the API
  acknowledges survives a crash of the node or of the database machine. Participation
  rows and captions (the hot path) commit with ``synchronous_commit=off``, as SQLite's
  ``synchronous=NORMAL``: the node may crash, but a crash of the database machine may lose
  the last fraction of a second of them (https://www.postgresql.org/docs/15/wal-async-commit.html).
* **Schema.** Created on first connect (idempotent, under the same lock, so several nodes
  may start at once); its version is kept in ``spacesim_meta`` and a newer one is refused.
  Times are ``DOUBLE PRECISION`` (SQLite's REAL), ids ``BIGINT`` identities, and text
  orders by byte (``COLLATE "C"``), as SQLite and Python order it.
* **Text.** PostgreSQL text cannot hold NUL characters: a value with one is an
  :class:`InvalidArgument` here (SQLite stores it).
* **Connection.** One connection (autocommit; writes run BEGIN ... COMMIT), used from the
  server's asyncio thread like SQLite's: each statement is a round trip the node's event
  loop waits for, so every wait is bounded (``timeout``: connecting, an unanswered packet,
  the write lock; six times that for a statement) and a call that runs out fails with
  StoreError. A broken connection is reopened on the next call.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import replace
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

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
    InvalidArgument,
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
from spacesim.server.store_posts import PG_POSTS_SCHEMA, PostgresPosts
from spacesim.server.store_recording import PG_RECORDING_SCHEMA, PostgresRecordings
from spacesim.server.store_sqlite import _part_row, _report_row, _space_row

__all__ = ["PostgresStore"]

#: pg_advisory_xact_lock key every write takes (any constant; "spacesim" in ASCII, truncated)
WRITE_LOCK = 0x7370616365

# "user" is a reserved word in PostgreSQL: quoted wherever it names a column.
_SCHEMA = """
CREATE TABLE IF NOT EXISTS spacesim_meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS users (
    id           TEXT PRIMARY KEY,
    display_name TEXT NOT NULL,
    created_at   DOUBLE PRECISION NOT NULL
);
CREATE TABLE IF NOT EXISTS follows (
    follower TEXT NOT NULL REFERENCES users(id),
    followee TEXT NOT NULL REFERENCES users(id),
    PRIMARY KEY (follower, followee),
    CHECK (follower <> followee)
);
CREATE INDEX IF NOT EXISTS follows_followee ON follows(followee);
CREATE TABLE IF NOT EXISTS spaces (
    seq           BIGINT GENERATED ALWAYS AS IDENTITY UNIQUE,
    id            TEXT PRIMARY KEY,
    host          TEXT NOT NULL REFERENCES users(id),
    title         TEXT NOT NULL,
    status        TEXT NOT NULL CHECK (status IN ('scheduled', 'live', 'ended')),
    who_may_speak TEXT NOT NULL CHECK (who_may_speak IN ('everyone', 'followed', 'invited')),
    scheduled_for DOUBLE PRECISION,
    created_at    DOUBLE PRECISION NOT NULL,
    started_at    DOUBLE PRECISION,
    ended_at      DOUBLE PRECISION,
    listener_cap  BIGINT CHECK (listener_cap IS NULL OR listener_cap >= 0)
);
CREATE INDEX IF NOT EXISTS spaces_status ON spaces(status);
CREATE TABLE IF NOT EXISTS participations (
    id        BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    space     TEXT NOT NULL REFERENCES spaces(id),
    "user"    TEXT NOT NULL REFERENCES users(id),
    role      TEXT NOT NULL CHECK (role IN ('host', 'cohost', 'speaker', 'listener')),
    joined_at DOUBLE PRECISION NOT NULL,
    left_at   DOUBLE PRECISION
);
CREATE UNIQUE INDEX IF NOT EXISTS participations_open
    ON participations(space, "user") WHERE left_at IS NULL;
CREATE INDEX IF NOT EXISTS participations_user ON participations("user");
CREATE TABLE IF NOT EXISTS audit_log (
    id     BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    space  TEXT NOT NULL REFERENCES spaces(id),
    actor  TEXT,
    action TEXT NOT NULL,
    target TEXT,
    attrs  TEXT NOT NULL,
    at     DOUBLE PRECISION NOT NULL
);
CREATE INDEX IF NOT EXISTS audit_log_space ON audit_log(space);
CREATE OR REPLACE FUNCTION spacesim_append_only() RETURNS trigger LANGUAGE plpgsql AS
    $$ BEGIN RAISE EXCEPTION 'audit_log is append-only'; END $$;
CREATE OR REPLACE TRIGGER audit_log_append_only BEFORE UPDATE OR DELETE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION spacesim_append_only();
CREATE OR REPLACE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION spacesim_append_only();
CREATE TABLE IF NOT EXISTS reports (
    id          BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    space       TEXT NOT NULL REFERENCES spaces(id),
    reporter    TEXT NOT NULL REFERENCES users(id),
    target      TEXT REFERENCES users(id),
    reason      TEXT NOT NULL,
    status      TEXT NOT NULL CHECK (status IN ('open', 'resolved')),
    resolution  TEXT CHECK (resolution IN ('dismiss', 'remove', 'block', 'end')),
    resolved_by TEXT,
    filed_at    DOUBLE PRECISION NOT NULL,
    resolved_at DOUBLE PRECISION,
    CHECK ((status = 'open') = (resolution IS NULL))
);
CREATE INDEX IF NOT EXISTS reports_space_status ON reports(space, status);
CREATE TABLE IF NOT EXISTS blocks (
    blocker TEXT NOT NULL REFERENCES users(id),
    blocked TEXT NOT NULL REFERENCES users(id),
    at      DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (blocker, blocked),
    CHECK (blocker <> blocked)
);
CREATE INDEX IF NOT EXISTS blocks_blocked ON blocks(blocked);
CREATE TABLE IF NOT EXISTS space_captions (
    space   TEXT PRIMARY KEY REFERENCES spaces(id),
    enabled BOOLEAN NOT NULL
);
CREATE TABLE IF NOT EXISTS captions (
    id      BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    space   TEXT NOT NULL REFERENCES spaces(id),
    speaker TEXT NOT NULL,
    start   DOUBLE PRECISION NOT NULL,
    end_    DOUBLE PRECISION NOT NULL,
    text    TEXT NOT NULL,
    gap     BOOLEAN NOT NULL,
    at      DOUBLE PRECISION NOT NULL
);
CREATE INDEX IF NOT EXISTS captions_space ON captions(space, start);
"""

_SPACE_COLS = (
    "id, host, title, status, who_may_speak, scheduled_for, created_at, started_at, ended_at, "
    "listener_cap"
)
_PART_COLS = 'id, space, "user", role, joined_at, left_at'
_REPORT_COLS = (
    "id, space, reporter, target, reason, status, resolution, resolved_by, filed_at, resolved_at"
)

# (table, first user column, second user column, further columns), as in store_sqlite
_Relation = tuple[str, str, str, tuple[str, ...]]
_FOLLOWS: _Relation = ("follows", "follower", "followee", ())
_BLOCKS: _Relation = ("blocks", "blocker", "blocked", ("at",))

_Conn = psycopg.Connection[tuple[Any, ...]]


def _error(exc: psycopg.Error | UnicodeError) -> StoreError:
    """The StoreError for a driver error: a value PostgreSQL cannot hold is the caller's."""
    if isinstance(exc, psycopg.DataError | UnicodeError):
        return InvalidArgument(f"a value PostgreSQL cannot store: {exc}")
    return StoreError(f"database error: {exc}")


class PostgresStore(PostgresRecordings, PostgresPosts, _ClosesOnExit):
    """The shared store: one PostgreSQL database, one connection per node."""

    def __init__(self, url: str, *, clock: Clock = time.time, timeout: float = 10.0) -> None:
        self.url = url
        self._clock = clock
        self._timeout = timeout
        self._conn: _Conn | None = None
        self._closed = False
        try:
            self._connect()
            self._migrate()
        except BaseException:
            self.close()
            raise

    # ------------------------------------------------------------------ plumbing

    def _connect(self) -> _Conn:
        """Connect with bounded waits: the node's event loop waits for each call, so a
        database that stops answering fails calls after `timeout` s instead of stalling the
        node until TCP gives up (minutes). The URL's own settings win."""
        ms = max(1, round(self._timeout * 1000))
        try:
            params = conninfo_to_dict(self.url)
            params.setdefault("connect_timeout", max(1, round(self._timeout)))
            params.setdefault("tcp_user_timeout", ms)  # sent data unacknowledged (Linux)
            conn = psycopg.connect(make_conninfo("", **params), autocommit=True)
        except psycopg.Error as exc:
            raise StoreError(f"cannot connect to the database: {exc}") from exc
        try:  # a write lock held by a stalled node, a statement stuck behind another
            conn.execute(f"SET lock_timeout = {ms}; SET statement_timeout = {6 * ms}".encode())
        except psycopg.Error as exc:
            conn.close()
            raise StoreError(f"cannot connect to the database: {exc}") from exc
        self._conn = conn
        return conn

    def close(self) -> None:
        """Close the connection; idempotent. Later calls raise StoreError."""
        self._closed = True
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    def _db(self) -> _Conn:
        if self._closed:
            raise StoreError("the store is closed")
        conn = self._conn
        if conn is None or conn.closed or conn.broken:  # the server restarted, a network cut
            return self._connect()
        return conn

    def _migrate(self) -> None:
        with self._tx() as db:
            db.execute("SET LOCAL client_min_messages = warning")  # no "already exists" notes
            row = db.execute("SELECT to_regclass('spacesim_meta') IS NOT NULL").fetchone()
            if row is not None and row[0]:
                found = db.execute(
                    "SELECT value FROM spacesim_meta WHERE key = 'schema_version'"
                ).fetchone()
                version = int(found[0]) if found else SCHEMA_VERSION
                if version > SCHEMA_VERSION:
                    raise StoreError(
                        f"database has schema version {version}; "
                        f"this code supports up to {SCHEMA_VERSION}"
                    )
            # one round trip: statements without parameters go as one simple query
            db.execute((_SCHEMA + PG_RECORDING_SCHEMA + PG_POSTS_SCHEMA).encode())
            db.execute(
                "INSERT INTO spacesim_meta (key, value) VALUES ('schema_version', %s) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (str(SCHEMA_VERSION),),
            )

    @contextmanager
    def _tx(self, *, durable: bool = True) -> Iterator[_Conn]:
        """One write transaction under the write lock; driver errors become StoreError and
        anything raised rolls back."""
        conn = self._db()
        begin = "BEGIN" if durable else "BEGIN; SET LOCAL synchronous_commit = off"
        try:
            # no parameters: one simple-protocol round trip for all three statements
            conn.execute(f"{begin}; SELECT pg_advisory_xact_lock({WRITE_LOCK})".encode())
        except psycopg.Error as exc:
            self._rollback(conn)
            raise _error(exc) from exc
        try:
            yield conn
            conn.execute("COMMIT")
        except BaseException as exc:
            self._rollback(conn)
            if isinstance(exc, psycopg.Error | UnicodeError):
                raise _error(exc) from exc
            raise

    @staticmethod
    def _rollback(conn: _Conn) -> None:
        if not conn.closed and conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
            with suppress(psycopg.Error):
                conn.execute("ROLLBACK")

    def _read(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        try:
            return self._db().execute(sql.encode(), params).fetchall()
        except (psycopg.Error, UnicodeError) as exc:
            raise _error(exc) from exc

    # Existence checks: each is a round trip to the database (a node's event loop waits for
    # it), so the checks a call needs are made in one query.

    @staticmethod
    def _exists(db: _Conn, *checks: tuple[str, str, str]) -> None:
        """NotFound for the first (table, id, what) whose id its table lacks; one query."""
        found = _exists_row(db, checks)
        for ok, (_, key, what) in zip(found, checks, strict=True):
            if not ok:
                raise NotFound(f"unknown {what} {key!r}")

    def _check(self, *checks: tuple[str, str, str]) -> None:
        """`_exists` outside a transaction."""
        try:
            self._exists(self._db(), *checks)
        except (psycopg.Error, UnicodeError) as exc:
            raise _error(exc) from exc

    def _check_user(self, user: str) -> None:
        self._check(("users", user, "user"))

    def _check_space(self, space: str) -> None:
        self._check(("spaces", space, "space"))

    # ------------------------------------------------------------------ two-user relations

    def _relation_add(self, rel: _Relation, a: str, b: str, *extra: object) -> bool:
        table, col_a, col_b, extra_cols = rel
        cols = (col_a, col_b, *extra_cols)
        marks = ", ".join("%s" for _ in cols)
        with self._tx() as db:
            self._exists(db, ("users", a, "user"), ("users", b, "user"))
            cur = db.execute(
                f"INSERT INTO {table} ({', '.join(cols)}) VALUES ({marks}) "
                "ON CONFLICT DO NOTHING".encode(),
                (a, b, *extra),
            )
            return cur.rowcount == 1

    def _relation_remove(self, rel: _Relation, a: str, b: str) -> bool:
        table, col_a, col_b, _ = rel
        with self._tx() as db:
            self._exists(db, ("users", a, "user"), ("users", b, "user"))
            cur = db.execute(
                f"DELETE FROM {table} WHERE {col_a} = %s AND {col_b} = %s".encode(), (a, b)
            )
            return cur.rowcount == 1

    def _related(self, sql: str, user: str) -> set[str]:
        user = _id(user, "user id")
        self._check_user(user)
        return {r[0] for r in self._read(sql, (user,))}

    # ------------------------------------------------------------------ users and follows

    def add_user(self, user_id: str, display_name: str, at: float | None = None) -> User:
        """Register a user; an existing id is returned unchanged (idempotent)."""
        user_id = _id(user_id, "user id")
        display_name = _text(display_name, "display name")
        created = _now(at, self._clock)
        rows = self._read(
            "SELECT id, display_name, created_at FROM users WHERE id = %s", (user_id,)
        )
        if rows:
            return User(*rows[0])
        with self._tx() as db:
            db.execute(
                "INSERT INTO users (id, display_name, created_at) VALUES (%s, %s, %s) "
                "ON CONFLICT DO NOTHING",
                (user_id, display_name, created),
            )
            row = db.execute(
                "SELECT id, display_name, created_at FROM users WHERE id = %s", (user_id,)
            ).fetchone()
        assert row is not None
        return User(*row)

    def get_user(self, user_id: str) -> User:
        user_id = _id(user_id, "user id")
        rows = self._read(
            "SELECT id, display_name, created_at FROM users WHERE id = %s", (user_id,)
        )
        if not rows:
            raise NotFound(f"unknown user {user_id!r}")
        return User(*rows[0])

    def follow(self, follower: str, followee: str) -> bool:
        return self._relation_add(_FOLLOWS, *_pair(follower, followee, *_FOLLOW_ARGS, "follow"))

    def unfollow(self, follower: str, followee: str) -> bool:
        return self._relation_remove(_FOLLOWS, *_pair(follower, followee, *_FOLLOW_ARGS))

    def follows_of(self, user: str) -> set[str]:
        return self._related("SELECT followee FROM follows WHERE follower = %s", user)

    def followers_of(self, user: str) -> set[str]:
        return self._related("SELECT follower FROM follows WHERE followee = %s", user)

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
            self._exists(db, ("users", record.host, "user"))
            if db.execute("SELECT 1 FROM spaces WHERE id = %s", (record.id,)).fetchone():
                raise AlreadyExists(f"space {record.id!r} already exists")
            db.execute(
                f"INSERT INTO spaces ({_SPACE_COLS}) "
                "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)".encode(),
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
        rows = self._read(f"SELECT {_SPACE_COLS} FROM spaces WHERE id = %s", (space_id,))
        if not rows:
            raise NotFound(f"unknown space {space_id!r}")
        return _space_row(rows[0])

    def set_space_status(
        self, space_id: str, status: SpaceStatus | str, at: float | None = None
    ) -> SpaceRecord:
        """Move a space forward; ending it closes its open participation rows at ``at``."""
        space_id = _id(space_id, "space id")
        new_status = _enum(SpaceStatus, status, "status")
        now = _now(at, self._clock)
        with self._tx() as db:
            found = db.execute(
                f"SELECT {_SPACE_COLS} FROM spaces WHERE id = %s".encode(), (space_id,)
            ).fetchone()
            if found is None:
                raise NotFound(f"unknown space {space_id!r}")
            current = _space_row(found)
            updated = _transition(current, new_status, now)
            if updated is None:
                return current
            db.execute(
                "UPDATE spaces SET status = %s, started_at = %s, ended_at = %s WHERE id = %s",
                (updated.status.value, updated.started_at, updated.ended_at, space_id),
            )
            if updated.status is SpaceStatus.ENDED:
                db.execute(
                    "UPDATE participations SET left_at = %s WHERE space = %s AND left_at IS NULL",
                    (now, space_id),
                )
        return updated

    def set_who_may_speak(self, space_id: str, setting: WhoMaySpeak | str) -> SpaceRecord:
        space_id = _id(space_id, "space id")
        who = _enum(WhoMaySpeak, setting, "who_may_speak")
        with self._tx() as db:
            self._exists(db, ("spaces", space_id, "space"))
            db.execute("UPDATE spaces SET who_may_speak = %s WHERE id = %s", (who.value, space_id))
        return self.get_space(space_id)

    def spaces_to_recover(self) -> list[SpaceRecord]:
        """Scheduled and live spaces, oldest first (ties in creation order)."""
        rows = self._read(
            f"SELECT {_SPACE_COLS} FROM spaces WHERE status IN ('scheduled', 'live') "
            "ORDER BY created_at, seq"
        )
        return [_space_row(r) for r in rows]

    # ------------------------------------------------------------------ participation

    def _open_part(self, db: _Conn, space: str, user: str) -> Participation | None:
        """The user's open row in the space, if any; NotFound for an unknown space or user.
        One query: the two checks and the row (at most one: participations_open)."""
        row = db.execute(
            "SELECT EXISTS (SELECT 1 FROM spaces WHERE id = %(s)s),"
            " EXISTS (SELECT 1 FROM users WHERE id = %(u)s), p.id, p.role, p.joined_at"
            " FROM (VALUES (1)) AS one LEFT JOIN participations AS p"
            ' ON p.space = %(s)s AND p."user" = %(u)s AND p.left_at IS NULL',
            {"s": space, "u": user},
        ).fetchone()
        assert row is not None
        if not row[0]:
            raise NotFound(f"unknown space {space!r}")
        if not row[1]:
            raise NotFound(f"unknown user {user!r}")
        if row[2] is None:
            return None
        return Participation(row[2], space, user, Role(row[3]), row[4], None)

    def _insert_part(
        self, db: _Conn, space: str, user: str, role: Role, at: float
    ) -> Participation:
        row = db.execute(
            'INSERT INTO participations (space, "user", role, joined_at) '
            "VALUES (%s, %s, %s, %s) RETURNING id",
            (space, user, role.value, at),
        ).fetchone()
        assert row is not None
        return Participation(row[0], space, user, role, at, None)

    def _close_part(self, db: _Conn, part: Participation, at: float) -> Participation:
        db.execute("UPDATE participations SET left_at = %s WHERE id = %s", (at, part.id))
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
        space_id, user = _space_user(space_id, user)
        now = _now(at, self._clock)
        with self._tx(durable=False) as db:
            current = self._open_part(db, space_id, user)
            return None if current is None else self._close_part(db, current, now)

    def present(self, space_id: str) -> dict[str, Role]:
        space_id = _id(space_id, "space id")
        self._check_space(space_id)
        rows = self._read(
            'SELECT "user", role FROM participations WHERE space = %s AND left_at IS NULL '
            "ORDER BY id",
            (space_id,),
        )
        return {user: Role(role) for user, role in rows}

    def participations(
        self, space: str | None = None, user: str | None = None
    ) -> list[Participation]:
        space, user = _opt_id(space, "space id"), _opt_id(user, "user id")
        where, params = _filters(("space", space), ('"user"', user))
        if space is not None:
            self._check_space(space)
        if user is not None:
            self._check_user(user)
        rows = self._read(f"SELECT {_PART_COLS} FROM participations{where} ORDER BY id", params)
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
        space_id, actor, action, target, text, now = _audit_args(
            space_id, actor, action, target, attrs, at, self._clock
        )
        with self._tx() as db:
            self._exists(db, ("spaces", space_id, "space"))
            row = db.execute(
                "INSERT INTO audit_log (space, actor, action, target, attrs, at) "
                "VALUES (%s, %s, %s, %s, %s, %s) RETURNING id",
                (space_id, actor, action, target, text, now),
            ).fetchone()
        assert row is not None
        return AuditEntry(row[0], space_id, actor, action, target, _attrs_view(text), now)

    def audit_log(self, space: str | None = None) -> list[AuditEntry]:
        space = _opt_id(space, "space id")
        if space is not None:
            self._check_space(space)
        where, params = _filters(("space", space))
        rows = self._read(
            f"SELECT id, space, actor, action, target, attrs, at FROM audit_log{where} ORDER BY id",
            params,
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
            checks = [("spaces", space_id, "space"), ("users", reporter, "user")]
            self._exists(db, *checks, *([("users", target, "user")] if target else []))
            row = db.execute(
                "INSERT INTO reports (space, reporter, target, reason, status, filed_at) "
                "VALUES (%s, %s, %s, %s, 'open', %s) RETURNING id",
                (space_id, reporter, target, reason, now),
            ).fetchone()
        assert row is not None
        return int(row[0])

    def get_report(self, report_id: int) -> Report:
        report_id = _report_id(report_id)
        rows = self._read(f"SELECT {_REPORT_COLS} FROM reports WHERE id = %s", (report_id,))
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
        report_id, action, resolved_by, now = _resolution_args(
            report_id, resolution, resolved_by, at, self._clock
        )
        with self._tx() as db:
            found = db.execute(
                f"SELECT {_REPORT_COLS} FROM reports WHERE id = %s".encode(), (report_id,)
            ).fetchone()
            if found is None:
                raise NotFound(f"unknown report {report_id!r}")
            report = _report_row(found)
            resolved = _resolve(report, action, resolved_by, now)
            if resolved is report:
                return report
            db.execute(
                "UPDATE reports SET status = 'resolved', resolution = %s, resolved_by = %s, "
                "resolved_at = %s WHERE id = %s",
                (action.value, resolved_by, now, report_id),
            )
        return resolved

    def reports(
        self, space: str | None = None, status: ReportStatus | str | None = None
    ) -> list[Report]:
        space = _opt_id(space, "space id")
        wanted = None if status is None else _enum(ReportStatus, status, "status").value
        if space is not None:
            self._check_space(space)
        where, params = _filters(("space", space), ("status", wanted))
        rows = self._read(f"SELECT {_REPORT_COLS} FROM reports{where} ORDER BY id", params)
        return [_report_row(r) for r in rows]

    # ------------------------------------------------------------------ blocks

    def block(self, blocker: str, blocked: str, at: float | None = None) -> bool:
        """``blocker`` blocks ``blocked``; durable on return. True if new (first ``at`` kept)."""
        blocker, blocked = _pair(blocker, blocked, *_BLOCK_ARGS, "block")
        return self._relation_add(_BLOCKS, blocker, blocked, _now(at, self._clock))

    def unblock(self, blocker: str, blocked: str) -> bool:
        return self._relation_remove(_BLOCKS, *_pair(blocker, blocked, *_BLOCK_ARGS))

    def blocked_by(self, user: str) -> set[str]:
        return self._related("SELECT blocked FROM blocks WHERE blocker = %s", user)

    def is_blocked(self, blocker: str, blocked: str) -> bool:
        blocker, blocked = _pair(blocker, blocked, *_BLOCK_ARGS)
        self._check(("users", blocker, "user"), ("users", blocked, "user"))
        return bool(
            self._read(
                "SELECT 1 FROM blocks WHERE blocker = %s AND blocked = %s", (blocker, blocked)
            )
        )

    def blocks(self, user: str) -> list[Block]:
        user = _id(user, "user id")
        self._check_user(user)
        rows = self._read(
            "SELECT blocker, blocked, at FROM blocks WHERE blocker = %s "
            'ORDER BY at, blocked COLLATE "C"',
            (user,),
        )
        return [Block(*r) for r in rows]

    # ------------------------------------------------------------------ captions

    def set_captions(self, space_id: str, enabled: bool) -> None:
        space_id = _id(space_id, "space id")
        with self._tx() as db:
            self._exists(db, ("spaces", space_id, "space"))
            db.execute(
                "INSERT INTO space_captions (space, enabled) VALUES (%s, %s) "
                "ON CONFLICT (space) DO UPDATE SET enabled = excluded.enabled",
                (space_id, bool(enabled)),
            )

    def captions_enabled(self, space_id: str) -> bool:
        space_id = _id(space_id, "space id")
        self._check_space(space_id)
        rows = self._read("SELECT enabled FROM space_captions WHERE space = %s", (space_id,))
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
        with self._tx(durable=False) as db:  # as SQLite: not worth a WAL flush per sentence
            self._exists(db, ("spaces", space, "space"))
            row = db.execute(
                "INSERT INTO captions (space, speaker, start, end_, text, gap, at) "
                "VALUES (%s, %s, %s, %s, %s, %s, %s) RETURNING id",
                (space, who, t0, t1, text, bool(gap), now),
            ).fetchone()
        assert row is not None
        return int(row[0])

    def captions(self, space_id: str) -> list[CaptionRecord]:
        space_id = _id(space_id, "space id")
        self._check_space(space_id)
        rows = self._read(
            "SELECT id, space, speaker, start, end_, text, gap, at FROM captions "
            "WHERE space = %s ORDER BY start, id",
            (space_id,),
        )
        return [
            CaptionRecord(int(i), s, who, float(t0), float(t1), text, bool(g), float(a))
            for i, s, who, t0, t1, text, g, a in rows
        ]


def _exists_row(db: _Conn, checks: tuple[tuple[str, str, str], ...]) -> tuple[Any, ...]:
    """One row of booleans: does each (table, id, _) exist. Tables are constants."""
    columns = ", ".join(f"EXISTS (SELECT 1 FROM {table} WHERE id = %s)" for table, _, _ in checks)
    row = db.execute(f"SELECT {columns}".encode(), tuple(key for _, key, _ in checks)).fetchone()
    assert row is not None
    return row


def _filters(*pairs: tuple[str, object]) -> tuple[str, tuple[object, ...]]:
    """`` WHERE a = %s AND ...`` for the pairs whose value is not None, and those values."""
    given = [(column, value) for column, value in pairs if value is not None]
    if not given:
        return "", ()
    return " WHERE " + " AND ".join(f"{c} = %s" for c, _ in given), tuple(v for _, v in given)
