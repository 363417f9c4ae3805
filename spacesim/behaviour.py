"""What participants decide, as pure functions both engines call.

The simulator (`spacesim.sim.processes`) and the swarm (`spacesim.load`) make every
behavioural decision of a Space here, from the scenario's models and a random source
the engine passes in, so a scenario field means the same thing in both (the parity the
project promises; tests/test_parity.py holds the engines to it). Nothing here keeps
state, reads a clock or does I/O; `Session.draw` was the first of these.

The random source is anything with the four draws of `Rng`: the simulator passes its
buffered numpy `Draws`, the swarm a `PyRng` over `random.Random`.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterator, Sequence
from typing import Protocol, TypeVar

from spacesim.protocol import REACTIONS
from spacesim.scenario import (
    Audience,
    Features,
    Moderation,
    NetworkProfile,
    Outcomes,
    Posts,
    Scenario,
    Session,
    Speaking,
    TimelineEntry,
)

__all__ = [
    "EMOJIS",
    "FLEET_TTL",
    "MODERATION_ACTIONS",
    "PLAYER_AHEAD",
    "PLAYER_CHUNK",
    "VOICE_ROLES",
    "PyRng",
    "Rng",
    "accepts_invite",
    "approves",
    "events_in",
    "hand_response_delay",
    "moderation_due",
    "network_path",
    "pick",
    "place_listener",
    "player_bytes",
    "reaction_emoji",
    "replay_arrivals",
    "replays_over_http",
    "report_outcome",
    "report_targets_space",
    "review_time",
    "room_features",
    "session_length",
    "speaker_stint",
    "subscribes_to_events",
    "talk_phases",
    "timeline_due",
    "unmute_delay",
    "voice_bytes",
    "voice_length",
    "voice_plays",
    "voice_plays_each",
    "voice_rates",
    "voice_uploads",
]

T = TypeVar("T")

#: A replay player's HTTP reads: range requests of whole `PLAYER_CHUNK` s of bytes, enough
#: to stay `PLAYER_AHEAD` seconds of audio ahead of what it plays (`player_bytes`).
PLAYER_CHUNK = 64 * 1024
PLAYER_AHEAD = 10.0

#: Reactions the audience sends, in a fixed order so a seed picks the same emoji in every
#: process (`REACTIONS` is a set; "✋" is the raised hand, not a reaction people send).
EMOJIS: tuple[str, ...] = tuple(sorted(REACTIONS - {"✋"}))

#: Host actions drawn from `Moderation` rates, with the field that gives each rate.
MODERATION_ACTIONS: tuple[tuple[str, str], ...] = (
    ("mute", "mute_rate"),
    ("mute_all", "mute_all_rate"),
    ("demote", "demote_rate"),
    ("invite", "invite_rate"),
    ("remove", "remove_rate"),
    ("block", "block_rate"),
    ("cohost_handover", "cohost_handover_rate"),
)


class Rng(Protocol):
    """The draws a decision needs; `spacesim.sim.draws.Draws` has them."""

    def uniform(self) -> float: ...
    def exp(self, mean: float) -> float: ...
    def normal(self) -> float: ...
    def poisson(self, lam: float) -> int: ...


class PyRng:
    """`Rng` over the standard library's generator, for the swarm (no numpy per draw)."""

    def __init__(self, rng: random.Random | int | None = None) -> None:
        self.rng = rng if isinstance(rng, random.Random) else random.Random(rng)

    def uniform(self) -> float:
        return self.rng.random()

    def exp(self, mean: float) -> float:
        return self.rng.expovariate(1.0) * mean if mean > 0 else 0.0

    def normal(self) -> float:
        return self.rng.gauss(0.0, 1.0)

    def poisson(self, lam: float) -> int:
        """Knuth's product of uniforms for small means, a normal approximation beyond 30."""
        if lam <= 0:
            return 0
        if lam > 30:
            return max(0, round(lam + math.sqrt(lam) * self.rng.gauss(0.0, 1.0)))
        limit, k, p = math.exp(-lam), 0, self.rng.random()
        while p > limit:
            k += 1
            p *= self.rng.random()
        return k


# --------------------------------------------------------------------------- placement


def place_listener(
    n: int, load: Callable[[int], float], admits: Callable[[int], bool], rng: Rng
) -> int | None:
    """Which of `n` nodes a new listener goes to (None: no node admits them).

    Power of two choices: the less loaded (`load`) of two random nodes balances almost as
    well as a full scan (Mitzenmacher 2001) and costs O(1) per join, as real balancers
    do; when that node refuses (`admits`), the least loaded node that admits. One rule for
    the simulator's nodes (`spacesim.sim.world`) and the server's cluster
    (`spacesim.server.cluster`), so the model places joins as the cluster does.
    """
    if n <= 1:
        return 0 if n == 1 and admits(0) else None
    a = min(int(rng.uniform() * n), n - 1)
    b = min(int(rng.uniform() * n), n - 1)
    best = a if load(a) <= load(b) else b
    if admits(best):
        return best
    fits = [i for i in range(n) if admits(i)]
    return min(fits, key=load) if fits else None


