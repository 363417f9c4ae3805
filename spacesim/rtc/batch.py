"""The batch reader: many connections' UDP sockets read on a timer, kernel arrival times."""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import logging
import os
import select
import socket
import struct
import sys
import time
from asyncio.selector_events import _SelectorDatagramTransport  # type: ignore[attr-defined]
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
import pylibsrtp
from pylibsrtp._binding import ffi as _ffi

from spacesim.rtc import internals as _i
from spacesim.rtc import native_rx

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
)

# Linux: SO_TIMESTAMPNS (asm-generic/socket.h; x86, arm and riscv use 35) asks the kernel
# to attach each datagram's receive time as a struct timespec on CLOCK_REALTIME
# (SCM_TIMESTAMPNS == SO_TIMESTAMPNS; socket(7) "SO_TIMESTAMPNS"). CPython's socket
# module does not export the name.
SO_TIMESTAMPNS: int = getattr(socket, "SO_TIMESTAMPNS", 35)
_TIMESPEC = struct.Struct("@qq")  # struct timespec on 64-bit Linux: tv_sec, tv_nsec
_ANC_SIZE = socket.CMSG_SPACE(_TIMESPEC.size) if hasattr(socket, "CMSG_SPACE") else 0


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
        "deliver", "direct", "handle", "protocol", "session", "slot", "sock", "transport",
    )  # fmt: skip

    def __init__(
        self, transport: Any, protocol: Any, direct: DirectRtp, srtp: Any, handle: Handle,
        deliver: Deliver, slot: int,
    ) -> None:  # fmt: skip
        self.transport = transport
        self.protocol = protocol
        self.sock: socket.socket = transport._sock
        self.direct = direct
        # The Session frees its srtp_t when collected (ffi.gc), so hold the Session as
        # long as the reader holds the pointer.
        self.session = srtp
        self.handle = handle
        self.deliver = deliver
        self.slot = slot


