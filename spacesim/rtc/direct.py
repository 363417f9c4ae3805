"""The listeners' receive path: RTP taken off the UDP socket, unprotected, handed over as bytes."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import aioice.ice
import pylibsrtp
from aiortc import RTCRtpReceiver
from aiortc.rtcdtlstransport import RTCDtlsTransport, RtpRouter
from aiortc.rtcicetransport import RTCIceTransport

from spacesim.rtc import internals as _i
from spacesim.rtc.batch import BatchReader, Handle
from spacesim.rtc.tap import _no_decoder

__all__ = ["DirectRtp", "OnRtp", "receive_rtp_direct"]

_i.register(
    __name__,
    _i.attr(
        aioice.ice.StunProtocol,
        "datagram_received",
        "aioice/ice.py StunProtocol.datagram_received",
    ),
    _i.assigned(aioice.ice.StunProtocol, "transport", "aioice/ice.py StunProtocol.transport"),
    _i.attr(pylibsrtp.Session, "unprotect", "pylibsrtp Session.unprotect"),
    _i.attr(pylibsrtp, "Error", "pylibsrtp.Error"),
    _i.assigned(
        RTCDtlsTransport, "_rx_srtp", "aiortc/rtcdtlstransport.py RTCDtlsTransport._rx_srtp"
    ),
    _i.assigned(
        RTCDtlsTransport,
        "_rtp_router",
        "aiortc/rtcdtlstransport.py RTCDtlsTransport._rtp_router",
    ),
    _i.assigned(RtpRouter, "ssrc_table", "aiortc/rtcdtlstransport.py RtpRouter.ssrc_table"),
    _i.assigned(
        RTCIceTransport, "_connection", "aiortc/rtcicetransport.py RTCIceTransport._connection"
    ),
    _i.assigned(aioice.ice.Connection, "_protocols", "aioice/ice.py Connection._protocols"),
)

OnRtp = Callable[[int, bytes, int], None]
"""``on_rtp(slot, packet, arrival_ns)``: one decrypted RTP packet (header and payload, as
sent) received on listen slot ``slot`` (the index of its receiver); ``arrival_ns`` is when
the datagram reached the socket, on ``CLOCK_MONOTONIC`` (`time.monotonic_ns`). Called from
the event loop (the socket's callback, or the batch reader's timer), so it must be quick
and must not block."""


class DirectRtp:
    """What :func:`receive_rtp_direct` installed, with its counters."""

    __slots__ = (
        "_slot_of",
        "batched",
        "counted_rtp",
        "delivered",
        "native",
        "receivers",
        "sender_reports",
        "srtp_errors",
        "truncated",
        "unrouted",
    )

    def __init__(self, receivers: list[RTCRtpReceiver]) -> None:
        self.receivers = receivers
        self.delivered = 0  # RTP packets unprotected and handed to `deliver`
        # ... and counted by the batch reader's native loop (sockets it has let go of;
        # `native` lists (reader, slot) of the sockets it holds)
        self.counted_rtp = 0
        self.native: list[tuple[BatchReader, int]] = []
        self.truncated = 0  # datagrams longer than the batch reader's slots, dropped
        self.srtp_errors = 0  # failed authentication / replay (aiortc drops these too)
        self.unrouted = 0  # SSRC of none of the receivers (aiortc discards these too)
        self.sender_reports = 0  # RTCP SRs of those streams, not passed on (see below)
        self.batched = 0  # sockets handed to the batch reader (see `receive_rtp_direct`)
        self._slot_of: dict[int, int] = {}

    @property
    def rtp(self) -> int:
        """RTP packets taken off the socket and unprotected."""
        return (
            self.delivered
            + self.counted_rtp
            + sum(reader.counted(slot) for reader, slot in self.native)
        )

    def slot(self, dtls: RTCDtlsTransport, ssrc: int, by_type: bool = True) -> int:
        """The listen slot of ``ssrc`` as aiortc routes RTP, or -1 (cached once known).

        ``RtpRouter.route_rtp`` (aiortc/rtcdtlstransport.py) looks the SSRC up in
        ``ssrc_table`` (filled by ``_register_rtp_receiver`` from the remote
        description's ``a=ssrc`` lines when ``receive()`` runs); failing that, a
        payload type served by a single receiver claims it -- here, a single slot
        (unless not ``by_type``).
        """
        receiver = dtls._rtp_router.ssrc_table.get(ssrc)
        for i, r in enumerate(self.receivers):
            if r is receiver:
                self._slot_of[ssrc] = i
                return i
        if by_type and receiver is None and len(self.receivers) == 1:
            self._slot_of[ssrc] = 0
            return 0
        return -1


def receive_rtp_direct(
    receivers: list[RTCRtpReceiver], on_rtp: OnRtp, *, read_every: float | None = None
) -> DirectRtp:
    """Receive the RTP of ``receivers`` at the socket: ``on_rtp(slot, packet, arrival_ns)``.

    Call it after ``setRemoteDescription`` (the receivers then share their bundled
    DTLS transport) and before the connection is up. ICE and DTLS run through aiortc
    as usual. Per packet, aiortc 1.16 / aioice 0.13 would run
    ``StunProtocol.datagram_received`` (a STUN parse that fails with ``ValueError``),
    ``Connection.data_received`` (an ``asyncio.Queue`` put), a wake-up of the DTLS
    task (``RTCDtlsTransport._recv_next``), ``_rx_srtp.unprotect``, ``RtpPacket.parse``,
    routing and ``RTCRtpReceiver._handle_rtp_packet`` (statistics, jitter buffer, NACK
    bookkeeping). Instead, a per-instance ``datagram_received`` on each of the ICE
    connection's UDP protocols (``aioice.ice.Connection._protocols``; asyncio's
    ``_SelectorDatagramTransport._read_ready`` calls ``protocol.datagram_received``,
    and aioice's ``TurnTransport`` calls its inner ``StunProtocol``'s) takes a
    datagram when it is SRTP (first byte 128..191, RFC 7983), not SRTCP (second
    byte 192..208, as ``aiortc.rtp.is_rtcp``) and the DTLS handshake has produced
    ``RTCDtlsTransport._rx_srtp`` (set in ``_setup_srtp`` just before the transport
    turns "connected"); it unprotects it with that ``pylibsrtp.Session`` and calls
    ``on_rtp`` synchronously. Everything else -- STUN (consent freshness, RFC 7675),
    DTLS, SRTCP, and RTP that arrives before the keys exist -- falls through to
    aioice's original handler, so aiortc handles it as before, with one exception:
    an RTCP sender report (packet type 200, no report blocks) from the SSRC of one
    of these receivers' streams (as routed by aiortc, whether or not it has sent RTP
    yet) is counted and dropped unread. aiortc would take it the slow
    way (queue, task, unprotect, parse) only to note its NTP time for receiver reports
    it does not send on this path (``RTCRtpReceiver._handle_rtcp_packet``), and the
    server sends one per listen slot per second, silent slots included -- as much
    CPU as a third of the listener's packets. Reports with report blocks (about what
    this peer sends), BYE and feedback still reach aiortc.

    With ``read_every`` (seconds), a socket whose first SRTP packet has arrived (so
    the handshake is over) moves to this loop's :class:`BatchReader`, which reads it
    on a timer with kernel receive times; ``on_rtp`` then runs up to ``read_every``
    after the arrival it is told of. When ``on_rtp`` is the bound ``on_rtp`` of an
    object with an int ``native_row`` (`spacesim.client.listener.NativeListenerStats`),
    the reader counts the packets of the streams that row already knows in machine
    code (`spacesim.rtc.native_rx`), without calling it: the same accounting, no
    Python per packet. Use it where the callback works from the arrival
    times it is given (both listener kinds here), not where it reads the clock itself.
    Without it, or where the batch reader is unavailable (no epoll, a TURN relay),
    ``arrival_ns`` is read in the socket's callback.

    What aiortc no longer sees: the receivers' RTP. Their decoder threads are
    stopped (nothing would reach them), they send no RTCP receiver reports (aiortc
    sends an RR only for streams it has seen RTP from, so their RTCP tasks are
    cancelled), ``getStats()`` reports no inbound RTP, and the transport's
    byte/packet counters leave RTP out.
    """
    if not receivers:
        raise ValueError("no receivers")
    dtls: RTCDtlsTransport = receivers[0].transport
    if any(r.transport is not dtls for r in receivers):
        raise ValueError("receivers on different DTLS transports (no BUNDLE?)")
    for r in receivers:
        _no_decoder(r, stop_rtcp=True)
    direct = DirectRtp(list(receivers))
    slot_of = direct._slot_of
    srtp_error = pylibsrtp.Error
    # aiortc/rtcicetransport.py RTCIceTransport._connection: the aioice Connection;
    # its UDP sockets' protocols exist once candidates are gathered (setLocalDescription).
    ice: aioice.ice.Connection = dtls.transport._connection
    if not ice._protocols:
        raise ValueError("no ICE candidates gathered yet")
    loop = asyncio.get_running_loop()
    # The reader is looked up again at handover: by then this loop's reader may have
    # closed (it does a tick after its last socket goes) and a new one be needed.
    batch = read_every is not None and BatchReader.of(loop, read_every) is not None
    monotonic_ns = time.monotonic_ns
    # A lite listener's own on_rtp (`spacesim.client.listener.NativeListenerStats`):
    # the batch reader counts its known streams' packets in machine code, in that row.
    row = getattr(getattr(on_rtp, "__self__", None), "native_row", -1)
    row = row if isinstance(row, int) else -1

    def deliver(packet: bytes, arrival_ns: int) -> None:
        direct.delivered += 1
        ssrc = int.from_bytes(packet[8:12], "big")
        slot = slot_of.get(ssrc, -1)
        if slot < 0:
            slot = direct.slot(dtls, ssrc)
            if slot < 0:
                direct.unrouted += 1
                return
        on_rtp(slot, packet, arrival_ns)

    for protocol in ice._protocols:
        original = protocol.datagram_received

        def handle(
            data: bytes, addr: Any, arrival_ns: int, original: Callable[..., None] = original
        ) -> bool:
            if len(data) > 12 and 127 < data[0] < 192:
                second = data[1]
                if not 191 < second < 209:  # RTP, not RTCP
                    srtp = dtls._rx_srtp
                    if srtp is not None:
                        try:
                            packet = srtp.unprotect(data)
                        except srtp_error:
                            direct.srtp_errors += 1
                            return True
                        deliver(packet, arrival_ns)
                        return True
                elif second == 200 and not data[0] & 0x1F:
                    # A sender report without report blocks: is it about a stream
                    # taken here? (SRTCP leaves the first 8 bytes clear, RFC 3711 3.4.)
                    ssrc = int.from_bytes(data[4:8], "big")
                    if ssrc in slot_of or direct.slot(dtls, ssrc, by_type=False) >= 0:
                        direct.sender_reports += 1
                        return False
            original(data, addr)
            return False

        def datagram_received(
            data: bytes,
            addr: tuple[Any, ...],
            handle: Handle = handle,
            protocol: Any = protocol,
        ) -> None:
            nonlocal batch
            if handle(data, addr, monotonic_ns()) and batch:
                # Keys exist: hand the socket over (the transport is the protocol's,
                # aioice/ice.py StunProtocol.connection_made; a TURN one is refused).
                assert read_every is not None
                reader = BatchReader.of(loop, read_every)
                transport = getattr(protocol, "transport", None)
                if reader is not None and reader.adopt(
                    transport, protocol, direct, dtls._rx_srtp, handle, deliver, row
                ):
                    direct.batched += 1
                    protocol.datagram_received = _handle_only(handle)
                else:
                    batch = False

        protocol.datagram_received = datagram_received  # type: ignore[method-assign,assignment]
    return direct


def _handle_only(handle: Handle) -> Callable[[bytes, Any], None]:
    """A ``datagram_received`` for a socket the batch reader owns (still called if
    anything else feeds the protocol)."""
    monotonic_ns = time.monotonic_ns

    def datagram_received(data: bytes, addr: Any) -> None:
        handle(data, addr, monotonic_ns())

    return datagram_received
