"""The batch reader: many connections' UDP sockets read on a timer, kernel arrival times."""

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
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import pylibsrtp
from pylibsrtp._binding import ffi as _ffi
from pylibsrtp._binding import lib as _lib

from spacesim.rtc import internals as _i

if TYPE_CHECKING:
    from spacesim.rtc.direct import DirectRtp

__all__ = ["SO_TIMESTAMPNS", "BatchReader", "Deliver", "Handle"]

log = logging.getLogger("spacesim.rtc")

_i.register(
    __name__,
    _i.attr(
        asyncio.selector_events,
        "_SelectorDatagramTransport",
        "asyncio/selector_events.py _SelectorDatagramTransport",
    ),
    _i.attr(
        asyncio.selector_events,
        "_SelectorTransport",
        "asyncio/selector_events.py _SelectorTransport",
    ),
    # assigned in the base class's __init__
    _i.assigned(
        asyncio.selector_events._SelectorTransport,  # type: ignore[attr-defined]
        "_sock",
        "asyncio/selector_events.py _SelectorTransport._sock",
    ),
    _i.attr(
        asyncio.selector_events.BaseSelectorEventLoop,
        "_remove_reader",
        "asyncio/selector_events.py BaseSelectorEventLoop._remove_reader",
    ),
    _i.assigned(pylibsrtp.Session, "_srtp", "pylibsrtp/__init__.py Session._srtp"),
    _i.attr(_lib, "srtp_unprotect", "pylibsrtp._binding lib.srtp_unprotect"),
)

# Linux: SO_TIMESTAMPNS (asm-generic/socket.h; x86, arm and riscv use 35) asks the kernel
# to attach each datagram's receive time as a struct timespec on CLOCK_REALTIME
# (SCM_TIMESTAMPNS == SO_TIMESTAMPNS; socket(7) "SO_TIMESTAMPNS"). CPython's socket
# module does not export the name.
SO_TIMESTAMPNS: int = getattr(socket, "SO_TIMESTAMPNS", 35)
_TIMESPEC = struct.Struct("@qq")  # struct timespec on 64-bit Linux: tv_sec, tv_nsec
_ANC_SIZE = socket.CMSG_SPACE(_TIMESPEC.size) if hasattr(socket, "CMSG_SPACE") else 0
_RECV_SIZE = 65536  # asyncio reads datagrams of up to 256 KiB; an IPv4 UDP payload < 64 KiB


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
