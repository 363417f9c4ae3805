"""Tests for spacesim.server.store: one behavioural suite run against MemoryStore,
SqliteStore and PostgresStore, then checks of each real store (schema, WAL, durability,
concurrent nodes, and a kill -9 crash test over both)."""

from __future__ import annotations

import inspect
import os
import queue
import re
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import fields, is_dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest

from spacesim.policy import ModerationAction, Role, SpaceStatus, WhoMaySpeak
from spacesim.server import launch
from spacesim.server.pg_local import LocalPostgres
from spacesim.server.store import (
    SCHEMA_VERSION,
    AlreadyExists,
    Block,
    Conflict,
    InvalidArgument,
    NotFound,
    ReportStatus,
    Store,
    StoreError,
    open_store,
)
from spacesim.server.store_memory import MemoryStore
from spacesim.server.store_postgres import WRITE_LOCK, PostgresStore
from spacesim.server.store_sqlite import SqliteStore

ROOT = Path(__file__).resolve().parents[2]


class FakeClock:
    def __init__(self, t: float = 1_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


@pytest.fixture(params=["memory", "sqlite", "postgres"])
def make_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Any]:
    """A factory, so tests can pass a clock; every store made is closed afterwards."""
    made: list[Any] = []

    def make(clock: FakeClock | None = None) -> Any:
        clock = clock or FakeClock()
        if request.param == "memory":
            store: Any = MemoryStore(clock=clock)
        elif request.param == "sqlite":
            store = SqliteStore(tmp_path / f"db{len(made)}.sqlite", clock=clock)
        else:  # a fresh database of the session's cluster
            store = PostgresStore(request.getfixturevalue("pg_url")(), clock=clock)
        made.append(store)
        return store

    yield make
    for store in made:
        store.close()


@pytest.fixture
def store(make_store: Any) -> Any:
    s = make_store()
    for uid in ("host", "alice", "bob", "carol"):
        s.add_user(uid, uid.title(), at=1.0)
    s.create_space("sp", "host", "Town hall", status="live", at=10.0)
    return s


# --------------------------------------------------------------------------- the seam


def test_every_implementation_satisfies_the_protocol(store: Any) -> None:
    assert isinstance(store, Store)


def test_every_implementation_offers_the_same_methods() -> None:
    """What the server calls beyond the protocol (recordings, clips, posts: their parts are
    typed Any) exists with the same signature on every store."""

    def api(cls: type) -> dict[str, inspect.Signature]:
        names = [n for n in dir(cls) if not n.startswith("_") and callable(getattr(cls, n))]
        return {n: inspect.signature(getattr(cls, n)) for n in names}

    assert api(PostgresStore) == api(SqliteStore) == api(MemoryStore)


def test_closed_store_refuses_work_and_close_is_idempotent(make_store: Any) -> None:
    s = make_store()
    s.add_user("u", "U")
    s.close()
    s.close()
    with pytest.raises(StoreError, match="closed"):
        s.get_user("u")
    with pytest.raises(StoreError, match="closed"):
        s.add_user("v", "V")


# --------------------------------------------------------------------------- users, follows


def test_users_round_trip_and_add_is_idempotent(make_store: Any) -> None:
    clock = FakeClock(42.0)
    s = make_store(clock)
    u = s.add_user("alice", "Alice")
    assert (u.id, u.display_name, u.created_at) == ("alice", "Alice", 42.0)
    assert s.get_user("alice") == u
    clock.t = 50.0
    assert s.add_user("alice", "Someone else") == u  # existing user returned unchanged
    assert s.get_user("alice") == u
    with pytest.raises(NotFound, match="nobody"):
        s.get_user("nobody")


@pytest.mark.parametrize("bad", ["", None, 3, b"x"])
def test_bad_ids_are_invalid_arguments(store: Any, bad: Any) -> None:
    with pytest.raises(InvalidArgument):
        store.add_user(bad, "x")
    with pytest.raises(InvalidArgument):
        store.get_space(bad)
    with pytest.raises(InvalidArgument):
        store.block("alice", bad)
    with pytest.raises(InvalidArgument):
        store.file_report("sp", bad, None)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), "10", True, 10**400])
def test_bad_timestamps_are_invalid_arguments(store: Any, bad: Any) -> None:
    with pytest.raises(InvalidArgument):
        store.block("alice", "bob", at=bad)
    with pytest.raises(InvalidArgument):
        store.create_space("sp2", "host", "t", scheduled_for=bad)
    assert not store.is_blocked("alice", "bob")


def test_follows(store: Any) -> None:
    assert store.follow("host", "alice") is True
    assert store.follow("host", "alice") is False  # idempotent
    store.follow("host", "bob")
    store.follow("carol", "alice")
    assert store.follows_of("host") == {"alice", "bob"}
    assert store.followers_of("alice") == {"host", "carol"}
    assert store.unfollow("host", "bob") is True
    assert store.unfollow("host", "bob") is False
    assert store.follows_of("host") == {"alice"}
    assert store.follows_of("bob") == set()
    returned = store.follows_of("host")
    returned.add("mallory")  # a copy, not the store's state
    assert store.follows_of("host") == {"alice"}


