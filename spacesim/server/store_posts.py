"""Durable metadata of posts, Fleets, DMs, posts shown in a space and notifications,
for both stores (mixed into each, as `store_recording` is).

Its tables are created by their own idempotent step on every open and never bump
``PRAGMA user_version``, so it merges with other schema work. A post's audio is a file
(`spacesim.server.posts`); its row says how long and how big it is.

Kinds: ``post`` (a tweet, text or voice, no expiry), ``fleet`` (``expires_at`` set:
every read filters it out from then on, and `expire_posts` deletes it) and ``dm``
(``recipient`` set). Every write is one durable transaction (``synchronous=FULL``).
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Collection
from contextlib import AbstractContextManager
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from spacesim.server.store import InvalidArgument, _id, _now, _time

__all__ = [
    "PG_POSTS_SCHEMA",
    "POSTS_SCHEMA",
    "POST_KINDS",
    "MemoryPosts",
    "Notification",
    "PostRecord",
    "PostgresPosts",
    "SpacePost",
    "SqlitePosts",
]

POST_KINDS = ("post", "fleet", "dm")


@dataclass(frozen=True, slots=True)
class PostRecord:
    """A post, Fleet or DM; ``audio_bytes`` is None for text only.

    ``captions``: None (not asked for), ``pending``, ``done`` or ``failed``;
    ``caption_text`` the recogniser's words once done.
    """

    id: str
    author: str
    kind: str
    text: str
    created_at: float
    recipient: str | None = None
    reply_to: str | None = None
    expires_at: float | None = None
    audio_bytes: int | None = None
    duration_s: float | None = None
    captions: str | None = None
    caption_text: str | None = None


@dataclass(frozen=True, slots=True)
class SpacePost:
    """A post pinned (``pin``) or shared (``share``) in a space, by ``user``."""

    space: str
    post: str
    user: str
    how: str
    at: float


@dataclass(frozen=True, slots=True)
class Notification:
    id: int
    user: str
    kind: str
    attrs: dict[str, Any]
    at: float


POSTS_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS posts (
        id           TEXT PRIMARY KEY,
        author       TEXT NOT NULL,
        kind         TEXT NOT NULL CHECK (kind IN ('post', 'fleet', 'dm')),
        text         TEXT NOT NULL,
        created_at   REAL NOT NULL,
        recipient    TEXT,
        reply_to     TEXT,
        expires_at   REAL,
        audio_bytes  INTEGER,
        duration_s   REAL,
        captions     TEXT,
        caption_text TEXT
    )""",
    "CREATE INDEX IF NOT EXISTS posts_author ON posts(author, created_at)",
    "CREATE INDEX IF NOT EXISTS posts_recipient ON posts(recipient, created_at)",
    "CREATE INDEX IF NOT EXISTS posts_expiry ON posts(expires_at)",
    """CREATE TABLE IF NOT EXISTS space_posts (
        space TEXT NOT NULL REFERENCES spaces(id),
        post  TEXT NOT NULL,
        user  TEXT NOT NULL,
        how   TEXT NOT NULL CHECK (how IN ('pin', 'share')),
        at    REAL NOT NULL,
        PRIMARY KEY (space, post, how)
    )""",
    """CREATE TABLE IF NOT EXISTS notifications (
        id    INTEGER PRIMARY KEY AUTOINCREMENT,
        user  TEXT NOT NULL,
        kind  TEXT NOT NULL,
        attrs TEXT NOT NULL,
        at    REAL NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS notifications_user ON notifications(user, id)",
)
_COLS = (
    "id, author, kind, text, created_at, recipient, reply_to, expires_at,"
    " audio_bytes, duration_s, captions, caption_text"
)
_LIVE = "(expires_at IS NULL OR expires_at > ?)"

# PostgreSQL's (`PostgresPosts`): its own types, "user" quoted (a reserved word there), and
# a `seq` for SQLite's rowid (arrival order breaks ties of time)
PG_POSTS_SCHEMA = """
CREATE TABLE IF NOT EXISTS posts (
    seq          BIGINT GENERATED ALWAYS AS IDENTITY UNIQUE,
    id           TEXT PRIMARY KEY,
    author       TEXT NOT NULL,
    kind         TEXT NOT NULL CHECK (kind IN ('post', 'fleet', 'dm')),
    text         TEXT NOT NULL,
    created_at   DOUBLE PRECISION NOT NULL,
    recipient    TEXT,
    reply_to     TEXT,
    expires_at   DOUBLE PRECISION,
    audio_bytes  BIGINT,
    duration_s   DOUBLE PRECISION,
    captions     TEXT,
    caption_text TEXT
);
CREATE INDEX IF NOT EXISTS posts_author ON posts(author, created_at);
CREATE INDEX IF NOT EXISTS posts_recipient ON posts(recipient, created_at);
CREATE INDEX IF NOT EXISTS posts_expiry ON posts(expires_at);
CREATE TABLE IF NOT EXISTS space_posts (
    seq    BIGINT GENERATED ALWAYS AS IDENTITY UNIQUE,
    space  TEXT NOT NULL REFERENCES spaces(id),
    post   TEXT NOT NULL,
    "user" TEXT NOT NULL,
    how    TEXT NOT NULL CHECK (how IN ('pin', 'share')),
    at     DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (space, post, how)
);
CREATE TABLE IF NOT EXISTS notifications (
    id     BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    "user" TEXT NOT NULL,
    kind   TEXT NOT NULL,
    attrs  TEXT NOT NULL,
    at     DOUBLE PRECISION NOT NULL
);
CREATE INDEX IF NOT EXISTS notifications_user ON notifications("user", id);
"""
_PG_LIVE = "(expires_at IS NULL OR expires_at > %s)"

if TYPE_CHECKING:
    import psycopg


def _check(post: PostRecord) -> None:
    _id(post.id, "post id")
    _id(post.author, "author")
    if post.kind not in POST_KINDS:
        raise InvalidArgument(f"post kind must be one of {', '.join(POST_KINDS)}")
    if (post.kind == "dm") != (post.recipient is not None):
        raise InvalidArgument("a dm, and only a dm, has a recipient")
    if (post.kind == "fleet") != (post.expires_at is not None):
        raise InvalidArgument("a fleet, and only a fleet, expires")
    _time(post.created_at, "created_at")


class SqlitePosts:
    """Posts on the SQLite store (needs its `_tx`, `_read`, `_check_space`)."""

    _clock: Callable[[], float]
    _tx: Callable[..., AbstractContextManager[sqlite3.Connection]]
    _read: Callable[..., list[tuple[Any, ...]]]
    _check_space: Callable[[str], None]

    def _migrate_posts(self, db: sqlite3.Connection) -> None:
        for statement in POSTS_SCHEMA:
            db.execute(statement)

    def now(self) -> float:
        """The store's clock (tests give the store a clock they control)."""
        return _now(None, self._clock)

    def add_post(self, post: PostRecord) -> PostRecord:
        _check(post)
        with self._tx() as db:
            db.execute(
                f"INSERT INTO posts ({_COLS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    post.id,
                    post.author,
                    post.kind,
                    post.text,
                    post.created_at,
                    post.recipient,
                    post.reply_to,
                    post.expires_at,
                    post.audio_bytes,
                    post.duration_s,
                    post.captions,
                    post.caption_text,
                ),
            )
        return post

    def get_post(self, post_id: str, now: float | None = None) -> PostRecord | None:
        """The post unless it is unknown or an expired Fleet."""
        rows = self._read(
            f"SELECT {_COLS} FROM posts WHERE id = ? AND {_LIVE}",
            (post_id, _now(now, self._clock)),
        )
        return PostRecord(*rows[0]) if rows else None

    def posts_by(
        self,
        authors: Collection[str],
        kinds: Collection[str] = ("post", "fleet"),
        now: float | None = None,
        limit: int = 100,
    ) -> list[PostRecord]:
        """The authors' posts of these kinds still visible, newest first."""
        if not authors or not kinds:
            return []
        a = ", ".join("?" * len(authors))
        k = ", ".join("?" * len(kinds))
        rows = self._read(
            f"SELECT {_COLS} FROM posts WHERE author IN ({a}) AND kind IN ({k}) AND {_LIVE}"
            " ORDER BY created_at DESC, rowid DESC LIMIT ?",
            (*authors, *kinds, _now(now, self._clock), limit),
        )
        return [PostRecord(*r) for r in rows]

    def dms_between(self, a: str, b: str, limit: int = 100) -> list[PostRecord]:
        """The direct messages of two users, both ways, newest first."""
        rows = self._read(
            f"SELECT {_COLS} FROM posts WHERE kind = 'dm' AND ((author = ? AND recipient = ?)"
            " OR (author = ? AND recipient = ?)) ORDER BY created_at DESC, rowid DESC LIMIT ?",
            (a, b, b, a, limit),
        )
        return [PostRecord(*r) for r in rows]

    def set_post_captions(self, post_id: str, status: str, text: str | None) -> None:
        with self._tx() as db:
            db.execute(
                "UPDATE posts SET captions = ?, caption_text = ? WHERE id = ?",
                (status, text, post_id),
            )

    def expire_posts(self, now: float | None = None) -> list[PostRecord]:
        """Delete the rows of expired Fleets (and their places in spaces); returns them
        (their files are the caller's to delete)."""
        when = _now(now, self._clock)
        with self._tx() as db:
            rows = db.execute(
                f"SELECT {_COLS} FROM posts WHERE expires_at <= ?", (when,)
            ).fetchall()
            db.execute(
                "DELETE FROM space_posts WHERE post IN"
                " (SELECT id FROM posts WHERE expires_at <= ?)",
                (when,),
            )
            db.execute("DELETE FROM posts WHERE expires_at <= ?", (when,))
        return [PostRecord(*r) for r in rows]

    def audio_post_ids(self) -> set[str]:
        """Every stored post with audio, expired or not (to find orphaned files)."""
        return {r[0] for r in self._read("SELECT id FROM posts WHERE audio_bytes IS NOT NULL")}

    def add_space_post(self, item: SpacePost) -> bool:
        """Pin or share a post in a space; False if it already was (nothing changes)."""
        self._check_space(item.space)
        with self._tx() as db:
            cur = db.execute(
                "INSERT OR IGNORE INTO space_posts (space, post, user, how, at)"
                " VALUES (?, ?, ?, ?, ?)",
                (item.space, _id(item.post, "post id"), item.user, item.how, item.at),
            )
            return cur.rowcount > 0

    def remove_space_post(self, space: str, post: str, how: str) -> bool:
        with self._tx() as db:
            cur = db.execute(
                "DELETE FROM space_posts WHERE space = ? AND post = ? AND how = ?",
                (space, post, how),
            )
            return cur.rowcount > 0

    def space_posts(self, space: str) -> list[SpacePost]:
        """The space's pinned and shared posts, oldest first."""
        rows = self._read(
            "SELECT space, post, user, how, at FROM space_posts WHERE space = ? ORDER BY at, rowid",
            (space,),
        )
        return [SpacePost(*r) for r in rows]

    def add_notifications(
        self, users: Collection[str], kind: str, attrs: dict[str, Any], at: float | None = None
    ) -> int:
        when = _now(at, self._clock)
        raw = json.dumps(attrs)
        with self._tx() as db:
            db.executemany(
                "INSERT INTO notifications (user, kind, attrs, at) VALUES (?, ?, ?, ?)",
                [(u, kind, raw, when) for u in users],
            )
        return len(users)

    def notifications(self, user: str, after: int = 0, limit: int = 100) -> list[Notification]:
        rows = self._read(
            "SELECT id, user, kind, attrs, at FROM notifications WHERE user = ? AND id > ?"
            " ORDER BY id LIMIT ?",
            (user, after, limit),
        )
        return [Notification(r[0], r[1], r[2], json.loads(r[3]), r[4]) for r in rows]


