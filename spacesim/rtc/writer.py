"""The server's send path: RTP written for a sending transceiver straight to its DTLS transport."""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
import struct
import sys
import threading
import time
import weakref
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import aioice.ice
import pylibsrtp
from aiortc import MediaStreamTrack, RTCRtpSender, RTCRtpTransceiver
from aiortc.mediastreams import MediaStreamError
from aiortc.rtcdtlstransport import RTCDtlsTransport, State
from aiortc.rtcicetransport import RTCIceTransport
from aiortc.rtp import RtcpByePacket, RtcpSdesPacket, RtcpSourceInfo
from pylibsrtp._binding import ffi as _ffi
from pylibsrtp._binding import lib as _lib

from spacesim.rtc import internals as _i

__all__ = ["RtpWriter", "SenderReports", "ntp_now", "srtp_error"]

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
    # the direct path (send_now): libsrtp on a scratch buffer, the transport's socket
    _i.assigned(pylibsrtp.Session, "_srtp", "pylibsrtp/__init__.py Session._srtp"),
    _i.attr(
        asyncio.selector_events,
        "_SelectorTransport",
        "asyncio/selector_events.py _SelectorTransport",
    ),
    _i.attr(
        asyncio.selector_events,
        "_SelectorDatagramTransport",
        "asyncio/selector_events.py _SelectorDatagramTransport",
    ),
    _i.attr(_lib, "srtp_protect", "pylibsrtp._binding lib.srtp_protect"),
    _i.attr(_lib, "srtp_protect_rtcp", "pylibsrtp._binding lib.srtp_protect_rtcp"),
    _i.assigned(
        asyncio.selector_events._SelectorTransport,  # type: ignore[attr-defined]
        "_sock",
        "asyncio/selector_events.py _SelectorTransport._sock",
    ),
    _i.assigned(
        asyncio.selector_events._SelectorDatagramTransport,  # type: ignore[attr-defined]
        "_buffer",
        "asyncio/selector_events.py _SelectorDatagramTransport._buffer",
    ),
    # SenderReports: the sender's own RTCP loop replaced, its report state kept
    _i.attr(RTCRtpSender, "_run_rtcp", "aiortc/rtcrtpsender.py RTCRtpSender._run_rtcp"),
    _i.attr(RTCRtpSender, "_send_rtcp", "aiortc/rtcrtpsender.py RTCRtpSender._send_rtcp"),
    _i.assigned(
        RTCRtpSender, "_RTCRtpSender__rtcp_started", "aiortc/rtcrtpsender.py __rtcp_started"
    ),
    _i.assigned(RTCRtpSender, "_RTCRtpSender__rtcp_exited", "aiortc/rtcrtpsender.py __rtcp_exited"),
    _i.assigned(RTCRtpSender, "_RTCRtpSender__cname", "aiortc/rtcrtpsender.py __cname"),
    _i.assigned(RTCRtpSender, "_RTCRtpSender__lsr", "aiortc/rtcrtpsender.py __lsr"),
    _i.assigned(RTCRtpSender, "_RTCRtpSender__lsr_time", "aiortc/rtcrtpsender.py __lsr_time"),
)

# RTP fixed header (RFC 3550): V=2 P=0 X=0 CC=0 | M PT | seq | timestamp | SSRC.
_RTP_HEADER = struct.Struct("!BBHII").pack
_RTP_HEADER_INTO = struct.Struct("!BBHII").pack_into
# RTCP sender report, no report blocks (RFC 3550 6.4.1): V=2 RC=0 | PT=200 | length=6 |
# SSRC | NTP 64 bits | RTP timestamp | packet count | octet count -- aiortc.rtp
# RtcpSrPacket.__bytes__ gives the same 28 bytes.
_RTCP_SR = struct.Struct("!BBHIQIII").pack
_NTP_UNIX_OFFSET = 2_208_988_800  # seconds from 1900-01-01 to 1970-01-01
# pylibsrtp/__init__.py: SRTP_MAX_TRAILER_LEN = 16 + 128 (the most protect appends, SRTCP
# the same plus 4); the scratch buffer holds any packet that fits with it
_SCRATCH = 2048
_MAX_TRAILER = 16 + 128 + 4
_CONNECTED = State.CONNECTED
_srtp_protect = _lib.srtp_protect


