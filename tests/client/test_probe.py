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
    # aiortc's jitter buffer holds the last `prefetch` frames back (a client plays them
    # when the next packets come)
    assert errors == 0 and frames == len(tone) - stats.prefetch
    assert audible >= frames - 1  # the encoder's priming frame may be quiet
    s = stats.senders[7]
    assert s.received == len(tone) and s.lost == 0 and len(s.latencies) == len(tone)
    assert len(stats.playout) == frames
    assert all(0 <= hold <= m2e for hold, m2e in stats.playout)


def test_buffer_hold_is_prefetch_frames_at_real_pace() -> None:
    """Packets 20 ms apart: each frame waits for `prefetch` more, ~80 ms, then decodes."""
    t = [0]
    stats = ProbeStats(clock=lambda: t[0])
    for seq, p in enumerate(tone_packets(seconds=0.4)):
        t[0] = seq * 20_000_000 + 5_000_000  # arrives 5 ms after it was sent
        rtp = RtpPacket(payload_type=111, sequence_number=seq, timestamp=seq * 960)
        rtp.payload = mark(p, 1, seq, seq * 20_000_000)
        stats.on_rtp(0, rtp.serialize())
    holds = {round(h, 6) for h, _ in stats.playout}
    assert holds == {0.08}  # prefetch 4 x 20 ms
    assert {round(m, 6) for _, m in stats.playout} == {0.085}  # 5 ms + 80 ms (+ decode: 0)


def test_silence_is_not_audible_and_slots_are_separate() -> None:
    stats = ProbeStats()
    silence = list(encode_pcm(np.zeros(48_000 // 2, dtype=np.int16)))
    _feed(stats, 1, silence, sender=2)
    _feed(stats, 0, list(tone_packets(seconds=0.2)), sender=1)
    assert stats.slots[1].audible == 0
    assert stats.slots[1].frames == len(silence) - stats.prefetch
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