# --------------------------------------------------------------------------- listeners


def session_length(session: Session, rng: Rng) -> float:
    """How long a listener stays (the scenario's law, `Session.draw`)."""
    return session.draw(lambda: rng.exp(1.0), rng.normal)


def network_path(profiles: Sequence[NetworkProfile], rng: Rng) -> NetworkProfile:
    """A participant's path, drawn by the profiles' shares."""
    u, acc = rng.uniform(), 0.0
    for p in profiles:
        acc += p.share
        if u < acc:
            return p
    return profiles[-1]


def subscribes_to_events(audience: Audience, rng: Rng) -> bool:
    """Whether a listener opens the event stream (`audience.events_share`)."""
    return audience.events_share >= 1.0 or rng.uniform() < audience.events_share


def events_in(rate: float, dt: float, rng: Rng, n: int = 1) -> int:
    """How many events of `rate` per second (per member, `n` members) fall within `dt`.

    The swarm asks per listener per tick (n = 1), the simulator per room per tick
    (n = listeners): both are the same Poisson process while the count holds.
    """
    return rng.poisson(rate * dt * n) if rate > 0 and dt > 0 and n > 0 else 0


def reaction_emoji(rng: Rng) -> str:
    return EMOJIS[min(int(rng.uniform() * len(EMOJIS)), len(EMOJIS) - 1)]


def report_targets_space(audience: Audience, rng: Rng) -> bool:
    """A report is about the space itself (else about another participant)."""
    return rng.uniform() < audience.space_report_share


def pick(candidates: Sequence[T], rng: Rng) -> T | None:
    """A uniform choice, or None when there is nobody to choose."""
    if not candidates:
        return None
    return candidates[min(int(rng.uniform() * len(candidates)), len(candidates) - 1)]


# --------------------------------------------------------------------------- features


def room_features(features: Features, rng: Rng) -> tuple[bool, bool]:
    """Whether a new space has (captions, recording) on (`features` shares).

    Both are drawn, in that order, whatever the shares, so turning one feature on does
    not change which spaces get the other. A share of 1 (or 0) is every (no) space.
    """
    captions = rng.uniform() < features.captions
    recording = rng.uniform() < features.recording
    return captions, recording


def replay_arrivals(features: Features, dt: float, rng: Rng) -> int:
    """Replay listeners arriving at one ended recorded space within `dt` s
    (``features.replay_rate``, Poisson): both engines ask once a tick per such space."""
    return events_in(features.replay_rate, dt, rng)


def replays_over_http(features: Features, rng: Rng) -> bool:
    """Whether a replay listener downloads the recording (HTTP) rather than replaying it
    over WebRTC (``features.replay_http_share``). Drawn whatever the share, so the share
    does not change the listener's other draws."""
    return rng.uniform() < features.replay_http_share


def player_bytes(position: float, duration: float, size: int) -> int:
    """Bytes a replay player has fetched over HTTP once it has played `position` s of a
    `duration` s recording of `size` bytes.

    A player reads ahead: whole `PLAYER_CHUNK` range requests covering the audio up to
    `PLAYER_AHEAD` s past what it plays (the recording's mean byte rate), at most the
    file. Not a draw: the swarm's player fetches by it and the simulator charges by it,
    so the two count the same egress for the same listening.
    """
    if size <= 0:
        return 0
    if duration <= 0:
        return size
    want = min((max(position, 0.0) + PLAYER_AHEAD) * size / duration, float(size))
    return min(size, max(1, math.ceil(want / PLAYER_CHUNK)) * PLAYER_CHUNK)


# --------------------------------------------------------------------------- stage


def talk_phases(speaking: Speaking, rng: Rng) -> Iterator[tuple[bool, float]]:
    """Brady's on/off model: (talking, seconds) phases forever, started in steady state.

    Exponential talk spurts and pauses (`speaking.talk_spurt`, `speaking.pause`); the
    first phase is a talk spurt with probability `Speaking.activity`. Memorylessness
    makes the first phase's full draw the right residual length.
    """
    talking = rng.uniform() < speaking.activity
    while True:
        yield talking, rng.exp(speaking.talk_spurt if talking else speaking.pause)
        talking = not talking


def hand_response_delay(audience: Audience, rng: Rng) -> float:
    """How long the host takes to answer a raised hand."""
    return rng.exp(audience.host_response_time)


def approves(audience: Audience, rng: Rng) -> bool:
    """The host's decision on a raised hand."""
    return rng.uniform() < audience.approval