def test_follow_errors(store: Any) -> None:
    with pytest.raises(NotFound):
        store.follow("host", "ghost")
    with pytest.raises(NotFound):
        store.follows_of("ghost")
    with pytest.raises(InvalidArgument):
        store.follow("alice", "alice")


# --------------------------------------------------------------------------- spaces


def test_create_and_get_space(store: Any) -> None:
    sp = store.get_space("sp")
    assert sp.status is SpaceStatus.LIVE and sp.started_at == 10.0 and sp.ended_at is None
    assert sp.who_may_speak is WhoMaySpeak.EVERYONE and sp.host == "host"
    sched = store.create_space(
        "later",
        host="host",
        title="Later",
        who_may_speak=WhoMaySpeak.FOLLOWED,
        scheduled_for=5_000,
        at=20.0,
    )
    assert sched.status is SpaceStatus.SCHEDULED and sched.started_at is None
    assert sched.scheduled_for == 5_000.0 and sched.created_at == 20.0
    assert store.get_space("later") == sched


def test_create_space_errors(store: Any) -> None:
    with pytest.raises(AlreadyExists):
        store.create_space("sp", "host", "again")
    with pytest.raises(NotFound, match="ghost"):
        store.create_space("x", "ghost", "t")
    with pytest.raises(InvalidArgument):
        store.create_space("x", "host", "t", status="ended")
    with pytest.raises(InvalidArgument, match="status"):
        store.create_space("x", "host", "t", status="paused")
    with pytest.raises(InvalidArgument, match="who_may_speak"):
        store.create_space("x", "host", "t", who_may_speak="nobody")
    with pytest.raises(NotFound):
        store.get_space("x")


def test_listener_cap_is_kept_with_the_space(store: Any) -> None:
    assert store.get_space("sp").listener_cap is None
    capped = store.create_space("capped", "host", "t", status="live", listener_cap=3)
    assert capped.listener_cap == 3 and store.get_space("capped") == capped
    zero = store.create_space("zero", "host", "t", listener_cap=0)
    assert store.get_space("zero").listener_cap == 0 == zero.listener_cap
    assert {s.id: s.listener_cap for s in store.spaces_to_recover()}["capped"] == 3
    for bad in (-1, 1.5, True, "3", 2**63):
        with pytest.raises(InvalidArgument, match="listener_cap"):
            store.create_space("bad", "host", "t", listener_cap=bad)


def test_space_lifecycle_moves_forward_only(store: Any) -> None:
    store.create_space("s2", "host", "t", at=1.0)
    live = store.set_space_status("s2", "live", 5.0)
    assert (live.status, live.started_at) == (SpaceStatus.LIVE, 5.0)
    assert store.set_space_status("s2", SpaceStatus.LIVE, 6.0) == live  # same: no-op
    with pytest.raises(Conflict):
        store.set_space_status("s2", "scheduled")
    ended = store.set_space_status("s2", "ended", at=9.0)
    assert (ended.status, ended.started_at, ended.ended_at) == (SpaceStatus.ENDED, 5.0, 9.0)
    assert store.get_space("s2") == ended
    assert store.set_space_status("s2", "ended", at=11.0) == ended
    with pytest.raises(Conflict):
        store.set_space_status("s2", "live")
    store.create_space("s3", "host", "t")
    cancelled = store.set_space_status("s3", "ended", at=3.0)
    assert cancelled.started_at is None and cancelled.ended_at == 3.0
    with pytest.raises(NotFound):
        store.set_space_status("ghost", "live")


def test_set_who_may_speak(store: Any) -> None:
    assert store.set_who_may_speak("sp", "invited").who_may_speak is WhoMaySpeak.INVITED
    assert store.get_space("sp").who_may_speak is WhoMaySpeak.INVITED
    with pytest.raises(InvalidArgument):
        store.set_who_may_speak("sp", "anyone")
    with pytest.raises(NotFound):
        store.set_who_may_speak("ghost", "everyone")


def test_spaces_to_recover_lists_scheduled_and_live_oldest_first(store: Any) -> None:
    store.create_space("b", "host", "t", at=30.0)
    store.create_space("a", "host", "t", status="live", at=20.0)
    store.create_space("c", "host", "t", at=30.0)  # same time as b: creation order decides
    store.create_space("gone", "host", "t", at=5.0)
    store.set_space_status("gone", "ended")
    assert [s.id for s in store.spaces_to_recover()] == ["sp", "a", "b", "c"]


# --------------------------------------------------------------------------- participation


