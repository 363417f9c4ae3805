"""The server's send path: RTP written for a sending transceiver straight to its DTLS transport."""

from __future__ import annotations

import asyncio
import struct
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aioice.ice
from aiortc import MediaStreamTrack, RTCRtpSender, RTCRtpTransceiver
from aiortc.mediastreams import MediaStreamError
from aiortc.rtcdtlstransport import RTCDtlsTransport, State
from aiortc.rtcicetransport import RTCIceTransport

from spacesim.rtc import internals as _i

__all__ = ["RtpWriter", "ntp_now"]

_i.register(
    __name__,
    _i.assigned(RTCRtpSender, "_ssrc", "aiortc/rtcrtpsender.py RTCRtpSender._ssrc"),
    _i.assigned(
        RTCRtpSender, "_RTCRtpSender__packet_count", "aiortc/rtcrtpsender.py __packet_count"
    ),
    _i.assigned(RTCRtpSender, "_RTCRtpSender__octet_count", "aiortc/rtcrtpsender.py __octet_count"),
    _i.assigned(
        RTCRtpSender, "_RTCRtpSender__rtp_timestamp", "aiortc/rtcrtpsender.py __rtp_timestamp"
    ),
    _i.assigned(
        RTCRtpSender, "_RTCRtpSender__ntp_timestamp", "aiortc/rtcrtpsender.py __ntp_timestamp"
    ),
    _i.assigned(
        RTCRtpTransceiver, "_codecs", "aiortc/rtcrtptransceiver.py RTCRtpTransceiver._codecs"
    ),
    _i.attr(RTCDtlsTransport, "_send_rtp", "aiortc/rtcdtlstransport.py RTCDtlsTransport._send_rtp"),
    # the synchronous send path (RtpWriter.send_now)
    _i.assigned(RTCDtlsTransport, "_state", "aiortc/rtcdtlstransport.py RTCDtlsTransport._state"),
    _i.assigned(
        RTCDtlsTransport, "_tx_srtp", "aiortc/rtcdtlstransport.py RTCDtlsTransport._tx_srtp"
    ),
    _i.assigned(
        RTCDtlsTransport,
        "_RTCDtlsTransport__tx_bytes",
        "aiortc/rtcdtlstransport.py RTCDtlsTransport.__tx_bytes",
    ),
    _i.assigned(
        RTCDtlsTransport,
        "_RTCDtlsTransport__tx_packets",
        "aiortc/rtcdtlstransport.py RTCDtlsTransport.__tx_packets",
    ),
    _i.assigned(
        RTCIceTransport, "_connection", "aiortc/rtcicetransport.py RTCIceTransport._connection"
    ),
    _i.assigned(aioice.ice.Connection, "_nominated", "aioice/ice.py Connection._nominated"),
    _i.assigned(aioice.ice.CandidatePair, "protocol", "aioice/ice.py CandidatePair.protocol"),
    _i.attr(aioice.ice.CandidatePair, "remote_addr", "aioice/ice.py CandidatePair.remote_addr"),
    _i.assigned(aioice.ice.StunProtocol, "transport", "aioice/ice.py StunProtocol.transport"),
)

# RTP fixed header (RFC 3550): V=2 P=0 X=0 CC=0 | M PT | seq | timestamp | SSRC.
_RTP_HEADER = struct.Struct("!BBHII").pack
_NTP_UNIX_OFFSET = 2_208_988_800  # seconds from 1900-01-01 to 1970-01-01


class _SilentTrack(MediaStreamTrack):
    """An audio track that never yields a frame: aiortc's RTP loop for the sender
    waits in ``recv()`` forever (no 20 ms polling as with no track at all) and the
    wait is cancelled when the sender stops."""

    kind = "audio"

    async def recv(self) -> Any:
        await asyncio.get_running_loop().create_future()
        raise MediaStreamError  # pragma: no cover - the future never completes


