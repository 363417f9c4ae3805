"""The scenario: one validated description of a space's load, read by both engines.

The simulator (`spacesim.sim`) and, later, the load test read the same `Scenario`,
so a notebook can lay a simulated and a measured curve on one plot. YAML uses
human units; the model holds base units (seconds, events per second, fractions
in 0..1) so no engine ever parses a string.

Units accepted in YAML:

* durations: ``250ms``, ``30s``, ``4m`` / ``4min``, ``1.5h``, ``30us``; a bare number is seconds;
* rates: ``5/s``, ``300/min`` (also ``/m``), ``2/h``; a bare number is per second;
* fractions: ``0.5%``; a bare number is taken as a fraction in 0..1;
* counts: ``100000``, ``1e5``, ``100k``, ``1M``.
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import json
import math
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

import numpy as np
import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictInt,
    ValidationError,
    field_validator,
    model_validator,
)

from spacesim import policy

__all__ = [
    "Arrivals",
    "Audience",
    "Burst",
    "ConstantArrivals",
    "Features",
    "FlashCrowdArrivals",
    "Moderation",
    "NetworkProfile",
    "Outcomes",
    "PiecewiseArrivals",
    "PoissonArrivals",
    "Posts",
    "RampArrivals",
    "Rooms",
    "Scenario",
    "ScenarioError",
    "Server",
    "Session",
    "SimSettings",
    "Slo",
    "Speaking",
    "Step",
    "TimelineEntry",
    "load_scenario",
    "parse_count",
    "parse_duration",
    "parse_fraction",
    "parse_rate",
    "parse_scenario",
]


class ScenarioError(ValueError):
    """A scenario that cannot be used; `problems` holds one (path, reason) per fault."""

    def __init__(self, source: str, problems: Sequence[tuple[str, str]]) -> None:
        self.source = source
        self.problems = list(problems)
        lines = [f"{source}: {path or '<top>'}: {reason}" for path, reason in self.problems]
        super().__init__("\n".join(lines))


# --------------------------------------------------------------------------- units

_NUM = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"
_DURATION_RE = re.compile(rf"^\s*({_NUM})\s*([a-zµ]*)\s*$")
_DURATION_UNITS = {
    "": 1.0,
    "s": 1.0,
    "sec": 1.0,
    "ms": 1e-3,
    "us": 1e-6,
    "µs": 1e-6,
    "m": 60.0,
    "min": 60.0,
    "h": 3600.0,
    "d": 86400.0,
}
_RATE_RE = re.compile(rf"^\s*({_NUM})\s*(?:/\s*([a-z]+))?\s*$")
_RATE_UNITS = {"s": 1.0, "sec": 1.0, "m": 1 / 60, "min": 1 / 60, "h": 1 / 3600, "d": 1 / 86400}
_COUNT_RE = re.compile(rf"^\s*({_NUM})\s*([kKM]?)\s*$")


def _number(value: object, what: str) -> float:
    if isinstance(value, bool):
        raise ValueError(f"expected a {what}, got a boolean")
    if isinstance(value, int | float):
        return float(value)
    raise ValueError(f"expected a {what}, got {value!r}")


def _finite_nonneg(x: float, what: str, text: object) -> float:
    if not math.isfinite(x) or x < 0:
        raise ValueError(f"{what} must be a finite number >= 0, got {text!r}")
    return x


def parse_duration(value: object) -> float:
    """Seconds from ``250ms``, ``4m``, ``1.5h`` or a bare number of seconds."""
    if isinstance(value, str):
        m = _DURATION_RE.match(value)
        if not m or m.group(2) not in _DURATION_UNITS:
            raise ValueError(f"not a duration: {value!r} (try '250ms', '30s', '4m', '1h')")
        return _finite_nonneg(float(m.group(1)) * _DURATION_UNITS[m.group(2)], "duration", value)
    return _finite_nonneg(_number(value, "duration"), "duration", value)


def parse_rate(value: object) -> float:
    """Events per second from ``5/s``, ``300/min``, ``2/h`` or a bare number per second."""
    if isinstance(value, str):
        m = _RATE_RE.match(value)
        unit = (m.group(2) or "s") if m else None
        if not m or unit not in _RATE_UNITS:
            raise ValueError(f"not a rate: {value!r} (try '5/s', '300/min', '2/h')")
        return _finite_nonneg(float(m.group(1)) * _RATE_UNITS[unit], "rate", value)
    return _finite_nonneg(_number(value, "rate"), "rate", value)


def parse_fraction(value: object) -> float:
    """A fraction in 0..1 from ``0.5%`` or a bare number in 0..1."""
    if isinstance(value, str):
        text = value.strip()
        try:
            x = float(text[:-1]) / 100 if text.endswith("%") else float(text)
        except ValueError:
            raise ValueError(f"not a fraction: {value!r} (try '0.5%' or 0.005)") from None
    else:
        x = _number(value, "fraction")
    if not (0.0 <= x <= 1.0):
        raise ValueError(f"fraction must lie in 0..1 (0%..100%), got {value!r}")
    return x


def parse_share(value: object) -> float:
    """A share of spaces: a fraction, or a switch (``on``/``true`` = every space, ``off``/
    ``false`` = none), so ``--set captions=on`` reads as a host turning captions on."""
    if isinstance(value, bool):
        return 1.0 if value else 0.0
    if isinstance(value, str) and value.strip().lower() in ("on", "off"):
        return 1.0 if value.strip().lower() == "on" else 0.0
    try:
        return parse_fraction(value)
    except ValueError as exc:
        raise ValueError(f"{exc}; or on / off") from None


def parse_count(value: object) -> int:
    """A whole count from ``100000``, ``1e5``, ``100k`` or ``1M``."""
    if isinstance(value, str):
        m = _COUNT_RE.match(value)
        if not m:
            raise ValueError(f"not a count: {value!r} (try 1000, '1e5', '100k', '1M')")
        x = float(m.group(1)) * {"": 1, "k": 1e3, "K": 1e3, "M": 1e6}[m.group(2)]
    else:
        x = _number(value, "count")
    if not math.isfinite(x) or x < 0 or x != int(x):
        raise ValueError(f"count must be a whole number >= 0, got {value!r}")
    return int(x)


Duration = Annotated[float, BeforeValidator(parse_duration)]
Rate = Annotated[float, BeforeValidator(parse_rate)]
Fraction = Annotated[float, BeforeValidator(parse_fraction)]
Share = Annotated[float, BeforeValidator(parse_share)]
Count = Annotated[int, BeforeValidator(parse_count)]


class _Model(BaseModel):
    """Unknown keys are errors: a typo ('arivals') must not silently fall back to a default.

    `engines` is the default engine declaration of the model's fields; a field overrides
    it with ``json_schema_extra=engines(...)``.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)
    engines: ClassVar[tuple[str, ...]] = ("sim", "load")


