"""The Janus target driver: a `SpaceClient` over Janus's VideoRoom or AudioBridge plugin.

What a spacesim space becomes on Janus (API: janus.conf.meetecho.com/docs/videoroom,
/docs/audiobridge):

* a space is a room (``create`` with the driver's `ROOM_SECRET`, ``destroy`` at the
  end); Janus rooms are live from creation: a scheduled start, a listener cap,
  captions and recording are features it lacks (`JanusClient.lacks`);
* VideoRoom (``plugin=videoroom``, the default): a stage member joins as a publisher
  (``join`` ptype publisher, then ``publish`` with an aiortc offer: audio only,
  Opus) and Janus forwards its RTP untouched, so the speakers' latency marks survive;
  a listener attaches a subscriber handle (``join`` ptype subscriber with every
  current publisher's feed, from ``listparticipants``): Janus sends the offer, the
  client answers (``start``) and receives each feed on one of its transceivers through
  `spacesim.rtc.receive_rtp_direct`, like a listener of spacesim's server;
* AudioBridge (``plugin=audiobridge``): everyone ``join`` s and ``configure`` s with an
  offer (a publisher sends, a listener joins muted) and hears Janus's mix, re-encoded:
  delivery is measured, publisher -> listener latency cannot be (the mix carries no
  marks);
* moderation the plugins have: ``mute`` / ``unmute`` / ``mute_all`` (VideoRoom
  ``moderate`` of the publisher's audio; AudioBridge ``mute`` / ``unmute``) and
  ``remove`` of a publisher (``kick``). Everything else the protocol has -- roles
  (co-hosts, invitations), hands, reactions, reports, blocks, follows, the event
  stream, clips, recordings, replays, platform moderation -- raises `Unsupported`.

Clients of one process share one Janus session (one long poll: `JanusSession`) and
gather ICE candidates on the address that routes to Janus (a veth pair into Janus's
namespace: `spacesim.load.janus_server`). A scenario's ``network`` path is applied
with the same user-space relays as for spacesim's server, in either offer direction.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlsplit

import aiohttp
from aiortc import RTCPeerConnection, RTCSessionDescription

from spacesim import rtc
from spacesim.client.netem import UdpRelay, blackhole_candidates, relay_answer
from spacesim.client.session import ClientError
from spacesim.client.speaker import SpeakerTrack
from spacesim.load.api import OnRtp, Unsupported
from spacesim.load.janus_api import JanusSession
from spacesim.load.live import CONNECT_TIMEOUT, impairments
from spacesim.scenario import NetworkProfile

__all__ = ["LACKS", "PLUGINS", "ROOM_SECRET", "JanusClient", "JanusLink", "JanusTarget"]

PLUGINS = {"videoroom": "janus.plugin.videoroom", "audiobridge": "janus.plugin.audiobridge"}
ROOM_SECRET = "spacesim"  # every room the driver creates; moderation needs it
MAX_PUBLISHERS = 16
FEED_WAIT = 10.0  # s a listener waits for a first publisher to subscribe to
#: Janus's 471 (``JANUS_ERROR_WEBRTC_STATE``, "Invalid PeerConnection": src/apierror.h,
#: janus.c) answering a subscriber's ``start``: the handle's PeerConnection was torn down
#: between Janus's offer and the client's answer. Seen under heavy machine load; a new
#: handle then works, so a subscription is tried up to `SUBSCRIBE_ATTEMPTS` times.
WEBRTC_STATE = "janus_471"
SUBSCRIBE_ATTEMPTS = 3
#: Features asked for at creation that Janus rooms do not have (see `SpaceClient.lacks`).
LACKS = frozenset({"schedule", "listener_cap", "captions", "recording"})
#: Actions the plugins can do (with the room's secret), by plugin.
MODERATION = frozenset({"mute", "unmute", "mute_all", "remove"})

log = logging.getLogger("spacesim.load.janus")


@dataclass(frozen=True)
class JanusTarget:
    """A ``janus://HOST[:PORT][/PATH][?plugin=videoroom|audiobridge]`` target URL."""

    host: str
    port: int = 8088
    path: str = "/janus"
    plugin: str = "videoroom"

    @classmethod
    def parse(cls, url: str) -> JanusTarget:
        parts = urlsplit(url)
        if parts.scheme != "janus" or not parts.hostname:
            raise ValueError(f"not a janus://HOST[:PORT][/PATH] URL: {url!r}")
        query = parse_qs(parts.query)
        plugin = (query.get("plugin") or ["videoroom"])[0]
        if plugin not in PLUGINS:
            raise ValueError(f"plugin must be one of {', '.join(PLUGINS)}, got {plugin!r}")
        unknown = set(query) - {"plugin"}
        if unknown:
            raise ValueError(f"unknown parameter(s) {', '.join(sorted(unknown))} in {url!r}")
        return cls(parts.hostname, parts.port or 8088, parts.path or "/janus", plugin)

    @property
    def http(self) -> str:
        """The HTTP API's base URL."""
        return f"http://{self.host}:{self.port}{self.path}"

    @property
    def plugin_name(self) -> str:
        return PLUGINS[self.plugin]


