"""A client written only from docs/protocol.md: a host speaks a tone, a listener hears it.

Uses aiortc's public API only (plus the documented loopback ICE patch). Start a server
first (`spacesim serve`), then run `python examples/hello_space.py`; it exits 0 and
prints the frequency it heard, or 1 if it heard nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import fractions
import sys
import time

import aiohttp
import aioice.ice
import av
import numpy as np
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

# aioice skips loopback when it gathers host candidates: offer 127.0.0.1 instead.
aioice.ice.get_host_addresses = lambda use_ipv4, use_ipv6: ["127.0.0.1"]  # type: ignore[attr-defined]

SLOTS = 3
RATE = 48000


class Tone(MediaStreamTrack):
    """A sine wave in 20 ms frames, paced in real time (as aiortc's AudioStreamTrack paces)."""

    kind = "audio"

    def __init__(self, hz: float) -> None:
        super().__init__()
        self.hz = hz
        self.n = 0
        self.start: float | None = None

    async def recv(self) -> av.AudioFrame:
        if self.start is None:
            self.start = time.monotonic()
        await asyncio.sleep(max(0.0, self.start + self.n / RATE - time.monotonic()))
        t = (np.arange(960) + self.n) / RATE
        samples = (np.sin(2 * np.pi * self.hz * t) * 10000).astype(np.int16)
        frame = av.AudioFrame.from_ndarray(samples.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = RATE
        frame.pts = self.n
        frame.time_base = fractions.Fraction(1, RATE)
        self.n += 960
        return frame


async def token(http: aiohttp.ClientSession, base: str, user: str) -> dict[str, str]:
    r = await http.post(f"{base}/v1/dev/token", json={"user": user})
    return {"Authorization": f"Bearer {(await r.json())['token']}"}


async def connect(
    http: aiohttp.ClientSession, base: str, space: str, auth: dict[str, str], track: Tone | None
) -> RTCPeerConnection:
    """Join with an offer: a publish section first (if speaking), then SLOTS listen sections."""
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    if track is not None:
        pc.addTransceiver(track, direction="sendonly")
    for _ in range(SLOTS):
        pc.addTransceiver("audio", direction="recvonly")
    await pc.setLocalDescription(await pc.createOffer())  # waits for ICE gathering
    r = await http.post(
        f"{base}/v1/spaces/{space}/join", json={"sdp": pc.localDescription.sdp}, headers=auth
    )
    answer = await r.json()
    if r.status != 200:
        raise SystemExit(f"join refused: {answer}")
    await pc.setRemoteDescription(RTCSessionDescription(answer["sdp"], "answer"))
    return pc


async def main(base: str, hz: float, seconds: float) -> int:
    async with aiohttp.ClientSession() as http:
        host, listener = await token(http, base, "host"), await token(http, base, "listener")
        r = await http.post(f"{base}/v1/spaces", json={"title": "hello"}, headers=host)
        space = (await r.json())["id"]
        speaker_pc = await connect(http, base, space, host, Tone(hz))

        heard: list[np.ndarray] = []
        drains: list[asyncio.Task[None]] = []
        listener_pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))

        @listener_pc.on("track")
        def on_track(track: object) -> None:
            async def drain() -> None:
                while True:
                    try:
                        frame = await track.recv()  # type: ignore[attr-defined]
                    except MediaStreamError:  # the connection closed
                        return
                    heard.append(frame.to_ndarray().reshape(-1, len(frame.layout.channels))[:, 0])

            drains.append(asyncio.ensure_future(drain()))

        for _ in range(SLOTS):
            listener_pc.addTransceiver("audio", direction="recvonly")
        await listener_pc.setLocalDescription(await listener_pc.createOffer())
        r = await http.post(
            f"{base}/v1/spaces/{space}/join",
            json={"sdp": listener_pc.localDescription.sdp},
            headers=listener,
        )
        await listener_pc.setRemoteDescription(
            RTCSessionDescription((await r.json())["sdp"], "answer")
        )
        await asyncio.sleep(seconds)
        await listener_pc.close()
        await speaker_pc.close()

    audio = np.concatenate(heard).astype(float) if heard else np.zeros(1)
    loud = audio[np.abs(audio) > 0]
    if loud.size < RATE // 2:
        print(f"heard nothing (only {loud.size} non-silent samples)")
        return 1
    spectrum = np.abs(np.fft.rfft(loud[-RATE:]))
    peak = float(np.fft.rfftfreq(min(loud.size, RATE), 1 / RATE)[int(np.argmax(spectrum))])
    print(f"heard {peak:.0f} Hz from the host ({loud.size / RATE:.1f} s of audio)")
    return 0 if abs(peak - hz) < 10 else 1


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", default="http://127.0.0.1:8080")
    ap.add_argument("--hz", type=float, default=440.0)
    ap.add_argument("--seconds", type=float, default=3.0)
    args = ap.parse_args()
    sys.exit(asyncio.run(main(args.base, args.hz, args.seconds)))