class BatchReader:
    """Reads many connections' UDP sockets every ``interval`` s, one per event loop.

    asyncio costs a selector event, a ``Handle`` run and a ``recvfrom`` per datagram
    (``_SelectorDatagramTransport._read_ready``, asyncio/selector_events.py). Here a
    socket leaves the loop's selector (``loop._remove_reader``; the transport keeps
    sending as before) for an own ``epoll`` set, and a timer drains every ready socket
    in machine code (`spacesim.rtc.native_rx`: ``recvmmsg`` with the kernel's receive
    times, SRTP unprotected in place by libsrtp, a lite listener's packets counted in
    its row of `native_rx.RxStats`): a handful of wake-ups per second instead of one
    per datagram, and no Python per counted packet. The delay this adds does not bias
    what is measured: each datagram carries the kernel's receive time
    (``SO_TIMESTAMPNS``), converted to ``CLOCK_MONOTONIC`` with an offset read on every
    tick. Datagrams that are not SRTP (STUN, DTLS, SRTCP) go to the connection's
    ``handle`` as bytes, and SRTP not counted natively to its ``deliver``, as before.
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
        self._slots: list[_Socket | None] = []
        self._free: list[int] = []
        self._timer: asyncio.TimerHandle | None = None
        m = native_rx.MAX_MESSAGES
        self._data = np.zeros(m * native_rx.MESSAGE_SIZE, np.uint8)
        self._ctrl = np.zeros(m * native_rx.CONTROL_SIZE // 8, np.int64)
        self._names = np.zeros(m * native_rx.NAME_SIZE, np.uint8)
        # struct iovec and struct mmsghdr (64 bytes on LP64) as int64 words
        self._iov = np.zeros((m, 2), np.int64)
        self._hdr = np.zeros((m, 8), np.int64)
        data, ctrl, names = self._data.ctypes.data, self._ctrl.ctypes.data, self._names.ctypes.data
        iov = self._iov.ctypes.data
        for i in range(m):
            self._iov[i] = (data + i * native_rx.MESSAGE_SIZE, native_rx.MESSAGE_SIZE)
            # msg_name, msg_namelen, msg_iov, msg_iovlen, msg_control, msg_controllen
            self._hdr[i, 0] = names + i * native_rx.NAME_SIZE
            self._hdr[i, 2] = iov + i * 16
            self._hdr[i, 3] = 1
            self._hdr[i, 4] = ctrl + i * native_rx.CONTROL_SIZE
        self._events = np.zeros(native_rx.MAX_EVENTS * 16, np.uint8)
        self._length = np.zeros(1, np.int32)
        self._fd_slot = np.full(1024, -1, np.int64)
        self._slot_srtp = np.zeros(64, np.int64)
        self._slot_row = np.full(64, -1, np.int64)
        self._slot_rtp = np.zeros(64, np.int64)
        self._out_slot = np.zeros(m, np.int64)
        self._out_status = np.zeros(m, np.int64)
        self._out_len = np.zeros(m, np.int64)
        self._out_arrival = np.zeros(m, np.int64)
        self._drain = native_rx.drain_fn()
        self._read(0)  # compiles the kernel now (~1 s, once per process), not at a tick

    @classmethod
    def of(cls, loop: asyncio.AbstractEventLoop, interval: float) -> BatchReader | None:
        """This loop's reader (None where there is no epoll, no SO_TIMESTAMPNS or no
        native receive loop: `native_rx.available`).

        It lives on the loop (an attribute, so loop and reader are collected together)
        while it has sockets, and closes itself a tick after its last one closed."""
        reader: BatchReader | None = getattr(loop, _READER_ATTR, None)
        if reader is None:
            epoll = _original_epoll()
            if (
                epoll is None
                or not _ANC_SIZE
                or not sys.platform.startswith("linux")
                or not native_rx.available()
            ):
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
        deliver: Deliver, row: int = -1,
    ) -> bool:  # fmt: skip
        """Read ``transport``'s socket here from now on; False when it cannot be.

        ``srtp`` is the ``pylibsrtp.Session`` that unprotects its SRTP; ``deliver``
        takes each unprotected packet, ``handle`` every other datagram. With ``row``
        (of `native_rx.stats()`), packets of the streams that row already counts are
        counted there without ``deliver`` (a new stream's first packet goes through
        ``deliver``, which routes it and, for a lite listener, adds it to the row).
        """
        # asyncio/selector_events.py: _SelectorDatagramTransport keeps its socket in
        # _sock and reads it in _read_ready, registered with loop._add_reader.
        if (
            self._ep.closed
            or not isinstance(transport, _SelectorDatagramTransport)
            or transport.is_closing()
        ):
            return False
        entry = _Socket(transport, protocol, direct, srtp, handle, deliver, -1)
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
        slot = entry.slot = self._free.pop() if self._free else len(self._slots)
        if slot == len(self._slots):
            self._slots.append(entry)
        else:
            self._slots[slot] = entry
        if slot >= self._slot_srtp.shape[0]:
            size = 2 * self._slot_srtp.shape[0]
            self._slot_srtp = np.resize(self._slot_srtp, size)
            self._slot_row = np.resize(self._slot_row, size)
            self._slot_rtp = np.resize(self._slot_rtp, size)
        if fd >= self._fd_slot.shape[0]:
            grown = np.full(max(2 * self._fd_slot.shape[0], fd + 1), -1, np.int64)
            grown[: self._fd_slot.shape[0]] = self._fd_slot
            self._fd_slot = grown
        # pylibsrtp/__init__.py Session._srtp: the srtp_t its own unprotect passes to
        # lib.srtp_unprotect
        self._slot_srtp[slot] = int(_ffi.cast("uintptr_t", srtp._srtp[0]))
        self._slot_row[slot] = row
        self._slot_rtp[slot] = 0
        direct.native.append((self, slot))
        self._fd_slot[fd] = slot
        entry.sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        # The public remove_reader refuses a transport's fd (_ensure_fd_no_transport);
        # BaseSelectorEventLoop._remove_reader is what the transport itself calls.
        self._loop._remove_reader(fd)  # type: ignore[attr-defined]
        self._ep.register(fd, select.EPOLLIN)
        self._entries[fd] = entry
        if self._timer is None:
            self._timer = self._loop.call_later(self.interval, self._tick)
        return True

    def counted(self, slot: int) -> int:
        """RTP packets of ``slot``'s socket counted natively so far."""
        return int(self._slot_rtp[slot])

    def _forget(self, fd: int, entry: _Socket) -> None:
        if self._entries.get(fd) is entry:
            del self._entries[fd]
            self._fd_slot[fd] = -1
            slot = entry.slot
            direct = entry.direct
            direct.native.remove((self, slot))
            direct.counted_rtp += int(self._slot_rtp[slot])
            self._slot_row[slot] = -1
            self._slot_srtp[slot] = 0
            self._slots[slot] = None
            self._free.append(slot)
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
        self._more(time.monotonic_ns() - time.time_ns(), CALLS_PER_TICK)

    def _more(self, offset_ns: int, calls: int) -> None:
        """One call of the native loop (at most MAX_MESSAGES datagrams, a few ms); while
        it fills up, the next runs as a fresh loop callback, so that timers due in
        between (a speaker's next packet in this process) are not held up by the
        whole backlog."""
        n = self._read(offset_ns)
        self._python(n)
        if n >= native_rx.MAX_MESSAGES - native_rx.BATCH and calls > 1 and self._entries:
            self._loop.call_soon(self._more, offset_ns, calls - 1)

    def _read(self, offset_ns: int) -> int:
        """One call of the native loop: datagram slots used."""
        table = native_rx.stats()
        n: int = self._drain(
            self._ep.fileno(), self._events, self._events.ctypes.data, self._fd_slot,
            self._slot_srtp, self._slot_row, self._slot_rtp, self._hdr,
            self._hdr.ctypes.data, self._ctrl, self._data, self._data.ctypes.data,
            self._length, self._length.ctypes.data, offset_ns, 64, native_rx.MAX_MESSAGES,
            self._out_slot, self._out_status, self._out_len, self._out_arrival,
            table.ri, table.st, table.sd, table.sj, table.lat,
        )  # fmt: skip
        return n

    def _python(self, n: int) -> None:
        """What the kernel left: every datagram it did not count."""
        status = self._out_status[:n]
        self.datagrams += n - int((status == native_rx.Status.RECV_ERROR).sum())
        todo = np.flatnonzero(status)
        if not todo.size:
            return
        loop, data, names = self._loop, self._data, self._names
        slots, lengths, arrivals = self._out_slot, self._out_len, self._out_arrival
        size, name_size = native_rx.MESSAGE_SIZE, native_rx.NAME_SIZE
        for m in todo.tolist():
            e = self._slots[int(slots[m])]
            if e is None:  # pragma: no cover - forgotten by a callback in this batch
                continue
            st = int(status[m])
            try:
                if st == native_rx.Status.RECV_ERROR:
                    # epoll said readable and recvmmsg failed: a pending socket error
                    # (e.g. ICMP port unreachable), as _read_ready would have raised
                    err = e.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                    if err:
                        e.protocol.error_received(OSError(err, os.strerror(err)))
                    continue
                if st == native_rx.Status.SRTP_ERROR:
                    e.direct.srtp_errors += 1
                    continue
                if st == native_rx.Status.TRUNCATED:
                    e.direct.truncated += 1
                    continue
                arrival = int(arrivals[m]) or time.monotonic_ns()
                start = m * size
                packet = data[start : start + int(lengths[m])].tobytes()
                if st == native_rx.Status.DELIVER:
                    e.deliver(packet, arrival)
                else:
                    addr = _address(names[m * name_size : (m + 1) * name_size].tobytes())
                    e.handle(packet, addr, arrival)
            except Exception as exc:  # one connection's bug must not stop the rest
                loop.call_exception_handler(
                    {"message": "direct RTP receive failed", "exception": exc}
                )


def _address(name: bytes) -> tuple[Any, ...]:
    """A ``struct sockaddr`` as the socket module gives it (AF_INET, AF_INET6)."""
    family = int.from_bytes(name[:2], sys.byteorder)
    port = int.from_bytes(name[2:4], "big")
    if family == socket.AF_INET6:
        host = socket.inet_ntop(socket.AF_INET6, name[8:24])
        flow = int.from_bytes(name[4:8], "big")
        scope = int.from_bytes(name[24:28], sys.byteorder)
        return host, port, flow, scope
    return socket.inet_ntop(socket.AF_INET, name[4:8]), port


CALLS_PER_TICK = 32  # bounded work per tick; what is left is read next tick
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
