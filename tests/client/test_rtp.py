"""spacesim.client.rtp reads RTP (RFC 3550 5.1) from bytes as aiortc writes it."""

from __future__ import annotations

import random
import struct

from aiortc.rtcrtpparameters import RTCRtpHeaderExtensionParameters, RTCRtpParameters
from aiortc.rtp import HeaderExtensionsMap, RtpPacket

from spacesim.client import rtp


def _packet(payload: bytes = b"\x03\x41\x14opus", **kw: int) -> RtpPacket:
    p = RtpPacket(payload_type=111, sequence_number=65535, timestamp=4294967295, ssrc=0xDEADBEEF)
    for k, v in kw.items():
        setattr(p, k, v)
    p.payload = payload
    return p


def test_fixed_header_and_payload() -> None:
    data = _packet(marker=1).serialize()
    assert rtp.header(data) == rtp.RtpHeader(111, 1, 65535, 4294967295, 0xDEADBEEF)
    assert rtp.payload(data) == b"\x03\x41\x14opus"


def test_csrcs_extension_and_padding_are_skipped() -> None:
    p = _packet(payload=b"x" * 33)
    p.csrc = [1, 2, 3]
    p.padding_size = 7
    ext = HeaderExtensionsMap()
    params = RTCRtpParameters(
        headerExtensions=[
            RTCRtpHeaderExtensionParameters(id=1, uri="urn:ietf:params:rtp-hdrext:sdes:mid")
        ]
    )
    ext.configure(params)
    p.extensions.mid = "0"
    data = p.serialize(ext)
    assert data[0] & 0x30 == 0x30 and data[0] & 0x0F == 3  # X, P, CC=3 really set
    assert rtp.payload(data) == b"x" * 33
    assert rtp.payload(data) == RtpPacket.parse(data, ext).payload
    assert rtp.header(data) == rtp.RtpHeader(111, 0, 65535, 4294967295, 0xDEADBEEF)


def test_malformed_is_none() -> None:
    good = _packet().serialize()
    assert rtp.payload(good[:11]) is None and rtp.header(good[:11]) is None
    assert rtp.payload(bytes([0x40]) + good[1:]) is None  # version 1
    assert rtp.header(bytes([0xC0]) + good[1:]) is None  # version 3
    assert rtp.payload(bytes([0xA0]) + good[1:-1] + b"\x00") is None  # padding length 0
    assert rtp.payload(bytes([0xA0]) + good[1:-1] + b"\xff") is None  # padding overruns
    assert rtp.payload(bytes([0x8F]) + good[1:]) is None  # CSRC list overruns
    ext = struct.pack("!BBHIIHH", 0x90, 111, 1, 2, 3, 0xBEDE, 50)
    assert rtp.payload(ext + b"abcd") is None  # extension overruns
    assert rtp.payload(good[:12]) == b""  # an empty payload is a payload


def test_never_raises() -> None:
    rng = random.Random(5)
    for _ in range(20_000):
        data = bytes([0x80 | rng.randrange(64)]) + rng.randbytes(rng.randrange(40))
        p = rtp.payload(data)
        assert p is None or len(p) <= len(data) - 12
        rtp.header(data)
