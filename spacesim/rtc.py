"""The one module that touches aiortc / aioice internals (aiortc==1.16.0, aioice 0.13).

Shared by the room server (spacesim.server) and the synthetic clients (spacesim.client).

Everything else in spacesim uses aiortc's public API or this module. Each internal
used below carries a comment naming the aiortc/aioice source it relies on, and
:func:`missing_internals` checks that all of them still exist, so an aiortc upgrade
fails ``tests/test_rtc.py`` instead of failing silently at run time.

What it provides:

* :func:`new_peer_connection` -- an ``RTCPeerConnection`` with no ICE servers
  (``iceServers=None`` would make aiortc add a public STUN server).
* :func:`use_host_addresses` -- the host addresses aioice gathers candidates on
  (aioice skips 127.0.0.1 by default).
* :func:`tap_rtp` -- encoded, decrypted ``RtpPacket`` s of a receiver go to a
  callback before aiortc's jitter buffer; the receiver's decoder thread is stopped
  so nothing is decoded; RTCP receiver reports keep working.
* :func:`receive_rtp_direct` -- the listeners' receive path: RTP is taken off the
  UDP socket's protocol callback, SRTP-unprotected and handed to a plain function
  as bytes (no asyncio queue, task wake-up, ``RtpPacket`` or jitter buffer); STUN,
  DTLS and RTCP still go to aioice / aiortc.
* :class:`RtpWriter` -- writes RTP packets for a sending transceiver straight to its
  DTLS transport (SRTP-protected by aiortc) with the sender's SSRC and the
  negotiated payload type. The sender's track never yields, so aiortc itself sends
  no RTP on it (it still sends RTCP sender reports, kept accurate by the writer).
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import logging
import select
import socket
import struct
import sys
import time
from asyncio.selector_events import _SelectorDatagramTransport  # type: ignore[attr-defined]
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import aioice.ice
import pylibsrtp
from aiortc import (
    MediaStreamTrack,
    RTCConfiguration,
    RTCPeerConnection,
    RTCRtpReceiver,
    RTCRtpSender,
    RTCRtpTransceiver,
)
from aiortc.mediastreams import MediaStreamError
from aiortc.rtcdtlstransport import RTCDtlsTransport, RtpRouter, State
from aiortc.rtcicetransport import RTCIceTransport
from aiortc.rtp import RtpPacket
from pylibsrtp._binding import ffi as _ffi
from pylibsrtp._binding import lib as _lib

__all__ = [
    "DEFAULT_HOST_ADDRESSES",
    "BatchReader",
    "DirectRtp",
    "OnPacket",
    "OnRtp",
    "RtpPacket",
    "RtpWriter",
    "missing_internals",
    "new_peer_connection",
    "receive_rtp_direct",
    "tap_rtp",
    "use_host_addresses",
]

log = logging.getLogger(__name__)

DEFAULT_HOST_ADDRESSES: tuple[str, ...] = ("127.0.0.1",)

OnPacket = Callable[[RtpPacket, int], Awaitable[None]]
"""``await on_packet(packet, arrival_time_ms)``; arrival time is aiortc's clock (ms)."""

# RTP fixed header (RFC 3550): V=2 P=0 X=0 CC=0 | M PT | seq | timestamp | SSRC.
_RTP_HEADER = struct.Struct("!BBHII").pack
_NTP_UNIX_OFFSET = 2_208_988_800  # seconds from 1900-01-01 to 1970-01-01

