"""Recording, replay over HTTP and clips: Ogg/Opus by stream copy, decoded back with PyAV."""

from __future__ import annotations

import asyncio
import io
import random
import re
import signal
from pathlib import Path
from typing import Any

import aiohttp
import av
import numpy as np
import pytest
from aiohttp.test_utils import TestServer

from spacesim import policy, rtc
from spacesim.server import launch
from spacesim.server.app import STATE, ServerConfig, create_app
from spacesim.server.recording import (
    FRAME,
    SILENCE,
    OggOpusWriter,
    Track,
    ogg_crc,
    opus_samples,
    read_packets,
    scan,
    write_clip,
)
from spacesim.server.store_memory import MemoryStore
from spacesim.server.store_postgres import PostgresStore
from spacesim.server.store_sqlite import SqliteStore
from tests.server.test_app import SECRET, SLOTS, Api, AudioClient
from tests.server.test_media import opus_tone

pytestmark = pytest.mark.timeout(60)


def decode(data: bytes | Path) -> tuple[int, float, np.ndarray]:
    """(frames, seconds, mono samples) of an Ogg/Opus file, decoded by FFmpeg."""
    src: Any = io.BytesIO(data) if isinstance(data, bytes) else str(data)
    with av.open(src) as c:
        frames = [f.to_ndarray()[0] for f in c.decode(c.streams.audio[0])]  # planar: ch 0
    pcm = np.concatenate(frames) if frames else np.zeros(0)
    samples = sum(len(f) for f in frames)
    return len(frames), samples / 48000, pcm


def _crc_reference(data: bytes) -> int:
    crc = 0
    for b in data:
        crc ^= b << 24
        for _ in range(8):
            crc = ((crc << 1) ^ 0x04C11DB7) & 0xFFFFFFFF if crc & 0x80000000 else crc << 1
            crc &= 0xFFFFFFFF
    return crc


def test_ogg_crc_is_rfc_3533s() -> None:
    rng = random.Random(1)
    for n in (0, 1, 27, 255, 1000):
        data = bytes(rng.randrange(256) for _ in range(n))
        assert ogg_crc(data) == _crc_reference(data)


def test_opus_samples_from_the_toc() -> None:
    assert opus_samples(SILENCE) == 960  # CELT 20 ms, one frame
    assert opus_samples(bytes([(1 << 3) | 0])) == 960  # SILK 20 ms
    assert opus_samples(bytes([(3 << 3) | 1, 0])) == 2 * 2880  # SILK 60 ms, two frames
    assert opus_samples(bytes([(16 << 3) | 3, 4])) == 4 * 120  # CELT 2.5 ms, code 3 x4
    assert opus_samples(b"") == 0
    assert all(opus_samples(p) == FRAME for p in opus_tone(440.0, 20)[:-1])


def test_a_track_lays_packets_out_by_time_and_fills_gaps_with_silence(tmp_path: Path) -> None:
    tone = opus_tone(440.0)
    track = Track("s-1", tmp_path / "r.opus")
    track.write([(10_000 + 20 * i, "a", p) for i, p in enumerate(tone[:100])], True)
    # one second later than its place: 50 frames of silence in between
    track.write([(10_000 + 3000 + 20 * i, "a", p) for i, p in enumerate(tone[100:150])])
    track.close()
    assert track.silence == 50 and track.packets == 150
    frames, seconds, pcm = decode(tmp_path / "r.opus")
    assert frames == 200 and seconds == pytest.approx(4.0)
    assert np.abs(pcm[2 * 48000 + 4800 : 3 * 48000 - 4800]).max() < 1e-3  # the gap is silent
    assert np.abs(pcm[48000:96000]).max() > 0.1  # the tone is there