# --------------------------------------------------------------------------- engines

#: The engines that run a scenario. Every field says which of them honour it (its
#: ``json_schema_extra["engines"]``, or `ENGINES` for fields that are whole sections);
#: `spacesim scenario show` prints it and tests/test_parity.py traces both engines and
#: fails when a declaration and the code disagree.
ENGINE_NAMES = ("sim", "load")
BOTH = ("sim", "load")
SIM = ("sim",)
LOAD = ("load",)


def engines(*names: str, why: str = "") -> dict[str, Any]:
    """`json_schema_extra` declaring the engines that honour a field (and, if only one, why)."""
    bad = set(names) - set(ENGINE_NAMES)
    if bad or not names:
        raise ValueError(f"engines must be a non-empty subset of {ENGINE_NAMES}, got {names}")
    out: dict[str, Any] = {"engines": list(names)}
    if why:
        out["engine_note"] = why
    return out


# --------------------------------------------------------------------------- rooms


class Rooms(_Model):
    """Rooms (spaces) and their stage; limits follow Twitter Spaces (2 co-hosts, 10 speakers)."""

    count: Count = Field(1, ge=1, description="Identical rooms; arrivals apply to each room.")
    cohosts: Count = Field(0, le=2, description="Co-hosts on stage besides the host (<= 2).")
    speakers: Count = Field(
        2, le=10, description="Speakers on stage at the start, besides host and co-hosts (<= 10)."
    )
    who_may_speak: Literal["everyone", "followed", "invited"] = "everyone"
    host_follows: Fraction = Field(
        0.05, description="Share of listeners the host follows (matters for 'followed')."
    )
    listener_cap: Count | None = Field(
        None,
        description="Listeners per room; null = unlimited. The server gets it when the space "
        "is created and refuses the rest (room_full).",
    )
    starts_at: Duration | None = Field(
        None,
        description="The space is created scheduled and the host starts it this long after "
        "the run starts; arrivals count from the start. null = live from the start.",
    )
    ends_at: Duration | None = Field(
        None,
        description="The host ends the space at this run time; everyone leaves. null = the "
        "space lasts the run.",
    )

    @model_validator(mode="after")
    def _lifecycle(self) -> Rooms:
        if (
            self.starts_at is not None
            and self.ends_at is not None
            and (self.ends_at <= self.starts_at)
        ):
            raise ValueError(f"rooms.ends_at: must be after rooms.starts_at ({self.starts_at:g} s)")
        return self


# --------------------------------------------------------------------------- arrivals


class ConstantArrivals(_Model):
    """Evenly spaced arrivals: a deterministic baseline for checks."""

    kind: Literal["constant"]
    rate: Rate

    def arrived(self, t: np.ndarray) -> np.ndarray:
        """Expected arrivals to one room by each time in `t` (the rate's integral)."""
        out: np.ndarray = self.rate * np.maximum(t, 0.0)
        return out


class PoissonArrivals(_Model):
    kind: Literal["poisson"]
    rate: Rate

    def arrived(self, t: np.ndarray) -> np.ndarray:
        """Expected arrivals to one room by each time in `t`."""
        out: np.ndarray = self.rate * np.maximum(t, 0.0)
        return out


class RampArrivals(_Model):
    """Poisson arrivals whose rate moves linearly from `start` to `end` over `over`."""

    kind: Literal["ramp"]
    start: Rate = 0.0
    end: Rate
    over: Duration = Field(gt=0)

    def arrived(self, t: np.ndarray) -> np.ndarray:
        """Expected arrivals to one room by each time in `t`."""
        inside = np.clip(t, 0.0, self.over)
        ramp = self.start * inside + (self.end - self.start) * inside**2 / (2 * self.over)
        out: np.ndarray = ramp + self.end * np.maximum(t - self.over, 0.0)
        return out


class Burst(_Model):
    """A flash crowd: `size` arrivals after `at`, decaying with time constant `over`.

    Arrival times are `at` + Exponential(`over`): 63 % arrive within `over`, as after a
    notification goes out.
    """

    at: Duration = 0.0
    size: Count
    over: Duration = Field(30.0, gt=0)


class FlashCrowdArrivals(_Model):
    """A Poisson background at `base` plus one or more bursts (space start, notifications)."""

    kind: Literal["flash_crowd"]
    base: Rate = 0.0
    bursts: list[Burst] = Field(min_length=1)

    def arrived(self, t: np.ndarray) -> np.ndarray:
        """Expected arrivals to one room by each time in `t`: background plus bursts."""
        out: np.ndarray = self.base * np.maximum(t, 0.0)
        for b in self.bursts:
            out = out + b.size * -np.expm1(-np.maximum(t - b.at, 0.0) / b.over)
        return out


class Step(_Model):
    at: Duration
    rate: Rate


class PiecewiseArrivals(_Model):
    """Poisson arrivals with a piecewise-constant rate; each step holds until the next."""

    kind: Literal["piecewise"]
    steps: list[Step] = Field(min_length=1)

    @field_validator("steps")
    @classmethod
    def _ordered(cls, steps: list[Step]) -> list[Step]:
        if steps[0].at != 0:
            raise ValueError("the first step must be at 0s")
        if any(b.at <= a.at for a, b in itertools.pairwise(steps)):
            raise ValueError("steps must be in strictly increasing 'at' order")
        return steps

    def arrived(self, t: np.ndarray) -> np.ndarray:
        """Expected arrivals to one room by each time in `t`."""
        out = np.zeros_like(t, dtype="float64")
        ends = [s.at for s in self.steps[1:]] + [math.inf]
        for step, end in zip(self.steps, ends, strict=True):
            out += step.rate * np.clip(t - step.at, 0.0, end - step.at)
        return out