# Names this module relies on: (object, attribute, where it comes from).
_INTERNALS: tuple[tuple[object, str, str], ...] = (
    (aioice.ice, "get_host_addresses", "aioice/ice.py get_host_addresses"),
    (
        RTCRtpReceiver,
        "_handle_rtp_packet",
        "aiortc/rtcrtpreceiver.py RTCRtpReceiver._handle_rtp_packet",
    ),
    (
        RTCRtpReceiver,
        "_RTCRtpReceiver__stop_decoder",
        "aiortc/rtcrtpreceiver.py RTCRtpReceiver.__stop_decoder",
    ),
    (RTCDtlsTransport, "_send_rtp", "aiortc/rtcdtlstransport.py RTCDtlsTransport._send_rtp"),
    (RTCDtlsTransport, "_handle_rtp_data", "aiortc/rtcdtlstransport.py _handle_rtp_data"),
    # receive_rtp_direct
    (
        aioice.ice.StunProtocol,
        "datagram_received",
        "aioice/ice.py StunProtocol.datagram_received",
    ),
    (pylibsrtp.Session, "unprotect", "pylibsrtp Session.unprotect"),
    (pylibsrtp, "Error", "pylibsrtp.Error"),
    (_lib, "srtp_unprotect", "pylibsrtp._binding lib.srtp_unprotect"),
    # BatchReader
    (
        asyncio.selector_events.BaseSelectorEventLoop,
        "_remove_reader",
        "asyncio/selector_events.py BaseSelectorEventLoop._remove_reader",
    ),
)
# Instance attributes, found among the names their class's __init__ assigns
# (name mangling happens at compile time, so co_names holds the mangled names).
_INSTANCE_ATTRS: tuple[tuple[type, str, str], ...] = (
    (
        RTCRtpReceiver,
        "_RTCRtpReceiver__decoder_thread",
        "aiortc/rtcrtpreceiver.py RTCRtpReceiver.__decoder_thread",
    ),
    (
        RTCRtpReceiver,
        "_RTCRtpReceiver__rtcp_task",
        "aiortc/rtcrtpreceiver.py RTCRtpReceiver.__rtcp_task",
    ),
    (
        RTCRtpReceiver,
        "_RTCRtpReceiver__rtcp_started",
        "aiortc/rtcrtpreceiver.py RTCRtpReceiver.__rtcp_started",
    ),
    (RTCRtpSender, "_ssrc", "aiortc/rtcrtpsender.py RTCRtpSender._ssrc"),
    (RTCRtpSender, "_RTCRtpSender__packet_count", "aiortc/rtcrtpsender.py __packet_count"),
    (RTCRtpSender, "_RTCRtpSender__octet_count", "aiortc/rtcrtpsender.py __octet_count"),
    (RTCRtpSender, "_RTCRtpSender__rtp_timestamp", "aiortc/rtcrtpsender.py __rtp_timestamp"),
    (RTCRtpSender, "_RTCRtpSender__ntp_timestamp", "aiortc/rtcrtpsender.py __ntp_timestamp"),
    (RTCRtpTransceiver, "_codecs", "aiortc/rtcrtptransceiver.py RTCRtpTransceiver._codecs"),
    # the synchronous send path (RtpWriter.send_now)
    (RTCDtlsTransport, "_state", "aiortc/rtcdtlstransport.py RTCDtlsTransport._state"),
    (RTCDtlsTransport, "_tx_srtp", "aiortc/rtcdtlstransport.py RTCDtlsTransport._tx_srtp"),
    (
        RTCDtlsTransport,
        "_RTCDtlsTransport__tx_bytes",
        "aiortc/rtcdtlstransport.py RTCDtlsTransport.__tx_bytes",
    ),
    (RTCIceTransport, "_connection", "aiortc/rtcicetransport.py RTCIceTransport._connection"),
    (aioice.ice.Connection, "_nominated", "aioice/ice.py Connection._nominated"),
    # receive_rtp_direct
    (RTCDtlsTransport, "_rx_srtp", "aiortc/rtcdtlstransport.py RTCDtlsTransport._rx_srtp"),
    (
        RTCDtlsTransport,
        "_rtp_router",
        "aiortc/rtcdtlstransport.py RTCDtlsTransport._rtp_router",
    ),
    (RtpRouter, "ssrc_table", "aiortc/rtcdtlstransport.py RtpRouter.ssrc_table"),
    (aioice.ice.Connection, "_protocols", "aioice/ice.py Connection._protocols"),
    (pylibsrtp.Session, "_srtp", "pylibsrtp/__init__.py Session._srtp"),
    # BatchReader (assigned in the base class's __init__)
    (
        asyncio.selector_events._SelectorTransport,  # type: ignore[attr-defined]
        "_sock",
        "asyncio/selector_events.py _SelectorTransport._sock",
    ),
)


def new_peer_connection() -> RTCPeerConnection:
    """A peer connection with no STUN/TURN servers (host candidates only)."""
    return RTCPeerConnection(RTCConfiguration(iceServers=[]))


