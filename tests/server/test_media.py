"""spacesim.server.media: pass-through forwarding between real aiortc clients on 127.0.0.1."""

from __future__ import annotations

import asyncio
import functools
import itertools
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable
from fractions import Fraction
from typing import Any

import av
import numpy as np
import pytest
from aiortc import MediaStreamTrack, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError

from spacesim import rtc
from spacesim.server.media import MediaRoom, parse_offer

for _name in ("aioice", "aiortc"):
    logging.getLogger(_name).setLevel(logging.WARNING)

SLOTS = 3
pytestmark = pytest.mark.timeout(10)


# --------------------------------------------------------------------------- client helper


@functools.cache
def opus_tone(f0: float, frames: int = 300) -> tuple[bytes, ...]:
    """20 ms Opus packets of a sine gliding up from f0 Hz (every packet distinct)."""
    ctx: Any = av.CodecContext.create("libopus", "w")
    ctx.sample_rate = 48000
    ctx.layout = "stereo"
    ctx.format = "s16"
    ctx.bit_rate = 32000
    out: list[bytes] = []
    phase = 0.0
    t = np.arange(960)
    for i in range(frames):
        f = f0 * (1 + i / frames)
        x = (np.sin(phase + 2 * np.pi * f * t / 48000) * 8000).astype(np.int16)
        phase = (phase + 2 * np.pi * f * 960 / 48000) % (2 * np.pi)
        frame = av.AudioFrame.from_ndarray(
            np.repeat(x, 2).reshape(1, -1), format="s16", layout="stereo"
        )
        frame.sample_rate = 48000
        frame.pts = i * 960
        frame.time_base = Fraction(1, 48000)
        out += [bytes(p) for p in ctx.encode(frame)]
    out += [bytes(p) for p in ctx.encode(None)]
    assert len(set(out)) == len(out)
    return tuple(out)


class OpusTone(MediaStreamTrack):
    """Yields pre-encoded Opus packets every 20 ms; `index` is the last one yielded."""

    kind = "audio"

    def __init__(self, payloads: tuple[bytes, ...]) -> None:
        super().__init__()
        self.payloads = payloads
        self.index = -1
        self._start: float | None = None

    async def recv(self) -> av.Packet:
        i = self.index + 1
        if i >= len(self.payloads):
            raise MediaStreamError
        if self._start is None:
            self._start = time.monotonic()
        await asyncio.sleep(max(0.0, self._start + i * 0.02 - time.monotonic()))
        packet = av.Packet(self.payloads[i])
        packet.pts = i * 960
        packet.time_base = Fraction(1, 48000)
        self.index = i
        return packet


class Client:
    """An aiortc client: optionally publishes a tone; taps what each listen slot receives."""

    def __init__(self, name: str, tone: tuple[bytes, ...] | None = None) -> None:
        self.name = name
        self.pc = rtc.new_peer_connection()
        self.track = OpusTone(tone) if tone is not None else None
        # per slot: (ssrc, seq, ts, marker, payload)
        self.got: list[list[tuple[int, int, int, int, bytes]]] = [[] for _ in range(SLOTS)]

    async def join(self, room: MediaRoom) -> None:
        if self.track is not None:
            self.pc.addTransceiver(self.track, direction="sendonly")
        slots = [self.pc.addTransceiver("audio", direction="recvonly") for _ in range(SLOTS)]
        await self.pc.setLocalDescription(await self.pc.createOffer())
        answer = await room.connect(self.name, self.pc.localDescription.sdp)
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))
        for i, t in enumerate(slots):
            rtc.tap_rtp(t.receiver, self._recorder(i))

    def _recorder(self, i: int) -> rtc.OnPacket:
        got = self.got[i]

        async def on_packet(p: rtc.RtpPacket, arrival_ms: int) -> None:
            got.append((p.ssrc, p.sequence_number, p.timestamp, p.marker, p.payload))

        return on_packet

    def payloads(self, slot: int) -> list[bytes]:
        return [g[4] for g in self.got[slot]]

    async def close(self) -> None:
        await self.pc.close()