Arrivals = Annotated[
    ConstantArrivals | PoissonArrivals | RampArrivals | FlashCrowdArrivals | PiecewiseArrivals,
    Field(discriminator="kind"),
]


class Session(_Model):
    """How long a listener stays. `mean` is the arithmetic mean for every kind."""

    kind: Literal["exponential", "lognormal", "fixed"] = "exponential"
    mean: Duration = Field(gt=0)
    sigma: float = Field(1.0, gt=0, description="Shape of the lognormal (log-space std dev).")

    def draw(
        self, standard_exponential: Callable[[], float], standard_normal: Callable[[], float]
    ) -> float:
        """One session length from the engine's own random source (both engines use this).

        A lognormal with arithmetic mean m has log-space mean ln(m) - sigma^2 / 2.
        """
        if self.kind == "fixed":
            return self.mean
        if self.kind == "lognormal":
            mu = math.log(self.mean) - self.sigma * self.sigma / 2
            return math.exp(mu + self.sigma * standard_normal())
        return self.mean * standard_exponential()

    def survival(self, x: np.ndarray) -> np.ndarray:
        """P(a session lasts longer than each `x` s): who of those who came is still in."""
        x = np.maximum(np.asarray(x, dtype="float64"), 0.0)
        if self.kind == "fixed":
            return (x < self.mean).astype("float64")
        if self.kind == "lognormal":
            mu = math.log(self.mean) - self.sigma * self.sigma / 2
            z = (np.log(np.maximum(x, 1e-300)) - mu) / (self.sigma * math.sqrt(2))
            erfc = np.frompyfunc(math.erfc, 1, 1)(z)
            out: np.ndarray = 0.5 * np.asarray(erfc, dtype="float64")
            return out
        exp: np.ndarray = np.exp(-x / self.mean)
        return exp


# --------------------------------------------------------------------------- behaviour


class Speaking(_Model):
    """Talk spurts and pauses per active speaker: Brady's on/off model.

    Defaults are ITU-T P.59's conversational figures (mean talk spurt 1.004 s, mean
    pause 1.587 s); both phases are exponential.
    """

    active_speakers: Count = Field(
        2,
        description="How many of the initial stage (host first) talk; granted speakers also talk.",
    )
    talk_spurt: Duration = Field(1.004, gt=0)
    pause: Duration = Field(1.587, gt=0)
    packet_interval: Duration = Field(
        0.020,
        gt=0,
        description="Opus frame size (ptime).",
        json_schema_extra=engines(
            "sim", why="the swarm's speech clips are 20 ms Opus frames, as WebRTC sends"
        ),
    )
    dtx: bool = Field(
        False,
        description=(
            "Opus DTX: send packets only in talk spurts. Off by default, as in browsers' and "
            "aiortc's WebRTC, where an unmuted speaker sends every packet_interval."
        ),
    )

    @property
    def packets_per_second(self) -> float:
        return 1.0 / self.packet_interval

    @property
    def activity(self) -> float:
        """Long-run share of time an active speaker is talking."""
        return self.talk_spurt / (self.talk_spurt + self.pause)


class Outcomes(_Model):
    """How moderators resolve reports; shares must sum to 100 %."""

    dismiss: Fraction = 0.8
    remove: Fraction = 0.15
    block: Fraction = 0.05

    @model_validator(mode="after")
    def _sums_to_one(self) -> Outcomes:
        total = self.dismiss + self.remove + self.block
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"dismiss + remove + block must be 100%, got {total:.2%}")
        return self


class Audience(_Model):
    """Per-listener behaviour rates and the moderation desk."""

    hand_raise_rate: Rate = Field(parse_rate("0.5/h"), description="Per listener.")
    host_response_time: Duration = Field(20.0, description="Mean (exponential) time to decide.")
    approval: Fraction = Field(0.3, description="Chance the host approves a raised hand.")
    speaker_stint: Duration = Field(120.0, gt=0, description="Mean time a granted speaker talks.")
    reaction_rate: Rate = Field(parse_rate("1/min"), description="Emoji reactions per listener.")
    report_rate: Rate = Field(parse_rate("0.05/h"), description="Reports filed per listener.")
    space_report_share: Fraction = Field(0.1, description="Share of reports about the space.")
    block_rate: Rate = Field(parse_rate("0.02/h"), description="Personal blocks per listener.")
    events_share: Fraction = Field(
        1.0,
        description="Share of listeners subscribed to the space's event stream (reactions, "
        "hands, stage changes); each delivery costs the server CPU.",
    )
    moderators: Count = Field(2, ge=1)
    review_time: Duration = Field(120.0, gt=0, description="Mean (exponential) review time.")
    outcomes: Outcomes = Outcomes()


class Moderation(_Model):
    """What the host does to the room on its own initiative, as rates per room.

    Each action picks its target uniformly among those it can apply to (a speaker to
    mute or demote, a listener to invite, remove or block); an action with no possible
    target is skipped. All default to 0 so older scenarios keep their meaning.
    """

    mute_rate: Rate = Field(0.0, description="Host mutes a random unmuted co-host or speaker.")
    unmute_after: Duration | None = Field(
        30.0,
        description="Mean (exponential) time a muted speaker waits before unmuting themself; "
        "null = stays muted.",
    )
    mute_all_rate: Rate = Field(0.0, description="Host mutes everyone on stage but themself.")
    demote_rate: Rate = Field(0.0, description="Host moves a random speaker back to listening.")
    invite_rate: Rate = Field(0.0, description="Host invites a random live listener to speak.")
    invite_acceptance: Fraction = Field(0.5, description="Chance an invited listener accepts.")
    remove_rate: Rate = Field(0.0, description="Host removes a random listener.")
    block_rate: Rate = Field(0.0, description="Host blocks a random listener (space-wide).")
    cohost_handover_rate: Rate = Field(
        0.0,
        description="Host hands a co-host seat to a random listener (the longest-serving "
        "co-host steps down first when the seats are full).",
    )