def test_join_role_change_and_leave(store: Any) -> None:
    j = store.record_join("sp", "alice", "listener", 11.0)
    assert (j.space, j.user, j.role, j.joined_at, j.left_at) == (
        "sp",
        "alice",
        Role.LISTENER,
        11.0,
        None,
    )
    store.record_join("sp", "host", Role.HOST, at=10.0)
    assert store.present("sp") == {"alice": Role.LISTENER, "host": Role.HOST}
    promoted = store.record_role("sp", "alice", "speaker", 12.0)
    assert promoted.role is Role.SPEAKER and promoted.id != j.id
    assert store.record_role("sp", "alice", "speaker", 13.0) == promoted  # same role: no-op
    left = store.record_leave("sp", "alice", 14.0)
    assert left is not None and left.left_at == 14.0 and left.id == promoted.id
    assert store.record_leave("sp", "alice", 15.0) is None  # idempotent
    history = store.participations(space="sp", user="alice")
    assert [(p.role, p.joined_at, p.left_at) for p in history] == [
        (Role.LISTENER, 11.0, 12.0),
        (Role.SPEAKER, 12.0, 14.0),
    ]
    assert store.present("sp") == {"host": Role.HOST}
    assert [p.user for p in store.participations()] == ["alice", "host", "alice"]


def test_rejoin_with_a_stale_open_row_closes_it(store: Any) -> None:
    first = store.record_join("sp", "bob", at=11.0)  # e.g. the server crashed after this
    second = store.record_join("sp", "bob", at=20.0)
    assert second.id != first.id
    assert [(p.joined_at, p.left_at) for p in store.participations(user="bob")] == [
        (11.0, 20.0),
        (20.0, None),
    ]


def test_ending_a_space_closes_open_participations(store: Any) -> None:
    store.record_join("sp", "alice", at=11.0)
    store.record_join("sp", "bob", at=12.0)
    store.record_leave("sp", "bob", at=13.0)
    store.set_space_status("sp", "ended", at=30.0)
    assert store.present("sp") == {}
    assert [p.left_at for p in store.participations(space="sp")] == [30.0, 13.0]


def test_participation_errors(store: Any) -> None:
    with pytest.raises(NotFound):
        store.record_join("ghost", "alice")
    with pytest.raises(NotFound):
        store.record_join("sp", "ghost")
    with pytest.raises(InvalidArgument):
        store.record_join("sp", "alice", "moderator")
    with pytest.raises(NotFound):
        store.record_role("sp", "alice", "speaker")  # not present
    with pytest.raises(NotFound):
        store.record_leave("ghost", "alice")
    with pytest.raises(NotFound):
        store.present("ghost")
    with pytest.raises(NotFound):
        store.participations(space="ghost")
    assert store.participations() == []


# --------------------------------------------------------------------------- audit


def test_audit_log_appends_and_reads_back(store: Any) -> None:
    store.create_space("other", "host", "t")
    e1 = store.audit("sp", "host", "remove", "alice", {"reason": "spam", "n": 2}, 11.0)
    e2 = store.audit("other", None, "moderate:end", at=12.0)
    e3 = store.audit("sp", "host", "mute_all", at=13.0)
    assert e1.id < e2.id < e3.id
    assert dict(e1.attrs) == {"reason": "spam", "n": 2} and dict(e2.attrs) == {}
    assert (e2.actor, e2.target) == (None, None)
    assert store.audit_log() == [e1, e2, e3]
    assert store.audit_log("sp") == [e1, e3]
    with pytest.raises(TypeError):
        e1.attrs["x"] = 1  # read-only view


def test_audit_errors(store: Any) -> None:
    with pytest.raises(NotFound):
        store.audit("ghost", "host", "remove")
    with pytest.raises(InvalidArgument, match="JSON"):
        store.audit("sp", "host", "remove", "alice", {"when": object()})
    with pytest.raises(InvalidArgument, match="JSON"):
        store.audit("sp", "host", "remove", "alice", {"x": float("nan")})
    with pytest.raises(InvalidArgument):
        store.audit("sp", "host", "", "alice")
    with pytest.raises(NotFound):
        store.audit_log("ghost")
    assert store.audit_log() == []


# --------------------------------------------------------------------------- reports


def test_reports_file_resolve_and_filter(store: Any) -> None:
    store.create_space("other", "host", "t")
    r1 = store.file_report("sp", "alice", "bob", "spam", 11.0)
    r2 = store.file_report("sp", "bob", None, at=12.0)  # about the space
    r3 = store.file_report("other", "carol", "alice", "abuse", 13.0)
    assert r1 < r2 < r3 and all(isinstance(r, int) for r in (r1, r2, r3))
    got = store.get_report(r1)
    assert (got.space, got.reporter, got.target, got.reason) == ("sp", "alice", "bob", "spam")
    assert got.status is ReportStatus.OPEN and got.resolution is None and got.filed_at == 11.0
    assert store.get_report(r2).target is None and store.get_report(r2).reason == ""

    done = store.resolve_report(r1, "remove", "mod", 20.0)
    assert (done.status, done.resolution, done.resolved_by, done.resolved_at) == (
        ReportStatus.RESOLVED,
        ModerationAction.REMOVE,
        "mod",
        20.0,
    )
    assert store.resolve_report(r1, ModerationAction.REMOVE, "mod2", 30.0) == done  # idempotent
    with pytest.raises(Conflict):
        store.resolve_report(r1, "dismiss")
    assert store.get_report(r1) == done

    assert [r.id for r in store.reports()] == [r1, r2, r3]
    assert [r.id for r in store.reports(space="sp")] == [r1, r2]
    assert [r.id for r in store.reports(status="open")] == [r2, r3]
    assert [r.id for r in store.reports(space="sp", status=ReportStatus.RESOLVED)] == [r1]


