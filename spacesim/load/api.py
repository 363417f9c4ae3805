"""The seam between the swarm's behaviour and a server: a client interface and a context.

`spacesim.load.host.Room` and `spacesim.load.listener.ListenerSession` decide what a
host and a listener do (through `spacesim.behaviour`) and talk to a server only through
a `SpaceClient`. `spacesim.load.live.LiveClient` is the real one (HTTP, WebSocket,
WebRTC); tests/load/fakes.py has an in-memory one over `spacesim.policy.Space`. Nothing
here imports gevent or Locust: the behaviour runs on any asyncio loop, and Locust users
(`spacesim.load.users`) are shells around it that turn `Context.report` calls into
Locust request events.

Refusals are `spacesim.client.session.ClientError` (HTTP status, protocol error code).
A server that is not spacesim's (a *target*: `spacesim.load.targets`) may lack an action
altogether: its driver raises `Unsupported`, and the behaviour records it
(`Context.unsupported`: an ``action_unsupported`` record named after the action) so the
run's summary lists what the scenario asked for and the target could not do.
"""

from __future__ import annotations

import itertools
import random
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from spacesim.behaviour import PyRng
from spacesim.client.speaker import SpeakerTrack
from spacesim.results import Recorder
from spacesim.scenario import NetworkProfile, Scenario

__all__ = [
    "ClientFactory",
    "Context",
    "Link",
    "OnRtp",
    "Report",
    "SpaceClient",
    "Unsupported",
    "sign_in",
]

#: `connect_audio`'s receive callback: (slot, RTP packet, monotonic arrival ns or None).
OnRtp = Callable[[int, bytes, "int | None"], None]
#: A measured request, to Locust (or anything else): (name, seconds, exception or None).
Report = Callable[[str, float, "BaseException | None"], None]


class Unsupported(Exception):
    """The target has no such action (e.g. Janus has no hand raises): never a failure of
    the run, never silently dropped -- the caller records it with `Context.unsupported`."""

    def __init__(self, action: str, detail: str = "") -> None:
        super().__init__(
            f"{action}: not supported by the target" + (f" ({detail})" if detail else "")
        )
        self.action = action
        self.detail = detail


class Link(Protocol):
    """One participant's audio connection (connected when `connect_audio` returns)."""

    @property
    def join(self) -> dict[str, Any]:
        """The join answer (``participant``, ``role``, ``space`` snapshot, ...)."""
        ...

    def alive(self) -> bool:
        """False once the connection closed or failed (ICE/DTLS), whatever the audio."""
        ...

    def datagrams(self) -> int | None:
        """Media datagrams (RTP and RTCP) received from the server so far, a liveness
        signal that keeps coming while the room is silent; None: the link cannot tell."""
        ...

    async def close(self) -> None: ...


#: Seconds with nothing from the server (RTP or an RTCP sender report) after which the
#: node carrying a link counts as gone: the longest SR interval (1.5 s,
#: `spacesim.rtc.writer.SenderReports`, RFC 3550's randomised 0.5-1.5 s) plus 1 s for a
#: loaded server's or client's loop. A silent room still sends SRs: not a failure.
LIVENESS = 2.5
WATCH = 0.25  # seconds between a watchdog's looks at a link's counters


class Silence:
    """How long a link has received nothing from the server (`Link.datagrams`)."""

    def __init__(self) -> None:
        self.seen = -1  # the link's count at the last look
        self.at = time.monotonic()  # when that count last grew (or the link connected)

    def reset(self) -> None:
        """A new link: its clock starts now."""
        self.seen, self.at = -1, time.monotonic()

    def lost(self, link: Link) -> bool | None:
        """True once nothing has come for `LIVENESS` s; None: the link cannot tell."""
        n = link.datagrams()
        if n is None:
            return None
        now = time.monotonic()
        if n != self.seen:
            self.seen, self.at = n, now
            return False
        return now - self.at > LIVENESS


