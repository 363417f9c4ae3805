"""What the swarm's voice posters do, without Locust: the plan a `Poster` user runs.

One `Poster` Locust user stands for the scenario's whole ``posts.users`` population:
each second it asks `PostingPlan.due` what falls due, the same `spacesim.behaviour`
draws the simulator makes per tick (Poisson uploads at the per-user daily rates over
the population, audio lengths, plays owed decaying with ``play_delay``), and performs
them over HTTP. The audio is the shipped clips' Opus packets (about 22 kbit/s),
looped and cut to the drawn length, in an Ogg file written by the server's own
`OggOpusWriter` (built once per length class per process: see `voice_file`).
"""

from __future__ import annotations

import functools
import io
import math
from dataclasses import dataclass, field

from spacesim import behaviour
from spacesim.behaviour import Rng
from spacesim.scenario import Posts

__all__ = ["Item", "PostingPlan", "voice_file"]

#: Opus packets the shipped clips hold: 20 ms each.
PACKET_S = 0.020


@functools.cache
def _packets() -> tuple[bytes, ...]:
    from spacesim.client.speaker import clip_names, load_clip

    out: list[bytes] = []
    for name in clip_names():
        out.extend(load_clip(name))
    return tuple(out)


@functools.cache
def voice_file(seconds: int) -> bytes:
    """An Ogg/Opus file of `seconds` whole seconds of the shipped clips (looped), as the
    server records spaces (`spacesim.server.recording.OggOpusWriter`); lengths are
    rounded to whole seconds so a process builds each file once."""
    from spacesim.server.recording import OggOpusWriter, _opus_head, _opus_tags, _page

    clips = _packets()
    n = max(1, round(seconds / PACKET_S))
    packets = [clips[i % len(clips)] for i in range(n)]
    buf = io.BytesIO()
    w = OggOpusWriter(buf, 0x5EED)
    buf.write(_page(0x02, 0, w.serial, 0, [_opus_head()]))
    buf.write(_page(0x00, 0, w.serial, 1, [_opus_tags(["spacesim voice post"])]))
    w.seq = 2
    w.write(packets, eos=True)
    return buf.getvalue()


@dataclass
class Item:
    """One uploaded voice item, as the poster knows it."""

    id: str
    role: str
    author: int
    size: int
    expires: float | None = None  # unix seconds (Fleets)


@dataclass
class PostingPlan:
    """Per step: the uploads (their roles and lengths) and the plays (their roles) due.

    Plays owed to each role decay as in the simulator (`behaviour.voice_plays`); a
    Fleet's owed plays go when it expires (`expire`).
    """

    posts: Posts
    rng: Rng
    owed: dict[str, float] = field(
        default_factory=lambda: dict.fromkeys(behaviour.VOICE_ROLES, 0.0)
    )

    def uploads(self, dt: float) -> list[tuple[str, float]]:
        """(role, seconds of audio) of each upload due within `dt`."""
        posts = self.posts
        out = []
        rates = behaviour.voice_rates(posts)
        for role in behaviour.VOICE_ROLES:
            for _ in range(behaviour.voice_uploads(rates[role], posts.users, dt, self.rng)):
                out.append((role, behaviour.voice_length(posts, self.rng)))
        return out

    def uploaded(self, role: str) -> None:
        """An upload succeeded: it is owed its plays from now."""
        self.owed[role] += behaviour.voice_plays_each(self.posts)[role]

    def expire(self, role: str, age: float) -> None:
        """An item `age` s old expired (a Fleet): what it was still owed goes with it."""
        left = behaviour.voice_plays_each(self.posts)[role] * math.exp(-age / self.posts.play_delay)
        self.owed[role] = max(0.0, self.owed[role] - left)

    def plays(self, dt: float, live: dict[str, int]) -> list[str]:
        """The role of each play due within `dt`; `live` counts the items of each role
        there are to play (none, no plays)."""
        out = []
        keep = math.exp(-dt / self.posts.play_delay)
        for role in behaviour.VOICE_ROLES:
            if live.get(role, 0):
                k = behaviour.voice_plays(self.owed[role], dt, self.posts, self.rng)
                out.extend([role] * k)
            self.owed[role] *= keep
        return out