def test_report_errors(store: Any) -> None:
    with pytest.raises(NotFound):
        store.file_report("ghost", "alice", None)
    with pytest.raises(NotFound):
        store.file_report("sp", "ghost", None)
    with pytest.raises(NotFound):
        store.file_report("sp", "alice", "ghost")
    with pytest.raises(InvalidArgument):
        store.file_report("sp", "alice", None, reason=7)
    with pytest.raises(NotFound):
        store.get_report(99)
    with pytest.raises(NotFound):
        store.resolve_report(99, "dismiss")
    with pytest.raises(InvalidArgument):
        store.get_report("1")
    rid = store.file_report("sp", "alice", None)
    with pytest.raises(InvalidArgument, match="resolution"):
        store.resolve_report(rid, "ban")
    with pytest.raises(InvalidArgument):
        store.reports(status="closed")
    with pytest.raises(NotFound):
        store.reports(space="ghost")
    assert store.get_report(rid).status is ReportStatus.OPEN


# --------------------------------------------------------------------------- blocks


def test_blocks(store: Any) -> None:
    assert store.block("host", "alice", 11.0) is True
    assert store.block("host", "alice", 99.0) is False  # idempotent: the first time is kept
    store.block("host", "bob", 12.0)
    store.block("carol", "host", 13.0)
    assert store.blocked_by("host") == {"alice", "bob"}
    assert store.blocks("host") == [Block("host", "alice", 11.0), Block("host", "bob", 12.0)]
    assert store.is_blocked("host", "alice") and not store.is_blocked("alice", "host")
    assert store.is_blocked("carol", "host")
    assert store.unblock("host", "alice") is True
    assert store.unblock("host", "alice") is False
    assert store.blocked_by("host") == {"bob"}
    assert store.blocked_by("alice") == set()


def test_block_errors(store: Any) -> None:
    with pytest.raises(InvalidArgument):
        store.block("alice", "alice")
    with pytest.raises(NotFound):
        store.block("alice", "ghost")
    with pytest.raises(NotFound):
        store.blocked_by("ghost")
    with pytest.raises(NotFound):
        store.is_blocked("ghost", "alice")


def test_default_timestamps_come_from_the_clock(make_store: Any) -> None:
    clock = FakeClock(100.0)
    s = make_store(clock)
    s.add_user("h", "H")
    s.add_user("u", "U")
    assert s.create_space("x", "h", "t", status="live").started_at == 100.0
    clock.t = 101.0
    assert s.record_join("x", "u").joined_at == 101.0
    clock.t = 102.0
    rid = s.file_report("x", "u", "h")
    assert s.get_report(rid).filed_at == 102.0
    clock.t = 103.0
    s.block("h", "u")
    assert s.blocks("h")[0].at == 103.0
    assert s.audit("x", "h", "remove", "u").at == 103.0
    clock.t = 104.0
    assert s.set_space_status("x", "ended").ended_at == 104.0


def test_memory_sqlite_and_postgres_agree_on_a_scripted_session(
    tmp_path: Path, pg_url: Any
) -> None:
    """The same calls give equal results (values and types) on every implementation."""

    def script(s: Any) -> list[Any]:
        out: list[Any] = []
        for uid in ("h", "a", "b"):
            out.append(s.add_user(uid, uid.upper(), at=1.0))
        out.append(s.create_space("x", "h", "T", status="live", at=2.0))
        out.append(s.record_join("x", "a", at=3.0))
        out.append(s.record_role("x", "a", "speaker", at=4.0))
        out.append(s.file_report("x", "b", "a", "loud", at=5.0))
        out.append(s.resolve_report(1, "block", "m", at=6.0))
        out.append(s.block("h", "a", at=6.0))
        out.append(s.audit("x", "m", "moderate:block", "a", {"report": 1}, at=6.0))
        for uid in ("\u00e9", "B"):  # byte order: "B" < "a" < "\u00e9", as Python's
            out.append(s.add_user(uid, "E", at=8.0))
        for uid in ("a", "B", "\u00e9"):
            out.append(s.block("b", uid, at=9.0))
        out.append(s.set_space_status("x", "ended", at=7.0))
        out += [s.participations(), s.reports(), s.blocked_by("h"), s.spaces_to_recover()]
        out += [s.blocks("b"), s.get_space("x"), s.get_user("h")]
        out.append([(e.id, e.action, dict(e.attrs)) for e in s.audit_log()])
        return out

    with (
        MemoryStore() as mem,
        SqliteStore(tmp_path / "x.db") as sql,
        PostgresStore(pg_url()) as pg,
    ):
        results = [_typed(script(s)) for s in (mem, sql, pg)]
    assert results[1] == results[0] and results[2] == results[0]


