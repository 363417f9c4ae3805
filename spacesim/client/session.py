"""Signalling for synthetic clients, written from docs/protocol.md (never server internals).

`RoomClient` speaks the HTTP API for one user; `connect_audio` makes the WebRTC offer
the protocol describes (an optional publish section, then `slots` listen sections),
joins with it, and receives what each listen slot gets at the socket, without aiortc's
receive path or any decoding (`spacesim.rtc.receive_rtp_direct`).
"""

from __future__ import annotations

import errno
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiortc import MediaStreamTrack, RTCPeerConnection, RTCSessionDescription

from spacesim import rtc
from spacesim.client.netem import Impairment, UdpRelay, blackhole_candidates, relay_answer

__all__ = ["AudioLink", "ClientError", "RoomClient", "connect_audio", "refused"]


#: The server's close code for an event stream whose token expired (docs/protocol.md).
TOKEN_EXPIRED_CLOSE = 4401


def refused(exc: BaseException) -> bool:
    """A connect the peer's kernel refused (ECONNREFUSED: nothing listens on the port, as
    after the server process died), as opposed to a timeout or a reset mid-request, which
    a live but busy server can cause too. aiohttp raises ``ClientConnectorError`` with
    the socket's error as ``os_error`` (aiohttp/connector.py ``_wrap_create_connection``).
    """
    os_error = getattr(exc, "os_error", None)
    return isinstance(exc, aiohttp.ClientConnectorError) and (
        isinstance(os_error, ConnectionRefusedError)
        or getattr(os_error, "errno", None) == errno.ECONNREFUSED
    )


class ClientError(Exception):
    """The server refused a request: HTTP status, protocol error code and its reason.
    ``refused``: the server could not be reached because its port is closed (`refused`)."""

    def __init__(self, status: int, code: str, reason: str, *, refused: bool = False) -> None:
        super().__init__(f"{status} {code}: {reason}")
        self.status = status
        self.code = code
        self.reason = reason
        self.refused = refused