def test_a_second_speaker_waits_for_the_floor(tmp_path: Path) -> None:
    tone = opus_tone(440.0)
    track = Track("s-1", tmp_path / "r.opus")
    batch = []
    for i in range(50):  # both talk for a second: b waits
        batch += [(20 * i, "a", tone[i]), (20 * i + 5, "b", tone[100 + i])]
    for i in range(50, 100):  # a goes quiet: after the hold, b takes the floor
        batch += [(20 * i, "a", SILENCE), (20 * i + 5, "b", tone[100 + i])]
    track.write(batch, True)
    track.close()
    # b's first second and 280 ms of a's hold (b's packet at 1285 ms takes the floor),
    # then a's silence
    assert track.overlap_dropped == 50 + 14 + 35
    frames, seconds, _ = decode(tmp_path / "r.opus")
    assert frames == 50 + 15 + 36 and seconds == pytest.approx(frames * 0.02)


def test_resume_cuts_a_partial_page_and_continues(tmp_path: Path) -> None:
    path = tmp_path / "r.opus"
    tone = opus_tone(440.0)
    w = OggOpusWriter.create(path)
    w.write(list(tone[:50]))
    w.close()
    whole = path.stat().st_size
    with open(path, "ab") as f:  # a crash in the middle of a page write
        f.write(b"OggS\x00\x00" + b"\x01" * 20)
    w = OggOpusWriter.resume(path)
    assert path.stat().st_size == whole
    w.write(list(tone[50:100]), eos=True)
    w.close()
    assert scan(path).granule == 100 * FRAME
    assert decode(path)[:2] == (100, pytest.approx(2.0))
    assert [p for _, p in read_packets(path, 40 * FRAME, 60 * FRAME)] == list(tone[40:60])
    clip = write_clip(path, tmp_path / "c.opus", 0.5, 1.0)
    assert (clip.start_s, clip.duration_s) == (0.5, 1.0)
    assert decode(tmp_path / "c.opus")[:2] == (50, pytest.approx(1.0))


def test_the_host_alone_starts_and_stops_recording() -> None:
    s = policy.Space("s", "h", recording=False)
    assert s.join("l").ok
    assert s.start_recording("l").code == "not_allowed"
    out = s.start_recording("h")
    assert [e.kind for e in out.events] == ["recording_started"] and s.recording
    assert s.start_recording("h").ok and not s.start_recording("h").events  # idempotent
    assert [e.kind for e in s.stop_recording("h").events] == ["recording_stopped"]
    assert not s.recording and not s.stop_recording("h").events
    assert s.end("h").ok
    assert s.start_recording("h").code == "space_ended"


@pytest.mark.parametrize("make", [MemoryStore, "sqlite", "postgres"])
def test_every_store_keeps_recordings_and_clips(
    tmp_path: Path, make: Any, request: pytest.FixtureRequest
) -> None:
    from spacesim.server.store_recording import ClipRecord

    if make == "sqlite":
        store = SqliteStore(tmp_path / "s.db")
    elif make == "postgres":
        store = PostgresStore(request.getfixturevalue("pg_url")())
    else:
        store = make()
    store.add_user("h", "h", 1.0)
    store.create_space("s-1", host="h", title="", status="live", who_may_speak="everyone", at=1.0)
    assert store.get_recording("s-1") is None
    assert store.set_recording("s-1", True, 2.0).status == "recording"
    assert [r.space for r in store.recordings_in_progress()] == ["s-1"]
    rec = store.set_recording("s-1", False, 3.0)
    assert (rec.status, rec.started_at, rec.stopped_at) == ("stopped", 2.0, 3.0)
    store.set_recording_size("s-1", 1234, 5.5)
    assert store.get_recording("s-1").bytes == 1234  # type: ignore[union-attr]
    assert store.set_recording("s-1", True, 4.0).started_at == 2.0  # one recording, resumed
    store.add_clip(ClipRecord("c-1", "s-1", "u", 1.0, 2.0, 99, 10.0, 20.0))
    assert [c.id for c in store.clips("s-1", now=15.0)] == ["c-1"]
    assert store.get_clip("c-1", now=25.0) is None  # expired: not listed any more
    assert [c.id for c in store.expire_clips(now=25.0)] == ["c-1"]
    assert store.clips("s-1", now=0.0) == []
    store.close()


# --------------------------------------------------------------------------- the server