def _typed(value: Any) -> Any:
    """`value` with the type of every part (1 == 1.0 == True, yet an id is an int)."""
    if is_dataclass(value):
        return type(value).__name__, [_typed(getattr(value, f.name)) for f in fields(value)]
    if isinstance(value, list | tuple):
        return [_typed(v) for v in value]
    if isinstance(value, set):
        return sorted(_typed(v) for v in value)
    if isinstance(value, Mapping):
        return {k: _typed(v) for k, v in value.items()}
    return type(value).__name__, value


# --------------------------------------------------------------------------- SQLite only


def test_sqlite_data_survives_reopen_with_wal_and_schema_version(tmp_path: Path) -> None:
    path = tmp_path / "spaces.db"
    with SqliteStore(path) as s:
        assert s.journal_mode == "wal"
        s.add_user("h", "H", at=1.0)
        s.add_user("u", "U", at=1.0)
        s.create_space("x", "h", "T", status="live", at=2.0)
        rid = s.file_report("x", "u", None, "r", at=3.0)
        s.block("h", "u", at=4.0)
    with SqliteStore(path) as s:
        assert s.get_report(rid).reason == "r"
        assert s.blocked_by("h") == {"u"}
        assert [sp.id for sp in s.spaces_to_recover()] == ["x"]
    raw = sqlite3.connect(path)
    try:
        assert raw.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        raw.close()


def test_sqlite_opens_a_version_1_file_and_adds_the_listener_cap(tmp_path: Path) -> None:
    path = tmp_path / "v1.db"
    raw = sqlite3.connect(path)
    try:  # the version-1 spaces table, as PR #1 wrote it (no listener_cap column)
        raw.executescript(
            """
            CREATE TABLE users (id TEXT PRIMARY KEY, display_name TEXT NOT NULL,
                                created_at REAL NOT NULL);
            CREATE TABLE spaces (
                id TEXT PRIMARY KEY, host TEXT NOT NULL REFERENCES users(id),
                title TEXT NOT NULL,
                status TEXT NOT NULL CHECK (status IN ('scheduled', 'live', 'ended')),
                who_may_speak TEXT NOT NULL
                    CHECK (who_may_speak IN ('everyone', 'followed', 'invited')),
                scheduled_for REAL, created_at REAL NOT NULL, started_at REAL, ended_at REAL);
            INSERT INTO users VALUES ('h', 'H', 1.0);
            INSERT INTO spaces VALUES ('old', 'h', 'Old', 'live', 'everyone', NULL, 2.0, 2.0, NULL);
            PRAGMA user_version = 1;
            """
        )
        raw.commit()
    finally:
        raw.close()
    with SqliteStore(path) as s:
        old = s.get_space("old")
        assert old.title == "Old" and old.listener_cap is None
        assert s.create_space("new", "h", "New", listener_cap=7).listener_cap == 7
    with SqliteStore(path) as s:  # reopening at the current version changes nothing
        assert [(r.id, r.listener_cap) for r in s.spaces_to_recover()] == [
            ("old", None),
            ("new", 7),
        ]
        assert s.get_space("new").listener_cap == 7
    raw = sqlite3.connect(path)
    try:
        assert raw.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 2
    finally:
        raw.close()


def test_sqlite_refuses_a_newer_schema(tmp_path: Path) -> None:
    path = tmp_path / "future.db"
    raw = sqlite3.connect(path)
    try:
        raw.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
        raw.commit()
    finally:
        raw.close()
    with pytest.raises(StoreError, match="schema version"):
        SqliteStore(path)


