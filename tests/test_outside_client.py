"""A client written only from docs/protocol.md, against a real `spacesim serve`.

Issue 12's "done when": a client that knows nothing but the document -- aiohttp for HTTP
and the WebSocket, aiortc for WebRTC, no spacesim import besides launching the server --
does everything the document describes: mint dev tokens, create a space, publish the
host's audio, hear it as a listener, follow the events, raise a hand over the socket, be
approved, react, report, leave, see the stream end with the space, and read the ended
space. Where this needed something the document did not say, the document was fixed.
"""

from __future__ import annotations

import asyncio
import fractions
import json
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import aioice.ice
import av
import numpy as np
import pytest
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from spacesim.server import launch  # only to start the server

pytestmark = pytest.mark.timeout(60)

RATE = 48000  # docs: Opus, 48 kHz, 20 ms frames


class Tone(MediaStreamTrack):
    """The host's microphone: a sine wave in 20 ms frames, paced in real time."""

    kind = "audio"

    def __init__(self, hz: float) -> None:
        super().__init__()
        self.hz, self.n, self.start = hz, 0, time.monotonic()

    async def recv(self) -> av.AudioFrame:
        await asyncio.sleep(max(0.0, self.start + self.n / RATE - time.monotonic()))
        t = (np.arange(960) + self.n) / RATE
        samples = (np.sin(2 * np.pi * self.hz * t) * 10000).astype(np.int16)
        frame = av.AudioFrame.from_ndarray(samples.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate, frame.pts, frame.time_base = RATE, self.n, fractions.Fraction(1, RATE)
        self.n += 960
        return frame


class Stream:
    """A space's event stream (docs: Events): every message, read in the background."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.messages: list[dict[str, Any]] = []
        self.reader = asyncio.ensure_future(self._read())

    async def _read(self) -> None:
        async for msg in self.ws:
            if msg.type is aiohttp.WSMsgType.TEXT:
                self.messages.append(json.loads(msg.data))

    async def wait(
        self, match: Callable[[dict[str, Any]], bool], timeout: float = 5
    ) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for m in self.messages:
                if match(m):
                    return m
            await asyncio.sleep(0.02)
        raise AssertionError(f"nothing matched; got {self.messages}")

    def event(self, kind: str, who: str | None = None) -> Callable[[dict[str, Any]], bool]:
        return lambda m: (
            m.get("type") == "event"
            and m["kind"] == kind
            and (who is None or m["participant"] == who)
        )


@pytest.fixture
async def base(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[str]:
    # docs (Audio): aioice leaves loopback out of its host candidates; offer 127.0.0.1
    monkeypatch.setattr(aioice.ice, "get_host_addresses", lambda use_ipv4, use_ipv6: ["127.0.0.1"])
    server, url = launch.start(tmp_path / "outside.db")
    try:
        await asyncio.to_thread(launch.wait_up, server, url)
        yield url
    finally:
        launch.stop(server)


async def test_a_client_written_from_the_document_does_everything_it_describes(
    base: str,
) -> None:
    async with aiohttp.ClientSession() as http:

        async def call(method: str, path: str, who: str, body: Any = None) -> tuple[int, Any]:
            r = await http.request(method, base + path, json=body, headers=auth[who])
            return r.status, await r.json()

        # Tokens: POST /v1/dev/token, then "Authorization: Bearer <token>"
        auth: dict[str, dict[str, str]] = {}
        for user in ("alice", "bob"):
            r = await http.post(f"{base}/v1/dev/token", json={"user": user})
            assert r.status == 200
            auth[user] = {"Authorization": f"Bearer {(await r.json())['token']}"}

        # Spaces: create (201, the space), live now
        status, space = await call("POST", "/v1/spaces", "alice", {"title": "outside"})
        assert status == 201, space
        assert space["status"] == "live" and space["host"] == "alice"
        sid, slots = space["id"], space["slots"]

        drains: list[asyncio.Future[None]] = []

        async def connect(who: str, mic: Tone | None, heard: list[int] | None) -> RTCPeerConnection:
            """Join with an offer: a publish section (sendonly) first, then `slots` recvonly."""
            pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
            if heard is not None:

                @pc.on("track")
                def on_track(track: MediaStreamTrack) -> None:
                    async def drain() -> None:
                        while True:
                            try:
                                frame = await track.recv()
                            except MediaStreamError:
                                return
                            if np.any(frame.to_ndarray()):  # not silence
                                heard.append(frame.samples)  # per channel

                    drains.append(asyncio.ensure_future(drain()))

            pc.addTransceiver(mic or "audio", direction="sendonly")
            for _ in range(slots):
                pc.addTransceiver("audio", direction="recvonly")
            await pc.setLocalDescription(await pc.createOffer())  # gathers ICE: non-trickle
            status, joined = await call(
                "POST", f"/v1/spaces/{sid}/join", who, {"sdp": pc.localDescription.sdp}
            )
            assert status == 200, joined
            assert joined["slots"] == slots and joined["sdp"]
            await pc.setRemoteDescription(RTCSessionDescription(joined["sdp"], "answer"))
            return pc

        # the host is present already but must join to publish
        host_pc = await connect("alice", Tone(440.0), None)

        # follow the events before joining (following is not joining)
        ws = await http.ws_connect(f"{base}/v1/spaces/{sid}/events", headers=auth["bob"])
        stream = Stream(ws)
        hello = await stream.wait(lambda m: m["type"] == "hello")
        assert hello["protocol"] == "1" and hello["space"]["id"] == sid

        heard: list[int] = []
        listener_pc = await connect("bob", None, heard)
        deadline = time.monotonic() + 10
        while sum(heard) < RATE // 2 and time.monotonic() < deadline:  # half a second
            await asyncio.sleep(0.1)
        assert sum(heard) >= RATE // 2, f"the listener heard {sum(heard)} samples of the tone"

        # raise a hand on the socket: the event, then the result
        await ws.send_json({"id": 1, "action": "raise_hand"})
        result = await stream.wait(lambda m: m.get("id") == 1)
        assert result == {"type": "result", "id": 1, "ok": True, "events": 1}, result
        i = stream.messages.index(result)
        assert any(stream.event("hand_raised", "bob")(m) for m in stream.messages[:i])

        # the host approves over HTTP: bob is a speaker
        status, data = await call(
            "POST", f"/v1/spaces/{sid}/actions", "alice", {"action": "approve", "target": "bob"}
        )
        assert status == 200 and data["ok"], data
        granted = await stream.wait(stream.event("speaker_granted", "bob"))
        assert granted["actor"] == "alice" and granted["role"] == "speaker"

        # react and report
        status, data = await call(
            "POST", f"/v1/spaces/{sid}/actions", "bob", {"action": "react", "emoji": "👏"}
        )
        assert status == 200, data
        reaction = await stream.wait(stream.event("reaction", "bob"))
        assert reaction["attrs"] == {"emoji": "👏"}
        status, data = await call(
            "POST",
            f"/v1/spaces/{sid}/actions",
            "bob",
            {"action": "report", "target": "alice", "reason": "testing"},
        )
        assert status == 200, data
        filed = await stream.wait(stream.event("report_filed", "alice"))  # bob is on stage
        assert filed["actor"] == "bob" and isinstance(filed["attrs"]["report_id"], int)
        assert filed["attrs"]["target_type"] == "user" and filed["attrs"]["reason"] == "testing"

        # bob leaves; the host leaving ends the space, and bob's stream with it
        status, data = await call("POST", f"/v1/spaces/{sid}/leave", "bob", {})
        assert status == 200 and data["ok"], data
        await listener_pc.close()
        await stream.wait(stream.event("participant_left", "bob"))  # bob was on stage
        status, data = await call("POST", f"/v1/spaces/{sid}/leave", "alice", {})
        assert status == 200, data
        await host_pc.close()
        ended = await stream.wait(stream.event("space_ended"))
        assert ended["attrs"] == {"reason": "host_left"}
        await asyncio.wait_for(stream.reader, 5)  # the server closed the stream
        assert stream.messages[-1]["type"] == "error"
        assert stream.messages[-1]["error"] == "space_ended"
        assert ws.close_code == 1000

        # an ended space stays readable; acting on it is refused
        status, data = await call("GET", f"/v1/spaces/{sid}", "bob")
        assert status == 200 and data["status"] == "ended", data
        assert data["counts"]["participants"] == 0 and data["stage"] == []
        status, data = await call("POST", f"/v1/spaces/{sid}/join", "bob", {})
        assert (status, data["error"]) == (409, "space_ended"), data