class Features(_Model):
    """The server features hosts turn on, as shares of the spaces (0 = none, 1 = every one).

    Which spaces is `spacesim.behaviour.room_features`' decision, the same law in both
    engines: the swarm creates those spaces with ``captions`` / ``recording`` on, the
    simulator prices their speech recognition and recordings (``server.asr_cost``,
    ``server.recorded_packet_bytes``). The shares also take ``on`` / ``off`` (every space
    / none): ``--set captions=on`` turns captions on in every space.
    """

    captions: Share = Field(
        0.0, description="Share of spaces with live captions on (on = 1, off = 0)."
    )
    recording: Share = Field(0.0, description="Share of spaces the host records (on = 1).")
    clip_rate: Rate = Field(
        0.0,
        description="Clips a listener of a recorded space cuts (the last 30 s, "
        "POST /v1/spaces/{id}/clips), per listener. The cutter downloads its clip once "
        "(GET .../clips/{id}: ``egress_bytes`` of role ``clip``).",
    )
    replay_rate: Rate = Field(
        0.0,
        description="Replay listeners arriving per recorded space after it ended (a Poisson "
        "rate per space, from its end to the run's end). Each listens for a ``session`` "
        "length (at most the recording) from its start, over HTTP or WebRTC "
        "(``replay_http_share``): ``replay_started`` and ``egress_bytes`` of role ``replay``.",
    )
    replay_http_share: Fraction = Field(
        0.5,
        description="Share of replay listeners who play the recording over HTTP (GET "
        "/v1/spaces/{id}/recording in range requests, as a player reads ahead: "
        "`spacesim.behaviour.player_bytes`; the swarm's go direct, its network relays carry "
        "UDP only); the others replay it over WebRTC (POST .../replay, through their "
        "``network`` path), which the model charges a join (``cpu_per_join``) and a "
        "forwarded stream on the space's origin node.",
    )


TimelineAction = Literal[
    "start",
    "end",
    "host_leave",
    "mute",
    "unmute",
    "mute_all",
    "demote",
    "invite",
    "remove",
    "block",
    "cohost_handover",
]


class TimelineEntry(_Model):
    """One scripted action at a run time, run identically by both engines.

    ``mute``, ``demote`` pick a random speaker; ``unmute`` has every muted speaker unmute;
    ``invite``, ``remove``, ``block``, ``cohost_handover`` pick a random listener (the same
    choice functions as the moderation rates, `spacesim.behaviour`).
    """

    at: Duration
    action: TimelineAction


class NetworkProfile(_Model):
    """A client's path to the server; `share` is the fraction of clients on it."""

    share: Fraction = 1.0
    rtt: Duration = Field(0.060, description="Base (minimum) round-trip time.")
    jitter: Duration = Field(0.010, description="Mean extra one-way delay (exponential).")
    loss: Fraction = 0.0