class RoomClient:
    """One user's view of a server: a token and the protocol's requests."""

    def __init__(
        self, base: str, user: str, http: aiohttp.ClientSession, *, moderator: bool = False
    ) -> None:
        self.base = base.rstrip("/")
        self.user = user
        self.http = http
        self.moderator = moderator  # a platform moderator (dev tokens carry the grant)
        self._token: str | None = None

    async def _call(self, method: str, path: str, body: Any = None, auth: bool = True) -> Any:
        try:
            return await self._call_once(method, path, body, auth)
        except ClientError as exc:  # dev tokens are short-lived: mint a new one, once
            if not (auth and exc.status == 401 and exc.reason.startswith("expired")):
                raise
            self._token = None
            return await self._call_once(method, path, body, auth)

    async def _call_once(self, method: str, path: str, body: Any, auth: bool) -> Any:
        headers = {"Authorization": f"Bearer {await self.token()}"} if auth else {}
        try:
            async with self.http.request(
                method, f"{self.base}{path}", json=body, headers=headers
            ) as r:
                try:
                    data = await r.json(content_type=None)
                except ValueError:
                    raise ClientError(r.status, "bad_response", "not a spacesim server") from None
                if r.status >= 400:
                    if not isinstance(data, dict):
                        raise ClientError(r.status, "bad_response", str(data)[:200])
                    raise ClientError(r.status, data.get("error", "?"), data.get("reason", ""))
                return data
        except aiohttp.ClientConnectionError as exc:
            raise ClientError(
                0, "unreachable", f"{self.base}: {exc}", refused=refused(exc)
            ) from None

    async def token(self) -> str:
        """A dev-mode token for this user (minted once, again when it expires)."""
        if self._token is None:
            body = {"user": self.user} | ({"moderator": True} if self.moderator else {})
            data = await self._call("POST", "/v1/dev/token", body, auth=False)
            self._token = str(data["token"])
        return self._token

    async def create_space(
        self,
        title: str = "",
        who_may_speak: str = "everyone",
        listener_cap: int | None = None,
        scheduled_for: float | None = None,
        *,
        captions: bool = False,
        recording: bool = False,
    ) -> str:
        """Create a space hosted by this user; returns its id.

        `listener_cap`: joins beyond this many listeners are refused (``room_full``);
        `scheduled_for` (unix seconds): the space waits, scheduled, until the host starts it;
        `captions`, `recording`: live captions on, the host records (docs/protocol.md).
        """
        body: dict[str, Any] = {"title": title, "who_may_speak": who_may_speak}
        if captions:
            body["captions"] = True
        if recording:
            body["recording"] = True
        if listener_cap is not None:
            body["listener_cap"] = listener_cap
        if scheduled_for is not None:
            body["scheduled_for"] = scheduled_for
        data = await self._call("POST", "/v1/spaces", body)
        return str(data["id"])

    async def cut_clip(self, space: str, duration: float = 30.0) -> dict[str, Any]:
        """Cut the last `duration` seconds (<= 30) of the space's recording into a clip."""
        result: dict[str, Any] = await self._call(
            "POST", f"/v1/spaces/{space}/clips", {"duration": duration}
        )
        return result

    async def recording_info(self, space: str) -> dict[str, Any]:
        """The recording's ``status``, ``duration_s`` and ``bytes`` (docs/protocol.md)."""
        result: dict[str, Any] = await self._call("GET", f"/v1/spaces/{space}/recording/info")
        return result

    async def download(
        self, space: str, resource: str, first: int = 0, last: int | None = None
    ) -> bytes:
        """Bytes `first`..`last` (inclusive; None: to the end) of a space's file, ``recording``
        or ``clips/{id}``, with a ``Range`` request as a player makes (206; 200 for all)."""
        headers = {"Authorization": f"Bearer {await self.token()}"}
        if first or last is not None:
            headers["Range"] = f"bytes={first}-{'' if last is None else last}"
        url = f"{self.base}/v1/spaces/{space}/{resource}"
        try:
            async with self.http.get(url, headers=headers) as r:
                if r.status >= 400:
                    try:
                        data = await r.json(content_type=None)
                    except ValueError:
                        data = None
                    if not isinstance(data, dict):
                        raise ClientError(r.status, "bad_response", f"HTTP {r.status}")
                    raise ClientError(r.status, data.get("error", "?"), data.get("reason", ""))
                return await r.read()
        except aiohttp.ClientConnectionError as exc:
            raise ClientError(
                0, "unreachable", f"{self.base}: {exc}", refused=refused(exc)
            ) from None

    async def replay(self, space: str, sdp: str, offset: float = 0.0) -> dict[str, Any]:
        """Hear the recording over WebRTC from `offset` s: ``{"sdp", "offset", "duration_s"}``."""
        result: dict[str, Any] = await self._call(
            "POST", f"/v1/spaces/{space}/replay", {"sdp": sdp, "offset": offset}
        )
        return result

    async def spaces(self, status: str | None = None, limit: int = 100) -> dict[str, Any]:
        """The server's live and scheduled spaces, newest first (`status`: only those)."""
        query = f"?limit={limit}" + (f"&status={status}" if status else "")
        return dict(await self._call("GET", f"/v1/spaces{query}"))

    async def space(self, space: str) -> dict[str, Any]:
        """The space's bounded snapshot (counts, stage, first hands; docs/protocol.md)."""
        result: dict[str, Any] = await self._call("GET", f"/v1/spaces/{space}")
        return result

    async def participants(
        self, space: str, role: str | None = None, page_size: int = 100
    ) -> AsyncIterator[dict[str, str]]:
        """Everyone present (``{"user", "role"}``), in join order, fetched page by page."""
        after: str | None = None
        while True:
            query = f"limit={page_size}" + (f"&role={role}" if role else "")
            query += f"&after={after}" if after else ""
            page = await self._call("GET", f"/v1/spaces/{space}/participants?{query}")
            for entry in page["participants"]:
                yield entry
            after = page.get("next")
            if after is None:
                return

    async def lifecycle(self, space: str, action: str) -> None:
        """The host starts (``start``) or ends (``end``) the space."""
        await self._call("POST", f"/v1/spaces/{space}/{action}", {})

    async def follow(self, user: str) -> None:
        """Follow `user` (``POST /v1/follows``)."""
        await self._call("POST", "/v1/follows", {"user": user})

    async def join(
        self, space: str, sdp: str | None = None, avoid: Sequence[str] = ()
    ) -> dict[str, Any]:
        """`avoid`: cluster nodes not to place the audio on (docs/protocol.md, Cluster)."""
        body: dict[str, Any] = {"sdp": sdp} if sdp is not None else {}
        if avoid:
            body["avoid"] = list(avoid)
        result: dict[str, Any] = await self._call("POST", f"/v1/spaces/{space}/join", body)
        return result

    async def act(self, space: str, action: str, **fields: str) -> dict[str, Any]:
        result: dict[str, Any] = await self._call(
            "POST", f"/v1/spaces/{space}/actions", {"action": action, **fields}
        )
        return result

    async def moderate(
        self, space: str, action: str, target: str | None = None, report: int | None = None
    ) -> dict[str, Any]:
        """Resolve a report as a platform moderator: dismiss, remove, block or end."""
        body: dict[str, Any] = {"action": action}
        if target is not None:
            body["target"] = target
        if report is not None:
            body["report"] = report
        result: dict[str, Any] = await self._call("POST", f"/v1/moderation/spaces/{space}", body)
        return result

    async def leave(self, space: str) -> None:
        await self._call("POST", f"/v1/spaces/{space}/leave", {})

    async def events(self, space: str, hello: bool = True) -> AsyncIterator[dict[str, Any]]:
        """The space's event stream: every message the server sends on it.

        The first is the ``hello`` (``{"type": "hello", "space": snapshot, "clock_ns"}``),
        yielded as it always was; `hello=False` skips it. Events carry ``clock_ns``.
        When the server closes the stream because the token expired (close code 4401),
        the client mints a new token and reconnects (without yielding that hello);
        events in between are missed.
        """
        url = f"{self.base}/v1/spaces/{space}/events"
        while True:
            headers = {"Authorization": f"Bearer {await self.token()}"}
            async with self.http.ws_connect(url, headers=headers) as ws:
                first = True
                async for msg in ws:
                    if msg.type == aiohttp.WSMsgType.TEXT:
                        data = msg.json()
                        skip = first and not hello and data.get("type") == "hello"
                        first = False
                        if not skip:
                            yield data
                if ws.close_code != TOKEN_EXPIRED_CLOSE:
                    return
            self._token = None
            hello = False


