"""ProbeStats decodes marked Opus (no network): tones are audible, silence is not."""

from __future__ import annotations

import numpy as np
from aiortc.rtp import RtpPacket

from spacesim.client.opus import mark
from spacesim.client.probe import ProbeStats, reference_audible_fraction
from spacesim.client.speaker import clip_names, encode_pcm, load_clip, tone_packets


def _feed(stats: ProbeStats, slot: int, packets: list[bytes], sender: int) -> None:
    for seq, p in enumerate(packets):
        rtp = RtpPacket(payload_type=111, sequence_number=seq, timestamp=seq * 960)
        rtp.payload = mark(p, sender, seq, stats.clock())
        stats.on_rtp(slot, rtp.serialize())


def test_tone_decodes_audible_with_latency() -> None:
    stats = ProbeStats()
    tone = list(tone_packets(seconds=0.5))
    _feed(stats, 0, tone, sender=7)
    frames, audible, errors = stats.quality()
    assert errors == 0 and frames == len(tone)
    assert audible >= frames - 1  # the encoder's priming frame may be quiet
    s = stats.senders[7]
    assert s.received == len(tone) and s.lost == 0 and len(s.latencies) == len(tone)


def test_silence_is_not_audible_and_slots_are_separate() -> None:
    stats = ProbeStats()
    silence = list(encode_pcm(np.zeros(48_000 // 2, dtype=np.int16)))
    _feed(stats, 1, silence, sender=2)
    _feed(stats, 0, list(tone_packets(seconds=0.2)), sender=1)
    assert stats.slots[1].audible == 0 and stats.slots[1].frames == len(silence)
    assert stats.slots[0].audible_fraction > 0.9


def test_clip_and_bad_payloads() -> None:
    clip = load_clip(clip_names()[0])
    ref = reference_audible_fraction(clip)
    assert 0.3 < ref <= 1.0  # speech with pauses
    stats = ProbeStats()
    for p in clip:
        stats.decode(0, mark(p, 1, 0, 0))
    assert stats.audible_fraction == ref  # the mark does not change the audio
    stats.decode(0, b"")
    stats.decode(0, b"\x03")  # code 3 without a frame count byte
    assert stats.slots[0].decode_errors == 2
    stats.decode(0, clip[0])  # the decoder still works afterwards
    assert stats.slots[0].frames == len(clip) + 1