def speaker_stint(audience: Audience, rng: Rng) -> float:
    """How long a granted speaker stays on stage before stepping down."""
    return rng.exp(audience.speaker_stint)


def accepts_invite(moderation: Moderation, rng: Rng) -> bool:
    return rng.uniform() < moderation.invite_acceptance


def unmute_delay(moderation: Moderation, rng: Rng) -> float | None:
    """How long a muted speaker waits before unmuting themself (None: stays muted)."""
    if moderation.unmute_after is None:
        return None
    return rng.exp(moderation.unmute_after)


# --------------------------------------------------------------------------- moderation


def review_time(audience: Audience, rng: Rng) -> float:
    """A moderator's time on one report (the desk is an M/M/c queue)."""
    return rng.exp(audience.review_time)


def report_outcome(outcomes: Outcomes, about_user: bool, rng: Rng) -> str:
    """``dismiss``, ``remove`` or ``block`` (`policy.ModerationAction` values).

    A report about the space is dismissed: removing or blocking needs a user. The
    shares are taken over their total (1 within rounding), so each of them counts.
    """
    if not about_user:
        return "dismiss"
    u = rng.uniform() * (outcomes.dismiss + outcomes.remove + outcomes.block)
    if u < outcomes.dismiss:
        return "dismiss"
    return "remove" if u < outcomes.dismiss + outcomes.remove else "block"


def moderation_due(moderation: Moderation, dt: float, rng: Rng) -> list[str]:
    """The host's own actions within the next `dt` seconds, in `MODERATION_ACTIONS` order."""
    out: list[str] = []
    for action, field in MODERATION_ACTIONS:
        out += [action] * events_in(getattr(moderation, field), dt, rng)
    return out


def timeline_due(sc: Scenario, t0: float, t1: float) -> list[TimelineEntry]:
    """Scripted actions with ``t0 <= at < t1``, in time order (ties: as written)."""
    return sorted((e for e in sc.timeline if t0 <= e.at < t1), key=lambda e: e.at)


# --------------------------------------------------------------------------- posts

#: A Fleet's life and the longest voice upload, as the server has them
#: (`spacesim.server.posts.FLEET_TTL_S`, ``VOICE_MAX_S``; a test holds them equal).
FLEET_TTL = 24 * 3600.0
VOICE_MAX_S = 140.0
#: Ogg/Opus framing (RFC 7845): OpusHead and OpusTags pages up front, and per second of
#: audio one page header (27 bytes + a lacing byte per 20 ms packet) plus the Opus TOC.
OGG_HEAD_BYTES = 120
OGG_BYTES_PER_S = 27 + 50 + 50


#: The voice items: a voice post (tweet), a voice DM, a voice Fleet (record roles).
VOICE_ROLES = ("post", "dm", "fleet")


def voice_rates(posts: Posts) -> dict[str, float]:
    """Voice items each user uploads per second, by role (text Fleets carry no audio)."""
    return {
        "post": posts.voice_posts_per_day,
        "dm": posts.voice_dms_per_day,
        "fleet": posts.fleets_per_day * posts.fleet_voice_share,
    }


def voice_plays_each(posts: Posts) -> dict[str, float]:
    """Mean plays one item gets, by role: a post ``plays_per_post``, a DM one (its
    recipient), a voice Fleet a ``fleet_view_share`` of the author's ``followers``."""
    return {
        "post": posts.plays_per_post,
        "dm": 1.0,
        "fleet": posts.followers * posts.fleet_view_share,
    }


def voice_uploads(rate: float, users: int, dt: float, rng: Rng) -> int:
    """Voice items `users` upload within `dt` s at `rate` per user per second (Poisson):
    the swarm asks per user, the simulator for the population; the same process."""
    return events_in(rate, dt, rng, users)


def voice_length(posts: Posts, rng: Rng) -> float:
    """Seconds of audio in one voice item: lognormal with mean ``posts.length_mean``,
    capped at what the server accepts (140 s)."""
    sigma = posts.length_sigma
    mu = math.log(posts.length_mean) - sigma * sigma / 2
    return min(math.exp(mu + sigma * rng.normal()), VOICE_MAX_S)


def voice_bytes(posts: Posts, seconds: float) -> int:
    """Bytes of an Ogg/Opus file of `seconds` of audio at ``posts.bitrate``."""
    return OGG_HEAD_BYTES + math.ceil(seconds * (posts.bitrate / 8 + OGG_BYTES_PER_S))


def voice_plays(pending: float, dt: float, posts: Posts, rng: Rng) -> int:
    """Plays within `dt` s of items still owed `pending` expected plays: each play comes
    an exponential delay (mean ``posts.play_delay``) after posting, so a share
    ``1 - exp(-dt / play_delay)`` of what is owed falls due in the tick (Poisson)."""
    if pending <= 0 or dt <= 0:
        return 0
    return rng.poisson(pending * -math.expm1(-dt / posts.play_delay))