class Server(_Model):
    """Server nodes and their costs; the defaults are this project's measured pass-through SFU.

    The CPU defaults come from one calibration of the reference server (numba fan-out,
    direct send path) on this project's 2-vCPU VM, 2026-12-07, from ten load runs of the
    demo's scenario with 0-3 talkers and 0-70 listeners (full clients), none a demo's own
    run: `docs/calibrations/2026-12-07-server-cpu.yaml` lists them and how they were made.
    A speaker's packet costs far more than a forwarded copy (its Python receive path
    against the compiled fan-out), so with few listeners the speakers are most of the CPU.
    `spacesim calibrate` fits these costs (and `fanout_delay`, `forward_delay`) from load
    runs of another server or machine; `simulate --calibration FILE` applies them.

    Simulator only (but max_streams and slots): a load run measures a real server, not a
    model.
    """

    engines: ClassVar[tuple[str, ...]] = ("sim",)

    nodes: Count = Field(1, ge=1)
    cores: float = Field(1.0, gt=0, description="Cores per node available to forwarding.")
    cpu_per_packet: Duration = Field(
        5.2e-6,
        description="CPU per forwarded packet (one listener's copy: rewrite, srtp_protect, "
        "sendto in the compiled fan-out). 5.2 +- 1.2 us: spacesim calibrate, 2026-12-07, "
        "2-vCPU VM (docs/calibrations/2026-12-07-server-cpu.yaml); it was 30 us before the "
        "numba fan-out kernel.",
    )
    cpu_per_join: Duration = Field(
        21e-3,
        description="CPU per joining participant (signalling, SDP, ICE, DTLS handshake). "
        "20.7 +- 0.7 ms: spacesim calibrate, 2026-12-07, 2-vCPU VM "
        "(docs/calibrations/2026-12-07-server-cpu.yaml).",
    )
    cpu_per_connection: Duration = Field(
        1.17e-3,
        description="CPU per open connection per second, whatever it hears: aiortc's upkeep "
        "of a peer connection (RTCP sender and receiver reports, ICE consent checks every "
        "~5 s, DTLS/SRTCP on them) and the client's event stream. 1.17 +- 0.17 ms/s for "
        "the swarm's full clients: spacesim calibrate, 2026-12-07, 2-vCPU VM "
        "(docs/calibrations/2026-12-07-server-cpu.yaml); bench_fidelity's lite listeners "
        "(no event stream) cost ~0.3-0.6 ms/s.",
    )
    cpu_per_event: Duration = Field(
        10e-6,
        description="CPU per event delivered to one subscriber (serialise, queue, WebSocket "
        "frame); benchmarks/bench_events.py measures it.",
    )
    cpu_fixed: float = Field(
        0.0,
        ge=0,
        description=(
            "CPU a node uses with nobody connected (event loop, timers, metrics), in cores; "
            "it counts towards utilisation. 0.008 +- 0.001: spacesim calibrate, 2026-12-07, "
            "2-vCPU VM (docs/calibrations/2026-12-07-server-cpu.yaml; the idle server "
            "alone measured 0.003-0.004)."
        ),
    )
    fanout_delay: Duration | None = Field(
        None,
        description=(
            "Time between consecutive listeners' copies of one packet in a node's "
            "sequential fan-out (the k-th listener waits k of them); null = "
            "cpu_per_packet / cores. Calibrated on loopback it includes the swarm's own "
            "receive path."
        ),
    )
    forward_delay: Duration = Field(
        1.1e-3,
        description=(
            "Fixed latency every forwarded packet spends in the node whatever the load "
            "(receive, SRTP unprotect / protect, send). A calibration from loopback runs "
            "also puts the clients' own receive path here. 1.12 +- 0.05 ms: spacesim "
            "calibrate on loopback runs without network paths (spacesim load --network "
            "none, the demo's scenario, 1-70 listeners, 2026-12-07, 2-vCPU VM; "
            "docs/calibrations/2026-12-07-server-latency.yaml): the swarm's receive path "
            "is in it, so for real clients it is an upper bound."
        ),
    )
    client_setup: Duration = Field(
        0.010,
        ge=0,
        description=(
            "Time a joining client spends on its own side of the handshake (creating the "
            "offer, applying the answer, the DTLS crypto): about 10 ms for the swarm's "
            "aiortc clients (measured 2026-12-07); spacesim calibrate fits it from load "
            "runs' join times. Join time = 2 RTT (signalling, DTLS) + max(20 ms, RTT) (ICE: "
            "aioice paces its checks 20 ms apart) + this + the node's join work."
        ),
    )
    max_streams: Count | None = Field(
        None,
        description=(
            "Admission control: forwarded streams per node; null = none. A load run's "
            "embedded server enforces it too (spacesim serve --capacity)."
        ),
        json_schema_extra={"engines": list(BOTH)},  # (`engines` is shadowed here)
    )
    slots: Count = Field(
        policy.HEARD_AT_ONCE,
        ge=1,
        description="Speakers' streams each listener receives at once: the server's slots "
        "(spacesim serve --slots; a further speaker's packets are dropped until a slot "
        "frees). A load run's embedded server is started with it; another target has its "
        "own.",
        json_schema_extra={"engines": list(BOTH)},
    )
    socket_buffer: float = Field(
        524_288,
        gt=0,
        description="Bytes of datagrams a publisher's UDP socket at the server holds before "
        "the kernel drops what arrives (sk_rcvbuf): aioice asks SO_RCVBUF 262,144 for each "
        "host candidate's socket (aioice/ice.py, Connection.gather_candidates; "
        "turn.UDP_SOCKET_BUFFER_SIZE) and Linux doubles what is asked for its bookkeeping "
        "(socket(7), SO_RCVBUF; up to net.core.rmem_max). Packets a busy server has not "
        "read wait there: the queue's limit is this buffer, in datagrams "
        "(/ datagram_truesize), and how fast the node works through it (spacesim.sim.node).",
    )
    datagram_truesize: float = Field(
        832,
        gt=0,
        description="Bytes of a socket's receive buffer one audio datagram takes: the "
        "kernel charges each queued datagram's skb->truesize (its data allocation plus the "
        "sk_buff and skb_shared_info; net/ipv4/udp.c, __udp_enqueue_schedule_skb drops once "
        "sk_rmem_alloc exceeds sk_rcvbuf), not its length. Measured on loopback (Linux "
        "6.18): 832 bytes for datagrams up to ~190 bytes (an Opus frame with RTP and SRTP), "
        "so a 524,288-byte buffer holds 630 of them; 1,282 for 200-300 bytes.",
    )
    edge_delay: Duration = Field(
        0.0005,
        description="Added per hop between nodes (cascade): a packet a listener on another "
        "node than the room's origin hears crossed it once (the relay's send, the link, its "
        "receive). spacesim calibrate fits it from a cluster run's listeners (the median "
        "latency on the other node less the origin's).",
    )
    cpu_per_publisher_packet: Duration = Field(
        573e-6,
        ge=0,
        description="CPU the room's origin node spends per packet a publisher sends it, "
        "before the fan-out: the Python receive path (the event loop's wake-up and socket "
        "read, ICE demux, DTLS transport, SRTP unprotect, aiortc's receiver and jitter "
        "buffer, the tap, gate and slot) and the fan-out call's own overhead. 573 +- 13 us "
        "at 50 packets/s per speaker: spacesim calibrate on one node, runs with 0-3 "
        "talkers, 2026-12-07, 2-vCPU VM (docs/calibrations/2026-12-07-server-cpu.yaml; the "
        "stage alone drew ~0.03 core more per talker). spacesim calibrate fits it from "
        "runs with different numbers of speakers, or from a cluster run, whose other nodes "
        "forward without publishers; with one number of speakers on one node it is left "
        "in cpu_fixed (set it to 0 with such a calibration).",
    )
    cpu_per_relay_send: Duration = Field(
        2.2e-6,
        ge=0,
        description="CPU the origin node spends per packet per node it relays the packet to "
        "(encode, HMAC tag, sendto); measured apart (spacesim.server.cluster.Relay).",
    )
    cpu_per_relay_receive: Duration = Field(
        4.3e-6,
        ge=0,
        description="CPU a node spends per relayed packet it receives, before its fan-out "
        "(tag check, parse; the fan-out is cpu_per_packet per listener as on the origin); "
        "measured apart (spacesim.server.cluster.Relay).",
    )
    gc_pause_per_packet: Duration = Field(
        0.0,
        ge=0,
        description="Young garbage collections' pause (generations 0 and 1) per forwarded "
        "packet: the share of time a node is stopped by them is this times its packets per "
        "second (the collector runs after allocations, which follow packets). A packet or "
        "event arriving in a pause waits out the rest of it. 0: no pauses; spacesim "
        "calibrate fits it from the server's gc_pause records.",
    )
    gc_pause_length: Duration = Field(
        0.0,
        ge=0,
        description="Length of the young-collection pause a packet arriving in one sees: "
        "the length-biased mean E[L^2]/E[L] of those pauses (it waits a uniform share of it).",
    )
    gc_full_per_join: Duration = Field(
        0.0,
        ge=0,
        description="Full garbage collections' pause (generation 2: the whole heap, so "
        "rare and long) per listener join in the last second: CPython collects the whole "
        "heap once it has grown by a quarter since the last full collection (its gc module: "
        "long-lived objects pending > a quarter of the long-lived total), and a heap grows "
        "with connections, not with packets; in a steady audience there are none. A term "
        "of its own, so that their length does not stand for every pause's.",
    )
    gc_full_length: Duration = Field(
        0.0,
        ge=0,
        description="Length of the full-collection pause a packet arriving in one sees "
        "(length-biased mean, as gc_pause_length).",
    )
    asr_cost: float = Field(
        0.23,
        ge=0,
        description="Speech recognition, in core-seconds per second of audio of one stream "
        "a captioned space forwards (benchmarks/bench_captions.py: about 4.3 streams per "
        "core, so 0.23). It runs in the caption workers, not on the forwarding cores.",
    )
    caption_events: float = Field(
        4.0,
        ge=0,
        description="Caption events (partials and finals) the server sends every subscriber "
        "per second of captioned speech: a partial per 200 ms recognition job whose "
        "hypothesis changed, a final per utterance (measured 4.5 with two talkers on "
        "tests/load's tiny scenario, 2026-12-07). Charged like any event (cpu_per_event).",
    )
    recorded_packet_bytes: float = Field(
        57.0,
        ge=0,
        description="Bytes a recording writes per packet it stores (Opus stream copy: the "
        "packet plus Ogg page overhead; the shipped ~24 kbit/s clips average 55 B a packet). "
        "A recording is one stream, the speaker holding its floor (docs/protocol.md), so it "
        "grows by this times packets per second while anyone sends.",
    )