@pytest.fixture
async def world() -> AsyncIterator[Callable[..., Any]]:
    """make(gate) -> MediaRoom; join(room, name, tone) -> Client; everything closed after."""
    rtc.use_host_addresses(["127.0.0.1"])
    rooms: list[MediaRoom] = []
    clients: list[Client] = []

    class World:
        def room(self, gate: Callable[[str], bool], direct: bool = True) -> MediaRoom:
            rooms.append(MediaRoom(gate, slots=SLOTS, direct=direct))
            return rooms[-1]

        async def join(
            self, room: MediaRoom, name: str, tone: tuple[bytes, ...] | None = None
        ) -> Client:
            c = Client(name, tone)
            clients.append(c)
            await c.join(room)
            return c

    yield World()
    for c in clients:
        await c.close()
    for r in rooms:
        await r.close_all()


async def until(cond: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.01)


def assert_continuous(seqs: list[int]) -> None:
    assert all((b - a) & 0xFFFF == 1 for a, b in itertools.pairwise(seqs)), seqs


# --------------------------------------------------------------------------- tests


def sdp_offer(*directions: str) -> str:
    return "v=0\r\n" + "".join(
        f"m=audio 9 UDP/TLS/RTP/SAVPF 111 0\r\na=mid:{i}\r\na={d}\r\n"
        "a=rtpmap:111 opus/48000/2\r\na=rtpmap:0 PCMU/8000\r\n"
        for i, d in enumerate(directions)
    )


def test_offer_shape_is_checked() -> None:
    sdp = sdp_offer("sendonly", "recvonly", "recvonly", "recvonly")
    shape = parse_offer(sdp, 3)
    assert shape.publish_mid == "0" and shape.listen_mids == ["1", "2", "3"]
    shape = parse_offer(sdp_offer("recvonly", "sendrecv", "recvonly"), 3)
    assert shape.publish_mid is None and shape.listen_mids == ["0", "1", "2"]
    with pytest.raises(ValueError, match="expected 2 listen"):
        parse_offer(sdp, 2)
    with pytest.raises(ValueError, match="publish section"):
        parse_offer(sdp_offer("recvonly", "recvonly", "recvonly", "recvonly"), 3)
    with pytest.raises(ValueError, match="must be recvonly"):
        parse_offer(sdp_offer("sendonly", "sendonly", "recvonly", "recvonly"), 3)
    with pytest.raises(ValueError, match="only audio"):
        parse_offer(sdp.replace("m=audio", "m=video", 1), 3)
    with pytest.raises(ValueError, match="Opus"):
        parse_offer(sdp.replace("111 0", "0 111"), 3)


async def test_bad_offer_is_refused_before_any_connection(world: Any) -> None:
    room = world.room(lambda p: True)
    with pytest.raises(ValueError):
        await room.connect("x", sdp_offer("recvonly"))
    assert room.participants() == []


@pytest.mark.parametrize("direct", [True, False], ids=["direct", "earlier-path"])
async def test_speaker_reaches_two_listeners_byte_identical(world: Any, direct: bool) -> None:
    room = world.room(lambda p: p == "s", direct=direct)
    tone = opus_tone(440.0)
    s = await world.join(room, "s", tone)
    a = await world.join(room, "a")
    b = await world.join(room, "b")
    await until(lambda: len(a.got[0]) >= 25 and len(b.got[0]) >= 25)

    k = room.speaker_slots()["s"]
    assert k == 0
    for lst in (a, b):
        got = lst.got[k]
        assert {g[0] for g in got} == {room.slot_ssrcs(lst.name)[k]}
        assert all(not x for i, x in enumerate(lst.got) if i != k)
        payloads = lst.payloads(k)
        first = tone.index(payloads[0])  # byte-identical, in order, none missing
        assert payloads == list(tone[first : first + len(payloads)])
        assert_continuous([g[1] for g in got])
        assert all((g2[2] - g1[2]) & 0xFFFFFFFF == 960 for g1, g2 in itertools.pairwise(got))
    assert not any(s.got)  # a speaker does not hear themself
    assert not [t for t in threading.enumerate() if t.name.endswith("-decoder")]
    st = room.stats()
    assert st["dropped"] == 0 and st["send_errors"] == 0
    assert st["sent_async"] == 0  # every send took the synchronous UDP path
    assert st["forwarded"] >= 50