class RtpWriter:
    """Writes RTP for one sending transceiver straight to its DTLS transport.

    Construct it after ``setRemoteDescription(offer)`` and before ``createAnswer``:
    it makes the transceiver ``sendonly`` and gives the sender a track that never
    yields. Call :meth:`bind` once the connection is up (the DTLS transport is known
    after BUNDLE is applied; the payload type after codec negotiation); then
    :meth:`write` sends one packet.

    ``write`` awaits ``RTCDtlsTransport._send_rtp`` (aiortc/rtcdtlstransport.py),
    which SRTP-protects and hands the datagram to aioice; over UDP that coroutine
    never suspends. It raises ``ConnectionError`` once the transport has closed.
    """

    __slots__ = ("_dtls", "_send_rtp", "_sender", "payload_type", "ssrc", "transceiver")

    def __init__(self, transceiver: RTCRtpTransceiver) -> None:
        self.transceiver = transceiver
        transceiver.direction = "sendonly"
        transceiver.sender.replaceTrack(_SilentTrack())
        self._sender: RTCRtpSender = transceiver.sender
        # aiortc/rtcrtpsender.py RTCRtpSender.__init__: _ssrc is the SSRC the answer
        # announces (rtcpeerconnection.py create_media_description_for_transceiver).
        self.ssrc: int = self._sender._ssrc
        self.payload_type: int = -1
        self._send_rtp: Callable[[bytes], Awaitable[None]] | None = None
        self._dtls: RTCDtlsTransport | None = None

    def bind(self) -> None:
        """Look up the negotiated payload type and the (bundled) DTLS transport."""
        # aiortc/rtcpeerconnection.py setRemoteDescription: transceiver._codecs are
        # the negotiated codecs; RTCRtpSender._run_rtp sends with _codecs[0].
        payload_type = self.transceiver._codecs[0].payloadType
        if payload_type is None:
            raise ValueError("no negotiated payload type")
        self.payload_type = payload_type
        # aiortc/rtcdtlstransport.py RTCDtlsTransport._send_rtp
        self._send_rtp = self._sender.transport._send_rtp
        self._dtls = self._sender.transport

    def send_now(
        self, sequence_number: int, timestamp: int, marker: int, payload: bytes, ntp: int
    ) -> bool:
        """Send one packet without awaiting; False when only `write` can (then await it).

        The same steps as ``RTCDtlsTransport._send_rtp`` -> ``RTCIceTransport._send`` ->
        ``aioice Connection.sendto`` -> ``StunProtocol.send_data`` (aiortc 1.16.0,
        aioice 0.13.0), minus four coroutine frames per listener: SRTP-protect, then
        ``sendto`` on the nominated pair's UDP socket. Only for a plain UDP pair (host
        candidates): a TURN relay's protocol sends asynchronously, so it goes via `write`.
        ``ntp`` is the sender-report clock (NTP 32.32) for this instant.
        """
        dtls = self._dtls
        if dtls is None or dtls._state is not State.CONNECTED:
            return False
        pair = dtls.transport._connection._nominated.get(1)
        if pair is None or type(pair.protocol) is not aioice.ice.StunProtocol:
            return False
        data = dtls._tx_srtp.protect(
            _RTP_HEADER(
                0x80, (marker << 7) | self.payload_type, sequence_number, timestamp, self.ssrc
            )
            + payload
        )
        pair.protocol.transport.sendto(data, pair.remote_addr)
        dtls._RTCDtlsTransport__tx_bytes += len(data)  # type: ignore[attr-defined]
        dtls._RTCDtlsTransport__tx_packets += 1  # type: ignore[attr-defined]
        s = self._sender
        s._RTCRtpSender__packet_count += 1  # type: ignore[attr-defined]
        s._RTCRtpSender__octet_count += len(payload)  # type: ignore[attr-defined]
        s._RTCRtpSender__rtp_timestamp = timestamp  # type: ignore[attr-defined]
        s._RTCRtpSender__ntp_timestamp = ntp  # type: ignore[attr-defined]
        return True

    async def write(
        self, sequence_number: int, timestamp: int, marker: int, payload: bytes
    ) -> None:
        """Send one RTP packet (fixed 12-byte header, no extensions) with this SSRC."""
        send = self._send_rtp
        if send is None:
            raise ConnectionError("RtpWriter not bound")
        data = (
            _RTP_HEADER(
                0x80, (marker << 7) | self.payload_type, sequence_number, timestamp, self.ssrc
            )
            + payload
        )
        await send(data)
        # Keep aiortc's RTCP sender reports truthful (aiortc/rtcrtpsender.py
        # RTCRtpSender._run_rtcp reads these counters; _run_rtp would set them).
        s = self._sender
        s._RTCRtpSender__packet_count += 1  # type: ignore[attr-defined]
        s._RTCRtpSender__octet_count += len(payload)  # type: ignore[attr-defined]
        s._RTCRtpSender__rtp_timestamp = timestamp  # type: ignore[attr-defined]
        s._RTCRtpSender__ntp_timestamp = int(  # type: ignore[attr-defined]
            (time.time() + _NTP_UNIX_OFFSET) * 4294967296.0
        )


def ntp_now() -> int:
    """The RTCP sender-report clock for now (NTP 32.32 fixed point)."""
    return int((time.time() + _NTP_UNIX_OFFSET) * 4294967296.0)
