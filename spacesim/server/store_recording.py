"""Durable metadata of recordings and clips, for both stores (mixed into each).

Kept apart from the core schema so it merges with other schema work: its tables are
created by their own idempotent step (`SqliteRecordings._migrate_recordings`), run on
every open whatever ``PRAGMA user_version`` says, and it never bumps the version.

A space has at most one recording (one Ogg/Opus file, `spacesim.server.recording`);
its row says whether it is being written (``recording``) or not (``stopped``), how many
bytes and seconds it held when it last stopped, and when. A clip is a row per cut.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from spacesim.server.store import InvalidArgument, NotFound, _id, _now, _time

__all__ = [
    "PG_RECORDING_SCHEMA",
    "RECORDING_SCHEMA",
    "ClipRecord",
    "MemoryRecordings",
    "PostgresRecordings",
    "RecordingRecord",
    "SqliteRecordings",
]


@dataclass(frozen=True, slots=True)
class RecordingRecord:
    """A space's recording: ``status`` is ``recording`` or ``stopped``."""

    space: str
    status: str
    started_at: float
    stopped_at: float | None = None
    bytes: int = 0
    duration_s: float = 0.0


@dataclass(frozen=True, slots=True)
class ClipRecord:
    """A cut of a recording: ``start_s`` and ``duration_s`` on the recording's timeline."""

    id: str
    space: str
    user: str
    start_s: float
    duration_s: float
    bytes: int
    created_at: float
    expires_at: float


RECORDING_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS recordings (
        space      TEXT PRIMARY KEY REFERENCES spaces(id),
        status     TEXT NOT NULL CHECK (status IN ('recording', 'stopped')),
        started_at REAL NOT NULL,
        stopped_at REAL,
        bytes      INTEGER NOT NULL DEFAULT 0,
        duration_s REAL NOT NULL DEFAULT 0
    )""",
    """CREATE TABLE IF NOT EXISTS clips (
        id         TEXT PRIMARY KEY,
        space      TEXT NOT NULL REFERENCES spaces(id),
        user       TEXT NOT NULL,
        start_s    REAL NOT NULL,
        duration_s REAL NOT NULL,
        bytes      INTEGER NOT NULL,
        created_at REAL NOT NULL,
        expires_at REAL NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS clips_space ON clips(space, created_at)",
    "CREATE INDEX IF NOT EXISTS clips_expiry ON clips(expires_at)",
)
# PostgreSQL's (`PostgresRecordings`): its own types, "user" quoted (a reserved word there)
PG_RECORDING_SCHEMA = """
CREATE TABLE IF NOT EXISTS recordings (
    space      TEXT PRIMARY KEY REFERENCES spaces(id),
    status     TEXT NOT NULL CHECK (status IN ('recording', 'stopped')),
    started_at DOUBLE PRECISION NOT NULL,
    stopped_at DOUBLE PRECISION,
    bytes      BIGINT NOT NULL DEFAULT 0,
    duration_s DOUBLE PRECISION NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS clips (
    id         TEXT PRIMARY KEY,
    space      TEXT NOT NULL REFERENCES spaces(id),
    "user"     TEXT NOT NULL,
    start_s    DOUBLE PRECISION NOT NULL,
    duration_s DOUBLE PRECISION NOT NULL,
    bytes      BIGINT NOT NULL,
    created_at DOUBLE PRECISION NOT NULL,
    expires_at DOUBLE PRECISION NOT NULL
);
CREATE INDEX IF NOT EXISTS clips_space ON clips(space, created_at);
CREATE INDEX IF NOT EXISTS clips_expiry ON clips(expires_at);
"""
_REC_COLS = "space, status, started_at, stopped_at, bytes, duration_s"
_CLIP_COLS = "id, space, user, start_s, duration_s, bytes, created_at, expires_at"
_PG_CLIP_COLS = 'id, space, "user", start_s, duration_s, bytes, created_at, expires_at'

if TYPE_CHECKING:
    import psycopg