@pytest.mark.parametrize("content", [b"this is not a database" * 100, b"\x00" * 5000])
def test_sqlite_garbage_file_is_a_store_error(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "garbage.db"
    path.write_bytes(content)
    with pytest.raises(StoreError) as info:
        SqliteStore(path)
    assert not isinstance(info.value, sqlite3.Error)


def test_sqlite_unopenable_path_is_a_store_error(tmp_path: Path) -> None:
    with pytest.raises(StoreError):
        SqliteStore(tmp_path / "no" / "such" / "dir" / "x.db")


def test_sqlite_audit_log_is_append_only_even_for_raw_sql(tmp_path: Path) -> None:
    path = tmp_path / "a.db"
    with SqliteStore(path) as s:
        s.add_user("h", "H")
        s.create_space("x", "h", "T")
        s.audit("x", "h", "remove", "u")
    raw = sqlite3.connect(path)
    try:
        with pytest.raises(sqlite3.DatabaseError, match="append-only"):
            raw.execute("UPDATE audit_log SET action = 'nothing'")
        with pytest.raises(sqlite3.DatabaseError, match="append-only"):
            raw.execute("DELETE FROM audit_log")
    finally:
        raw.close()


def test_sqlite_acknowledged_writes_commit_with_synchronous_full(tmp_path: Path) -> None:
    """White-box: kill -9 cannot tell FULL from NORMAL (the OS keeps the data), so check
    which synchronous setting is in force at each COMMIT."""
    with SqliteStore(tmp_path / "s.db") as s:
        s.add_user("h", "H")
        s.add_user("u", "U")
        s.create_space("x", "h", "T", status="live")
        conn = s._conn
        assert conn is not None
        commits: list[tuple[str, str]] = []
        label = [""]
        level = ["FULL"]  # what the store sets on open (schema creation is durable)

        def watch(sql: str) -> None:  # the pragma cannot be queried inside the callback
            text = sql.upper().replace(" ", "")
            if text.startswith("PRAGMASYNCHRONOUS="):
                level[0] = text.split("=")[1]
            elif text == "COMMIT":
                commits.append((label[0], level[0]))

        conn.set_trace_callback(watch)
        try:
            label[0] = "join"
            s.record_join("x", "u")
            label[0] = "report"
            s.file_report("x", "u", "h", "r")
            label[0] = "leave"
            s.record_leave("x", "u")
            label[0] = "block"
            s.block("h", "u")
            label[0] = "resolve"
            s.resolve_report(1, "dismiss")
        finally:
            conn.set_trace_callback(None)
        assert commits == [
            ("join", "NORMAL"),
            ("report", "FULL"),
            ("leave", "NORMAL"),
            ("block", "FULL"),
            ("resolve", "FULL"),
        ]
        assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2


# --------------------------------------------------------------------------- PostgreSQL only


def test_postgres_data_survives_reopen_and_keeps_the_schema_version(pg_url: Any) -> None:
    url = pg_url()
    with PostgresStore(url) as s:
        s.add_user("h", "H", at=1.0)
        s.add_user("u", "U", at=1.0)
        s.create_space("x", "h", "T", status="live", at=2.0, listener_cap=2**63 - 1)
        rid = s.file_report("x", "u", None, "r", at=3.0)
        s.block("h", "u", at=4.0)
    with PostgresStore(url) as s:  # the schema step again: idempotent
        assert s.get_report(rid).reason == "r"
        assert s.blocked_by("h") == {"u"}
        assert [(sp.id, sp.listener_cap) for sp in s.spaces_to_recover()] == [("x", 2**63 - 1)]
    with psycopg.connect(url) as raw:
        row = raw.execute("SELECT value FROM spacesim_meta WHERE key = 'schema_version'")
        assert row.fetchone() == (str(SCHEMA_VERSION),)


def test_postgres_refuses_a_newer_schema(pg_url: Any) -> None:
    url = pg_url()
    PostgresStore(url).close()
    with psycopg.connect(url) as raw:
        raw.execute("UPDATE spacesim_meta SET value = %s", (str(SCHEMA_VERSION + 1),))
    with pytest.raises(StoreError, match="schema version"):
        PostgresStore(url)


def test_postgres_unreachable_or_refused_is_a_store_error(pg_url: Any) -> None:
    nobody = f"postgresql://spacesim:x@127.0.0.1:{launch.free_port()}/nothing"
    with pytest.raises(StoreError, match="cannot connect") as info:
        PostgresStore(nobody, timeout=2)
    assert not isinstance(info.value, psycopg.Error)
    wrong = re.sub(r"//spacesim:\w+@", "//spacesim:wrong@", pg_url())
    with pytest.raises(StoreError, match="password"):
        PostgresStore(wrong)


def test_postgres_audit_log_is_append_only_even_for_raw_sql(pg_url: Any) -> None:
    url = pg_url()
    with PostgresStore(url) as s:
        s.add_user("h", "H")
        s.create_space("x", "h", "T")
        s.audit("x", "h", "remove", "u")
    with psycopg.connect(url, autocommit=True) as raw:
        for sql in ("UPDATE audit_log SET action = 'x'", "DELETE FROM audit_log"):
            with pytest.raises(psycopg.Error, match="append-only"):
                raw.execute(sql)
        with pytest.raises(psycopg.Error, match="append-only"):
            raw.execute("TRUNCATE audit_log")
        assert raw.execute("SELECT count(*) FROM audit_log").fetchone() == (1,)


def test_postgres_text_with_nul_is_an_invalid_argument(store: Any) -> None:
    if not isinstance(store, PostgresStore):
        return  # SQLite and memory keep it; PostgreSQL's text cannot (module docstring)
    with pytest.raises(InvalidArgument):
        store.add_user("a\x00b", "x")
    with pytest.raises(InvalidArgument):
        store.file_report("sp", "alice", None, "nul\x00here")
    assert store.reports() == []  # and the store goes on working


class _WatchCommits:
    """Stands in for a store's connection: at each COMMIT, the synchronous_commit in force."""

    def __init__(self, conn: Any) -> None:
        self.conn, self.label, self.commits = conn, "", list[tuple[str, str]]()

    def execute(self, query: Any, *args: Any) -> Any:
        if query == "COMMIT":
            level = self.conn.execute("SHOW synchronous_commit").fetchone()[0]
            self.commits.append((self.label, level))
        return self.conn.execute(query, *args)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.conn, name)