class PostgresPosts:
    """The same on the PostgreSQL store (needs its `_tx`, `_read`, `_check_space`); the
    tables come with the store's schema (`PG_POSTS_SCHEMA`)."""

    _clock: Callable[[], float]
    _tx: Callable[..., AbstractContextManager[psycopg.Connection[tuple[Any, ...]]]]
    _read: Callable[..., list[tuple[Any, ...]]]
    _check_space: Callable[[str], None]

    def now(self) -> float:
        """The store's clock (tests give the store a clock they control)."""
        return _now(None, self._clock)

    def add_post(self, post: PostRecord) -> PostRecord:
        _check(post)
        with self._tx() as db:
            db.execute(
                f"INSERT INTO posts ({_COLS}) VALUES"
                " (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)".encode(),
                (
                    post.id,
                    post.author,
                    post.kind,
                    post.text,
                    post.created_at,
                    post.recipient,
                    post.reply_to,
                    post.expires_at,
                    post.audio_bytes,
                    post.duration_s,
                    post.captions,
                    post.caption_text,
                ),
            )
        return post

    def get_post(self, post_id: str, now: float | None = None) -> PostRecord | None:
        rows = self._read(
            f"SELECT {_COLS} FROM posts WHERE id = %s AND {_PG_LIVE}",
            (post_id, _now(now, self._clock)),
        )
        return PostRecord(*rows[0]) if rows else None

    def posts_by(
        self,
        authors: Collection[str],
        kinds: Collection[str] = ("post", "fleet"),
        now: float | None = None,
        limit: int = 100,
    ) -> list[PostRecord]:
        if not authors or not kinds:
            return []
        rows = self._read(
            f"SELECT {_COLS} FROM posts WHERE author = ANY(%s) AND kind = ANY(%s) AND {_PG_LIVE}"
            " ORDER BY created_at DESC, seq DESC LIMIT %s",
            (list(authors), list(kinds), _now(now, self._clock), limit),
        )
        return [PostRecord(*r) for r in rows]

    def dms_between(self, a: str, b: str, limit: int = 100) -> list[PostRecord]:
        rows = self._read(
            f"SELECT {_COLS} FROM posts WHERE kind = 'dm' AND ((author = %s AND recipient = %s)"
            " OR (author = %s AND recipient = %s)) ORDER BY created_at DESC, seq DESC LIMIT %s",
            (a, b, b, a, limit),
        )
        return [PostRecord(*r) for r in rows]

    def set_post_captions(self, post_id: str, status: str, text: str | None) -> None:
        with self._tx() as db:
            db.execute(
                "UPDATE posts SET captions = %s, caption_text = %s WHERE id = %s",
                (status, text, post_id),
            )

    def expire_posts(self, now: float | None = None) -> list[PostRecord]:
        when = _now(now, self._clock)
        with self._tx() as db:
            db.execute(
                "DELETE FROM space_posts WHERE post IN"
                " (SELECT id FROM posts WHERE expires_at <= %s)",
                (when,),
            )
            rows = db.execute(
                f"DELETE FROM posts WHERE expires_at <= %s RETURNING {_COLS}".encode(), (when,)
            ).fetchall()
        return [PostRecord(*r) for r in rows]

    def audio_post_ids(self) -> set[str]:
        return {r[0] for r in self._read("SELECT id FROM posts WHERE audio_bytes IS NOT NULL")}

    def add_space_post(self, item: SpacePost) -> bool:
        self._check_space(item.space)
        with self._tx() as db:
            cur = db.execute(
                'INSERT INTO space_posts (space, post, "user", how, at)'
                " VALUES (%s, %s, %s, %s, %s) ON CONFLICT DO NOTHING",
                (item.space, _id(item.post, "post id"), item.user, item.how, item.at),
            )
            return cur.rowcount > 0

    def remove_space_post(self, space: str, post: str, how: str) -> bool:
        with self._tx() as db:
            cur = db.execute(
                "DELETE FROM space_posts WHERE space = %s AND post = %s AND how = %s",
                (space, post, how),
            )
            return cur.rowcount > 0

    def space_posts(self, space: str) -> list[SpacePost]:
        rows = self._read(
            'SELECT space, post, "user", how, at FROM space_posts WHERE space = %s'
            " ORDER BY at, seq",
            (space,),
        )
        return [SpacePost(*r) for r in rows]

    def add_notifications(
        self, users: Collection[str], kind: str, attrs: dict[str, Any], at: float | None = None
    ) -> int:
        when = _now(at, self._clock)
        raw = json.dumps(attrs)
        with self._tx() as db, db.cursor() as cur:
            cur.executemany(
                'INSERT INTO notifications ("user", kind, attrs, at) VALUES (%s, %s, %s, %s)',
                [(u, kind, raw, when) for u in users],
            )
        return len(users)

    def notifications(self, user: str, after: int = 0, limit: int = 100) -> list[Notification]:
        rows = self._read(
            'SELECT id, "user", kind, attrs, at FROM notifications WHERE "user" = %s AND id > %s'
            " ORDER BY id LIMIT %s",
            (user, after, limit),
        )
        return [Notification(r[0], r[1], r[2], json.loads(r[3]), r[4]) for r in rows]