def _size(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InvalidArgument(f"{what} must be a non-negative integer")
    return value


class SqliteRecordings:
    """Recording and clip metadata on the SQLite store (needs its `_tx`, `_read`, `_db`)."""

    _clock: Callable[[], float]
    _tx: Callable[..., AbstractContextManager[sqlite3.Connection]]
    _read: Callable[..., list[tuple[Any, ...]]]
    _check_space: Callable[[str], None]

    def _migrate_recordings(self, db: sqlite3.Connection) -> None:
        """Create the recording tables if missing (idempotent; see the module docstring)."""
        for statement in RECORDING_SCHEMA:
            db.execute(statement)

    def set_recording(self, space_id: str, on: bool, at: float | None = None) -> RecordingRecord:
        """Mark the space's recording as being written (``on``) or stopped."""
        space = _id(space_id, "space id")
        when = _now(at, self._clock)
        self._check_space(space)
        with self._tx() as db:
            if on:
                db.execute(
                    "INSERT INTO recordings (space, status, started_at) VALUES (?, 'recording', ?)"
                    " ON CONFLICT(space) DO UPDATE SET status = 'recording', stopped_at = NULL",
                    (space, when),
                )
            else:
                db.execute(
                    "UPDATE recordings SET status = 'stopped', stopped_at = ?"
                    " WHERE space = ? AND status = 'recording'",
                    (when, space),
                )
        got = self.get_recording(space)
        if got is None:
            raise NotFound(f"space {space!r} has no recording")
        return got

    def set_recording_size(self, space_id: str, size: int, duration_s: float) -> None:
        """What the file holds (written when a recording stops or is recovered)."""
        space = _id(space_id, "space id")
        with self._tx() as db:
            db.execute(
                "UPDATE recordings SET bytes = ?, duration_s = ? WHERE space = ?",
                (_size(size, "size"), _time(duration_s, "duration"), space),
            )

    def get_recording(self, space_id: str) -> RecordingRecord | None:
        rows = self._read(f"SELECT {_REC_COLS} FROM recordings WHERE space = ?", (space_id,))
        return RecordingRecord(*rows[0]) if rows else None

    def recordings_in_progress(self) -> list[RecordingRecord]:
        """Recordings whose writing no stop ended (the server stopped or crashed)."""
        rows = self._read(f"SELECT {_REC_COLS} FROM recordings WHERE status = 'recording'")
        return [RecordingRecord(*r) for r in rows]

    def add_clip(self, clip: ClipRecord) -> ClipRecord:
        self._check_space(clip.space)
        with self._tx() as db:
            db.execute(
                f"INSERT INTO clips ({_CLIP_COLS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    _id(clip.id, "clip id"),
                    clip.space,
                    _id(clip.user, "user"),
                    _time(clip.start_s, "start"),
                    _time(clip.duration_s, "duration"),
                    _size(clip.bytes, "size"),
                    _time(clip.created_at, "created_at"),
                    _time(clip.expires_at, "expires_at"),
                ),
            )
        return clip

    def clips(self, space_id: str, now: float | None = None) -> list[ClipRecord]:
        """The space's clips not yet expired, oldest first."""
        rows = self._read(
            f"SELECT {_CLIP_COLS} FROM clips WHERE space = ? AND expires_at > ?"
            " ORDER BY created_at, id",
            (space_id, _now(now, self._clock)),
        )
        return [ClipRecord(*r) for r in rows]

    def get_clip(self, clip_id: str, now: float | None = None) -> ClipRecord | None:
        rows = self._read(
            f"SELECT {_CLIP_COLS} FROM clips WHERE id = ? AND expires_at > ?",
            (clip_id, _now(now, self._clock)),
        )
        return ClipRecord(*rows[0]) if rows else None

    def expire_clips(self, now: float | None = None) -> list[ClipRecord]:
        """Delete the rows of expired clips; returns them (their files are the caller's)."""
        when = _now(now, self._clock)
        with self._tx() as db:
            rows = db.execute(
                f"SELECT {_CLIP_COLS} FROM clips WHERE expires_at <= ?", (when,)
            ).fetchall()
            db.execute("DELETE FROM clips WHERE expires_at <= ?", (when,))
        return [ClipRecord(*r) for r in rows]