def test_postgres_acknowledged_writes_commit_with_synchronous_commit_on(pg_url: Any) -> None:
    """White-box, as for SQLite: what the API acknowledges waits for the WAL flush; joins,
    leaves and captions do not (the kill -9 tests cannot tell them apart)."""
    with PostgresStore(pg_url()) as s:
        s.add_user("h", "H")
        s.add_user("u", "U")
        s.create_space("x", "h", "T", status="live")
        watch = _WatchCommits(s._conn)
        s._conn = watch  # type: ignore[assignment]
        for label, write in [
            ("join", lambda: s.record_join("x", "u")),
            ("report", lambda: s.file_report("x", "u", "h", "r")),
            ("caption", lambda: s.add_caption("x", "u", 0.0, 1.0, "hi")),
            ("leave", lambda: s.record_leave("x", "u")),
            ("block", lambda: s.block("h", "u")),
            ("resolve", lambda: s.resolve_report(1, "dismiss")),
        ]:
            watch.label = label
            write()
        s._conn = watch.conn
        assert watch.commits == [
            ("join", "off"),
            ("report", "on"),
            ("caption", "off"),
            ("leave", "off"),
            ("block", "on"),
            ("resolve", "on"),
        ]
        assert watch.conn.execute("SHOW synchronous_commit").fetchone()[0] == "on"


def test_postgres_reconnects_after_its_connection_is_cut(pg_url: Any) -> None:
    url = pg_url()
    with PostgresStore(url) as s, psycopg.connect(url, autocommit=True) as admin:
        s.add_user("h", "H")
        assert s._conn is not None
        admin.execute("SELECT pg_terminate_backend(%s)", (s._conn.info.backend_pid,))
        with pytest.raises(StoreError):  # the call that finds the connection cut fails...
            s.get_user("h")
        assert s.get_user("h").id == "h"  # ...and the next one reconnects
        s.create_space("x", "h", "T")
        assert [sp.id for sp in s.spaces_to_recover()] == ["x"]


def test_postgres_nodes_starting_at_once_create_the_schema_once(pg_url: Any) -> None:
    """CREATE TABLE IF NOT EXISTS races with itself (both see no table, one fails on the
    catalog's unique index); the schema step runs under the write lock, so it cannot."""
    url, opened, failed = pg_url(), [], []

    def start() -> None:
        try:
            opened.append(PostgresStore(url))
        except StoreError as exc:
            failed.append(exc)

    nodes = [threading.Thread(target=start) for _ in range(6)]
    for t in nodes:
        t.start()
    for t in nodes:
        t.join()
    try:
        assert not failed and len(opened) == 6
        opened[0].add_user("u", "U")
        assert all(s.get_user("u").id == "u" for s in opened)
    finally:
        for s in opened:
            s.close()


def test_postgres_a_node_stalled_on_the_write_lock_fails_the_call_in_time(pg_url: Any) -> None:
    """Another node holds the write lock and stalls: this one's writes fail after its
    timeout (a 500, not a hung event loop); reads go on; writes resume once it is free."""
    url = pg_url()
    with PostgresStore(url, timeout=0.5) as s, psycopg.connect(url, autocommit=True) as stalled:
        s.add_user("h", "H")
        stalled.execute("SELECT pg_advisory_lock(%s)", (WRITE_LOCK,))
        started = time.monotonic()
        with pytest.raises(StoreError, match="lock timeout"):
            s.add_user("u", "U")
        assert 0.4 < time.monotonic() - started < 5.0
        assert s.get_user("h").id == "h"
        stalled.execute("SELECT pg_advisory_unlock(%s)", (WRITE_LOCK,))
        assert s.add_user("u", "U").id == "u"
        assert s._conn is not None
        assert s._conn.execute("SHOW statement_timeout").fetchone() == ("3s",)
        assert s._conn.info.get_parameters()["tcp_user_timeout"] == "500"  # libpq's side


def test_two_nodes_on_one_database_see_and_serialise_each_others_writes(pg_url: Any) -> None:
    """Two stores (two nodes) race for the same space id and the same open participation:
    each check-and-write is one transaction under the write lock, as in SQLite."""
    url = pg_url()
    with PostgresStore(url) as a, PostgresStore(url) as b:
        a.add_user("h", "H")
        b.add_user("u", "U")
        assert a.get_user("u").id == "u" and b.get_user("h").id == "h"
        outcomes: list[str] = []

        def create(store: Any, n: int) -> None:
            try:
                store.create_space(f"race{n}", "h", "T", status="live")
                outcomes.append("made")
            except AlreadyExists:
                outcomes.append("taken")

        for n in range(20):
            racers = [threading.Thread(target=create, args=(st, n)) for st in (a, b)]
            for t in racers:
                t.start()
            for t in racers:
                t.join()
        assert sorted(outcomes) == ["made"] * 20 + ["taken"] * 20

        def join(store: Any) -> None:
            for _ in range(20):
                store.record_join("race0", "u")

        racers = [threading.Thread(target=join, args=(st,)) for st in (a, b)]
        for t in racers:
            t.start()
        for t in racers:
            t.join()
        parts = a.participations(space="race0")
        assert len(parts) == 40 and sum(p.left_at is None for p in parts) == 1
        assert b.present("race0") == {"u": Role.LISTENER}


