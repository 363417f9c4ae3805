"""spacesim.client.opus: a timing mark in Opus padding (RFC 6716 section 3.2.5)."""

from __future__ import annotations

import contextlib
import functools
import random
from fractions import Fraction
from typing import Any

import av
import numpy as np
import pytest

from spacesim.client.opus import MAGIC, MARK_SIZE, Mark, frames, mark, read_mark


@functools.cache
def tone(channels: int = 2, frames_: int = 50, bit_rate: int = 32000) -> tuple[bytes, ...]:
    """20 ms Opus packets of a gliding sine (as tests/server/test_media.py's opus_tone)."""
    layout = "stereo" if channels == 2 else "mono"
    ctx: Any = av.CodecContext.create("libopus", "w")
    ctx.sample_rate = 48000
    ctx.layout = layout
    ctx.format = "s16"
    ctx.bit_rate = bit_rate
    out: list[bytes] = []
    phase = 0.0
    t = np.arange(960)
    for i in range(frames_):
        f = 300 * (1 + i / frames_)
        x = (np.sin(phase + 2 * np.pi * f * t / 48000) * 8000).astype(np.int16)
        phase = (phase + 2 * np.pi * f * 960 / 48000) % (2 * np.pi)
        frame = av.AudioFrame.from_ndarray(
            np.repeat(x, channels).reshape(1, -1), format="s16", layout=layout
        )
        frame.sample_rate = 48000
        frame.pts = i * 960
        frame.time_base = Fraction(1, 48000)
        out += [bytes(p) for p in ctx.encode(frame)]
    out += [bytes(p) for p in ctx.encode(None)]
    return tuple(out)


def decode(packets: list[bytes]) -> np.ndarray:
    """libopus-decode packets in order with one fresh decoder; all samples, concatenated."""
    ctx: Any = av.CodecContext.create("libopus", "r")
    chunks = []
    for p in packets:
        for frame in ctx.decode(av.Packet(p)):
            chunks.append(frame.to_ndarray())
    return np.concatenate(chunks, axis=-1)


def test_round_trip_keeps_frames() -> None:
    for i, p in enumerate(tone()):
        assert p[0] & 3 == 0  # libopus emits code-0 single-frame packets
        m = mark(p, sender_id=7, seq=i, t_ns=123_456_789_000 + i)
        assert read_mark(m) == Mark(7, i, 123_456_789_000 + i)
        assert read_mark(p) is None
        assert len(m) == len(p) + 2 + MARK_SIZE
        assert m[0] == p[0] | 3  # same config and stereo bits, code 3
        assert m[1] == 0x41  # CBR, padding flag, one frame
        assert frames(m) == frames(p) == (p[0] & 0xFC, [p[1:]])
        assert m.endswith(MAGIC + m[-16:])


def test_field_limits_wrap() -> None:
    p = tone()[0]
    assert read_mark(mark(p, 2**32 - 1, 2**32 - 1, 2**64 - 1)) == Mark(
        2**32 - 1, 2**32 - 1, 2**64 - 1
    )
    assert read_mark(mark(p, 2**32 + 5, 2**32 + 6, 2**64 + 7)) == Mark(5, 6, 7)


def test_remark_replaces_the_mark() -> None:
    p = tone()[3]
    once = mark(p, 1, 2, 3)
    twice = mark(once, 4, 5, 6)
    assert read_mark(twice) == Mark(4, 5, 6)
    assert len(twice) == len(once)
    assert frames(twice) == frames(p)


@pytest.mark.parametrize("channels", [1, 2])
def test_marked_packets_decode_to_the_same_pcm(channels: int) -> None:
    packets = list(tone(channels))
    marked = [mark(p, 99, i, 10**12 + i) for i, p in enumerate(packets)]
    plain_pcm, marked_pcm = decode(packets), decode(marked)
    assert plain_pcm.shape == marked_pcm.shape
    assert plain_pcm.size >= 960 * len(packets)
    assert np.abs(plain_pcm).max() > 0.05  # real audio, not silence
    np.testing.assert_array_equal(plain_pcm, marked_pcm)


def _code1(a: bytes) -> bytes:
    return bytes((a[0] | 1,)) + a[1:] + a[1:]  # two equal frames (section 3.2.3)


def _code2(a: bytes, b: bytes) -> bytes:  # two frames, first length signalled (3.2.4)
    n = len(a) - 1
    length = bytes((n,)) if n < 252 else bytes((252 + (n & 3), (n - 252 - (n & 3)) >> 2))
    return bytes((a[0] | 2,)) + length + a[1:] + b[1:]


def test_multi_frame_packets_keep_their_frames() -> None:
    packets = tone()
    a, b = packets[5], packets[6]
    assert len(a) != len(b)
    for p in (_code1(a), _code2(a, b), mark(_code2(a, b), 0, 0, 0)):
        m = mark(p, 3, 4, 5)
        assert read_mark(m) == Mark(3, 4, 5)
        assert frames(m) == frames(p)
        assert len(frames(m)[1]) == 2
    # code 2 with unequal frames becomes VBR code 3; decodes the same as the original
    p = _code2(a, b)
    np.testing.assert_array_equal(decode([p]), decode([mark(p, 1, 1, 1)]))
    # a long frame (two-byte length, section 3.2.1)
    big = bytes((packets[0][0],)) + bytes(range(256)) * 2
    p2 = _code2(big, a)
    assert frames(mark(p2, 1, 1, 1)) == frames(p2)


@pytest.mark.parametrize(
    "bad",
    [
        b"",
        b"\x01\x00\x00\x00",  # code 1, odd payload
        b"\x02",  # code 2, no length
        b"\x02\xff\x01",  # code 2, first frame overruns
        b"\x03",  # code 3, no count byte
        b"\x03\x00",  # code 3, zero frames
        b"\x03\x42\x01",  # CBR payload not a multiple of M
        b"\x03\x41\x09",  # padding overruns
        b"\x03\x41",  # truncated padding length
        b"\x00" + bytes(1276),  # frame longer than 1275 bytes
    ],
)
def test_malformed_packets_are_refused(bad: bytes) -> None:
    with pytest.raises(ValueError):
        mark(bad, 1, 2, 3)
    assert read_mark(bad) is None


def test_read_mark_never_raises_on_garbage() -> None:
    rng = random.Random(6716)
    good = mark(tone()[0], 1, 2, 3)
    for _ in range(20_000):
        n = rng.randrange(0, 80)
        junk = rng.randbytes(n)
        assert read_mark(junk) is None
        with contextlib.suppress(ValueError):  # mark() refuses garbage with ValueError only
            assert read_mark(mark(junk, 1, 2, 3)) == Mark(1, 2, 3)
        # garbage that passes the cheap header checks but lacks the magic
        hdr = bytes((rng.randrange(256) | 3, 0x41, MARK_SIZE))
        assert read_mark(hdr + junk) is None or junk[n - MARK_SIZE : n - 16] == MAGIC
        # corrupted marked packets: either still a mark or None, never an exception
        flipped = bytearray(good)
        flipped[rng.randrange(len(good))] ^= 1 << rng.randrange(8)
        got = read_mark(bytes(flipped))
        assert got is None or isinstance(got, Mark)
        # truncations
        assert read_mark(good[: rng.randrange(len(good))]) in (None, Mark(1, 2, 3))
