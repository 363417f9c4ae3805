"""spacesim.client.speaker: packaged clips, tones and the paced, marked Opus track."""

from __future__ import annotations

import asyncio
import logging
import time
from fractions import Fraction
from importlib import resources
from typing import Any

import aioice.ice
import av
import numpy as np
import pytest
from aiortc import RTCConfiguration, RTCPeerConnection
from aiortc.mediastreams import MediaStreamError

from spacesim import rtc
from spacesim.client.opus import frames, mark, read_mark
from spacesim.client.speaker import (
    SpeakerTrack,
    clip_names,
    load_clip,
    read_opuspk,
    tone_packets,
    transcripts,
    write_opuspk,
)

for _name in ("aioice", "aiortc"):
    logging.getLogger(_name).setLevel(logging.WARNING)

pytestmark = pytest.mark.timeout(10)


def decode(packets: tuple[bytes, ...] | list[bytes]) -> np.ndarray:
    ctx: Any = av.CodecContext.create("libopus", "r")
    out = []
    for p in packets:
        for frame in ctx.decode(av.Packet(p)):
            assert frame.sample_rate == 48000
            a = frame.to_ndarray()
            channels = len(frame.layout.channels)
            # first channel, whether the decoder's format is planar or packed
            out.append(a[0] if frame.format.is_planar else a.reshape(-1, channels)[:, 0])
    return np.concatenate(out)


# --------------------------------------------------------------------------- clips


def test_clips_are_packaged_with_transcripts() -> None:
    names = clip_names()
    assert len(names) >= 5
    assert set(transcripts()) == set(names)
    assert all(len(transcripts()[n].split()) >= 8 for n in names)
    clips = resources.files("spacesim.client").joinpath("clips")
    total = sum(len(e.read_bytes()) for e in clips.iterdir() if e.is_file())
    assert total < 200_000  # well under 2 MB
    with pytest.raises(KeyError):
        load_clip("no-such-clip")


@pytest.mark.parametrize("name", ["welcome", "bridge", "hands", "garden", "trip"])
def test_clip_is_a_few_seconds_of_valid_opus(name: str) -> None:
    packets = load_clip(name)
    assert 3.0 <= len(packets) * 0.02 <= 6.5
    assert all(0 < len(p) < 200 for p in packets)  # ~24 kbit/s: ~60 bytes per packet
    pcm = decode(packets).astype(np.float64)
    assert len(pcm) == 960 * len(packets)  # every packet is 20 ms at 48 kHz
    scale = 32768 if np.abs(pcm).max() > 2 else 1  # s16 or float output
    rms = np.sqrt(np.mean((pcm / scale) ** 2))
    assert rms > 0.01  # speech, not silence
    assert np.abs(pcm[-4800:] / scale).max() < 0.02  # 0.1 s of trailing pause


def test_opuspk_round_trip_and_refusals() -> None:
    packets = (b"\x00", b"\x08abc", bytes(300))
    assert read_opuspk(write_opuspk(packets)) == packets
    for bad in (b"", b"OPK0", b"OPK1\x00", b"OPK1\x00\x05abc"):
        with pytest.raises(ValueError):
            read_opuspk(bad)


def test_tone_packets_hold_the_frequency() -> None:
    packets = tone_packets(440, 1.0)
    assert 50 <= len(packets) <= 52
    pcm = decode(packets).astype(np.float64)[4800:48000]
    spectrum = np.abs(np.fft.rfft(pcm * np.hanning(len(pcm))))
    peak = np.fft.rfftfreq(len(pcm), 1 / 48000)[int(np.argmax(spectrum))]
    assert abs(peak - 440) < 3
    assert tone_packets(440, 1.0) is packets  # cached


# --------------------------------------------------------------------------- pacing