def use_host_addresses(addrs: Iterable[str] = DEFAULT_HOST_ADDRESSES) -> None:
    """Gather ICE host candidates on exactly these IPv4/IPv6 addresses.

    Replaces ``aioice.ice.get_host_addresses`` (aioice/ice.py, called by
    ``Connection.gather_candidates``), which enumerates all adapters but skips
    127.0.0.1. Process-wide; call before creating peer connections.
    """
    chosen = list(addrs)

    def get_host_addresses(use_ipv4: bool, use_ipv6: bool) -> list[str]:
        return [a for a in chosen if (":" in a and use_ipv6) or (":" not in a and use_ipv4)]

    aioice.ice.get_host_addresses = get_host_addresses


def _stop_decoder(receiver: RTCRtpReceiver) -> None:
    # aiortc/rtcrtpreceiver.py RTCRtpReceiver.__stop_decoder: puts None in the
    # decoder queue and joins the "audio-decoder" thread; a no-op once stopped.
    receiver._RTCRtpReceiver__stop_decoder()  # type: ignore[attr-defined]


def tap_rtp(receiver: RTCRtpReceiver, on_packet: OnPacket) -> None:
    """Send the receiver's encoded RTP packets to ``on_packet``; decode nothing.

    Call it before ``receiver.receive()`` runs -- e.g. in the peer connection's
    "track" event or right after ``setRemoteDescription`` (aiortc calls
    ``receive()`` from ``RTCPeerConnection.__connect`` only once ICE and DTLS are
    up). If the decoder already runs it is stopped at once.

    * ``RTCDtlsTransport._handle_rtp_data`` (aiortc/rtcdtlstransport.py) awaits
      ``receiver._handle_rtp_packet(packet, arrival_time_ms=...)`` with a decrypted,
      parsed ``RtpPacket``; a per-instance override sees it before the jitter buffer.
      The original still runs afterwards, so RTCP receiver reports, ``getStats()``
      and synchronisation sources stay right; with the decoder stopped it only
      feeds statistics and a bounded 16-packet jitter buffer.
    * ``RTCRtpReceiver.receive`` (aiortc/rtcrtpreceiver.py) starts the decoder
      thread; a per-instance wrapper stops it right after (``__stop_decoder``), so
      no frame is decoded and no unbounded decoded-frame queue grows.
    """
    original_handle = receiver._handle_rtp_packet

    async def _handle_rtp_packet(packet: RtpPacket, arrival_time_ms: int) -> None:
        await on_packet(packet, arrival_time_ms)
        await original_handle(packet, arrival_time_ms)

    receiver._handle_rtp_packet = _handle_rtp_packet  # type: ignore[method-assign]
    _no_decoder(receiver)


def _stop_rtcp(receiver: RTCRtpReceiver) -> None:
    # aiortc/rtcrtpreceiver.py: _run_rtcp sets __rtcp_started first thing, and on
    # cancellation sets __rtcp_exited, which stop() awaits after cancelling the task
    # itself; so cancel only a task that has started, or stop() would wait forever.
    task = receiver._RTCRtpReceiver__rtcp_task  # type: ignore[attr-defined]
    if task is not None and receiver._RTCRtpReceiver__rtcp_started.is_set():  # type: ignore[attr-defined]
        task.cancel()


def _no_decoder(receiver: RTCRtpReceiver, stop_rtcp: bool = False) -> None:
    """Stop the receiver's decoder thread right after aiortc starts it (or now).

    ``RTCRtpReceiver.receive`` (aiortc/rtcrtpreceiver.py) starts an "audio-decoder"
    thread; a per-instance wrapper stops it right after (``__stop_decoder``). With
    ``stop_rtcp`` it also cancels the receiver's RTCP task (``_run_rtcp``, started by
    ``receive()`` too) once that has started -- for receivers that get no RTP, whose
    task would wake about once a second only to find no stream to report on.
    """
    original_receive = receiver.receive

    async def receive(parameters: Any) -> None:
        await original_receive(parameters)
        _stop_decoder(receiver)
        if stop_rtcp:  # the task's first step is already queued: this runs after it
            asyncio.get_running_loop().call_soon(_stop_rtcp, receiver)

    receiver.receive = receive  # type: ignore[method-assign]
    if getattr(receiver, "_RTCRtpReceiver__decoder_thread", None) is not None:
        _stop_decoder(receiver)


