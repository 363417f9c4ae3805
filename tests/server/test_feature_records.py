"""The server's records of its caption workers and recordings, end to end: a real
`spacesim serve --record` with captions and recording on, a speaker playing a shipped
clip, then `spacesim calibrate` on what it recorded."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from pathlib import Path

import aiohttp
import pytest
from aiortc import RTCSessionDescription

from spacesim import rtc
from spacesim.client.speaker import SpeakerTrack, load_clip
from spacesim.results import load_run
from spacesim.server import launch
from spacesim.sim.calibrate import ASR_WINDOW, calibrate

for _name in ("aioice", "aiortc"):
    logging.getLogger(_name).setLevel(logging.WARNING)

pytestmark = pytest.mark.timeout(90)
#: Seconds the speaker talks: two windows of the speech recognition fit, and a spare.
TALK_S = 2 * ASR_WINDOW + 2
SLOTS = 3  # listen sections the server expects (spacesim serve --slots)


async def _token(http: aiohttp.ClientSession, base: str, user: str) -> dict[str, str]:
    r = await http.post(f"{base}/v1/dev/token", json={"user": user})
    return {"Authorization": f"Bearer {(await r.json())['token']}"}


async def test_server_records_caption_cpu_and_recording_bytes_that_calibrate(
    tmp_path: Path,
) -> None:
    record = tmp_path / "server-run"
    args = ["--caption-workers", "1", "--record", str(record)]
    server, base = launch.start(tmp_path / "f.db", args=args)
    rtc.use_host_addresses(["127.0.0.1"])
    pc = rtc.new_peer_connection()
    try:
        await asyncio.to_thread(launch.wait_up, server, base)
        async with aiohttp.ClientSession() as http:
            host = await _token(http, base, "host")
            body = {"title": "f", "captions": True, "recording": True}
            r = await http.post(f"{base}/v1/spaces", json=body, headers=host)
            assert r.status == 201, await r.text()
            space = (await r.json())["id"]
            pc.addTransceiver(SpeakerTrack(load_clip("hands"), 1), direction="sendonly")
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
            started = time.monotonic()
            await asyncio.sleep(TALK_S)
            r = await http.post(f"{base}/v1/spaces/{space}/end", headers=host)
            assert r.status == 200
            talked = time.monotonic() - started
    finally:
        await pc.close()
        launch.stop(server)  # SIGTERM: the server writes its records
    rec = load_run(record).records

    def kind(name: str, role: str = "node") -> list[float]:
        rows = rec[(rec["kind"] == name) & (rec["role"] == role)]
        return [float(v) for v in rows["value"]]

    # the garbage collector's pauses, once a second with the other samples
    gc_rows = rec[rec["kind"] == "gc_pause"]
    assert len(gc_rows) >= TALK_S - 2 and (gc_rows["value"] >= 0).all()
    assert all("count" in json.loads(a) for a in gc_rows["attrs"])
    # the workers' own CPU (not in node_cpu) and the speech sent to them
    # (from when the worker was ready: its model loading is not counted)
    assert 0.02 * talked < sum(kind("asr_cores")) < talked
    assert 0.5 * talked < sum(kind("asr_audio_seconds")) <= talked + 1
    # a packet every 20 ms written to the one stream, and its bytes
    assert sum(kind("packets_recorded", "room")) > 0.5 * talked * 50
    assert sum(kind("recording_bytes", "room")) > 0
    cal = calibrate([record])
    assert cal.asr is not None and cal.recording is not None, cal.notes
    assert 0.05 <= cal.server["asr_cost"] <= 1.0
    # the clip's ~57 B (Opus and Ogg lacing) plus the client's 22-byte measurement mark
    assert 60 <= cal.server["recorded_packet_bytes"] <= 100
