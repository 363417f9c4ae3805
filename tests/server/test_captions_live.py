"""Live captions end to end: a shipped speech clip through a real `spacesim serve`."""

from __future__ import annotations

import asyncio
import logging
import re
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiortc import RTCSessionDescription

from spacesim import rtc
from spacesim.client.speaker import SpeakerTrack, load_clip, transcripts
from spacesim.server import launch

for _name in ("aioice", "aiortc"):
    logging.getLogger(_name).setLevel(logging.WARNING)

pytestmark = pytest.mark.timeout(60)
SLOTS = 3


def words(text: str) -> list[str]:
    return re.findall(r"[a-z']+", text.lower())


def overlap(said: str, heard: str) -> float:
    """Share of the transcript's words the caption has (a bag of words, order ignored)."""
    want, got = words(said), words(heard)
    pool = list(got)
    hit = 0
    for w in want:
        if w in pool:
            pool.remove(w)
            hit += 1
    return hit / max(1, len(want))


async def _token(http: aiohttp.ClientSession, base: str, user: str) -> dict[str, str]:
    r = await http.post(f"{base}/v1/dev/token", json={"user": user})
    return {"Authorization": f"Bearer {(await r.json())['token']}"}


async def test_a_spoken_clip_comes_back_as_a_final_caption(tmp_path: Path) -> None:
    clip = "welcome"
    server, base = launch.start(tmp_path / "cap.db", args=["--caption-workers", "1"])
    rtc.use_host_addresses(["127.0.0.1"])
    pc = rtc.new_peer_connection()
    try:
        await asyncio.to_thread(launch.wait_up, server, base)
        async with aiohttp.ClientSession() as http:
            host = await _token(http, base, "host")
            fan = await _token(http, base, "fan")
            r = await http.post(
                f"{base}/v1/spaces", json={"title": "c", "captions": True}, headers=host
            )
            assert r.status == 201, await r.text()
            space = (await r.json())["id"]
            assert (await r.json())["captions"] is True
            r = await http.post(f"{base}/v1/spaces/{space}/join", headers=fan)
            assert r.status == 200
            fan_token = fan["Authorization"].removeprefix("Bearer ")
            ws = await http.ws_connect(f"{base}/v1/spaces/{space}/events?token={fan_token}")
            assert (await ws.receive_json())["type"] == "hello"

            track = SpeakerTrack(load_clip(clip), 1, loop=False)
            pc.addTransceiver(track, direction="sendonly")
            for _ in range(SLOTS):
                pc.addTransceiver("audio", direction="recvonly")
            await pc.setLocalDescription(await pc.createOffer())
            r = await http.post(
                f"{base}/v1/spaces/{space}/join",
                json={"sdp": pc.localDescription.sdp},
                headers=host,
            )
            assert r.status == 200, await r.text()
            await pc.setRemoteDescription(RTCSessionDescription((await r.json())["sdp"], "answer"))

            captions: list[dict[str, Any]] = []
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                msg = await ws.receive_json(timeout=deadline - time.monotonic())
                if msg.get("kind") == "caption":
                    captions.append(msg["attrs"])
                    if msg["attrs"]["final"]:
                        break
            finals = [c for c in captions if c["final"]]
            assert finals, captions
            final = finals[0]
            assert final["speaker"] == "host" and not final["gap"]
            assert 0 <= final["start"] < final["end"]
            assert overlap(transcripts()[clip], final["text"]) >= 0.6, final["text"]
            await ws.close()

            # stored with the space, readable after the end: JSON and WebVTT
            r = await http.post(f"{base}/v1/spaces/{space}/end", headers=host)
            assert r.status == 200
            r = await http.get(f"{base}/v1/spaces/{space}/captions", headers=fan)
            assert r.status == 200
            stored = (await r.json())["captions"]
            assert stored[0]["text"] == final["text"] and stored[0]["speaker"] == "host"
            r = await http.get(
                f"{base}/v1/spaces/{space}/captions",
                headers={**fan, "Accept": "text/vtt"},
            )
            vtt = await r.text()
            assert r.content_type == "text/vtt"
            assert vtt.startswith("WEBVTT\n") and f"<v host>{final['text']}" in vtt
            metrics = await (await http.get(f"{base}/metrics")).text()
            assert re.search(r"^spacesim_captions_finals_total [1-9]", metrics, re.MULTILINE)
    finally:
        await pc.close()
        launch.stop(server)