@dataclass
class AudioLink:
    """A participant's WebRTC connection, its receive path and, if impaired, the relays."""

    pc: RTCPeerConnection
    relays: list[UdpRelay]
    join: dict[str, Any]
    rx: rtc.DirectRtp | None = None  # counters of the direct receive path (None: no slots)

    async def close(self) -> None:
        await self.pc.close()
        for relay in self.relays:
            await relay.close()


async def connect_audio(
    client: RoomClient,
    space: str,
    on_rtp: rtc.OnRtp,
    *,
    publish: MediaStreamTrack | None = None,
    slots: int = 3,
    impair: tuple[Impairment, Impairment] | None = None,
    read_every: float | None = None,
    replay: float | None = None,
    avoid: Sequence[str] = (),
) -> AudioLink:
    """Join `space` with audio; `on_rtp(slot, packet, arrival_ns)` gets every RTP packet,
    decrypted, with the monotonic time it reached the socket.

    `on_rtp` runs on the event loop (no task per packet), with the whole RTP packet as
    bytes; `spacesim.client.rtp` reads it. By default it runs in the socket's callback;
    with `read_every` (s), once audio flows, on `spacesim.rtc.BatchReader`'s timer
    (kernel arrival times; see `spacesim.rtc.receive_rtp_direct`).

    `impair` = (client -> server, server -> client) puts a user-space relay between the
    client and the server's ICE candidates (the kernel here has no netem).

    `replay` (s): instead of joining, hear the ended space's recording from that offset
    (``POST .../replay`` with the same offer; the link's ``join`` is that answer).

    `avoid`: cluster nodes the join must not be placed on (the node just lost).
    """
    pc = rtc.new_peer_connection()
    if publish is not None:
        pc.addTransceiver(publish, direction="sendonly")
    listen = [pc.addTransceiver("audio", direction="recvonly") for _ in range(slots)]
    await pc.setLocalDescription(await pc.createOffer())
    offer = pc.localDescription.sdp
    if impair is not None:
        # The server must not reach the client directly, or ICE nominates the direct path
        # and the relay carries nothing (netem's docstring): offer dead candidates only.
        offer = blackhole_candidates(offer)
    try:
        if replay is None:
            data = await client.join(space, offer, avoid)
        else:
            data = await client.replay(space, offer, replay)
    except BaseException:
        await pc.close()
        raise
    answer = str(data["sdp"])
    relays: list[UdpRelay] = []
    if impair is not None:
        answer, relays = await relay_answer(answer, impair[0], impair[1])
    link = AudioLink(pc, relays, data)
    try:
        await pc.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))
        if listen:
            link.rx = rtc.receive_rtp_direct(
                [t.receiver for t in listen], on_rtp, read_every=read_every
            )
    except BaseException:
        await link.close()
        raise
    return link