class PostgresRecordings:
    """The same on the PostgreSQL store (needs its `_tx`, `_read`, `_check_space`); the
    tables come with the store's schema (`PG_RECORDING_SCHEMA`)."""

    _clock: Callable[[], float]
    _tx: Callable[..., AbstractContextManager[psycopg.Connection[tuple[Any, ...]]]]
    _read: Callable[..., list[tuple[Any, ...]]]
    _check_space: Callable[[str], None]

    def set_recording(self, space_id: str, on: bool, at: float | None = None) -> RecordingRecord:
        space = _id(space_id, "space id")
        when = _now(at, self._clock)
        self._check_space(space)
        with self._tx() as db:
            if on:
                db.execute(
                    "INSERT INTO recordings (space, status, started_at)"
                    " VALUES (%s, 'recording', %s) ON CONFLICT (space)"
                    " DO UPDATE SET status = 'recording', stopped_at = NULL",
                    (space, when),
                )
            else:
                db.execute(
                    "UPDATE recordings SET status = 'stopped', stopped_at = %s"
                    " WHERE space = %s AND status = 'recording'",
                    (when, space),
                )
        got = self.get_recording(space)
        if got is None:
            raise NotFound(f"space {space!r} has no recording")
        return got

    def set_recording_size(self, space_id: str, size: int, duration_s: float) -> None:
        space = _id(space_id, "space id")
        with self._tx() as db:
            db.execute(
                "UPDATE recordings SET bytes = %s, duration_s = %s WHERE space = %s",
                (_size(size, "size"), _time(duration_s, "duration"), space),
            )

    def get_recording(self, space_id: str) -> RecordingRecord | None:
        rows = self._read(f"SELECT {_REC_COLS} FROM recordings WHERE space = %s", (space_id,))
        return RecordingRecord(*rows[0]) if rows else None

    def recordings_in_progress(self) -> list[RecordingRecord]:
        rows = self._read(
            f"SELECT {_REC_COLS} FROM recordings WHERE status = 'recording'"
            ' ORDER BY started_at, space COLLATE "C"'
        )
        return [RecordingRecord(*r) for r in rows]

    def add_clip(self, clip: ClipRecord) -> ClipRecord:
        self._check_space(clip.space)
        with self._tx() as db:
            db.execute(
                f"INSERT INTO clips ({_PG_CLIP_COLS})"
                " VALUES (%s, %s, %s, %s, %s, %s, %s, %s)".encode(),
                (
                    _id(clip.id, "clip id"),
                    clip.space,
                    _id(clip.user, "user"),
                    _time(clip.start_s, "start"),
                    _time(clip.duration_s, "duration"),
                    _size(clip.bytes, "size"),
                    _time(clip.created_at, "created_at"),
                    _time(clip.expires_at, "expires_at"),
                ),
            )
        return clip

    def clips(self, space_id: str, now: float | None = None) -> list[ClipRecord]:
        rows = self._read(
            f"SELECT {_PG_CLIP_COLS} FROM clips WHERE space = %s AND expires_at > %s"
            ' ORDER BY created_at, id COLLATE "C"',
            (space_id, _now(now, self._clock)),
        )
        return [ClipRecord(*r) for r in rows]

    def get_clip(self, clip_id: str, now: float | None = None) -> ClipRecord | None:
        rows = self._read(
            f"SELECT {_PG_CLIP_COLS} FROM clips WHERE id = %s AND expires_at > %s",
            (clip_id, _now(now, self._clock)),
        )
        return ClipRecord(*rows[0]) if rows else None

    def expire_clips(self, now: float | None = None) -> list[ClipRecord]:
        when = _now(now, self._clock)
        with self._tx() as db:
            rows = db.execute(
                f"DELETE FROM clips WHERE expires_at <= %s RETURNING {_PG_CLIP_COLS}".encode(),
                (when,),
            ).fetchall()
        return [ClipRecord(*r) for r in rows]


class MemoryRecordings:
    """The same, in memory (for `MemoryStore`)."""

    _clock: Callable[[], float]
    _check_space: Callable[[str], None]

    def _recordings_init(self) -> None:
        self._recordings: dict[str, RecordingRecord] = {}
        self._clips: dict[str, ClipRecord] = {}

    def set_recording(self, space_id: str, on: bool, at: float | None = None) -> RecordingRecord:
        space = _id(space_id, "space id")
        when = _now(at, self._clock)
        self._check_space(space)
        have = self._recordings.get(space)
        if on:
            have = (
                RecordingRecord(space, "recording", when)
                if have is None
                else replace(have, status="recording", stopped_at=None)
            )
        elif have is not None and have.status == "recording":
            have = replace(have, status="stopped", stopped_at=when)
        if have is None:
            raise NotFound(f"space {space!r} has no recording")
        self._recordings[space] = have
        return have

    def set_recording_size(self, space_id: str, size: int, duration_s: float) -> None:
        have = self._recordings.get(space_id)
        if have is not None:
            self._recordings[space_id] = replace(
                have, bytes=_size(size, "size"), duration_s=_time(duration_s, "duration")
            )

    def get_recording(self, space_id: str) -> RecordingRecord | None:
        return self._recordings.get(space_id)

    def recordings_in_progress(self) -> list[RecordingRecord]:
        return [r for r in self._recordings.values() if r.status == "recording"]

    def add_clip(self, clip: ClipRecord) -> ClipRecord:
        self._check_space(clip.space)
        _id(clip.id, "clip id")
        self._clips[clip.id] = clip
        return clip

    def _live_clips(self, now: float | None) -> Iterator[ClipRecord]:
        when = _now(now, self._clock)
        return (c for c in self._clips.values() if c.expires_at > when)

    def clips(self, space_id: str, now: float | None = None) -> list[ClipRecord]:
        found = [c for c in self._live_clips(now) if c.space == space_id]
        return sorted(found, key=lambda c: (c.created_at, c.id))

    def get_clip(self, clip_id: str, now: float | None = None) -> ClipRecord | None:
        return next((c for c in self._live_clips(now) if c.id == clip_id), None)

    def expire_clips(self, now: float | None = None) -> list[ClipRecord]:
        when = _now(now, self._clock)
        gone = [c for c in self._clips.values() if c.expires_at <= when]
        for c in gone:
            del self._clips[c.id]
        return gone
