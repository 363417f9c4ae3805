"""spacesim.rtc.jitter: aiortc's jitter buffer behind a bytes-level API."""

from __future__ import annotations

from spacesim import rtc
from spacesim.rtc import internals


def test_frames_come_out_after_the_prefetch_in_order() -> None:
    jb = rtc.AudioJitterBuffer(16, prefetch=4)
    out = [jb.add(100 + i, 960 * i, bytes([i])) for i in range(8)]
    # frame k is complete once frame k+1 starts; four complete frames are held first
    assert out[:4] == [None] * 4
    assert out[4:] == [(0, b"\x00"), (960, b"\x01"), (1920, b"\x02"), (2880, b"\x03")]


def test_the_fields_aiortc_reads_off_our_packets_are_registered() -> None:
    """The stand-in packet's fields are ours (so a source scan cannot see them): they
    are registered as read by aiortc's JitterBuffer, which the guard checks."""
    names = {(i.kind, i.name) for i in internals.registered("spacesim.rtc.jitter")}
    assert {("read", "_data"), ("read", "sequence_number"), ("read", "timestamp")} <= names