@pytest.fixture
async def served(tmp_path: Path) -> Any:
    rtc.use_host_addresses(["127.0.0.1"])
    config = ServerConfig(db=tmp_path / "s.db", secret=SECRET, slots=SLOTS)
    app = create_app(config)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    async with aiohttp.ClientSession() as http:
        yield Api(http, str(server.make_url("")).rstrip("/")), app
    await server.close()


async def _get(api: Api, path: str, user: str, **headers: str) -> tuple[int, bytes, Any]:
    auth = {"Authorization": f"Bearer {await api.token(user)}", **headers}
    r = await api.http.get(f"{api.base}{path}", headers=auth)
    return r.status, await r.read(), r.headers


async def test_a_recorded_space_replays_over_http_with_ranges_and_clips(served: Any) -> None:
    api, app = served
    space = await api.space("host", recording=True)
    status, snap = await api.call("GET", f"/v1/spaces/{space}", "host")
    assert snap["recording"] is True
    host = AudioClient("host", opus_tone(440.0, 150))  # 3 s of tone
    try:
        await host.join_api(api, space)
        await asyncio.sleep(2.0)
        # live: the recording so far, and a clip of its last second
        status, info = await api.call("GET", f"/v1/spaces/{space}/recording/info", "host")
        assert status == 200 and info["status"] == "recording" and info["duration_s"] > 0.5
        status, clip = await api.call("POST", f"/v1/spaces/{space}/clips", "lis", {"duration": 1})
        assert status == 201, clip
        assert clip["duration_s"] == pytest.approx(1.0, abs=0.05)
        await asyncio.sleep(1.5)
    finally:
        await host.close()
    assert (await api.call("POST", f"/v1/spaces/{space}/end", "host"))[0] == 200
    assert space not in app[STATE].recordings.tracks
    status, body, _ = await _get(api, f"/v1/spaces/{space}/recording", "anyone")
    assert status == 200
    frames, seconds, pcm = decode(body)
    assert 120 <= frames <= 155 and seconds == pytest.approx(frames * 0.02)
    spectrum = np.abs(np.fft.rfft(pcm[:48000]))
    assert 400 < np.argmax(spectrum) < 900  # the gliding 440 Hz tone, not noise
    status, part, headers = await _get(
        api, f"/v1/spaces/{space}/recording", "anyone", Range="bytes=100-199"
    )
    assert status == 206 and part == body[100:200]
    assert headers["Content-Range"] == f"bytes 100-199/{len(body)}"
    # after the end: a clip anywhere; too far is refused
    path = f"/v1/spaces/{space}/clips"
    status, late = await api.call("POST", path, "lis", {"start": 0.5, "duration": 1.5})
    assert status == 201 and late["start_s"] == pytest.approx(0.5, abs=0.03)
    status, err = await api.call("POST", path, "lis", {"start": 99, "duration": 5})
    assert (status, err["error"]) == (409, "clip_out_of_range")
    status, err = await api.call("POST", path, "lis", {"duration": 31})
    assert (status, err["error"]) == (400, "bad_request")
    status, listing = await api.call("GET", path, "lis")
    assert [c["id"] for c in listing["clips"]] == [clip["id"], late["id"]]
    status, data, headers = await _get(api, f"{path}/{late['id']}", "other")
    assert status == 200 and headers["Content-Type"] == "audio/ogg"
    assert decode(data)[1] == pytest.approx(1.5, abs=0.03)
    assert (await _get(api, f"{path}/c-0000000000000000", "lis"))[0] == 404
    status, text = await api.call("GET", "/metrics")
    found = dict(re.findall(r"^(spacesim_\w+_total) ([\d.e+]+)$", text, re.M))
    assert float(found["spacesim_recording_packets_total"]) >= frames - 5
    assert float(found["spacesim_recording_bytes_total"]) >= len(body)
    assert float(found["spacesim_clips_cut_total"]) >= 2