class _Scratch(threading.local):
    """One thread's buffer that packets are built and SRTP-protected in (in place)."""

    def __init__(self) -> None:
        self.cbuf = _ffi.new("unsigned char[]", _SCRATCH)
        self.view = memoryview(_ffi.buffer(self.cbuf))
        self.length = _ffi.new("int *")


_scratch = _Scratch()


class _Direct:
    """What the direct path needs of one connection, looked up once it is up."""

    __slots__ = (
        "__weakref__", "addr", "cbuf", "dtls", "lane", "length", "live", "nominated", "pair",
        "sendto", "session", "sockaddr", "srtp", "transport", "view",
    )  # fmt: skip

    def __init__(self, dtls: RTCDtlsTransport, pair: Any) -> None:
        self.dtls = dtls
        self.nominated: dict[int, Any] = dtls.transport._connection._nominated
        self.pair = pair
        self.transport = pair.protocol.transport
        # asyncio/selector_events.py: the datagram transport's socket; sendto on it is what
        # transport.sendto does when nothing is queued (checked before every send)
        self.sendto = self.transport._sock.sendto
        host, port = pair.remote_addr
        # CPython's sendto runs a str host through the IDNA codec on every call
        # (socketmodule.c idna_converter); an ASCII bytes host is used as it is
        self.addr = (host.encode("ascii"), port) if host.isascii() else (host, port)
        # the same address for libc's sendto (the fan-out kernel, spacesim.rtc.native)
        self.sockaddr = _sockaddr(host, port)
        # (fan, slot, lane) while a fan-out kernel sends for this connection's writer
        self.lane: tuple[Any, int, int] | None = None
        # pylibsrtp/__init__.py Session._srtp: the srtp_t Session.protect passes to
        # lib.srtp_protect; the Session frees it when collected, so hold the Session too.
        self.session = dtls._tx_srtp
        self.srtp = self.session._srtp[0]
        scratch = _scratch  # this thread's
        self.cbuf, self.view, self.length = scratch.cbuf, scratch.view, scratch.length
        # False once the DTLS transport leaves "connected": it emits "statechange"
        # (aiortc/rtcdtlstransport.py RTCDtlsTransport._set_state), so a send need not
        # look at the transport itself
        self.live = True
        on = getattr(dtls, "on", None)
        if on is not None:
            ref = weakref.ref(self)

            def on_state() -> None:
                me = ref()
                if me is not None and dtls._state is not _CONNECTED:
                    me.live = False
                    lane = me.lane
                    if lane is not None:  # the kernel must not send on it either
                        me.lane = None
                        lane[0].disarm(lane[1], lane[2])

            on("statechange", on_state)

    def ok(self) -> bool:
        """Still the connection's state: connected, the same pair, nothing queued."""
        return self.current() and not self.transport._buffer

    def current(self) -> bool:
        """Still the connection's path: connected, the same pair."""
        return self.live and self.dtls._state is _CONNECTED and self.nominated.get(1) is self.pair

    def send_rtcp(self, n: int) -> int:
        """SRTCP-protect the n bytes of RTCP in the scratch buffer and send them; bytes sent."""
        length = self.length
        length[0] = n
        rc = _lib.srtp_protect_rtcp(self.srtp, self.cbuf, length)
        if rc:
            raise srtp_error(rc)
        return self._out(length[0])

    def _out(self, m: int) -> int:
        out = self.view[:m]
        try:
            self.sendto(out, self.addr)
        except OSError:  # full (or failing): asyncio queues it, or reports the error its way
            self.transport.sendto(out.tobytes(), self.addr)
        return m


def _sockaddr(host: str, port: int) -> bytes | None:
    """``struct sockaddr_in`` / ``sockaddr_in6`` (Linux layout: family in host order, port
    and address in network order) of a numeric address; None for anything else."""
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        addr = socket.inet_pton(fam, host)
    except (OSError, ValueError):
        return None  # a name or a scoped IPv6 address: only the Python path sends to it
    head = int(fam).to_bytes(2, sys.byteorder) + port.to_bytes(2, "big")
    if fam == socket.AF_INET:
        return head + addr + bytes(8)
    return head + bytes(4) + addr + bytes(4)  # flowinfo 0, scope id 0