async def test_track_paces_from_the_first_recv() -> None:
    clip = load_clip("garden")
    track = SpeakerTrack(clip, sender_id=9)
    await asyncio.sleep(0.15)  # construction long before the first recv: no burst later
    got: list[tuple[float, av.Packet[Any]]] = []
    t0 = time.monotonic()
    while time.monotonic() - t0 < 1.0:
        packet = await track.recv()
        got.append((time.monotonic(), packet))
    assert 49 <= len(got) <= 52
    assert got[1][0] - got[0][0] > 0.012  # the second packet waits its turn
    # no drift: packet k is due at start + 20 ms * k
    for k, (t, _) in enumerate(got):
        assert -0.002 < t - (got[0][0] + 0.02 * k) < 0.015
    pts = [p.pts for _, p in got]
    assert pts == [960 * k for k in range(len(got))]
    assert all(p.time_base == Fraction(1, 48000) for _, p in got)
    marks = [read_mark(bytes(p)) for _, p in got]
    assert all(m is not None and m.sender_id == 9 for m in marks)
    assert [m.seq for m in marks if m] == list(range(len(got)))
    t_ns = [m.t_ns for m in marks if m]
    assert t_ns == sorted(t_ns) and len(set(t_ns)) == len(t_ns)
    assert t_ns[-1] - t_ns[0] == pytest.approx(0.02e9 * (len(got) - 1), abs=15e6)
    # the payloads are the clip's frames, in order
    assert all(frames(bytes(p)) == frames(clip[k]) for k, (_, p) in enumerate(got))
    assert track.sent == len(got) and track.last_seq == len(got) - 1
    assert track.skipped == 0
    track.stop()
    with pytest.raises(MediaStreamError):
        await track.recv()


async def test_track_loops_skips_after_a_stall_and_ends() -> None:
    now = 0
    clip = tone_packets(300, 0.1)
    n = len(clip)
    track = SpeakerTrack(clip, sender_id=1, clock=lambda: now)
    for k in range(n + 2):  # loops past the clip's end
        now = k * 20_000_000
        p = await track.recv()
        assert p.pts == 960 * k
        assert frames(bytes(p)) == frames(clip[k % n])
    # a stalled loop: 1 s late -> the missed slots are skipped, seq stays contiguous
    now += 1_000_000_000
    p = await track.recv()
    m = read_mark(bytes(p))
    assert m is not None and m.seq == n + 2 and m.t_ns == now
    assert track.skipped == 49 and p.pts == 960 * (n + 2 + 49)
    # loop=False: the track ends after the clip
    once = SpeakerTrack(clip, sender_id=2, loop=False, clock=lambda: now)
    base = now
    for k in range(n):
        now = base + k * 20_000_000
        await once.recv()
    now += 20_000_000
    with pytest.raises(MediaStreamError):
        await once.recv()
    assert once.readyState == "ended" and once.sent == n


# --------------------------------------------------------------------------- aiortc loopback


class RecordingTrack(SpeakerTrack):
    """Remembers every payload it yields, by seq."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.payloads: dict[int, bytes] = {}

    async def recv(self) -> av.Packet[Any]:
        packet = await super().recv()
        self.payloads[self.last_seq] = bytes(packet)
        return packet


async def test_aiortc_pair_delivers_marked_payloads(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(aioice.ice, "get_host_addresses", aioice.ice.get_host_addresses)
    rtc.use_host_addresses(["127.0.0.1"])
    track = RecordingTrack(load_clip("hands"), sender_id=1234)
    pub = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    sub = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    got: list[tuple[bytes, int]] = []
    enough = asyncio.Event()

    async def on_packet(packet: rtc.RtpPacket, arrival_ms: int) -> None:
        got.append((packet.payload, time.monotonic_ns()))
        if len(got) >= 30:
            enough.set()

    try:
        pub.addTransceiver(track, direction="sendonly")
        await pub.setLocalDescription(await pub.createOffer())
        await sub.setRemoteDescription(pub.localDescription)
        for transceiver in sub.getTransceivers():
            rtc.tap_rtp(transceiver.receiver, on_packet)
        await sub.setLocalDescription(await sub.createAnswer())
        await pub.setRemoteDescription(sub.localDescription)
        await asyncio.wait_for(enough.wait(), 5)
    finally:
        await pub.close()
        await sub.close()

    seqs = []
    for payload, arrived_ns in got:
        m = read_mark(payload)
        assert m is not None and m.sender_id == 1234
        assert payload == track.payloads[m.seq]  # byte for byte
        assert payload == mark(load_clip("hands")[m.seq], 1234, m.seq, m.t_ns)
        assert 0 <= arrived_ns - m.t_ns < 50_000_000
        seqs.append(m.seq)
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))