async def test_a_space_not_recorded_has_no_recording(served: Any) -> None:
    api, _ = served
    space = await api.space("host")
    status, err = await api.call("GET", f"/v1/spaces/{space}/recording", "host")
    assert (status, err["error"]) == (409, "no_recording")
    status, err = await api.call("POST", f"/v1/spaces/{space}/clips", "l", {"duration": 3})
    assert (status, err["error"]) == (409, "no_recording")
    status, err = await api.act(space, "host", "start_recording")
    assert status == 200 and err["events"][0]["kind"] == "recording_started"
    status, err = await api.act(space, "other", "stop_recording")
    assert status == 409 or err["error"] in ("not_present", "not_allowed")


async def test_kill_9_mid_recording_leaves_a_playable_file(tmp_path: Path) -> None:
    """A real server process, killed while it records: the file decodes up to its last
    flushed page, and the recording goes on after the restart."""
    db, port = tmp_path / "k.db", launch.free_port()
    rtc.use_host_addresses(["127.0.0.1"])
    proc, base = launch.start(db, port)
    try:
        await asyncio.to_thread(launch.wait_up, proc, base)
        async with aiohttp.ClientSession() as http:
            api = Api(http, base)
            space = await api.space("host", recording=True)
            host = AudioClient("host", opus_tone(440.0, 200))
            try:
                await host.join_api(api, space)
                await asyncio.sleep(3.0)
                proc.send_signal(signal.SIGKILL)
                proc.wait(timeout=10)
            finally:
                await host.close()
            path = tmp_path / "k-recordings" / f"{space}.opus"
            frames, seconds, _ = decode(path)
            assert frames >= 50 and seconds == pytest.approx(frames * 0.02, abs=0.05)  # >= 1 s
            proc, base = launch.start(db, port)
            await asyncio.to_thread(launch.wait_up, proc, base)
            api.tokens.clear()
            status, snap = await api.call("GET", f"/v1/spaces/{space}", "host")
            assert status == 200 and snap["recording"] is True  # it goes on
            status, body, _ = await _get(api, f"/v1/spaces/{space}/recording", "l")
            assert status == 200 and decode(body)[0] == frames
    finally:
        proc.kill()
        proc.wait(timeout=10)


async def test_an_ended_recording_replays_over_webrtc_from_an_offset(served: Any) -> None:
    api, app = served
    space = await api.space("host", recording=True)
    host = AudioClient("host", opus_tone(440.0, 100))  # 2 s
    try:
        await host.join_api(api, space)
        await asyncio.sleep(2.5)
    finally:
        await host.close()
    assert (await api.call("POST", f"/v1/spaces/{space}/end", "host"))[0] == 200
    await app[STATE].recordings.settle()  # the end's last page is written
    path = app[STATE].recordings.path(space)
    expected = [p for _, p in read_packets(path, 48000)]  # from 1 s on
    assert len(expected) > 30
    listener = AudioClient("late")
    try:
        slots = [listener.pc.addTransceiver("audio", direction="recvonly") for _ in range(SLOTS)]
        await listener.pc.setLocalDescription(await listener.pc.createOffer())
        for i, t in enumerate(slots):
            rtc.tap_rtp(t.receiver, listener._recorder(i))
        body = {"sdp": listener.pc.localDescription.sdp, "offset": 1.0}
        status, answer = await api.call("POST", f"/v1/spaces/{space}/replay", "late", body)
        assert status == 200, answer
        assert answer["offset"] == 1.0 and answer["duration_s"] > 1.5
        from aiortc import RTCSessionDescription

        await listener.pc.setRemoteDescription(RTCSessionDescription(answer["sdp"], "answer"))
        started = asyncio.get_running_loop().time()
        for _ in range(100):
            if len(listener.got[0]) >= len(expected):
                break
            await asyncio.sleep(0.05)
        took = asyncio.get_running_loop().time() - started
        assert listener.payloads(0) == expected  # the file's packets, as they are
        assert took > 0.6 * len(expected) * 0.02  # paced in real time, not in one burst
        assert listener.got[1] == [] and listener.got[2] == []
    finally:
        await listener.close()
    status, probe = await api.call("POST", f"/v1/spaces/{space}/replay", "late", {})
    assert status == 200 and probe["sdp"] is None
    status, err = await api.call("POST", f"/v1/spaces/{space}/replay", "late", {"sdp": "v=0 x"})
    assert (status, err["error"]) == (400, "bad_sdp")