class Slo(_Model):
    """Service-level objectives; each unset one is not checked."""

    join_p95: Duration | None = None
    first_audio_p95: Duration | None = None
    audio_latency_p95: Duration | None = None
    delivery_ratio: Fraction | None = None
    hand_wait_p95: Duration | None = None

    def targets(self) -> list[tuple[str, str, float]]:
        """(metric, comparison, threshold) triples in `spacesim.results` metric names."""
        spec = [
            ("join_time", "p95", "<=", self.join_p95),
            ("first_audio", "p95", "<=", self.first_audio_p95),
            ("audio_latency", "p95", "<=", self.audio_latency_p95),
            ("delivery_ratio", "value", ">=", self.delivery_ratio),
            ("hand_wait", "p95", "<=", self.hand_wait_p95),
        ]
        return [(f"{m}.{stat}", op, v) for m, stat, op, v in spec if v is not None]


class SimSettings(_Model):
    """Simulator-only knobs.

    Simulator only: how the model samples and aggregates.
    """

    engines: ClassVar[tuple[str, ...]] = ("sim",)

    tick: Duration = Field(1.0, gt=0, description="Step for aggregated behaviour and samples.")
    latency_sample: Count = Field(50, description="Listeners per room whose audio is sampled.")
    warmup: Duration = Field(0.0, description="Samples before this time are not recorded.")


class LoadSettings(_Model):
    """Load-test-only knobs.

    Swarm only: how synthetic clients measure.
    """

    engines: ClassVar[tuple[str, ...]] = ("load",)

    probe_fraction: Fraction = Field(
        0.05,
        description="Share of listeners that decode (probes: mouth-to-ear latency, the jitter "
        "buffer's hold and audible audio); the rest only count RTP (lite).",
    )
    browser_probes: Count = Field(
        0,
        le=20,
        description="Headless Chromium listeners added to the run (one browser, a context "
        "each): NetEq's jitter buffer delay, concealment, loss and browser mouth-to-ear "
        "(browser_* records, attrs.client=browser). Needs Chromium (installed by "
        "scripts/setup-test-deps.sh) and playwright.",
    )


class Posts(_Model):
    """What users post beside spaces: voice posts, voice DMs and voice Fleets (gone 24 h
    after posting), as per-user daily rates over a population. The simulator prices what
    they cost the server over days of simulated time, aggregated per ``tick`` (uploads and
    plays are Poisson counts a tick, `spacesim.behaviour.voice_*`): bytes stored, upload
    and egress bytes, Fleets expired. The swarm's `Poster` user makes the same draws each
    second for the whole population and performs them over HTTP (`spacesim.load.poster`).
    ``users: 0`` (the default) turns the model off.
    """

    users: Count = Field(0, description="Users who post and play (0 = no posts model).")
    followers: float = Field(
        50.0, ge=0, description="Mean followers per user: the audience of their Fleets."
    )
    voice_posts_per_day: Rate = Field(
        parse_rate("0.2/d"), description="Voice posts (tweets) each user uploads (e.g. 0.2/d)."
    )
    voice_dms_per_day: Rate = Field(
        parse_rate("1/d"), description="Voice DMs each user sends; each is played once."
    )
    fleets_per_day: Rate = Field(parse_rate("0.5/d"), description="Fleets each user posts.")
    fleet_voice_share: Fraction = Field(
        0.3, description="Share of Fleets that are voice (text Fleets cost no audio)."
    )
    length_mean: Duration = Field(
        30.0, gt=0, description="Mean audio length (lognormal, capped at the server's 140 s)."
    )
    length_sigma: float = Field(0.8, gt=0, description="Shape of the length (log-space std).")
    bitrate: float = Field(
        32000.0,
        gt=0,
        description="Opus bitrate of the audio, bits per second.",
        json_schema_extra=engines(
            "sim",
            why="the swarm uploads the shipped clips' Opus packets as encoded (~22 kbit/s)",
        ),
    )
    plays_per_post: float = Field(
        20.0, ge=0, description="Mean plays a voice post gets (Poisson), each a full download."
    )
    fleet_view_share: Fraction = Field(
        0.2, description="Share of the author's followers who play a voice Fleet."
    )
    play_delay: Duration = Field(
        parse_duration("6h"),
        gt=0,
        description="Mean delay (exponential) from posting to a play; Fleet plays after "
        "24 h are lost with the Fleet.",
    )
    tick: Duration = Field(
        parse_duration("1h"),
        gt=0,
        description="Step of the aggregated posts model.",
        json_schema_extra=engines("sim", why="the swarm's poster steps every second"),
    )


# --------------------------------------------------------------------------- scenario