def local_address(host: str) -> str:
    """The address this machine sends from to reach `host` (the swarm's ICE address)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect((host, 9))  # no packet is sent: connect() only picks a route
        return str(s.getsockname()[0])


@dataclass
class JanusLink:
    """One handle's peer connection, as the behaviour sees it (`spacesim.load.api.Link`)."""

    pc: RTCPeerConnection
    session: JanusSession
    handle: int
    join: dict[str, Any]
    relays: list[UdpRelay] = field(default_factory=list)
    rx: rtc.DirectRtp | None = None
    hung_up: bool = False

    def alive(self) -> bool:
        return not self.hung_up and self.pc.connectionState not in ("closed", "failed")

    def datagrams(self) -> int | None:
        return None  # Janus's RTCP is not counted here: the listener falls back to audio

    def on_event(self, ev: dict[str, Any]) -> None:
        if ev.get("janus") in ("hangup", "detached"):
            self.hung_up = True
        data = (ev.get("plugindata") or {}).get("data") or {}
        if data.get("leaving") == "ok" or data.get("kicked") is not None:
            self.hung_up = True

    async def close(self) -> None:
        self.hung_up = True
        await self.session.detach(self.handle)
        await self.pc.close()
        for relay in self.relays:
            await relay.close()


async def _connected(pc: RTCPeerConnection, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while pc.connectionState != "connected":
        if pc.connectionState in ("failed", "closed"):
            raise ConnectionError(f"connection {pc.connectionState}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"not connected after {timeout} s")
        await asyncio.sleep(0.01)


class JanusClient:
    """One user's requests to a Janus room (see the module docstring)."""

    def __init__(
        self,
        target: JanusTarget,
        session: JanusSession,
        user: str,
        ice_host: str,
        rooms: dict[str, str],
    ) -> None:
        self.target = target
        self.session = session
        self._user = user
        self.ice_host = ice_host
        self.rooms = rooms  # room -> who_may_speak as created (shared by the process)
        self.links: dict[str, list[JanusLink]] = {}
        self._control: int | None = None

    @property
    def user(self) -> str:
        return self._user

    @property
    def lacks(self) -> frozenset[str]:
        return LACKS

    @property
    def videoroom(self) -> bool:
        return self.target.plugin == "videoroom"

    async def _request(self, body: dict[str, Any]) -> dict[str, Any]:
        """A synchronous plugin request on this client's control handle."""
        if self._control is None:
            self._control = await self.session.attach(self.target.plugin_name)
        data, _ = await self.session.message(self._control, body)
        return data

    # ------------------------------------------------------------------ spaces

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
        asked = {
            "listener_cap": listener_cap is not None,
            "schedule": scheduled_for is not None,
            "captions": captions,
            "recording": recording,
        }
        for feature, wanted in asked.items():
            if wanted:
                raise Unsupported(feature)
        body: dict[str, Any] = {
            "request": "create",
            "description": title[:100],
            "secret": ROOM_SECRET,
            "permanent": False,
        }
        if self.videoroom:
            body |= {"publishers": MAX_PUBLISHERS, "audiocodec": "opus", "notify_joining": False}
        else:
            body |= {"sampling_rate": 48000, "audiolevel_event": False}
        data = await self._request(body)
        room = str(data["room"])
        self.rooms[room] = who_may_speak
        return room

    async def start_space(self, space: str) -> None:
        raise Unsupported("start", "Janus rooms are live from creation")

    async def end_space(self, space: str) -> None:
        await self._request({"request": "destroy", "room": int(space), "secret": ROOM_SECRET})

    def _join_answer(self, space: str, role: str, feeds: int) -> dict[str, Any]:
        setting = self.rooms.get(space, "everyone")
        return {
            "participant": self.user,
            "role": role,
            "feeds": feeds,
            "space": {"id": space, "who_may_speak": setting, "recording": False},
        }

    # ------------------------------------------------------------------ media

    async def connect_audio(
        self,
        space: str,
        on_rtp: OnRtp,
        *,
        publish: SpeakerTrack | None = None,
        path: NetworkProfile | None = None,
        read_every: float | None = None,
        seed: int = 0,
        avoid: Sequence[str] = (),  # Janus has no cluster nodes
    ) -> JanusLink:
        impair = impairments(path, seed)
        if not self.videoroom:
            link = await self._bridge(space, on_rtp, publish, impair, read_every)
        elif publish is not None:
            link = await self._publish(space, publish, impair)
        else:
            link = await self._subscribe(space, on_rtp, impair, read_every)
        try:
            await _connected(link.pc, CONNECT_TIMEOUT)
        except BaseException:
            await link.close()
            raise
        self.links.setdefault(space, []).append(link)
        return link

    async def _offer_answer(self, link: JanusLink, request: dict[str, Any], impair: Any) -> None:
        """The client offers (a publisher, an AudioBridge participant), Janus answers."""
        pc = link.pc
        await pc.setLocalDescription(await pc.createOffer())
        offer = pc.localDescription.sdp
        if impair is not None:
            offer = blackhole_candidates(offer)
        _, jsep = await self.session.message(link.handle, request, {"type": "offer", "sdp": offer})
        if jsep is None:
            raise ClientError(502, "bad_response", "Janus sent no answer")
        answer = str(jsep["sdp"])
        if impair is not None:
            answer, link.relays = await relay_answer(answer, impair[0], impair[1], self.ice_host)
        await pc.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))

    async def _handle(self) -> tuple[int, JanusLink]:
        pc = rtc.new_peer_connection()
        link = JanusLink(pc, self.session, 0, {})
        try:
            link.handle = await self.session.attach(self.target.plugin_name, link.on_event)
        except BaseException:
            await pc.close()
            raise
        return link.handle, link

    async def _publish(self, space: str, track: SpeakerTrack, impair: Any) -> JanusLink:
        handle, link = await self._handle()
        try:
            await self.session.message(
                handle,
                {"request": "join", "ptype": "publisher", "room": int(space), "display": self.user},
            )
            link.pc.addTransceiver(track, direction="sendonly")
            await self._offer_answer(link, {"request": "publish", "audiocodec": "opus"}, impair)
        except BaseException:
            await link.close()
            raise
        link.join = self._join_answer(space, "speaker", 0)
        return link

    async def publishers(self, space: str) -> dict[str, int]:
        """display (user) -> feed id of the room's current publishers."""
        if self.videoroom:
            data = await self._request({"request": "listparticipants", "room": int(space)})
            return {
                str(p.get("display", p["id"])): int(p["id"])
                for p in data.get("participants", [])
                if p.get("publisher")
            }
        data = await self._request({"request": "listparticipants", "room": int(space)})
        return {str(p.get("display", p["id"])): int(p["id"]) for p in data.get("participants", [])}

    async def _subscribe(
        self, space: str, on_rtp: OnRtp, impair: Any, read_every: float | None
    ) -> JanusLink:
        deadline = time.monotonic() + FEED_WAIT
        feeds = await self.publishers(space)
        while not feeds:
            if time.monotonic() > deadline:
                raise ClientError(409, "no_publishers", f"room {space} has nobody publishing")
            await asyncio.sleep(0.5)
            feeds = await self.publishers(space)
        for attempt in range(1, SUBSCRIBE_ATTEMPTS + 1):
            try:
                return await self._subscribe_once(space, feeds, on_rtp, impair, read_every)
            except ClientError as exc:
                if exc.code != WEBRTC_STATE or attempt == SUBSCRIBE_ATTEMPTS:
                    raise
                log.warning(
                    "%s: Janus dropped the offer's PeerConnection (%s); again", self.user, exc
                )
        raise AssertionError("unreachable")

    async def _subscribe_once(
        self,
        space: str,
        feeds: dict[str, int],
        on_rtp: OnRtp,
        impair: Any,
        read_every: float | None,
    ) -> JanusLink:
        handle, link = await self._handle()
        pc = link.pc
        try:
            streams = [{"feed": f} for f in sorted(feeds.values())]
            _, jsep = await self.session.message(
                handle,
                {"request": "join", "ptype": "subscriber", "room": int(space), "streams": streams},
            )
            if jsep is None:
                raise ClientError(502, "bad_response", "Janus sent no offer")
            offer = str(jsep["sdp"])
            if impair is not None:
                offer, link.relays = await relay_answer(offer, impair[0], impair[1], self.ice_host)
            await pc.setRemoteDescription(RTCSessionDescription(sdp=offer, type="offer"))
            await pc.setLocalDescription(await pc.createAnswer())
            receivers = [t.receiver for t in pc.getTransceivers() if t.kind == "audio"]
            link.rx = rtc.receive_rtp_direct(receivers, on_rtp, read_every=read_every)
            answer = pc.localDescription.sdp
            if impair is not None:
                answer = blackhole_candidates(answer)
            await self.session.message(
                handle, {"request": "start"}, {"type": "answer", "sdp": answer}
            )
        except BaseException:
            await link.close()
            raise
        link.join = self._join_answer(space, "listener", len(feeds))
        return link

    async def _bridge(
        self,
        space: str,
        on_rtp: OnRtp,
        track: SpeakerTrack | None,
        impair: Any,
        read_every: float | None,
    ) -> JanusLink:
        handle, link = await self._handle()
        pc = link.pc
        try:
            await self.session.message(
                handle,
                {
                    "request": "join",
                    "room": int(space),
                    "display": self.user,
                    "muted": track is None,
                },
            )
            if track is not None:
                tr = pc.addTransceiver(track, direction="sendrecv")
            else:
                tr = pc.addTransceiver("audio", direction="recvonly")
            await self._offer_answer(link, {"request": "configure", "muted": track is None}, impair)
            link.rx = rtc.receive_rtp_direct([tr.receiver], on_rtp, read_every=read_every)
        except BaseException:
            await link.close()
            raise
        link.join = self._join_answer(space, "listener" if track is None else "speaker", 1)
        link.join["marks"] = False  # the mix is re-encoded: speakers' marks do not survive
        return link

    # ------------------------------------------------------------------ actions

    async def act(self, space: str, action: str, **fields: str) -> dict[str, Any]:
        if action not in MODERATION:
            raise Unsupported(action)
        feeds = await self.publishers(space)
        if action == "mute_all":  # as spacesim's policy: everyone on stage but the actor
            targets = [feed for who, feed in feeds.items() if who != self.user]
        else:
            who = fields.get("target", self.user)
            if who not in feeds:
                # Listeners are subscribers, not room participants, in VideoRoom.
                raise Unsupported(action, "only publishers can be moderated")
            targets = [feeds[who]]
        for feed in targets:
            await self._moderate(space, action, feed)
        return {"ok": True}

    async def _moderate(self, space: str, action: str, feed: int) -> None:
        room = int(space)
        if action == "remove":
            await self._request(
                {"request": "kick", "room": room, "id": feed, "secret": ROOM_SECRET}
            )
        elif self.videoroom:
            mute = action != "unmute"
            # Janus 1.x: moderate one stream by its mid (aiortc's first m-line: "0").
            await self._request(
                {
                    "request": "moderate",
                    "room": room,
                    "id": feed,
                    "mid": "0",
                    "mute": mute,
                    "secret": ROOM_SECRET,
                }
            )
        else:
            request = "unmute" if action == "unmute" else "mute"
            await self._request(
                {"request": request, "room": room, "id": feed, "secret": ROOM_SECRET}
            )

    async def moderate(
        self, space: str, action: str, target: str | None = None, report: int | None = None
    ) -> dict[str, Any]:
        raise Unsupported("platform_moderation")

    async def leave(self, space: str) -> None:
        for link in self.links.pop(space, []):
            await self.session.detach(link.handle)

    def events(self, space: str) -> AsyncIterator[dict[str, Any]]:
        raise Unsupported("events", "no event stream of the protocol's events")

    async def follow(self, user: str) -> None:
        raise Unsupported("follow")

    async def cut_clip(self, space: str, duration: float = 30.0) -> dict[str, Any]:
        raise Unsupported("clip")

    async def recording_info(self, space: str) -> dict[str, Any]:
        raise Unsupported("recording")

    async def download(
        self, space: str, resource: str, first: int = 0, last: int | None = None
    ) -> bytes:
        raise Unsupported("download")

    async def connect_replay(
        self,
        space: str,
        on_rtp: OnRtp,
        *,
        offset: float = 0.0,
        path: NetworkProfile | None = None,
        seed: int = 0,
    ) -> JanusLink:
        raise Unsupported("replay")


class JanusFactory:
    """A process's `ClientFactory` for one Janus target: one shared session."""

    def __init__(self, url: str, http: aiohttp.ClientSession) -> None:
        self.target = JanusTarget.parse(url)
        self.session = JanusSession(http, self.target.http)
        self.ice_host = local_address(self.target.host)
        self.rooms: dict[str, str] = {}
        rtc.use_host_addresses([self.ice_host])  # process-wide: every peer connection here

    def __call__(self, user: str, *, moderator: bool = False) -> JanusClient:
        return JanusClient(self.target, self.session, user, self.ice_host, self.rooms)

    async def close(self) -> None:
        await self.session.close()
