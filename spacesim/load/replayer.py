"""Replay listeners: people who play a recorded space after it ended, gevent-free.

A `ReplayCrowd` per ended recorded space draws its arrivals once a second
(`behaviour.replay_arrivals`, ``features.replay_rate``) until the run stops, and runs
each arrival as a `ReplaySession`, concurrently on the same loop. In a Locust run the
space's `spacesim.load.users.Host` starts its crowd once the space has ended (a rate of
arrivals per ended space, which Locust's user count, the live audience's, cannot
express); `spacesim.load.dryrun` does the same without Locust.

A session decides, through `spacesim.behaviour` as the simulator does, whether it plays
over HTTP (``features.replay_http_share``), how long it listens (``session``, at most
the recording) and its network path (WebRTC only: the user-space relays carry UDP; HTTP
goes direct). It plays from the start:

* WebRTC: ``POST .../replay`` with a listen-only offer, then counts the RTP payloads the
  server sends (the file's Opus packets) until it has listened long enough or the
  server closed the connection after the recording's end;
* HTTP: ``GET .../recording/info``, then range requests of ``GET .../recording`` as a
  player reads ahead (`behaviour.player_bytes`), paced by the time it has played.

Records (role ``replay``): ``replay_started`` (request -> first audio, attrs.via) once
audio arrives, and ``egress_bytes`` (what the server sent it, attrs.via) when it stops
or the run does. Requests reported: ``replay_start`` and, on failure, ``replay``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from spacesim import behaviour
from spacesim.client import rtp
from spacesim.load.api import Context, Link, sign_in
from spacesim.load.host import ACTION_TIMEOUT, Room, quiet

__all__ = ["FIRST_AUDIO_TIMEOUT", "ReplayCrowd", "ReplaySession", "crowd_after"]

log = logging.getLogger("spacesim.load")

TICK = 1.0  # seconds between arrival draws, and a session's checks
FIRST_AUDIO_TIMEOUT = 10.0


class ReplaySession:
    """One replay listener (all of it runs on the context's asyncio loop)."""

    def __init__(self, ctx: Context, space: str, n: int | None = None) -> None:
        self.ctx = ctx
        sc = ctx.sc
        self.space = space
        self.n = next(ctx.ids) if n is None else n
        self.user = f"r-{ctx.tag}-{self.n}"
        rng = ctx.rng
        self.http = behaviour.replays_over_http(sc.features, rng)
        self.length = behaviour.session_length(sc.session, rng)
        path = behaviour.network_path(sc.network, rng)
        self.path = path if ctx.network and not self.http else None
        self.seed = int(rng.uniform() * 2**32)
        self.via = "http" if self.http else "webrtc"
        self.client = ctx.clients(self.user)
        self.link: Link | None = None
        self.bytes = 0  # what the server sent us so far
        self.started = False  # replay_started recorded
        self.first_ns: int | None = None  # ctx.clock() at the first audio
        self.heard_at: float | None = None  # loop time of the first audio
        self.counted = False  # egress recorded
        self._closing: asyncio.Task[None] | None = None

    async def run(self) -> str:
        """Play, stay, stop: ``"done"``, or ``"failed"`` (reported as a ``replay`` failure)."""
        t = time.monotonic()
        try:
            await sign_in(self.client)  # before the start clock, as a listener's join
            if self.http:
                await self._download()
            else:
                await self._replay()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.ctx.report("replay", time.monotonic() - t, exc)
            return "failed"
        finally:
            await self.close()
        return "done"

    def _heard(self, start_ns: int) -> None:
        """First audio: a ``replay_started`` record and a ``replay_start`` request."""
        if self.started:
            return
        self.started = True
        self.heard_at = asyncio.get_running_loop().time()
        at = self.first_ns if self.first_ns is not None else self.ctx.clock()
        took = (at - start_ns) / 1e9
        self.ctx.report("replay_start", took, None)
        self.ctx.add("replay_started", self.space, self.user, "replay", took, {"via": self.via})

    def _played(self) -> float:
        if self.heard_at is None:
            return 0.0
        return asyncio.get_running_loop().time() - self.heard_at

    async def _replay(self) -> None:
        ctx = self.ctx
        clock = ctx.clock

        def on_rtp(slot: int, packet: bytes, arrival_ns: int | None) -> None:
            body = rtp.payload(packet)
            if body is None:
                return
            self.bytes += len(body)
            if self.first_ns is None:
                self.first_ns = clock()

        start_ns = clock()
        self.link = link = await self.client.connect_replay(
            self.space, on_rtp, path=self.path, seed=self.seed
        )
        listen = min(self.length, float(link.join.get("duration_s") or 0.0))
        while link.alive():
            if self.first_ns is not None:
                self._heard(start_ns)
                if self._played() >= listen:
                    return
            elif (clock() - start_ns) / 1e9 > FIRST_AUDIO_TIMEOUT:
                raise TimeoutError("no audio replayed")
            await asyncio.sleep(min(TICK / 10, max(listen - self._played(), 0.01)))
        if self.first_ns is not None:  # the server closed it after the recording's end
            self._heard(start_ns)

    async def _download(self) -> None:
        ctx = self.ctx
        start_ns = ctx.clock()
        info = await asyncio.wait_for(self.client.recording_info(self.space), ACTION_TIMEOUT)
        size, duration = int(info.get("bytes") or 0), float(info.get("duration_s") or 0.0)
        listen = min(self.length, duration)
        while True:
            played = min(self._played(), listen)
            want = behaviour.player_bytes(played, duration, size)
            while self.bytes < want:
                last = min(self.bytes + behaviour.PLAYER_CHUNK, want) - 1
                data = await asyncio.wait_for(
                    self.client.download(self.space, "recording", self.bytes, last),
                    ACTION_TIMEOUT,
                )
                if not data:
                    return  # the file is shorter than its info said
                self.bytes += len(data)
                if self.first_ns is None:
                    self.first_ns = ctx.clock()
                    self._heard(start_ns)
            if played >= listen or self.bytes >= size:
                if played < listen:  # everything is fetched: play it out
                    await asyncio.sleep(listen - played)
                return
            await asyncio.sleep(min(TICK, max(listen - played, 0.01)))

    async def close(self) -> None:
        if self._closing is None:
            self._closing = asyncio.get_running_loop().create_task(self._close())
        await asyncio.shield(self._closing)

    async def _close(self) -> None:
        if self.link is not None:
            await quiet(self.link.close())
        if not self.counted and (self.started or self.bytes):
            self.counted = True
            attrs: dict[str, Any] = {"via": self.via}
            self.ctx.add("egress_bytes", self.space, self.user, "replay", self.bytes, attrs)


class ReplayCrowd:
    """The replay listeners of one ended recorded space, arriving until it is closed."""

    def __init__(self, ctx: Context, space: str) -> None:
        self.ctx = ctx
        self.space = space
        self.sessions: set[ReplaySession] = set()
        self.tasks: set[asyncio.Task[Any]] = set()
        self.closed = False
        self.arrived = 0

    async def run(self) -> None:
        """Draw arrivals every `TICK` s (`behaviour.replay_arrivals`), each a session."""
        loop = asyncio.get_running_loop()
        features = self.ctx.sc.features
        due = loop.time()
        while not self.closed:
            for _ in range(behaviour.replay_arrivals(features, TICK, self.ctx.rng)):
                self.arrived += 1
                sess = ReplaySession(self.ctx, self.space)
                self.sessions.add(sess)
                task = loop.create_task(self._one(sess))
                self.tasks.add(task)
                task.add_done_callback(self.tasks.discard)
            due += TICK
            await asyncio.sleep(max(due - loop.time(), 0.0))

    async def _one(self, sess: ReplaySession) -> None:
        try:
            await sess.run()
        finally:
            self.sessions.discard(sess)

    async def close(self) -> None:
        """Stop arrivals; the sessions still playing stop and count their egress."""
        self.closed = True
        for t in list(self.tasks):
            t.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        for sess in list(self.sessions):
            await sess.close()


def crowd_after(room: Room) -> ReplayCrowd | None:
    """The replay crowd of a host's room once it has ended, if it was recorded and
    ``features.replay_rate`` brings anyone."""
    if not (room.ended and room.recording and room.space):
        return None
    if room.sc.features.replay_rate <= 0:
        return None
    return ReplayCrowd(room.ctx, room.space)