OnRtp = Callable[[int, bytes, int], None]
"""``on_rtp(slot, packet, arrival_ns)``: one decrypted RTP packet (header and payload, as
sent) received on listen slot ``slot`` (the index of its receiver); ``arrival_ns`` is when
the datagram reached the socket, on ``CLOCK_MONOTONIC`` (`time.monotonic_ns`). Called from
the event loop (the socket's callback, or the batch reader's timer), so it must be quick
and must not block."""

# Linux: SO_TIMESTAMPNS (asm-generic/socket.h; x86, arm and riscv use 35) asks the kernel
# to attach each datagram's receive time as a struct timespec on CLOCK_REALTIME
# (SCM_TIMESTAMPNS == SO_TIMESTAMPNS; socket(7) "SO_TIMESTAMPNS"). CPython's socket
# module does not export the name.
SO_TIMESTAMPNS: int = getattr(socket, "SO_TIMESTAMPNS", 35)
_TIMESPEC = struct.Struct("@qq")  # struct timespec on 64-bit Linux: tv_sec, tv_nsec
_ANC_SIZE = socket.CMSG_SPACE(_TIMESPEC.size) if hasattr(socket, "CMSG_SPACE") else 0
_RECV_SIZE = 65536  # asyncio reads datagrams of up to 256 KiB; an IPv4 UDP payload < 64 KiB


class DirectRtp:
    """What :func:`receive_rtp_direct` installed, with its counters."""

    __slots__ = (
        "_slot_of",
        "batched",
        "receivers",
        "rtp",
        "sender_reports",
        "srtp_errors",
        "unrouted",
    )

    def __init__(self, receivers: list[RTCRtpReceiver]) -> None:
        self.receivers = receivers
        self.rtp = 0  # RTP packets taken off the socket and unprotected
        self.srtp_errors = 0  # failed authentication / replay (aiortc drops these too)
        self.unrouted = 0  # SSRC of none of the receivers (aiortc discards these too)
        self.sender_reports = 0  # RTCP SRs of those streams, not passed on (see below)
        self.batched = 0  # sockets handed to the batch reader (see `receive_rtp_direct`)
        self._slot_of: dict[int, int] = {}

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


Handle = Callable[[bytes, Any, int], bool]
"""``handle(data, addr, arrival_ns)``: one datagram of a direct-receive socket; True when
it was SRTP (taken here, so the keys exist), False otherwise (passed to aioice's handler,
or a sender report dropped unread)."""

Deliver = Callable[[bytes, int], None]
"""``deliver(packet, arrival_ns)``: one unprotected RTP packet, routed to its slot."""


def _original_epoll() -> Callable[[], select.epoll] | None:
    """``select.epoll``, also under gevent (whose ``patch_select`` removes it from
    ``select``; gevent/monkey.py ``get_original`` returns the saved original). A
    zero-timeout poll never blocks, so the original is safe inside a greenlet."""
    if "gevent" in sys.modules:
        from gevent import monkey

        try:
            return monkey.get_original("select", "epoll")  # type: ignore[no-any-return]
        except AttributeError:
            return None
    return getattr(select, "epoll", None)


class _Socket:
    """A direct-receive UDP socket as the batch reader reads it."""

    __slots__ = (
        "deliver", "direct", "handle", "protocol", "recv", "session", "sock", "srtp", "transport",
    )  # fmt: skip

    def __init__(
        self, transport: Any, protocol: Any, direct: DirectRtp, srtp: Any, handle: Handle,
        deliver: Deliver,
    ) -> None:  # fmt: skip
        self.transport = transport
        self.protocol = protocol
        self.sock: socket.socket = transport._sock
        self.recv = self.sock.recvmsg_into
        self.direct = direct
        # pylibsrtp/__init__.py Session._srtp: the srtp_t the Session's own unprotect
        # passes to lib.srtp_unprotect. The Session frees it when collected (ffi.gc), so
        # hold the Session as long as the pointer.
        self.session = srtp
        self.srtp = srtp._srtp[0]
        self.handle = handle
        self.deliver = deliver