class MemoryPosts:
    """The same, in memory (for `MemoryStore`)."""

    _clock: Callable[[], float]
    _check_space: Callable[[str], None]

    def _posts_init(self) -> None:
        self._posts: dict[str, PostRecord] = {}
        self._space_posts: dict[tuple[str, str, str], SpacePost] = {}
        self._notes: list[Notification] = []

    def now(self) -> float:
        return _now(None, self._clock)

    def add_post(self, post: PostRecord) -> PostRecord:
        _check(post)
        if post.id in self._posts:
            raise InvalidArgument(f"post {post.id!r} exists")
        self._posts[post.id] = post
        return post

    @staticmethod
    def _visible(post: PostRecord, when: float) -> bool:
        return post.expires_at is None or post.expires_at > when

    def get_post(self, post_id: str, now: float | None = None) -> PostRecord | None:
        post = self._posts.get(post_id)
        when = _now(now, self._clock)
        return post if post is not None and self._visible(post, when) else None

    def posts_by(
        self,
        authors: Collection[str],
        kinds: Collection[str] = ("post", "fleet"),
        now: float | None = None,
        limit: int = 100,
    ) -> list[PostRecord]:
        when = _now(now, self._clock)
        found = [
            p
            for p in self._posts.values()
            if p.author in authors and p.kind in kinds and self._visible(p, when)
        ]
        return self._newest(found, limit)

    def dms_between(self, a: str, b: str, limit: int = 100) -> list[PostRecord]:
        found = [
            p
            for p in self._posts.values()
            if p.kind == "dm" and {p.author, p.recipient} == {a, b} and (a != b or p.author == a)
        ]
        return self._newest(found, limit)

    def _newest(self, found: list[PostRecord], limit: int) -> list[PostRecord]:
        """Newest first; posts of the same time in reverse order of arrival (as rowid)."""
        order = {pid: k for k, pid in enumerate(self._posts)}
        return sorted(found, key=lambda p: (p.created_at, order[p.id]), reverse=True)[:limit]

    def set_post_captions(self, post_id: str, status: str, text: str | None) -> None:
        post = self._posts.get(post_id)
        if post is not None:
            self._posts[post_id] = replace(post, captions=status, caption_text=text)

    def expire_posts(self, now: float | None = None) -> list[PostRecord]:
        when = _now(now, self._clock)
        gone = [p for p in self._posts.values() if not self._visible(p, when)]
        ids = {p.id for p in gone}
        for p in gone:
            del self._posts[p.id]
        for key in [k for k in self._space_posts if k[1] in ids]:
            del self._space_posts[key]
        return gone

    def audio_post_ids(self) -> set[str]:
        return {p.id for p in self._posts.values() if p.audio_bytes is not None}

    def add_space_post(self, item: SpacePost) -> bool:
        self._check_space(item.space)
        key = (item.space, _id(item.post, "post id"), item.how)
        if key in self._space_posts:
            return False
        self._space_posts[key] = item
        return True

    def remove_space_post(self, space: str, post: str, how: str) -> bool:
        return self._space_posts.pop((space, post, how), None) is not None

    def space_posts(self, space: str) -> list[SpacePost]:
        return [s for s in self._space_posts.values() if s.space == space]

    def add_notifications(
        self, users: Collection[str], kind: str, attrs: dict[str, Any], at: float | None = None
    ) -> int:
        when = _now(at, self._clock)
        for u in users:
            self._notes.append(Notification(len(self._notes) + 1, u, kind, dict(attrs), when))
        return len(users)

    def notifications(self, user: str, after: int = 0, limit: int = 100) -> list[Notification]:
        return [n for n in self._notes if n.user == user and n.id > after][:limit]