# --------------------------------------------------------------------------- kill -9

_CHILD = textwrap.dedent(
    """
    import sys
    from spacesim.server.store import open_store

    store = open_store(sys.argv[1])
    store.add_user("host", "Host")
    for i in range(5):
        store.add_user(f"r{i}", f"Reporter {i}")
    store.create_space("live", "host", "Live", status="live")
    store.create_space("sched", "host", "Later", scheduled_for=4e9)
    store.create_space("done", "host", "Done", status="live")
    store.set_space_status("done", "ended")
    print("ready", flush=True)
    n = 0
    while True:
        n += 1
        rid = store.file_report("live", f"r{n % 5}", None, f"reason {n}")
        print(f"ack {n} report {rid}", flush=True)
        store.add_user(f"x{n}", "X")
        store.block("host", f"x{n}")
        print(f"ack {n} block x{n}", flush=True)
    """
)


def _acknowledged_then_crash(target: str, crash: Any) -> tuple[dict[int, str], set[str]]:
    """Run `_CHILD` on `target` until 200 acks, then `crash(child)`; every report and block
    it acknowledged, including the acks still in the pipe when it crashed."""
    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
    )
    lines: queue.Queue[str | None] = queue.Queue()
    acked_reports: dict[int, str] = {}
    acked_blocks: set[str] = set()

    def take(line: str) -> bool:
        words = line.split()
        if words[0] != "ack":
            return False
        if words[2] == "report":
            acked_reports[int(words[3])] = f"reason {words[1]}"
        else:
            acked_blocks.add(words[3])
        return True

    deadline = time.monotonic() + 12.0
    with subprocess.Popen(
        [sys.executable, "-c", _CHILD, target],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env=env,
    ) as proc:
        assert proc.stdout is not None

        def pump() -> None:
            assert proc.stdout is not None
            for line in proc.stdout:
                lines.put(line)
            lines.put(None)

        reader = threading.Thread(target=pump, daemon=True)
        reader.start()
        try:
            acks = 0
            while acks < 200:
                try:
                    line = lines.get(timeout=max(0.01, deadline - time.monotonic()))
                except queue.Empty:
                    pytest.fail(f"only {acks} acks before the deadline")
                if line is None:
                    pytest.fail(f"child exited early: {proc.stderr.read() if proc.stderr else ''}")
                acks += take(line)
        finally:
            crash(proc)
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=5)
            reader.join(timeout=5)
        while (line := lines.get_nowait()) is not None:  # acked before the crash, unread
            take(line)
    assert len(acked_reports) >= 100 and len(acked_blocks) >= 99
    return acked_reports, acked_blocks


def _check_acknowledged(target: str, reports: dict[int, str], blocks: set[str]) -> None:
    store = open_store(target)
    try:
        stored = {r.id: r.reason for r in store.reports(space="live")}
        for rid, reason in reports.items():
            assert stored.get(rid) == reason, f"acknowledged report {rid} lost"
        assert blocks <= store.blocked_by("host")
        assert {s.id for s in store.spaces_to_recover()} == {"live", "sched"}
    finally:
        store.close()


def _sigkill(proc: subprocess.Popen[str]) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=5)
    assert proc.returncode == -signal.SIGKILL


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
def test_kill_9_loses_no_acknowledged_report_or_block(
    tmp_path: Path, kind: str, request: pytest.FixtureRequest
) -> None:
    db = str(tmp_path / "crash.db") if kind == "sqlite" else request.getfixturevalue("pg_url")()
    reports, blocks = _acknowledged_then_crash(db, _sigkill)
    _check_acknowledged(db, reports, blocks)
    if kind == "sqlite":
        raw = sqlite3.connect(db)
        try:
            assert raw.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        finally:
            raw.close()


def test_a_killed_postgres_loses_no_acknowledged_report_or_block(
    postgres: LocalPostgres, pg_url: Any
) -> None:
    """The database's machine fails, not the node: kill -9 every PostgreSQL process mid-way
    (what a commit left in its WAL buffers is gone; what reached the kernel stays) and
    start it again, which replays its WAL. An acknowledged write was flushed before its ack
    (synchronous_commit on); with it off the last ones are lost. (The session's cluster:
    restarted at once, it serves the tests after this one as before.)"""
    url = pg_url()
    reports, blocks = _acknowledged_then_crash(url, lambda child: postgres.kill())
    postgres.start()
    _check_acknowledged(url, reports, blocks)