def srtp_error(rc: int) -> pylibsrtp.Error:
    # pylibsrtp/__init__.py _srtp_assert: the exception Session.protect raises
    errors = pylibsrtp.ERRORS
    return pylibsrtp.Error(errors[rc] if 0 <= rc < len(errors) else f"error {rc}")


def _direct(dtls: RTCDtlsTransport | None) -> _Direct | None:
    """The direct path of a connected DTLS transport over a plain UDP pair, or None."""
    if dtls is None or dtls._state is not _CONNECTED:
        return None
    pair = dtls.transport._connection._nominated.get(1)
    if pair is None or type(pair.protocol) is not aioice.ice.StunProtocol:
        return None  # a TURN relay's protocol sends asynchronously: RtpWriter.write
    return _Direct(dtls, pair)


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
    :meth:`send_now` (or :meth:`write`) sends one packet.

    ``write`` awaits ``RTCDtlsTransport._send_rtp`` (aiortc/rtcdtlstransport.py),
    which SRTP-protects and hands the datagram to aioice; over UDP that coroutine
    never suspends. It raises ``ConnectionError`` once the transport has closed.

    :meth:`SenderReports.take_over` can replace the sender's own RTCP loop (one task
    per sender, waking about once a second): it then sends the reports of all writers
    of a connection as one compound packet.
    """

    __slots__ = (
        "_d", "_dtls", "_lane", "_managed", "_n_octets", "_n_packets", "_n_tx_bytes", "_ntp",
        "_rtp_ts", "_send_rtp", "_sender", "direct", "payload_type", "ssrc", "transceiver",
    )  # fmt: skip

    def __init__(
        self, transceiver: RTCRtpTransceiver, reports: SenderReports | None = None
    ) -> None:
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
        self._d: _Direct | None = None
        #: False: `send_now` goes through pylibsrtp's Session and the asyncio transport
        #: (the earlier path, kept as the benchmark's baseline)
        self.direct = True
        # Taken over by a SenderReports (see `send_now`): counts kept here until `_sync`
        self._managed = False
        self._n_packets = self._n_octets = self._n_tx_bytes = 0
        self._rtp_ts = self._ntp = 0
        # (fan, slot, lane): a fan-out kernel (spacesim.rtc.native.FanOut) sends for this
        # writer while the lane is armed (`arm`); its counts are folded in by `_sync`
        self._lane: tuple[Any, int, int] | None = None

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
        aioice 0.13.0), minus four coroutine frames per listener: the packet is built in
        a per-thread scratch buffer, SRTP-protected there in place by libsrtp
        (``srtp_protect`` on the transport's ``srtp_t``, as pylibsrtp's
        ``Session.protect`` calls it, minus its copies and allocations) and sent with
        ``sendto`` on the nominated pair's UDP socket -- through the asyncio transport
        when it has datagrams queued or the socket refuses, so order and error
        handling stay asyncio's. Only for a plain UDP pair (host candidates): a TURN
        relay's protocol sends asynchronously, so it goes via `write`. ``ntp`` is the
        sender-report clock (NTP 32.32) for this instant.
        """
        d = self._d
        if not self._managed or d is None or not d.live:
            return self._send_now_checked(sequence_number, timestamp, marker, payload, ntp)
        # Managed by a SenderReports: the connection's pair and asyncio's queue are
        # checked at each report (every 0.5-1.5 s) and after a refused sendto, and the
        # counts go to aiortc at each report -- at 400 listeners every object touched
        # per send is a cache miss (~2 us a send, measured), so touch few.
        n = 12 + len(payload)
        if n > _SCRATCH - _MAX_TRAILER:
            return self._send_now_checked(sequence_number, timestamp, marker, payload, ntp)
        view = d.view
        _RTP_HEADER_INTO(
            view, 0, 0x80, (marker << 7) | self.payload_type, sequence_number, timestamp, self.ssrc
        )
        view[12:n] = payload
        length = d.length
        length[0] = n
        rc = _srtp_protect(d.srtp, d.cbuf, length)
        if rc:
            raise srtp_error(rc)
        m = length[0]
        out = view[:m]
        try:
            d.sendto(out, d.addr)
        except OSError:  # full (or failing): asyncio queues it, or reports the error its way
            self._drop_direct()  # asyncio may hold a queue now: look again next time
            d.transport.sendto(out.tobytes(), d.addr)
        self._n_packets += 1
        self._n_octets += n - 12
        self._n_tx_bytes += m
        self._rtp_ts = timestamp
        self._ntp = ntp
        return True

    # ------------------------------------------------------------ fan-out kernel lanes

    def attach(self, fan: Any, k: int, lane: int) -> None:
        """Lane `lane` of slot `k` of `fan` (a ``native.FanOut``) is this writer's; it
        stays with the Python path until `arm`."""
        self.detach()
        self._lane = (fan, k, lane)

    def detach(self) -> None:
        """The writer's lane is going away: fold in its counts, stop the kernel's sends."""
        lane = self._lane
        if lane is None:
            return
        self._sync()
        lane[0].disarm(lane[1], lane[2])
        d = self._d
        if d is not None and d.lane is lane:
            d.lane = None
        self._lane = None

    def arm(self) -> bool:
        """Let the kernel send for this writer if the direct path is up (after a send
        through `send_now` has looked it up): managed by a `SenderReports` (which checks
        the pair and asyncio's queue at each report and folds in the counts), a plain
        UDP pair, a numeric address, nothing queued. True if the lane is armed."""
        lane = self._lane
        d = self._d
        if lane is None or d is None or not self._managed or not d.live:
            return False
        if d.lane is lane:
            return True
        sa = d.sockaddr
        if sa is None or d.transport._buffer:
            return False
        sock = d.transport._sock
        if sock.family != (socket.AF_INET6 if len(sa) == 28 else socket.AF_INET):
            return False  # aioice pairs candidates of one family; never send a mismatch
        fan, k, i = lane
        # pylibsrtp/__init__.py Session._srtp: the srtp_t; `keep` holds the Session (and
        # the transport, whose socket's fd the kernel writes) while the lane is armed
        fan.arm(
            k,
            i,
            int(_ffi.cast("uintptr_t", d.srtp)),
            sock.fileno(),
            sa,
            self.ssrc,
            self.payload_type,
            d,
        )
        d.lane = lane
        return True

    def requeue(self, data: bytes) -> None:
        """The kernel's ``sendto`` of this protected datagram was refused (socket full, or
        an error): asyncio's transport queues it or reports the error its way, as
        `send_now` does, and the writer goes the Python way until the next report."""
        d = self._d
        self._drop_direct()
        if d is not None:
            d.transport.sendto(data, d.addr)

    def _drop_direct(self) -> None:
        """Forget the direct path (looked up again at the next send); disarm the lane."""
        d = self._d
        self._d = None
        if d is not None and d.lane is not None:
            lane = d.lane
            d.lane = None
            lane[0].disarm(lane[1], lane[2])

    def _sync(self) -> None:
        """Hand the counts of managed sends to aiortc (its reports, ``getStats``)."""
        lane = self._lane
        if lane is not None:
            packets, octets, tx_bytes, rtp_ts, ntp = lane[0].take_counts(lane[1], lane[2])
            if packets:
                # the kernel's last (timestamp, NTP) pair stands for the stream: each pair
                # is one send's, so any is a true mapping for the sender report
                self._n_packets += packets
                self._n_octets += octets
                self._n_tx_bytes += tx_bytes
                self._rtp_ts = rtp_ts
                self._ntp = ntp
        if not self._n_packets:
            return
        s = self._sender
        s._RTCRtpSender__packet_count += self._n_packets  # type: ignore[attr-defined]
        s._RTCRtpSender__octet_count += self._n_octets  # type: ignore[attr-defined]
        s._RTCRtpSender__rtp_timestamp = self._rtp_ts  # type: ignore[attr-defined]
        s._RTCRtpSender__ntp_timestamp = self._ntp  # type: ignore[attr-defined]
        dtls = self._dtls
        if dtls is not None:
            dtls._RTCDtlsTransport__tx_bytes += self._n_tx_bytes  # type: ignore[attr-defined]
            dtls._RTCDtlsTransport__tx_packets += self._n_packets  # type: ignore[attr-defined]
        self._n_packets = self._n_octets = self._n_tx_bytes = 0

    def _send_now_checked(
        self, sequence_number: int, timestamp: int, marker: int, payload: bytes, ntp: int
    ) -> bool:
        """`send_now` with every check made per send and aiortc's counts kept at once."""
        self._sync()
        d = self._d
        n = 12 + len(payload)
        # _Direct.ok(), inlined: this runs once per listener and packet
        if d is None or d.dtls._state is not _CONNECTED or d.nominated.get(1) is not d.pair:
            self._drop_direct()
            d = self._d = _direct(self._dtls) if self.direct else None
            if d is None:
                return self._send_now_bytes(sequence_number, timestamp, marker, payload, ntp)
        if d.transport._buffer or n > _SCRATCH - _MAX_TRAILER:  # behind asyncio's queue
            if self._managed:
                self._drop_direct()  # not the unchecked path until the queue is gone
            return self._send_now_bytes(sequence_number, timestamp, marker, payload, ntp)
        view = d.view
        _RTP_HEADER_INTO(
            view, 0, 0x80, (marker << 7) | self.payload_type, sequence_number, timestamp, self.ssrc
        )
        view[12:n] = payload
        length = d.length
        length[0] = n
        rc = _srtp_protect(d.srtp, d.cbuf, length)
        if rc:
            raise srtp_error(rc)
        m = length[0]
        out = view[:m]
        try:
            d.sendto(out, d.addr)
        except OSError:  # full (or failing): asyncio queues it, or reports the error its way
            d.transport.sendto(out.tobytes(), d.addr)
        dtls = d.dtls
        dtls._RTCDtlsTransport__tx_bytes += m  # type: ignore[attr-defined]
        dtls._RTCDtlsTransport__tx_packets += 1  # type: ignore[attr-defined]
        s = self._sender
        s._RTCRtpSender__packet_count += 1  # type: ignore[attr-defined]
        s._RTCRtpSender__octet_count += n - 12  # type: ignore[attr-defined]
        s._RTCRtpSender__rtp_timestamp = timestamp  # type: ignore[attr-defined]
        s._RTCRtpSender__ntp_timestamp = ntp  # type: ignore[attr-defined]
        return True

    def _send_now_bytes(
        self, sequence_number: int, timestamp: int, marker: int, payload: bytes, ntp: int
    ) -> bool:
        """`send_now` through pylibsrtp's ``Session.protect`` and the asyncio transport."""
        self._sync()
        dtls = self._dtls
        if dtls is None or dtls._state is not _CONNECTED:
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
        self._sync()
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