async def test_rtcp_reports_keep_flowing(world: Any) -> None:
    room = world.room(lambda p: p == "s")
    s = await world.join(room, "s", opus_tone(440.0))
    lst = await world.join(room, "l")

    async def stats_types(obj: Any) -> dict[str, Any]:
        return {v.type: v for v in (await obj.getStats()).values()}

    async def reported() -> bool:
        sent = await stats_types(s.pc.getSenders()[0])  # the server's receiver reports (RR)
        heard = await stats_types(lst.pc.getReceivers()[0])  # the server's slot reports (SR)
        return "remote-inbound-rtp" in sent and "remote-outbound-rtp" in heard

    deadline = time.monotonic() + 5
    while not await reported():
        assert time.monotonic() < deadline, "no RTCP reports"
        await asyncio.sleep(0.1)
    heard = await stats_types(lst.pc.getReceivers()[0])
    assert heard["remote-outbound-rtp"].packetsSent > 0  # sender reports count forwarded packets
    assert room._reports is not None and room._reports.sent > 0  # the room's, not aiortc's
    assert heard["inbound-rtp"].packetsReceived > 0


async def test_listener_audio_is_not_forwarded(world: Any) -> None:
    room = world.room(lambda p: False)
    lst = await world.join(room, "listener", opus_tone(440.0))
    other = await world.join(room, "other")
    await until(lambda: room.stats()["dropped"] >= 20)
    await asyncio.sleep(0.1)
    assert room.stats()["forwarded"] == 0
    assert not any(other.got) and not any(lst.got)
    assert room.speaker_slots() == {}


async def test_gate_flip_takes_effect_at_the_next_packet(world: Any) -> None:
    heard = {"s": True}
    room = world.room(lambda p: heard.get(p, False))
    s = await world.join(room, "s", opus_tone(440.0))
    lst = await world.join(room, "l")
    assert s.track is not None
    await until(lambda: len(lst.got[0]) >= 10)

    heard["s"] = False  # mute
    flip_index = s.track.index
    forwarded, dropped = room.stats()["forwarded"], room.stats()["dropped"]
    await until(lambda: room.stats()["dropped"] >= dropped + 10)
    assert room.stats()["forwarded"] == forwarded  # not one packet after the flip
    tone = opus_tone(440.0)
    before = [tone.index(p) for p in lst.payloads(0)]
    assert max(before) <= flip_index
    assert room.speaker_slots() == {}

    heard["s"] = True  # unmute
    resume_index = s.track.index
    n = len(lst.got[0])
    await until(lambda: len(lst.got[0]) >= n + 10)
    after = [tone.index(p) for p in lst.payloads(0)[n:]]
    assert min(after) > resume_index - 2  # packets from after the flip (one in flight)
    assert min(after) > max(before) + 10  # the muted stretch is missing
    got = lst.got[0]
    assert {g[0] for g in got} == {room.slot_ssrcs("l")[0]}
    assert_continuous([g[1] for g in got])  # the slot stream stays continuous
    ts = [g[2] for g in got]
    assert all(0 < (b - a) & 0xFFFFFFFF < 1 << 31 for a, b in itertools.pairwise(ts))
    assert got[n][3] == 1  # marker on the first packet after the switch


