"""`SpaceClient` over a real server: `RoomClient` (HTTP, WebSocket) and `connect_audio`.

A client's network path is the scenario profile it was dealt: both directions get
``rtt / 2`` plus Exp(``jitter``) and ``loss``, as in the simulator, through
`spacesim.client.netem`'s user-space relays (this kernel has no netem).
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, TypeVar

import aiohttp

from spacesim.client.netem import Impairment
from spacesim.client.session import AudioLink, ClientError, RoomClient, connect_audio, refused
from spacesim.client.speaker import SpeakerTrack
from spacesim.load.api import OnRtp
from spacesim.scenario import NetworkProfile

__all__ = ["CONNECT_TIMEOUT", "LiveClient", "LiveLink", "Nodes", "impairments"]

T = TypeVar("T")

CONNECT_TIMEOUT = 20.0


def impairments(path: NetworkProfile | None, seed: int) -> tuple[Impairment, Impairment] | None:
    """The relays' impairments for a profile (None: plain path, nothing to impair)."""
    if path is None or (path.rtt <= 0 and path.jitter <= 0 and path.loss <= 0):
        return None
    rng = random.Random(seed)
    up, down = (
        Impairment(delay=path.rtt / 2, jitter=path.jitter, loss=path.loss,
                   seed=rng.getrandbits(32))
        for _ in range(2)
    )  # fmt: skip
    return up, down


class LiveLink:
    """A connected `AudioLink` as the behaviour sees it."""

    def __init__(self, link: AudioLink) -> None:
        self.link = link

    @property
    def join(self) -> dict[str, Any]:
        return self.link.join

    def alive(self) -> bool:
        return self.link.pc.connectionState not in ("closed", "failed")

    def datagrams(self) -> int | None:
        """RTP packets and RTCP sender reports taken off the socket so far (the direct
        receive path's counters, `spacesim.rtc.DirectRtp`): the server sends each
        connection an SR every 0.5-1.5 s even while every slot is silent."""
        rx = self.link.rx
        return None if rx is None else rx.rtp + rx.sender_reports

    async def close(self) -> None:
        await self.link.close()


async def _connected(link: AudioLink, timeout: float) -> None:
    """Wait until ICE + DTLS are up (``connect_audio`` returns after the answer).

    On aiortc's ``connectionstatechange`` event, not by polling: a poll's period would
    be added to every join time measured (half of it on average).
    """
    pc = link.pc
    done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def check() -> None:
        state = pc.connectionState
        if done.done():
            return
        if state == "connected":
            done.set_result(None)
        elif state in ("failed", "closed"):
            done.set_exception(ConnectionError(f"connection {state}"))

    pc.add_listener("connectionstatechange", check)
    try:
        check()
        try:
            await asyncio.wait_for(done, timeout)
        except TimeoutError:
            raise TimeoutError(f"not connected after {timeout} s") from None
    finally:
        pc.remove_listener("connectionstatechange", check)


async def _live(link: AudioLink) -> LiveLink:
    """`link` once connected; closed if it never connects (or the wait is cancelled)."""
    try:
        await _connected(link, CONNECT_TIMEOUT)
    except BaseException:
        await link.close()
        raise
    return LiveLink(link)


class Nodes:
    """The cluster nodes one swarm process knows: the target, then each join answer's
    node. Any node answers the API (docs/protocol.md, Cluster), so a client whose node
    refuses connections (its process died) goes on through another, as a real client
    behind a load balancer would be sent to a live one. A single server is the only
    node it knows: nothing changes there."""

    def __init__(self, base: str) -> None:
        self.urls = [base.rstrip("/")]
        self.dead: set[str] = set()

    def saw(self, url: str) -> None:
        """A node a join was placed on (so alive a moment ago)."""
        url = url.rstrip("/")
        if url not in self.urls:
            self.urls.append(url)
        self.dead.discard(url)

    def instead_of(self, url: str) -> str | None:
        """A node to use instead of `url`, whose port refused a connection."""
        self.dead.add(url.rstrip("/"))
        live = [u for u in self.urls if u not in self.dead]
        return live[0] if live else None