async def test_expired_clips_are_deleted_files_and_rows(tmp_path: Path) -> None:
    from spacesim.server.recording import CLIP_RETENTION_S, Recordings
    from spacesim.server.store_recording import ClipRecord

    now = [1000.0]
    store = MemoryStore(clock=lambda: now[0])
    store.add_user("h", "h")
    store.create_space("s-1", host="h", title="", status="live", who_may_speak="everyone")
    recs = Recordings(tmp_path, store, {}, clock=lambda: now[0])
    (tmp_path / "clips").mkdir()
    for cid, at in (("c-old", 0.0), ("c-new", 900.0)):
        recs.clip_path(cid).write_bytes(b"OggS")
        store.add_clip(ClipRecord(cid, "s-1", "u", 0.0, 1.0, 4, at, at + CLIP_RETENTION_S))
    now[0] = CLIP_RETENTION_S + 1.0  # c-old's time is up, c-new's not yet
    assert recs.expire() == 1
    assert not recs.clip_path("c-old").exists() and recs.clip_path("c-new").exists()
    assert [c.id for c in store.clips("s-1")] == ["c-new"]


async def test_a_clean_restart_keeps_a_live_space_recording(tmp_path: Path) -> None:
    rtc.use_host_addresses(["127.0.0.1"])
    config = ServerConfig(db=tmp_path / "r.db", secret=SECRET, slots=SLOTS)
    space = ""
    for run in ("before", "after"):
        server = TestServer(create_app(config), host="127.0.0.1")
        await server.start_server()
        try:
            async with aiohttp.ClientSession() as http:
                api = Api(http, str(server.make_url("")).rstrip("/"))
                if run == "before":
                    space = await api.space("host", recording=True)
                status, snap = await api.call("GET", f"/v1/spaces/{space}", "host")
                assert status == 200 and snap["recording"] is True, (run, snap)
                status, info = await api.call("GET", f"/v1/spaces/{space}/recording/info", "h")
                assert status == 200 and info["status"] == "recording", (run, info)
        finally:
            await server.close()


async def test_users_barred_from_the_space_cannot_read_its_recording(served: Any) -> None:
    api, _ = served
    space = await api.space("host", recording=True)
    for user in ("troll", "gone", "fan"):
        assert (await api.join(space, user))[0] == 200
    assert (await api.act(space, "host", "block", target="troll"))[0] == 200
    assert (await api.act(space, "host", "remove", target="gone"))[0] == 200
    path = f"/v1/spaces/{space}/recording"
    assert (await _get(api, path, "fan"))[0] == 200
    status, err = await api.call("GET", path, "troll")
    assert (status, err["error"]) == (403, "blocked")
    status, err = await api.call("POST", f"/v1/spaces/{space}/clips", "gone", {"duration": 1})
    assert (status, err["error"]) == (403, "removed")
    assert (await api.call("POST", f"/v1/spaces/{space}/end", "host"))[0] == 200
    status, err = await api.call("GET", f"/v1/spaces/{space}/clips", "troll")
    assert (status, err["error"]) == (403, "blocked")  # after the end too


async def test_only_heard_packets_are_recorded(tmp_path: Path) -> None:
    from spacesim.server.media import MediaRoom, _Peer

    heard = {"on": False}
    room = MediaRoom(lambda _: heard["on"], slots=SLOTS)
    track = Track("s-1", tmp_path / "r.opus")
    room.recorder = track
    peer = _Peer("spk", None)  # type: ignore[arg-type]
    packet = rtc.RtpPacket(payload_type=111, sequence_number=1, timestamp=960)
    packet.payload = opus_tone(440.0, 5)[0]
    await room._forward(peer, packet, 1000)  # muted (gated off): not recorded
    assert track.buf == []
    heard["on"] = True
    await room._forward(peer, packet, 1020)
    assert track.buf == [(1020, "spk", packet.payload)]