async def test_two_speakers_land_in_two_slots(world: Any) -> None:
    room = world.room(lambda p: p in ("a", "b"))
    tone_a, tone_b = opus_tone(440.0), opus_tone(660.0)
    a = await world.join(room, "a", tone_a)
    b = await world.join(room, "b", tone_b)
    lst = await world.join(room, "l")
    await until(lambda: sum(len(x) >= 20 for x in lst.got) == 2)

    slots = room.speaker_slots()
    assert sorted(slots) == ["a", "b"] and slots["a"] != slots["b"]
    ssrcs = room.slot_ssrcs("l")
    for name, tone in (("a", tone_a), ("b", tone_b)):
        k = slots[name]
        got = lst.got[k]
        assert {g[0] for g in got} == {ssrcs[k]}
        assert set(lst.payloads(k)) <= set(tone)
        assert_continuous([g[1] for g in got])
    # each speaker hears the other one, in the other one's slot
    assert set(a.payloads(slots["b"])) <= set(tone_b) and a.got[slots["b"]]
    assert set(b.payloads(slots["a"])) <= set(tone_a)
    assert not a.got[slots["a"]] and not b.got[slots["b"]]


async def test_closed_participant_stops_and_frees_slot(world: Any) -> None:
    room = world.room(lambda p: p == "s")
    await world.join(room, "s", opus_tone(440.0))
    gone = await world.join(room, "gone")
    stay = await world.join(room, "stay")
    await until(lambda: len(stay.got[0]) >= 5 and len(gone.got[0]) >= 5)
    await room.close("gone")
    n = len(stay.got[0])
    await until(lambda: len(stay.got[0]) >= n + 10)
    assert room.participants() == ["s", "stay"]
    assert room.stats()["send_errors"] == 0
    await room.close("s")
    assert room.speaker_slots() == {}


class _FakeWriter:
    """What the fan-out asks of an `RtpWriter` besides `send_now` (never armed: the
    kernel hands every send of its lane back to `MediaRoom._fan_out`)."""

    def attach(self, fan: object, k: int, lane: int) -> None:
        pass

    def detach(self) -> None:
        pass

    def arm(self) -> bool:
        return False


def _fake_peers(room: MediaRoom, *names: str, writers: Any) -> list[Any]:
    """Fake peers made live in `room` as `MediaRoom._on_state` does (the earlier path's
    `_SlotStream` s when the room has no `FanOut`)."""
    from spacesim.server.media import _Peer, _SlotStream

    peers = []
    for name in names:
        peer = _Peer(name, None)  # type: ignore[arg-type]
        peer.writers = [writers(name)]
        if room._fan is None:
            peer.streams = [_SlotStream()]
        room._peers[name] = peer
        room._go_live(peer)
        peers.append(peer)
    return peers


@pytest.mark.parametrize("direct", [True, False], ids=["direct", "earlier"])
async def test_a_late_packet_never_makes_the_next_speaker_reuse_a_sequence_number(
    direct: bool,
) -> None:
    class Writer(_FakeWriter):
        def __init__(self) -> None:
            self.out: list[tuple[int, int, int]] = []

        def send_now(self, seq: int, ts: int, marker: int, payload: bytes, ntp: int) -> bool:
            self.out.append((seq, ts, marker))
            return True

    class Packet:
        def __init__(self, seq: int, ts: int) -> None:
            self.sequence_number, self.timestamp, self.marker, self.payload = seq, ts, 0, b"x"

    room = MediaRoom(lambda name: True, slots=1, idle_ms=0, direct=direct)
    a, b, listener = _fake_peers(room, "a", "b", "l", writers=lambda name: Writer())
    for seq, ts, now in ((100, 96000, 0), (102, 97920, 20), (101, 96960, 21)):  # 101 is late
        await room._forward(a, Packet(seq, ts), now)  # type: ignore[arg-type]
    room._release(0)  # a's slot is freed (muted, or idle)
    await room._forward(b, Packet(5000, 1), 40)  # type: ignore[arg-type]
    out = listener.writers[0].out  # type: ignore[attr-defined]
    seqs = [(s - out[0][0]) & 0xFFFF for s, _, _ in out]
    assert seqs == [0, 2, 1, 3]  # b continues after the newest number sent, not the late one
    assert out[-1][2] == 1  # and its first packet carries the marker


