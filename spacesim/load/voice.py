"""A stage member's microphone: a `SpeakerTrack` talking in the scenario's spurts.

Talkers (the first ``speaking.active_speakers`` of the stage, and listeners who got a
seat) talk in `spacesim.behaviour.talk_phases`; pauses follow ``speaking.dtx`` (no
packets, or Opus silence frames every 20 ms). A stage member who does not talk, or is
muted, or left the stage, sends nothing (``gate``), as in the simulator, where only
talkers send. A spurt ends at the gap between words of the clip nearest to its drawn
end (`spacesim.client.speaker.clip_pauses`), as a person stops between words: the
simulator's spurts are the drawn lengths, the swarm's within a word of them (a
realisation detail of the swarm that keeps their mean; recognisers then hear whole
words). Each talk spurt is a ``talk_spurt`` record (value: its realised length).
"""

from __future__ import annotations

import zlib
from collections.abc import Callable

from spacesim import behaviour
from spacesim.client.speaker import SpeakerTrack, clip_names, clip_pauses, load_clip
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

    clip = clip_of(user)
    return SpeakerTrack(
        load_clip(clip),
        sid,
        clock=ctx.clock,
        phases=behaviour.talk_phases(sp, rng) if talks else None,
        dtx=sp.dtx,
        gate=gate if talks else (lambda: False),
        on_phase=on_phase,
        pauses=clip_pauses(clip),
    )