class LiveClient:
    """One user's `RoomClient`; `http` is the process's shared session, `nodes` the
    cluster nodes the process knows (`Nodes`; one per client if not shared)."""

    def __init__(
        self,
        base: str,
        user: str,
        http: aiohttp.ClientSession,
        *,
        moderator: bool = False,
        nodes: Nodes | None = None,
    ) -> None:
        self.rc = RoomClient(base, user, http, moderator=moderator)
        self.nodes = nodes if nodes is not None else Nodes(base)
        # a cluster's join answer names the node carrying this user's audio: the event
        # stream goes there too (served from the space's Redis channel), as a real
        # client of a cluster follows the node it was placed on
        self.node: RoomClient | None = None

    def _fail_over(self, url: str) -> bool:
        """`url` refused a connection: stop using it; False when no other node is known."""
        other = self.nodes.instead_of(url)
        if self.node is not None and self.node.base == url:
            self.node = None
        if self.rc.base != url:
            return True
        if other is None:
            return False
        self.rc = RoomClient(other, self.rc.user, self.rc.http, moderator=self.rc.moderator)
        return True

    async def _api(self, call: Callable[[RoomClient], Awaitable[T]]) -> T:
        """`call` on this client's node; once more on another if that one's port is closed."""
        try:
            return await call(self.rc)
        except ClientError as exc:
            if not exc.refused or not self._fail_over(self.rc.base):
                raise
        return await call(self.rc)

    @property
    def user(self) -> str:
        return self.rc.user

    @property
    def lacks(self) -> frozenset[str]:
        return frozenset()  # spacesim's own server does everything a scenario asks

    async def sign_in(self) -> None:
        """The user's dev token, before any request needs it (`spacesim.load.api.sign_in`)."""
        await self._api(lambda rc: rc.token())

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
        return await self._api(
            lambda rc: rc.create_space(
                title, who_may_speak, listener_cap, scheduled_for, captions=captions,
                recording=recording,
            )
        )  # fmt: skip

    async def start_space(self, space: str) -> None:
        await self._api(lambda rc: rc.lifecycle(space, "start"))

    async def end_space(self, space: str) -> None:
        await self._api(lambda rc: rc.lifecycle(space, "end"))

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
    ) -> LiveLink:
        link = await self._api(
            lambda rc: connect_audio(
                rc,
                space,
                on_rtp,
                publish=publish,
                impair=impairments(path, seed),
                read_every=read_every,
                avoid=avoid,
            )
        )
        node = link.join.get("node")
        url = node.get("url") if isinstance(node, dict) else None
        if isinstance(url, str):
            self.nodes.saw(url)
        if isinstance(url, str) and url.rstrip("/") != self.rc.base:
            self.node = RoomClient(url, self.rc.user, self.rc.http, moderator=self.rc.moderator)
        else:
            self.node = None
        return await _live(link)

    async def act(self, space: str, action: str, **fields: str) -> dict[str, Any]:
        return await self._api(lambda rc: rc.act(space, action, **fields))

    async def moderate(
        self, space: str, action: str, target: str | None = None, report: int | None = None
    ) -> dict[str, Any]:
        return await self._api(lambda rc: rc.moderate(space, action, target, report))

    async def leave(self, space: str) -> None:
        await self._api(lambda rc: rc.leave(space))

    async def events(self, space: str) -> AsyncIterator[dict[str, Any]]:
        """The stream, on the audio's node; a refused connect (the node died) is raised
        as it is (the caller learns its node is gone), and the next one goes elsewhere."""
        rc = self.node or self.rc
        try:
            async for msg in rc.events(space):
                yield msg
        except aiohttp.ClientConnectorError as exc:
            if refused(exc):
                self._fail_over(rc.base)
            raise

    async def follow(self, user: str) -> None:
        await self._api(lambda rc: rc.follow(user))

    async def cut_clip(self, space: str, duration: float = 30.0) -> dict[str, Any]:
        return await self.rc.cut_clip(space, duration)

    async def recording_info(self, space: str) -> dict[str, Any]:
        return await self.rc.recording_info(space)

    async def download(
        self, space: str, resource: str, first: int = 0, last: int | None = None
    ) -> bytes:
        return await self.rc.download(space, resource, first, last)

    async def connect_replay(
        self,
        space: str,
        on_rtp: OnRtp,
        *,
        offset: float = 0.0,
        path: NetworkProfile | None = None,
        seed: int = 0,
    ) -> LiveLink:
        link = await connect_audio(
            self.rc, space, on_rtp, impair=impairments(path, seed), replay=offset
        )
        return await _live(link)