class SpaceClient(Protocol):
    """One user's requests to a server (docs/protocol.md)."""

    @property
    def user(self) -> str: ...

    @property
    def lacks(self) -> frozenset[str]:
        """Features the target does not have that are asked for when a space is created
        (``schedule``, ``listener_cap``, ``captions``, ``recording``): the host creates
        the space without them and records each as unsupported. Other actions the
        target lacks raise `Unsupported` when called."""
        ...

    async def create_space(
        self,
        title: str,
        who_may_speak: str,
        listener_cap: int | None = None,
        scheduled_for: float | None = None,
        *,
        captions: bool = False,
        recording: bool = False,
    ) -> str:
        """`captions` and `recording` on at creation (docs/protocol.md)."""
        ...

    async def start_space(self, space: str) -> None: ...

    async def end_space(self, space: str) -> None: ...

    async def connect_audio(
        self,
        space: str,
        on_rtp: OnRtp,
        *,
        publish: SpeakerTrack | None = None,
        path: NetworkProfile | None = None,
        read_every: float | None = None,
        seed: int = 0,
        avoid: Sequence[str] = (),
    ) -> Link:
        """Join `space` with audio and wait until connected; `path` is the network profile
        the client's datagrams go through (None: direct), `seed` its random source,
        `avoid` the cluster nodes not to be placed on (a target without nodes ignores it)."""
        ...

    async def act(self, space: str, action: str, **fields: str) -> dict[str, Any]: ...

    async def moderate(
        self, space: str, action: str, target: str | None = None, report: int | None = None
    ) -> dict[str, Any]: ...

    async def leave(self, space: str) -> None: ...

    def events(self, space: str) -> AsyncIterator[dict[str, Any]]:
        """The space's event stream, its ``hello`` message first."""
        ...

    async def follow(self, user: str) -> None: ...

    async def cut_clip(self, space: str, duration: float = 30.0) -> dict[str, Any]:
        """A clip of the recording's last `duration` s (``no_recording`` if none)."""
        ...

    async def recording_info(self, space: str) -> dict[str, Any]:
        """``{"status", "duration_s", "bytes", ...}`` of the space's recording."""
        ...

    async def download(
        self, space: str, resource: str, first: int = 0, last: int | None = None
    ) -> bytes:
        """Bytes `first`..`last` (inclusive) of ``recording`` or ``clips/{id}``."""
        ...

    async def connect_replay(
        self,
        space: str,
        on_rtp: OnRtp,
        *,
        offset: float = 0.0,
        path: NetworkProfile | None = None,
        seed: int = 0,
    ) -> Link:
        """Hear an ended space's recording over WebRTC from `offset` s; connected when it
        returns; its ``join`` is the replay answer (``duration_s``)."""
        ...


async def sign_in(client: SpaceClient) -> None:
    """Get the client's credentials now, if it has a ``sign_in()`` coroutine (optional:
    `LiveClient` mints its dev token), so that a session's join time does not include a
    sign-in that a real client has done long before it joins."""
    fetch = getattr(client, "sign_in", None)
    if fetch is not None:
        await fetch()


class ClientFactory(Protocol):
    def __call__(self, user: str, *, moderator: bool = False) -> SpaceClient: ...


def _no_report(name: str, seconds: float, exc: BaseException | None) -> None:
    return None


@dataclass
class Context:
    """What the behaviour classes share in one process: the scenario, a client factory,
    where records go, the clocks and a few registries.

    ``now()`` is run time (seconds since the run's t0, ``t0`` in unix seconds);
    ``clock()`` the nanosecond clock latencies are read on (this machine's monotonic
    clock, or the server's through an offset, ``offset_ns``). ``network`` False gives
    every client a direct path whatever the scenario's ``network``.
    """

    sc: Scenario
    clients: ClientFactory
    recorder: Recorder
    report: Report = _no_report
    t0: float = field(default_factory=time.time)
    clock: Callable[[], int] = time.monotonic_ns
    offset_ns: int = 0
    network: bool = True
    tag: str = "0"  # makes user ids unique across processes
    ids: Iterator[int] = field(default_factory=itertools.count)
    rng: PyRng = field(default_factory=lambda: PyRng(random.Random()))
    spaces: list[str] = field(default_factory=list)
    ended: set[str] = field(default_factory=set)  # spaces known to have ended
    active: dict[str, str] = field(default_factory=dict)  # listener -> space (report targets)
    joined: int = 0  # listener joins accepted
    refused: int = 0  # listener joins refused

    def now(self) -> float:
        return time.time() - self.t0

    def add(
        self,
        kind: str,
        room: str,
        participant: str,
        role: str,
        value: float = float("nan"),
        attrs: dict[str, Any] | None = None,
    ) -> None:
        self.recorder.add(kind, self.now(), room, participant, role, value, attrs)

    def unsupported(self, action: str, room: str, participant: str, role: str) -> None:
        """The target lacks `action`: an ``action_unsupported`` record (attrs.action),
        which the run's summary counts per action."""
        self.add("action_unsupported", room, participant, role, 1.0, {"action": action})