class Scenario(_Model):
    """A whole scenario; see the module docstring for units."""

    name: str = Field(
        min_length=1,
        max_length=80,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$",
        description="A slug: it names run directories.",
    )
    description: str = ""
    duration: Duration = Field(gt=0)
    seed: StrictInt = Field(1, ge=0)
    rooms: Rooms = Rooms()
    arrivals: Arrivals
    session: Session
    speaking: Speaking = Speaking()
    audience: Audience = Audience()
    moderation: Moderation = Moderation()
    features: Features = Features()
    posts: Posts = Posts()
    timeline: list[TimelineEntry] = Field(
        default_factory=list,
        description="Scripted actions at run times (e.g. {at: 5m, action: mute_all}).",
    )
    network: list[NetworkProfile] = Field(default_factory=lambda: [NetworkProfile()])
    server: Server = Server()
    slo: Slo = Slo()
    sim: SimSettings = SimSettings()
    load: LoadSettings = LoadSettings()

    @field_validator("network", mode="before")
    @classmethod
    def _one_or_many(cls, value: object) -> object:
        return [value] if isinstance(value, Mapping) else value

    @field_validator("network")
    @classmethod
    def _shares(cls, profiles: list[NetworkProfile]) -> list[NetworkProfile]:
        if not profiles:
            raise ValueError("at least one network profile is needed")
        total = sum(p.share for p in profiles)
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"profile shares must sum to 100%, got {total:.2%}")
        return profiles

    @model_validator(mode="after")
    def _times(self) -> Scenario:
        for i, entry in enumerate(self.timeline):
            if entry.at > self.duration:
                raise ValueError(
                    f"timeline[{i}].at: {entry.at:g} s is after the scenario's duration "
                    f"({self.duration:g} s)"
                )
        for name in ("starts_at", "ends_at"):
            at = getattr(self.rooms, name)
            if at is not None and at >= self.duration:
                raise ValueError(
                    f"rooms.{name}: {at:g} s is not before the scenario's duration "
                    f"({self.duration:g} s)"
                )
        return self

    @model_validator(mode="after")
    def _stage(self) -> Scenario:
        stage = 1 + self.rooms.cohosts + self.rooms.speakers
        if self.speaking.active_speakers > stage:
            raise ValueError(
                f"speaking.active_speakers: {self.speaking.active_speakers} exceeds the stage "
                f"(1 host + {self.rooms.cohosts} co-hosts + {self.rooms.speakers} speakers)"
            )
        return self

    def content_hash(self) -> str:
        """Hash of the resolved model: equal scenarios hash equal however they were written."""
        blob = json.dumps(self.model_dump(mode="json"), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    def audience_curve(self, horizon: float, step: float = 1.0, capped: bool = True) -> np.ndarray:
        """Expected listeners over all rooms at t = 0, step, 2·step, … up to `horizon`.

        Listeners arrive per the profile and stay a session drawn from `session`, so
        the audience is that of an M/G/∞ queue started empty (Ross, *Introduction to
        Probability Models*, §5.3.5: the time-dependent form of Little's law)::

            E[N(t)] = ∫₀ᵗ λ(s) · P(session > t - s) ds

        Arrivals per `step` bin are exact (`arrived`), taken at the bin's middle.
        `capped` holds each room at ``rooms.listener_cap`` (the server refuses the rest).
        The load test's users follow this curve; the sweeps size audiences by its peak.
        """
        if step <= 0 or not math.isfinite(horizon) or horizon < 0:
            raise ValueError(f"need step > 0 and a finite horizon >= 0, got {step}, {horizon}")
        n = int(horizon // step) + 1
        arrivals = np.diff(self.arrivals.arrived(np.arange(n + 1) * step))
        survive = self.session.survival((np.arange(n) + 0.5) * step)
        # E[N(t_j)] = Σ_{k<j} arrivals[k] · survive[j-k-1]: a causal convolution
        per_room = np.concatenate(([0.0], np.convolve(arrivals, survive)[: n - 1]))
        if capped and self.rooms.listener_cap is not None:
            per_room = np.minimum(per_room, self.rooms.listener_cap)
        out: np.ndarray = per_room * self.rooms.count
        return out

    def expected_audience(self) -> float:
        """Expected peak concurrent listeners over all rooms, caps and refusals aside."""
        return float(self.audience_curve(self.duration, self.duration / 4000, False).max())

    def with_audience(self, factor: float) -> Scenario:
        """The same rooms with `factor` times the arrivals: rates and burst sizes scale,
        so a steady stream stays steady and a burst stays a burst; sessions, speakers,
        behaviour per listener, caps and server limits do not.
        """
        if not (math.isfinite(factor) and factor > 0):
            raise ValueError(f"factor must be a finite number > 0, got {factor!r}")
        arr = self.model_dump(mode="json")["arrivals"]
        for key in ("rate", "start", "end", "base"):
            if key in arr:
                arr[key] *= factor
        for step in arr.get("steps", []):
            step["rate"] *= factor
        for burst in arr.get("bursts", []):
            burst["size"] = max(1, round(burst["size"] * factor))
        return Scenario.model_validate({**self.model_dump(mode="json"), "arrivals": arr})

    def to_yaml(self) -> str:
        """The resolved model in base units (seconds, per second, fractions)."""
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


# --------------------------------------------------------------------------- engines


#: Fields that describe a scenario rather than drive it: no engine is expected to read them.
DOCUMENTATION_FIELDS = frozenset({"description"})


def _models_in(annotation: Any) -> list[type[_Model]]:
    """The scenario models a field's annotation holds (through lists, unions, Annotated)."""
    if isinstance(annotation, type) and issubclass(annotation, _Model):
        return [annotation]
    out: list[type[_Model]] = []
    for arg in getattr(annotation, "__args__", ()) or ():
        out += _models_in(arg)
    meta = getattr(annotation, "__metadata__", None)
    if meta is not None and hasattr(annotation, "__origin__"):
        out += _models_in(annotation.__origin__)
    return out


def field_engines(
    model: type[_Model] | None = None, prefix: str = ""
) -> dict[str, tuple[type[_Model], str, tuple[str, ...], str]]:
    """Every leaf field of the scenario: path -> (model class, field, engines, note).

    A field's engines are its ``json_schema_extra["engines"]`` or its model's `engines`.
    List items appear as ``network[].rtt``; arrival kinds as ``arrivals<ramp>.over``.
    """
    model = model or Scenario
    out: dict[str, tuple[type[_Model], str, tuple[str, ...], str]] = {}
    for name, info in model.model_fields.items():
        path = f"{prefix}{name}"
        annotation = info.annotation
        children = _models_in(annotation)
        if children:
            many = getattr(annotation, "__origin__", None) is list
            for child in children:
                if len(children) > 1:
                    kind = child.model_fields["kind"].annotation.__args__[0]  # type: ignore[union-attr]
                    sub = f"{path}<{kind}>."
                else:
                    sub = f"{path}[]." if many else f"{path}."
                out.update(field_engines(child, sub))
            continue
        extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
        declared = extra.get("engines", model.engines)
        names = tuple(str(n) for n in declared) if isinstance(declared, list | tuple) else ()
        out[path] = (model, name, names, str(extra.get("engine_note", "")))
    return out


def engine_notes() -> list[str]:
    """Lines for `spacesim scenario show`: the fields one engine honours, and why.

    A model whose fields are all single-engine by its class default prints as ``server.*``
    with the last line of its docstring as the reason.
    """
    rows = field_engines()
    lines: list[str] = []
    done: set[type[_Model]] = set()
    for path, (model, _, names, note) in rows.items():
        if set(names) == set(ENGINE_NAMES) or path in DOCUMENTATION_FIELDS:
            continue
        siblings = [v for v in rows.values() if v[0] is model and set(v[2]) != set(ENGINE_NAMES)]
        if all(v[2] == names and not v[3] for v in siblings) and model.engines == names:
            if model in done:
                continue
            done.add(model)
            head = path.rsplit(".", 1)[0] + ".*"
            why = (model.__doc__ or "").strip().splitlines()[-1].strip()
        else:
            head, why = path, note
        lines.append(f"{head:<26} {'+'.join(names):<5} {why}".rstrip())
    return lines


# --------------------------------------------------------------------------- loading


_NAMED = re.compile(r"^([a-z_]+(?:\.[a-z_]+|\[\d+\])+): (.*)$", re.S)


def _path_of(loc: Sequence[int | str]) -> str:
    parts: list[str] = []
    for item in loc:
        if isinstance(item, int):
            parts.append(f"[{item}]")
        elif item in {"constant", "poisson", "ramp", "flash_crowd", "piecewise"} and parts:
            continue  # pydantic's tag for the union branch: not a field the user wrote
        elif str(item).startswith("function-"):
            continue
        else:
            parts.append(("." if parts else "") + str(item))
    return "".join(parts)


def _section_of(name: str) -> list[str]:
    """The sections (top-level fields holding a model) that have a field `name`."""
    found = []
    for section, info in Scenario.model_fields.items():
        ann = info.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel) and name in ann.model_fields:
            found.append(section)
    return found


def _apply_overrides(data: dict[str, Any], overrides: Sequence[str], source: str) -> None:
    """Apply ``PATH=VALUE`` edits; list items are addressed by index (``network.1.loss``).

    A bare name that is not a top-level field stands for the one section's field of that
    name (``captions=on`` is ``features.captions=on``); a name several sections have must
    be written with its section.
    """
    for item in overrides:
        path, sep, text = item.partition("=")
        keys = path.strip().split(".")
        if not sep or not all(keys):
            raise ScenarioError(source, [(f"--set {item}", "expected PATH=VALUE")])
        if len(keys) == 1 and keys[0] not in Scenario.model_fields:
            sections = _section_of(keys[0])
            if len(sections) > 1:
                reason = f"{keys[0]} is a field of {', '.join(sections)}: write SECTION.{keys[0]}"
                raise ScenarioError(source, [(f"--set {item}", reason)])
            keys = [*sections, keys[0]]
        node: Any = data
        for depth, key in enumerate(keys):
            last = depth == len(keys) - 1
            if isinstance(node, list):
                if not key.isdigit() or int(key) >= len(node):
                    where = ".".join(keys[:depth]) or "<top>"
                    reason = f"{where} is a list of {len(node)}: use an index 0..{len(node) - 1}"
                    raise ScenarioError(source, [(f"--set {item}", reason)])
                slot: Any = int(key)
            else:
                slot = key
                if not last and not isinstance(node.get(key), dict | list):
                    node[key] = {}
            if last:
                try:
                    node[slot] = yaml.safe_load(text)
                except yaml.YAMLError as exc:
                    reason = f"the value is not valid YAML: {getattr(exc, 'problem', exc)}"
                    raise ScenarioError(source, [(f"--set {item}", reason)]) from None
            else:
                node = node[slot]


def parse_scenario(
    data: object, source: str = "<scenario>", overrides: Sequence[str] = ()
) -> Scenario:
    """Validate a mapping; every fault is reported at once with its field path."""
    if not isinstance(data, dict):
        raise ScenarioError(source, [("", "a scenario must be a YAML mapping of fields")])
    data = copy.deepcopy(data)  # overrides must not leak into the caller's mapping
    if isinstance(data.get("network"), dict):  # one profile: a list of one, so indices work
        data["network"] = [data["network"]]
    _apply_overrides(data, overrides, source)
    try:
        return Scenario.model_validate(data)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            msg = err["msg"].removeprefix("Value error, ")
            path = _path_of(err["loc"])
            m = _NAMED.match(msg)  # a cross-field check names its field
            if m and (not path or m.group(1).startswith(path + ".")):
                path, msg = m.group(1), m.group(2)
            problems.append((path, msg))
        raise ScenarioError(source, problems) from None


def load_scenario(path: str | Path, overrides: Sequence[str] = ()) -> Scenario:
    """Read and validate a scenario file; errors name the file and the field."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ScenarioError(str(path), [("", f"cannot read file: {exc.strerror}")]) from None
    except UnicodeDecodeError as exc:
        raise ScenarioError(str(path), [("", f"not UTF-8 text (byte {exc.start})")]) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "YAML"
        problem = getattr(exc, "problem", None) or str(exc)
        raise ScenarioError(str(path), [(where, f"invalid YAML: {problem}")]) from None
    return parse_scenario(data, str(path), overrides)
