"""RTP packets read straight from bytes (RFC 3550 section 5.1), for the receive fast path.

`spacesim.rtc.receive_rtp_direct` hands listeners decrypted RTP packets as bytes; the
listeners need only the payload (the Opus packet carrying the timing mark) and the
routing already happened on the SSRC. Building aiortc's ``RtpPacket`` for that costs
more than everything else a lite listener does per packet, so this reads the header
fields in place. Never raises for any ``bytes`` input.
"""

from __future__ import annotations

import struct
from typing import NamedTuple

__all__ = ["RtpHeader", "header", "payload"]

_FIXED = struct.Struct("!BBHII")  # V P X CC | M PT | sequence | timestamp | SSRC


class RtpHeader(NamedTuple):
    """The fixed header fields of one RTP packet."""

    payload_type: int
    marker: int
    sequence_number: int
    timestamp: int
    ssrc: int


def header(packet: bytes) -> RtpHeader | None:
    """The fixed header of an RTP version 2 packet; None if ``packet`` is not one."""
    if len(packet) < 12 or packet[0] >> 6 != 2:
        return None
    _, mpt, seq, ts, ssrc = _FIXED.unpack_from(packet)
    return RtpHeader(mpt & 0x7F, mpt >> 7, seq, ts, ssrc)


def payload(packet: bytes) -> bytes | None:
    """The payload of an RTP version 2 packet; None if malformed.

    Skips the CSRC list (4 x CC bytes), a header extension when X is set (a 4-byte
    header whose second half is its length in 32-bit words, section 5.3.1) and, when
    P is set, the padding whose length is the packet's last byte (section 5.1:
    it counts itself, so it is at least 1).
    """
    n = len(packet)
    if n < 12:
        return None
    b0 = packet[0]
    if b0 >> 6 != 2:
        return None
    start = 12 + 4 * (b0 & 0x0F)
    if b0 & 0x10:
        if start + 4 > n:
            return None
        start += 4 + 4 * int.from_bytes(packet[start + 2 : start + 4], "big")
    end = n
    if b0 & 0x20:
        pad = packet[-1]
        if pad == 0:
            return None
        end -= pad
    if start > end:
        return None
    return packet[start:end]