class BatchReader:
    """Reads many connections' UDP sockets every ``interval`` s, one per event loop.

    asyncio costs a selector event, a ``Handle`` run and a ``recvfrom`` per datagram
    (``_SelectorDatagramTransport._read_ready``, asyncio/selector_events.py). Here a
    socket leaves the loop's selector (``loop._remove_reader``; the transport keeps
    sending as before) for an own ``epoll`` set, and a timer drains every ready socket
    with ``recvmsg_into`` into one buffer, where SRTP is unprotected in place by
    libsrtp (``srtp_unprotect``, as pylibsrtp's ``Session.unprotect`` calls it, minus
    its two copies and an allocation): a handful of wake-ups per second instead of one
    per datagram. The delay this adds does not bias what is measured: each datagram
    carries the kernel's receive time (``SO_TIMESTAMPNS``), converted to
    ``CLOCK_MONOTONIC`` with an offset read on every tick. Datagrams that are not SRTP
    (STUN, DTLS, SRTCP) go to the connection's ``handle`` as bytes, as before.
    """

    def __init__(
        self, loop: asyncio.AbstractEventLoop, interval: float, epoll: Callable[[], select.epoll]
    ) -> None:
        self._loop = loop
        self.interval = interval
        self.ticks = 0
        self.datagrams = 0
        self._ep = epoll()
        self._entries: dict[int, _Socket] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._cbuf = _ffi.new("char[]", _RECV_SIZE)  # unprotected in place: one at a time
        self._view = memoryview(_ffi.buffer(self._cbuf))
        self._len = _ffi.new("int *")

    @classmethod
    def of(cls, loop: asyncio.AbstractEventLoop, interval: float) -> BatchReader | None:
        """This loop's reader (None where there is no epoll or no SO_TIMESTAMPNS).

        It lives on the loop (an attribute, so loop and reader are collected together)
        while it has sockets, and closes itself a tick after its last one closed."""
        reader: BatchReader | None = getattr(loop, _READER_ATTR, None)
        if reader is None:
            epoll = _original_epoll()
            if epoll is None or not _ANC_SIZE or not sys.platform.startswith("linux"):
                return None
            _keep_timestamps_on()
            reader = cls(loop, interval, epoll)
            try:
                setattr(loop, _READER_ATTR, reader)
            except AttributeError:  # a loop without a __dict__ (not asyncio's own)
                reader._ep.close()
                return None
            log.info("direct RTP: sockets read every %.0f ms, kernel arrival times", interval * 1e3)
        return reader

    def adopt(
        self, transport: Any, protocol: Any, direct: DirectRtp, srtp: Any, handle: Handle,
        deliver: Deliver,
    ) -> bool:  # fmt: skip
        """Read ``transport``'s socket here from now on; False when it cannot be.

        ``srtp`` is the ``pylibsrtp.Session`` that unprotects its SRTP; ``deliver``
        takes each unprotected packet, ``handle`` every other datagram.
        """
        # asyncio/selector_events.py: _SelectorDatagramTransport keeps its socket in
        # _sock and reads it in _read_ready, registered with loop._add_reader.
        if (
            self._ep.closed
            or not isinstance(transport, _SelectorDatagramTransport)
            or transport.is_closing()
        ):
            return False
        entry = _Socket(transport, protocol, direct, srtp, handle, deliver)
        fd = entry.sock.fileno()
        # asyncio's _SelectorTransport._call_connection_lost calls the protocol's
        # connection_lost, then closes the socket: forget it while its fd is still ours.
        lost = protocol.connection_lost

        def connection_lost(exc: Exception | None) -> None:
            self._forget(fd, entry)
            lost(exc)

        try:
            protocol.connection_lost = connection_lost
        except AttributeError:  # a protocol with __slots__: no per-instance override
            return False
        entry.sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        # The public remove_reader refuses a transport's fd (_ensure_fd_no_transport);
        # BaseSelectorEventLoop._remove_reader is what the transport itself calls.
        self._loop._remove_reader(fd)  # type: ignore[attr-defined]
        self._ep.register(fd, select.EPOLLIN)
        self._entries[fd] = entry
        if self._timer is None:
            self._timer = self._loop.call_later(self.interval, self._tick)
        return True

    def _forget(self, fd: int, entry: _Socket) -> None:
        if self._entries.get(fd) is entry:
            del self._entries[fd]
            with contextlib.suppress(OSError, ValueError):  # epoll or socket closed already
                self._ep.unregister(fd)

    def _close(self) -> None:
        """No sockets left: stop the timer, close the epoll set, leave the loop."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._ep.close()
        if getattr(self._loop, _READER_ATTR, None) is self:
            delattr(self._loop, _READER_ATTR)

    def _tick(self) -> None:
        if not self._entries:
            self._close()
            return
        loop = self._loop
        self._timer = loop.call_later(self.interval, self._tick)
        self.ticks += 1
        offset = time.monotonic_ns() - time.time_ns()
        entries, poll, unpack = self._entries, self._ep.poll, _TIMESPEC.unpack
        cbuf, view, length, unprotect = self._cbuf, self._view, self._len, _lib.srtp_unprotect
        buffers = [view]
        ready = poll(0)
        rounds = count = 0
        while ready:
            for fd, _ in ready:
                e = entries.get(fd)
                if e is None:  # pragma: no cover - forgotten sockets leave the set
                    continue
                try:
                    try:
                        n, anc, _flags, addr = e.recv(buffers, _ANC_SIZE)
                    except (BlockingIOError, InterruptedError):
                        continue
                    except OSError as exc:  # as _read_ready does (e.g. ICMP unreachable)
                        e.protocol.error_received(exc)
                        continue
                    count += 1
                    if anc and anc[0][1] == SO_TIMESTAMPNS:  # (level, type, timespec)
                        sec, nsec = unpack(anc[0][2])
                        arrival = sec * 1_000_000_000 + nsec + offset
                    else:  # pragma: no cover - timestamps are on from adopt() onwards
                        arrival = time.monotonic_ns()
                    # SRTP, not SRTCP: the same test as the callback path's `handle`
                    if n > 12 and 127 < view[0] < 192 and not 191 < view[1] < 209:
                        length[0] = n
                        if unprotect(e.srtp, cbuf, length):
                            e.direct.srtp_errors += 1
                            continue
                        e.deliver(view[: length[0]].tobytes(), arrival)
                    else:
                        e.handle(view[:n].tobytes(), addr, arrival)
                except Exception as exc:  # one connection's bug must not stop the rest
                    loop.call_exception_handler(
                        {"message": "direct RTP receive failed", "exception": exc}
                    )
            rounds += 1
            if rounds >= 64:  # bounded work per tick; what is left is read next tick
                break
            ready = poll(0)
        self.datagrams += count


_READER_ATTR = "_spacesim_batch_reader"
_stamps_on: socket.socket | None = None


def _keep_timestamps_on() -> None:
    """Keep kernel receive timestamps switched on for as long as this process lives.

    Linux switches them on for the whole system when the first socket asks, through
    deferred work (net/core/dev.c net_enable_timestamp), and off when the last one
    closes; a datagram that races the switch is stamped when it is read (net/socket.c
    __sock_recv_timestamp: "Race occurred between timestamp enabling and packet
    receiving"). One socket holding the option from the first reader on keeps them on
    before any connection is handed over (connections are set up after this).
    """
    global _stamps_on
    if _stamps_on is None:
        _stamps_on = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        _stamps_on.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        atexit.register(_stamps_on.close)


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
    after the arrival it is told of. Use it where the callback works from the arrival
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

    def deliver(packet: bytes, arrival_ns: int) -> None:
        direct.rtp += 1
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
                    transport, protocol, direct, dtls._rx_srtp, handle, deliver
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


def missing_internals() -> list[str]:
    """The aiortc/aioice internals used here that the installed versions lack ([] = all there)."""
    missing = [where for obj, name, where in _INTERNALS if not hasattr(obj, name)]
    for cls, name, where in _INSTANCE_ATTRS:
        init = getattr(vars(cls).get("__init__"), "__code__", None)
        if init is None or name not in init.co_names:
            missing.append(where)
    return missing
