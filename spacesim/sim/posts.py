"""Voice posts, voice DMs and Fleets over days: an aggregate model, one step a tick.

A population of ``posts.users`` is no SimPy process per user: each tick draws the
population's uploads (`behaviour.voice_uploads`, Poisson counts from the per-user daily
rates) and their lengths and sizes (`behaviour.voice_length`, `voice_bytes`), and the
plays that fall due (`behaviour.voice_plays`) over the plays still owed. Plays owed
decay exponentially (mean ``play_delay``), so a pool's expected owed plays and bytes
are all the state a kind of item needs; Fleets keep one cohort a tick so they can
expire (24 h, `behaviour.FLEET_TTL`) with their bytes and any plays still owed.

Uploads land at the end of their tick and are played from the next; a Fleet is deleted
at the first tick end at or after its expiry (the server sweeps every minute).
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

from spacesim import behaviour
from spacesim.behaviour import Rng
from spacesim.results import Recorder
from spacesim.scenario import Posts

__all__ = ["ROLES", "simulate_posts"]

ROLES = behaviour.VOICE_ROLES


@dataclass
class _Owed:
    """Expected plays still owed to a pool of items, and the bytes they will send."""

    plays: float = 0.0
    bytes: float = 0.0

    def add(self, plays: float, size: float) -> None:
        self.plays += plays
        self.bytes += plays * size

    def due(self, dt: float, posts: Posts, rng: Rng) -> tuple[int, float]:
        """Plays falling due in `dt` and their bytes; what stays owed decays."""
        k = behaviour.voice_plays(self.plays, dt, posts, rng)
        sent = k * self.bytes / self.plays if k else 0.0
        keep = math.exp(-dt / posts.play_delay)
        self.plays *= keep
        self.bytes *= keep
        return k, sent


@dataclass
class _Cohort:
    """The voice Fleets one tick posted."""

    expires: float
    count: int
    size: int
    owed: _Owed


def _upload(posts: Posts, n: int, rng: Rng) -> int:
    return sum(behaviour.voice_bytes(posts, behaviour.voice_length(posts, rng)) for _ in range(n))


def simulate_posts(posts: Posts, duration: float, rng: Rng, recorder: Recorder) -> None:
    """Record the posts model over ``[0, duration]``: per tick and role
    ``posts_uploaded``, ``upload_bytes``, ``posts_played`` and ``egress_bytes``; the
    ``storage_bytes`` held and the ``fleets_expired`` at each tick's end."""
    users = posts.users
    if users <= 0:
        return
    add = recorder.add
    rates = behaviour.voice_rates(posts)
    plays_each = behaviour.voice_plays_each(posts)
    owed = {"post": _Owed(), "dm": _Owed()}
    fleets: deque[_Cohort] = deque()
    stored = 0
    t0 = 0.0
    while t0 < duration:
        t1 = min(t0 + posts.tick, duration)
        dt = t1 - t0
        # plays of what was posted before this tick
        fleet_owed = _Owed(sum(c.owed.plays for c in fleets), sum(c.owed.bytes for c in fleets))
        for role in ROLES:
            if role == "fleet":
                k, sent = fleet_owed.due(dt, posts, rng)
                keep = math.exp(-dt / posts.play_delay)
                for c in fleets:
                    c.owed.plays *= keep
                    c.owed.bytes *= keep
            else:
                k, sent = owed[role].due(dt, posts, rng)
            add("posts_played", t1, role=role, value=k)
            add("egress_bytes", t1, role=role, value=sent)
        # this tick's uploads
        for role in ROLES:
            n = behaviour.voice_uploads(rates[role], users, dt, rng)
            size = _upload(posts, n, rng)
            stored += size
            add("posts_uploaded", t1, role=role, value=n)
            add("upload_bytes", t1, role=role, value=size)
            if not n:
                continue
            if role == "fleet":
                cohort = _Cohort(t1 + behaviour.FLEET_TTL, n, size, _Owed())
                cohort.owed.add(n * plays_each[role], size / n)
                fleets.append(cohort)
            else:
                owed[role].add(n * plays_each[role], size / n)
        expired = 0
        while fleets and fleets[0].expires <= t1:
            gone = fleets.popleft()
            expired += gone.count
            stored -= gone.size
        add("fleets_expired", t1, value=expired)
        add("storage_bytes", t1, value=stored)
        t0 = t1