class _Group:
    """The writers of one connection, reported on together."""

    __slots__ = ("direct", "due", "sdes", "writers")

    def __init__(self, writers: Sequence[RtpWriter], due: float) -> None:
        self.writers = tuple(writers)
        self.due = due
        self.sdes = b""  # the SDES part, once the CNAME is known
        # the direct path the last report looked up while no writer had one (a silent
        # connection): kept, as each _Direct adds a "statechange" handler to the DTLS
        # transport for the connection's life
        self.direct: _Direct | None = None


class SenderReports:
    """RTCP sender reports of many connections' writers, from one timer per room.

    aiortc runs one ``RTCRtpSender._run_rtcp`` task per sender: every 0.5-1.5 s (RFC
    3550's randomised interval) it builds an SR and an SDES (CNAME) packet as objects,
    protects and sends them -- at 400 listeners with 3 slots, 1,200 task wake-ups and
    datagrams per second, about a third of the forwarding CPU. Here a timer every
    ``tick`` s sends each connection whose time has come one compound packet: the SR of
    each of its writers and one SDES with their CNAMEs, built with ``struct`` and
    protected through the direct path -- one datagram per connection per 0.5-1.5 s.
    What the SRs carry (counts, RTP / NTP times, ``__lsr`` for the RTT estimate from
    receiver reports) is what aiortc's loop would have sent; the BYE on stop stays
    aiortc's.
    """

    def __init__(self, tick: float = 0.1) -> None:
        self.tick = tick
        self.sent = 0
        self._groups: dict[int, _Group] = {}
        self._timer: asyncio.TimerHandle | None = None

    def take_over(self, writer: RtpWriter) -> None:
        """Replace the writer's sender's own RTCP loop: call it before the connection
        is up (``RTCRtpSender.send`` starts the loop), then `add` the connection's
        writers once it is."""
        sender = writer._sender
        writer._managed = True

        async def _run_rtcp() -> None:
            # aiortc/rtcrtpsender.py RTCRtpSender._run_rtcp, minus the reports: stop()
            # waits for __rtcp_started, cancels, then waits for __rtcp_exited
            sender._RTCRtpSender__rtcp_started.set()  # type: ignore[attr-defined]
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.get_running_loop().create_future()
            await sender._send_rtcp([RtcpByePacket(sources=[sender._ssrc])])
            sender._RTCRtpSender__rtcp_exited.set()  # type: ignore[attr-defined]

        sender._run_rtcp = _run_rtcp  # type: ignore[method-assign]

    def add(self, writers: Sequence[RtpWriter]) -> None:
        """Report on these writers (all of one connection, bound) from now on."""
        loop = asyncio.get_running_loop()
        self._groups[id(writers)] = _Group(writers, loop.time() + 0.5 + random.random())
        if self._timer is None:
            self._timer = loop.call_later(self.tick, self._tick)

    def discard(self, writers: Sequence[RtpWriter]) -> None:
        """Stop reporting on writers given to `add` (no-op if they are not here)."""
        self._groups.pop(id(writers), None)
        if not self._groups and self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _tick(self) -> None:
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(self.tick, self._tick)
        now = loop.time()
        for group in list(self._groups.values()):
            if group.due <= now:
                group.due = now + 0.5 + random.random()
                try:
                    self._report(group)
                except Exception as exc:  # one connection's failure must not stop the rest
                    loop.call_exception_handler(
                        {"message": "sending RTCP sender reports failed", "exception": exc}
                    )

    def _report(self, group: _Group) -> None:
        writers = group.writers
        if not writers:
            return
        first = writers[0]
        d = next((w._d for w in writers if w._d is not None), None)
        if d is None or not d.ok():
            # the upkeep of the writers' fast path (RtpWriter.send_now): another pair,
            # or datagrams queued in asyncio -- each writer looks again at its next send
            for w in writers:
                w._drop_direct()
            d = group.direct
            if d is None or not d.current():
                d = group.direct = _direct(first._dtls) if first.direct else None
            if d is not None and d.transport._buffer:
                d = None  # behind asyncio's queue: aiortc's own send
        for w in writers:
            w._sync()
        parts = []
        lsr_time = time.time()
        for w in writers:
            s = w._sender
            ntp = s._RTCRtpSender__ntp_timestamp  # type: ignore[attr-defined]
            parts.append(
                _RTCP_SR(
                    0x80,
                    200,
                    6,
                    w.ssrc,
                    ntp,
                    s._RTCRtpSender__rtp_timestamp,  # type: ignore[attr-defined]
                    s._RTCRtpSender__packet_count & 0xFFFFFFFF,  # type: ignore[attr-defined]
                    s._RTCRtpSender__octet_count & 0xFFFFFFFF,  # type: ignore[attr-defined]
                )
            )
            s._RTCRtpSender__lsr = (ntp >> 16) & 0xFFFFFFFF  # type: ignore[attr-defined]
            s._RTCRtpSender__lsr_time = lsr_time  # type: ignore[attr-defined]
        if not group.sdes:
            cnames = [w._sender._RTCRtpSender__cname for w in writers]  # type: ignore[attr-defined]
            if all(c is not None for c in cnames):
                group.sdes = bytes(
                    RtcpSdesPacket(
                        chunks=[
                            RtcpSourceInfo(ssrc=w.ssrc, items=[(1, c.encode("utf8"))])
                            for w, c in zip(writers, cnames, strict=True)
                        ]
                    )
                )
        parts.append(group.sdes)
        data = b"".join(parts)
        if d is None:  # not (or no longer) a plain UDP pair: aiortc's own send
            dtls = first._dtls
            if dtls is not None and dtls._state is _CONNECTED:
                task = asyncio.ensure_future(dtls._send_rtp(data))
                task.add_done_callback(_ignore_result)
            return
        n = len(data)
        if n > _SCRATCH - _MAX_TRAILER:
            return
        d.view[:n] = data
        sent = d.send_rtcp(n)
        dtls = d.dtls
        dtls._RTCDtlsTransport__tx_bytes += sent  # type: ignore[attr-defined]
        dtls._RTCDtlsTransport__tx_packets += 1  # type: ignore[attr-defined]
        self.sent += 1


def _ignore_result(task: asyncio.Future[None]) -> None:
    if not task.cancelled():
        task.exception()  # retrieved: a closed connection's send is no error here


def ntp_now() -> int:
    """The RTCP sender-report clock for now (NTP 32.32 fixed point)."""
    return int((time.time() + _NTP_UNIX_OFFSET) * 4294967296.0)
