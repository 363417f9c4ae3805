"""A stage member's microphone: a `SpeakerTrack` talking in the scenario's spurts.

Talkers (the first ``speaking.active_speakers`` of the stage, and listeners who got a
seat) talk in `spacesim.behaviour.talk_phases`; pauses follow ``speaking.dtx`` (no
packets, or Opus silence frames every 20 ms). A stage member who does not talk, or is
muted, or left the stage, sends nothing (``gate``), as in the simulator, where only
talkers send. Each talk spurt is a ``talk_spurt`` record (value: its length).
"""

from __future__ import annotations

import zlib
from collections.abc import Callable

from spacesim import behaviour
from spacesim.client.speaker import SpeakerTrack, clip_names, load_clip
from spacesim.load.api import Context

__all__ = ["clip_of", "new_track", "sender_id"]


def sender_id(user: str) -> int:
    """The id a user's packets are marked with (listeners see it per sender)."""
    return zlib.crc32(user.encode())


def clip_of(user: str) -> str:
    """The name of the speech clip `user` plays (``clips/transcripts.json`` has its words)."""
    names = clip_names()
    return names[sender_id(user) % len(names)]


def new_track(
    ctx: Context,
    room: str,
    user: str,
    role: Callable[[], str],
    *,
    talks: bool,
    rng: behaviour.Rng,
    gate: Callable[[], bool],
) -> SpeakerTrack:
    """A speech clip (one per user) played in talk spurts while `gate()` holds."""
    sp = ctx.sc.speaking
    sid = sender_id(user)

    def on_phase(talking: bool, seconds: float) -> None:
        if talking:
            ctx.add("talk_spurt", room, user, role(), seconds)

    return SpeakerTrack(
        load_clip(clip_of(user)),
        sid,
        clock=ctx.clock,
        phases=behaviour.talk_phases(sp, rng) if talks else None,
        dtx=sp.dtx,
        gate=gate if talks else (lambda: False),
        on_phase=on_phase,
    )