async def test_a_connect_superseded_by_a_newer_one_is_no_bad_offer() -> None:
    """Two joins of one participant at once: the older connection is closed under its
    setup, which is neither the client's offer's fault nor a server fault."""
    from spacesim.server.media import Superseded

    rtc.use_host_addresses(["127.0.0.1"])
    offers = []
    for _ in range(2):
        pc = rtc.new_peer_connection()
        for _ in range(SLOTS):
            pc.addTransceiver("audio", direction="recvonly")
        await pc.setLocalDescription(await pc.createOffer())
        offers.append(pc.localDescription.sdp)
        await pc.close()
    room = MediaRoom(lambda name: True, slots=SLOTS)
    older, newer = await asyncio.gather(
        *(room.connect("x", offer) for offer in offers), return_exceptions=True
    )
    assert isinstance(older, Superseded), older
    assert isinstance(newer, str) and room.participants() == ["x"]
    await room.close_all()


@pytest.mark.parametrize("direct", [True, False], ids=["direct", "earlier"])
async def test_a_failing_send_is_logged_once_and_drops_only_that_listener(
    caplog: pytest.LogCaptureFixture, direct: bool
) -> None:
    """A send error on the fast path is counted, logged once for the connection (which
    leaves the fan-out at once), and the other listeners go on."""

    class Writer(_FakeWriter):
        def __init__(self, fail: bool) -> None:
            self.fail = fail
            self.sent = 0

        def send_now(self, seq: int, ts: int, marker: int, payload: bytes, ntp: int) -> bool:
            if self.fail:
                raise ConnectionError("transport closed")
            self.sent += 1
            return True

    class Packet:
        def __init__(self, seq: int, ts: int) -> None:
            self.sequence_number, self.timestamp, self.marker, self.payload = seq, ts, 0, b"x"

    room = MediaRoom(lambda name: True, slots=1, direct=direct)
    speaker, _bad, good = _fake_peers(
        room, "speaker", "bad", "good", writers=lambda name: Writer(name == "bad")
    )
    with caplog.at_level(logging.WARNING, logger="spacesim.server.media"):
        for i in range(5):
            await room._forward(speaker, Packet(100 + i, 960 * i), 20 * i)  # type: ignore[arg-type]
        await room.close_all()
    records = [r for r in caplog.records if r.name == "spacesim.server.media"]
    assert len(records) == 1, [r.getMessage() for r in records]
    assert "bad" in records[0].getMessage() and "transport closed" in records[0].getMessage()
    assert room.stats()["send_errors"] == 1
    assert good.writers[0].sent == 5  # type: ignore[attr-defined]


async def test_a_speaker_who_reconnects_continues_each_listeners_stream(world: Any) -> None:
    """A speaker first relayed from another node, then connected here (a cluster move):
    the new connection starts its own RTP sequence, and listeners' streams rebase on it
    instead of jumping by the two starts' difference, which the server's SRTP replay
    window and the listeners' loss counts would take as damage."""
    room = world.room(lambda p: p == "s")
    lst = await world.join(room, "l")
    # first heard through another node (the cluster's `publish`: no connection here) ...
    tone = opus_tone(440.0)
    for i in range(20):
        packet = rtc.RtpPacket(
            payload_type=111, sequence_number=1000 + i, timestamp=960 * i, ssrc=7,
            payload=tone[i % len(tone)],
        )  # fmt: skip
        await room.publish("s", packet, 20 * i)
        await asyncio.sleep(0.02)
    await until(lambda: len(lst.got[0]) >= 10)
    n = len(lst.got[0])
    await world.join(room, "s", opus_tone(660.0))  # ... then connected here
    await until(lambda: len(lst.got[0]) >= n + 10)
    seqs = [g[1] for g in lst.got[0]]
    steps = [(b - a) & 0xFFFF for a, b in itertools.pairwise(seqs)]
    assert all(0 < s < 50 for s in steps), steps
    assert room.stats()["send_errors"] == 0
