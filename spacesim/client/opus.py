"""A timing marker carried inside valid Opus packets, in the packet's padding.

Listeners measure publisher -> listener latency without decoding anything: the
publisher writes ``(sender_id, seq, t_ns)`` into each packet it sends, with
``t_ns = time.monotonic_ns()`` (one clock for every process on a host), and a
listener reads it back from the payload it receives. The room server forwards
payloads byte for byte, so the marker survives.

Where the marker lives -- RFC 6716 (Opus), section 3.2.5 "Code 3: A Signaled
Number of Frames in the Packet": a code-3 packet may carry padding bytes after its
frames; decoders skip them. :func:`mark` rewrites a packet as code 3 with the same
frames, the padding flag ``p`` set and exactly :data:`MARK_SIZE` padding bytes::

    TOC (config|s|c=3) | count byte 0b v 1 M | padding length (= MARK_SIZE)
    | [VBR frame lengths] | frame bytes (unchanged) | MAGIC sender_id seq t_ns

(``!4sIIQ``, big-endian: 4-byte magic, u32 sender id, u32 sequence number, u64
``monotonic_ns``). RFC 6716 section 3.2.5 asks encoders to set padding bytes to
zero ("to avoid creating a covert channel") and requires decoders to accept any
value, so a marked packet decodes to exactly the same audio (the tests check this
with libopus). A code-0 packet grows by 22 bytes (count byte, padding length,
20-byte mark).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

__all__ = ["MAGIC", "MARK_SIZE", "Mark", "frames", "mark", "read_mark", "read_mark_fields"]

MAGIC = b"SSm1"
"""First four bytes of the padding block of a marked packet (spacesim mark v1)."""

_MARK = struct.Struct("!4sIIQ")
MARK_SIZE = _MARK.size  # 20 bytes: < 255, so the padding length is one byte
_MAX_FRAME = 1275  # RFC 6716 section 3.2.1 / 3.4 [R2]: no frame is longer
_U32 = 0xFFFFFFFF
_U64 = 0xFFFFFFFFFFFFFFFF


@dataclass(frozen=True, slots=True)
class Mark:
    """What :func:`mark` wrote: who sent the packet, its number, and when (monotonic ns)."""

    sender_id: int
    seq: int
    t_ns: int


def _frame_length(data: bytes, i: int) -> tuple[int, int]:
    """Read one frame length at ``data[i]`` (RFC 6716 section 3.2.1); (length, next index)."""
    first = data[i]
    if first < 252:
        return first, i + 1
    if i + 1 >= len(data):
        raise ValueError("truncated frame length")
    return data[i + 1] * 4 + first, i + 2


def _encode_length(n: int) -> bytes:
    """RFC 6716 section 3.2.1: 0..251 in one byte, 252..1275 in two."""
    if n < 252:
        return bytes((n,))
    first = 252 + (n & 3)
    return bytes((first, (n - first) >> 2))


def frames(packet: bytes) -> tuple[int, list[bytes]]:
    """Split an Opus packet into ``(toc_without_code, frames)`` (RFC 6716 section 3.2).

    ``toc_without_code`` is the TOC byte with its two code bits cleared (config and
    stereo flag, section 3.1). Raises ``ValueError`` for a malformed packet
    (the rules [R1]-[R7] of section 3.4 that concern framing).
    """
    n = len(packet)
    if n < 1:
        raise ValueError("empty packet")  # [R1]
    toc = packet[0]
    code = toc & 3
    body = packet[1:]
    if code == 0:  # section 3.2.2: one frame
        out = [body]
    elif code == 1:  # section 3.2.3: two frames of equal size
        if len(body) % 2:
            raise ValueError("code 1 packet with an odd payload length")  # [R3]
        half = len(body) // 2
        out = [body[:half], body[half:]]
    elif code == 2:  # section 3.2.4: two frames, the first one's length signalled
        if not body:
            raise ValueError("code 2 packet without a frame length")  # [R4]
        length, i = _frame_length(body, 0)
        if i + length > len(body):
            raise ValueError("code 2 first frame overruns the packet")  # [R4]
        out = [body[i : i + length], body[i + length :]]
    else:  # section 3.2.5: M frames, CBR or VBR, optional padding
        if not body:
            raise ValueError("code 3 packet without a frame count byte")  # [R6]
        count = body[0]
        vbr, padded, m = count & 0x80, count & 0x40, count & 0x3F
        if m == 0:
            raise ValueError("code 3 packet with zero frames")  # [R5]
        i = 1
        padding = 0
        if padded:
            # Each byte adds its value; 255 adds 254 and says another byte follows.
            while True:
                if i >= len(body):
                    raise ValueError("truncated padding length")
                p = body[i]
                i += 1
                padding += 254 if p == 255 else p
                if p != 255:
                    break
        end = len(body) - padding
        if end < i:
            raise ValueError("padding overruns the packet")  # [R6]/[R7]
        if vbr:
            lengths = []
            for _ in range(m - 1):
                if i >= end:
                    raise ValueError("truncated VBR frame lengths")  # [R7]
                length, i = _frame_length(body, i)
                lengths.append(length)
            if i + sum(lengths) > end:
                raise ValueError("VBR frames overrun the packet")  # [R7]
            lengths.append(end - i - sum(lengths))
        else:
            if (end - i) % m:
                raise ValueError("CBR payload not a multiple of the frame count")  # [R6]
            lengths = [(end - i) // m] * m
        out = []
        for length in lengths:
            out.append(body[i : i + length])
            i += length
    if any(len(f) > _MAX_FRAME for f in out):
        raise ValueError("frame longer than 1275 bytes")  # [R2]
    return toc & 0xFC, out


def mark(packet: bytes, sender_id: int, seq: int, t_ns: int) -> bytes:
    """``packet`` rewritten as a code-3 Opus packet carrying a :class:`Mark` in its padding.

    The frames (and the TOC's config and stereo bits) are kept byte for byte; any
    padding the packet had is replaced, so marking a marked packet re-marks it.
    ``sender_id`` and ``seq`` are taken modulo 2**32, ``t_ns`` modulo 2**64.
    Raises ``ValueError`` when ``packet`` is not a well-formed Opus packet.
    """
    toc, fs = frames(packet)
    m = len(fs)
    # section 3.2.5: count byte = v | p | M. One frame (or equal sizes) needs no
    # lengths (CBR); otherwise VBR with M-1 lengths (section 3.2.1 encoding).
    vbr = any(len(f) != len(fs[0]) for f in fs)
    header = bytearray((toc | 3, (0x80 if vbr else 0) | 0x40 | m, MARK_SIZE))
    if vbr:
        for f in fs[:-1]:
            header += _encode_length(len(f))
    return b"".join(
        (bytes(header), *fs, _MARK.pack(MAGIC, sender_id & _U32, seq & _U32, t_ns & _U64))
    )


def read_mark(packet: bytes) -> Mark | None:
    """The :class:`Mark` in a packet made by :func:`mark`; None for anything else.

    Never raises for any ``bytes`` input. Cheap: it checks the TOC code, the count
    byte's padding flag, a one-byte padding length equal to :data:`MARK_SIZE`, and
    the magic at the start of the trailing padding (section 3.2.5 puts padding at
    the end of the packet).
    """
    fields = read_mark_fields(packet)
    return None if fields is None else Mark(*fields)


def read_mark_fields(packet: bytes, start: int = 0) -> tuple[int, int, int] | None:
    """:func:`read_mark` as a plain ``(sender_id, seq, t_ns)`` tuple, for per-packet use
    (a frozen dataclass costs more to build than the rest of the check). The Opus
    packet starts at ``start`` (an RTP packet's payload, without copying it out)."""
    end = len(packet)
    if end - start < 3 + MARK_SIZE or packet[start] & 3 != 3:
        return None
    count = packet[start + 1]
    if not count & 0x40 or not count & 0x3F or packet[start + 2] != MARK_SIZE:
        return None
    magic, sender_id, seq, t_ns = _MARK.unpack_from(packet, end - MARK_SIZE)
    if magic != MAGIC:
        return None
    return sender_id, seq, t_ns
