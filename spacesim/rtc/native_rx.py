"""The batch reader's receive loop in machine code: sockets drained, SRTP unprotected and
lite listeners' packets counted in one numba-compiled call per tick.

Per datagram, the Python loop it replaces cost ~15 us of the swarm's CPU (epoll,
``recvmsg_into`` and its ancillary data, a cffi call to ``srtp_unprotect``, ``tobytes``,
routing, `ListenerStats.on_rtp`; see ``benchmarks/bench_swarm.py``). Here `drain` does,
for every socket the reader's ``epoll`` set reports ready (``epoll_wait``, timeout 0),
one ``recvmmsg`` (``MSG_DONTWAIT``, up to `BATCH` datagrams) with each datagram's kernel
receive time (``SO_TIMESTAMPNS`` control message, socket(7)), classifies it as SRTP as
the Python path did (RFC 7983 first byte 128..191, not SRTCP: second byte 192..208),
unprotects it in place through libsrtp's own ``srtp_unprotect`` (its address taken from
pylibsrtp's cffi binding, ``pylibsrtp._binding.lib``; the same ``srtp_t`` the
connection's ``pylibsrtp.Session`` holds) and, when the socket belongs to a lite
listener whose stream table already holds the packet's SSRC, counts it in `RxStats`
exactly as `spacesim.client.listener.ListenerStats.on_rtp` does (stream sequence,
mark, latency, jitter). Every other datagram -- STUN, DTLS, SRTCP, a failed
authentication, a stream not seen before, the sockets of other receivers -- is left in
the buffer with a status for the Python side (`spacesim.rtc.batch`), which treats it as
before. Nothing is sampled: every datagram is read, authenticated and counted.

System calls go through ctypes function objects, which numba calls directly
(numba/core/typing/ctypes_utils.py); pointers are passed as 64-bit integers (LP64
Linux: the same registers as ``void *``).
"""

from __future__ import annotations

import ctypes
import platform
import sys
import threading
from typing import Any

import numpy as np
from pylibsrtp._binding import lib as _lib

from spacesim.client.opus import MAGIC, MARK_SIZE
from spacesim.rtc import internals as _i

_i.register(
    __name__,
    _i.attr(_lib, "srtp_unprotect", "pylibsrtp._binding lib.srtp_unprotect"),
)

__all__ = [
    "BATCH", "MAX_MESSAGES", "RxStats", "Status", "available", "drain_fn", "stats", "warm",
]  # fmt: skip

BATCH = 16  # datagrams per recvmmsg call (per ready socket)
MAX_MESSAGES = 1024  # datagrams per drain call (~2-3 ms); the reader calls again while it fills
MESSAGE_SIZE = 2048  # bytes per datagram slot (RTP, STUN, SRTCP here are < 1,300)
CONTROL_SIZE = 64  # CMSG_SPACE(sizeof(struct timespec)) is 32 on LP64
NAME_SIZE = 32  # sockaddr_in6 is 28 bytes
MAX_EVENTS = 1024
MSG_DONTWAIT = 0x40  # linux/socket.h
MSG_TRUNC = 0x20
SOL_SOCKET = 1
SO_TIMESTAMPNS = 35  # == SCM_TIMESTAMPNS (asm-generic/socket.h)
NONE = -(2**63)  # "not yet" in the int64 tables

STREAMS = 16  # streams (SSRCs) per listener row; the oldest is retired into totals
SENDERS = 16  # marked senders per row; the oldest is forgotten
LATENCIES = 1024  # latencies kept per row between two `RxStats.drain` calls


class Status:
    """What `drain` left for the Python side, per datagram."""

    COUNTED = 0  # SRTP, unprotected and counted in a listener's row: nothing left to do
    SRTP_ERROR = 1  # srtp_unprotect failed (authentication, replay): counted as an error
    OTHER = 2  # not SRTP (STUN, DTLS, SRTCP): the connection's `handle`
    DELIVER = 3  # SRTP, unprotected, not counted natively: the connection's `deliver`
    RECV_ERROR = 4  # recvmmsg failed on a ready socket: its pending error, if any
    TRUNCATED = 5  # longer than MESSAGE_SIZE: dropped and counted


# ---------------------------------------------------------------------- native calls

_IS_LINUX = sys.platform.startswith("linux") and ctypes.sizeof(ctypes.c_void_p) == 8
_EPOLL_PACKED = platform.machine() in ("x86_64", "AMD64")  # struct epoll_event is packed


def _ctypes_functions() -> tuple[Any, Any, Any] | None:
    if not _IS_LINUX:
        return None
    try:
        from pylibsrtp._binding import ffi as _ffi

        libc = ctypes.CDLL(None)
        i64, c_int = ctypes.c_int64, ctypes.c_int
        epoll_wait = libc.epoll_wait  # (epfd, struct epoll_event *, maxevents, timeout)
        epoll_wait.argtypes = (c_int, i64, c_int, c_int)
        epoll_wait.restype = c_int
        recvmmsg = libc.recvmmsg  # (fd, struct mmsghdr *, vlen, flags, struct timespec *)
        recvmmsg.argtypes = (c_int, i64, ctypes.c_uint, c_int, i64)
        recvmmsg.restype = c_int
        # srtp_err_status_t srtp_unprotect(srtp_t, void *srtp_hdr, int *len_ptr) (srtp2/srtp.h)
        address = int(_ffi.cast("uintptr_t", _ffi.addressof(_lib, "srtp_unprotect")))
        unprotect = ctypes.CFUNCTYPE(c_int, i64, i64, i64)(address)
        return epoll_wait, recvmmsg, unprotect
    except (OSError, AttributeError, ImportError):  # pragma: no cover - not glibc/Linux
        return None


_FUNCS = _ctypes_functions()
_DRAIN: Any = None
_ACCOUNT: Any = None
_BE32: Any = None  # `_compile`'s be32, for `account`
_lock = threading.Lock()


def available() -> bool:
    """True where the native receive loop runs (Linux, 64-bit, numba installed)."""
    if _FUNCS is None:
        return False
    try:
        import numba  # noqa: F401
    except ImportError:  # pragma: no cover - numba is in the `load` extra
        return False
    return True


def _compile() -> tuple[Any, Any]:
    """Compile (or load from numba's on-disk cache) the two kernels, once per process."""
    global _DRAIN, _ACCOUNT
    with _lock:
        if _DRAIN is not None:
            return _DRAIN, _ACCOUNT
        import numba

        assert _FUNCS is not None
        epoll_wait, recvmmsg, unprotect = _FUNCS
        magic = int.from_bytes(MAGIC, "big")
        mark_size = MARK_SIZE
        n_streams, n_senders, n_lat = STREAMS, SENDERS, LATENCIES
        ev_size, ev_data = (12, 4) if _EPOLL_PACKED else (16, 8)
        S_COUNTED, S_SRTP_ERROR, S_OTHER = Status.COUNTED, Status.SRTP_ERROR, Status.OTHER
        S_DELIVER, S_RECV_ERROR, S_TRUNCATED = Status.DELIVER, Status.RECV_ERROR, Status.TRUNCATED

        @numba.njit(cache=True)
        def be32(b: Any, i: int) -> Any:
            return (
                (np.int64(b[i]) << 24)
                | (np.int64(b[i + 1]) << 16)
                | (np.int64(b[i + 2]) << 8)
                | np.int64(b[i + 3])
            )

        # `account` calls be32 as a module global, not a closure variable: numba's cache
        # keys a closure's entries on its pickled cell contents (numba/core/caching.py
        # Cache._index_key), and a dispatcher pickles with a new uuid in every process,
        # so each process missed the cache, compiled `account` again and added an entry
        global _BE32
        _BE32 = be32

        @numba.njit(cache=True)
        def account(
            row: int, b: Any, start: int, n: Any, now: int, allow_new: bool,
            ri: Any, st: Any, sd: Any, sj: Any, lat: Any,
        ) -> bool:  # fmt: skip
            """`ListenerStats.on_rtp` on row `row` (False: a new SSRC, not allowed)."""
            if n >= 12:
                ssrc = _BE32(b, start + 8)
                seq16 = (np.int64(b[start + 2]) << 8) | np.int64(b[start + 3])
                ns = ri[row, 4]
                j = -1
                for i in range(ns):
                    if st[row, i, 0] == ssrc:
                        j = i
                        break
                if j < 0:
                    if not allow_new:
                        return False
                    if ns == n_streams:  # retire the oldest into the row's totals
                        ri[row, 8] += st[row, 0, 3]
                        ri[row, 9] += st[row, 0, 2] - st[row, 0, 1] + 1
                        for i in range(ns - 1):
                            for f in range(4):
                                st[row, i, f] = st[row, i + 1, f]
                        ns -= 1
                    st[row, ns, 0] = ssrc
                    st[row, ns, 1] = seq16
                    st[row, ns, 2] = seq16
                    st[row, ns, 3] = 1
                    ri[row, 4] = ns + 1
                    if ri[row, 2] == NONE:
                        ri[row, 2] = now
                else:
                    ahead = (seq16 - st[row, j, 2]) & 0xFFFF  # RFC 3550 A.1's wrap rule
                    if ahead < 0x8000:
                        st[row, j, 2] += ahead
                    st[row, j, 3] += 1
            elif not allow_new:
                return False
            # the mark: spacesim.client.opus.read_mark_fields on the RTP payload
            # (spacesim.client.rtp.payload: CSRCs, extension, padding)
            end = start + n
            ok = n >= 12 and (b[start] >> 6) == 2
            ps = start + 12
            if ok and b[start] != 0x80:
                b0 = b[start]
                ps = start + 12 + 4 * (b0 & 0x0F)
                if b0 & 0x10:
                    if ps + 4 > end:
                        ok = False
                    else:
                        ps += 4 + 4 * ((np.int64(b[ps + 2]) << 8) | np.int64(b[ps + 3]))
                if ok and b0 & 0x20:
                    pad = b[end - 1]
                    if pad == 0:
                        ok = False
                    else:
                        end -= pad
                if ps > end:
                    ok = False
            if ok:
                if end - ps < 3 + mark_size or (b[ps] & 3) != 3:
                    ok = False
                else:
                    count = b[ps + 1]
                    if not (count & 0x40) or not (count & 0x3F) or b[ps + 2] != mark_size:
                        ok = False
            q = end - mark_size
            if ok and _BE32(b, q) != magic:
                ok = False
            if not ok:
                ri[row, 3] += 1  # unmarked
                return True
            sender = _BE32(b, q + 4)
            seq = _BE32(b, q + 8)
            t_ns = (_BE32(b, q + 12) << 32) | _BE32(b, q + 16)
            if ri[row, 1] == NONE:
                ri[row, 1] = now
            nd = ri[row, 5]
            k = -1
            for i in range(nd):
                if sd[row, i, 0] == sender:
                    k = i
                    break
            if k < 0:
                if nd == n_senders:  # forget the oldest sender
                    for i in range(nd - 1):
                        for f in range(5):
                            sd[row, i, f] = sd[row, i + 1, f]
                        sj[row, i, 0] = sj[row, i + 1, 0]
                        sj[row, i, 1] = sj[row, i + 1, 1]
                    nd -= 1
                k = nd
                sd[row, k, 0] = sender
                sd[row, k, 1] = seq  # first_seq
                sd[row, k, 2] = -1  # last_seq
                sd[row, k, 3] = 0  # received
                sd[row, k, 4] = 0  # latencies this window
                sj[row, k, 0] = 0.0
                sj[row, k, 1] = np.nan
                ri[row, 5] = nd + 1
            sd[row, k, 3] += 1
            if seq > sd[row, k, 2]:
                sd[row, k, 2] = seq
            elif seq < sd[row, k, 1]:
                sd[row, k, 1] = seq
            transit = (now - t_ns) / 1e9
            sd[row, k, 4] += 1
            m = ri[row, 6]
            if m < n_lat:
                lat[row, m] = transit
            ri[row, 6] = m + 1
            if not np.isnan(sj[row, k, 1]):  # J += (|D| - J) / 16, RFC 3550 6.4.1
                sj[row, k, 0] += (abs(transit - sj[row, k, 1]) - sj[row, k, 0]) / 16
            sj[row, k, 1] = transit
            return True

        # not cached: numba's cache pickles closure variables, and ctypes function
        # objects cannot be pickled (compiled once per process, ~1 s)
        @numba.njit
        def drain(
            epfd: int, events: Any, events_addr: int, fd_slot: Any, slot_srtp: Any,
            slot_row: Any, slot_rtp: Any, hdr: Any, hdr_addr: int, ctrl: Any, data: Any,
            data_addr: int, length: Any, length_addr: int, offset_ns: int, rounds: int, limit: int,
            out_slot: Any, out_status: Any, out_len: Any, out_arrival: Any,
            ri: Any, st: Any, sd: Any, sj: Any, lat: Any,
        ) -> int:  # fmt: skip
            """Read every ready socket (up to `rounds` epoll rounds and `limit`
            datagrams); the number of datagram slots used."""
            cap = min(limit, out_slot.shape[0])
            total = 0
            for _ in range(rounds):
                ready = epoll_wait(epfd, events_addr, MAX_EVENTS, 0)
                if ready <= 0:
                    break
                for e in range(ready):
                    p = e * ev_size + ev_data
                    fd = (
                        np.int64(events[p])
                        | (np.int64(events[p + 1]) << 8)
                        | (np.int64(events[p + 2]) << 16)
                        | (np.int64(events[p + 3]) << 24)
                    )
                    if fd >= fd_slot.shape[0] or fd_slot[fd] < 0:
                        continue
                    k = fd_slot[fd]
                    room = min(BATCH, cap - total)
                    if room <= 0:
                        return total
                    for m in range(total, total + room):
                        hdr[m, 1] = NAME_SIZE  # msg_namelen (and its padding)
                        hdr[m, 5] = CONTROL_SIZE  # msg_controllen
                        hdr[m, 6] = 0  # msg_flags
                        hdr[m, 7] = 0  # msg_len
                    got = recvmmsg(fd, hdr_addr + total * 64, room, MSG_DONTWAIT, 0)
                    if got <= 0:  # would block (spurious) or an error pending: Python looks
                        out_slot[total] = k
                        out_status[total] = S_RECV_ERROR
                        out_len[total] = 0
                        out_arrival[total] = 0
                        total += 1
                        continue
                    row = slot_row[k]
                    for m in range(total, total + got):
                        n = np.int64(hdr[m, 7] & 0xFFFFFFFF)
                        flags = hdr[m, 6] & 0xFFFFFFFF
                        out_slot[m] = k
                        out_len[m] = n
                        c = m * (CONTROL_SIZE // 8)  # cmsghdr: len, level | type << 32, timespec
                        if (
                            ctrl[c] >= 32
                            and (ctrl[c + 1] & 0xFFFFFFFF) == SOL_SOCKET
                            and (ctrl[c + 1] >> 32) == SO_TIMESTAMPNS
                        ):
                            now = ctrl[c + 2] * 1_000_000_000 + ctrl[c + 3] + offset_ns
                        else:
                            now = 0  # Python reads the clock
                        out_arrival[m] = now
                        if flags & MSG_TRUNC:
                            out_status[m] = S_TRUNCATED
                            continue
                        s = m * MESSAGE_SIZE
                        b0, b1 = data[s], data[s + 1]
                        if not (n > 12 and 127 < b0 < 192 and not 191 < b1 < 209):
                            out_status[m] = S_OTHER
                            continue
                        length[0] = n
                        if unprotect(slot_srtp[k], data_addr + s, length_addr):
                            out_status[m] = S_SRTP_ERROR
                            continue
                        n = np.int64(length[0])
                        out_len[m] = n
                        if (
                            now != 0
                            and row >= 0
                            and account(
                                row, data, s, n, now + ri[row, 0], False, ri, st, sd, sj, lat
                            )
                        ):
                            out_status[m] = S_COUNTED
                            slot_rtp[k] += 1
                        else:
                            out_status[m] = S_DELIVER
                    total += got
            return total

        _DRAIN, _ACCOUNT = drain, account
        return drain, account


def drain_fn() -> Any:
    """The compiled `drain` kernel."""
    return _compile()[0]


def account_fn() -> Any:
    """The compiled `account` kernel (`ListenerStats.on_rtp` on a row)."""
    return _compile()[1]


class RxStats:
    """Lite listeners' receive statistics, one row per listener, in arrays `drain` writes.

    A row holds what `spacesim.client.listener.ListenerStats` keeps in dicts: per stream
    (SSRC) the first and last extended RTP sequence and the packets received; per marked
    sender the first and last mark sequence, packets, RFC 3550 jitter; the latencies
    since the last `drain` (up to `LATENCIES`; more are counted in ``dropped`` and, as
    samples, not kept). One table per process, used from one thread at a time (the
    kernels run holding the GIL).
    """

    def __init__(self, rows: int = 64) -> None:
        self.ri = np.zeros((0, 12), np.int64)
        self.st = np.zeros((0, STREAMS, 4), np.int64)
        self.sd = np.zeros((0, SENDERS, 5), np.int64)
        self.sj = np.zeros((0, SENDERS, 2), np.float64)
        self.lat = np.zeros((0, LATENCIES), np.float64)
        self.dropped = 0  # latencies counted but not kept (a row's buffer was full)
        self._free: list[int] = []
        self._grow(rows)

    def _grow(self, rows: int) -> None:
        old = self.ri.shape[0]
        for name in ("ri", "st", "sd", "sj", "lat"):
            a = getattr(self, name)
            b = np.zeros((rows, *a.shape[1:]), a.dtype)
            b[:old] = a
            setattr(self, name, b)
        self._free.extend(range(rows - 1, old - 1, -1))

    def new_row(self, offset_ns: int) -> int:
        """A fresh row; `offset_ns` is added to arrival times (the clock they are on)."""
        if not self._free:
            self._grow(2 * self.ri.shape[0])
        row = self._free.pop()
        self.ri[row] = 0
        self.ri[row, 0] = offset_ns
        self.ri[row, 1] = self.ri[row, 2] = NONE
        self.ri[row, 7] = 1  # in use
        return row

    def release(self, row: int) -> None:
        self.ri[row, 7] = 0
        self._free.append(row)

    def account(self, row: int, packet: bytes, now: int) -> None:
        """One packet counted on `row` at `now` (on the row's clock): the Python path's
        entry (a stream's first packet, or a socket the batch reader does not own)."""
        b = np.frombuffer(packet, np.uint8)
        account_fn()(row, b, 0, len(b), now, True, self.ri, self.st, self.sd, self.sj, self.lat)

    def first(self, row: int, field: int) -> int | None:
        v = int(self.ri[row, field])
        return None if v == NONE else v

    def unmarked(self, row: int) -> int:
        return int(self.ri[row, 3])

    def totals(self, row: int) -> tuple[int, int]:
        """(received, lost) over the row's streams, as `ListenerStats.totals`."""
        n = int(self.ri[row, 4])
        st = self.st[row, :n]
        received = int(st[:, 3].sum()) + int(self.ri[row, 8])
        expected = int((st[:, 2] - st[:, 1] + 1).sum()) + int(self.ri[row, 9])
        return received, max(expected - received, 0)

    def drain(self, row: int) -> tuple[list[float], list[int]]:
        """The latencies (s) since the last call, and the senders heard in between."""
        m = int(self.ri[row, 6])
        kept = min(m, LATENCIES)
        lat = self.lat[row, :kept].tolist()
        self.dropped += m - kept
        self.ri[row, 6] = 0
        nd = int(self.ri[row, 5])
        sd = self.sd[row, :nd]
        heard = [int(s) for s in sd[sd[:, 4] > 0, 0]]
        sd[:, 4] = 0
        return lat, heard


_stats: RxStats | None = None


def stats() -> RxStats:
    """This process's table of lite listeners' rows."""
    global _stats
    if _stats is None:
        _stats = RxStats()
    return _stats


def warm() -> None:
    """Compile the kernels now (~2-3 s), so that this process's first batch reader and
    first lite listener do not hold up its event loop."""
    if not available():
        return
    drain, _ = _compile()
    i64 = np.zeros(1, np.int64)
    u8 = np.zeros(1, np.uint8)
    table = stats()
    drain(
        -1, u8, 0, i64, i64, i64, i64, np.zeros((1, 8), np.int64), 0, i64, u8, 0,
        np.zeros(1, np.int32), 0, 0, 1, 0, i64, i64, i64, i64,
        table.ri, table.st, table.sd, table.sj, table.lat,
    )  # fmt: skip
    # and `RxStats.account`'s call from Python (a read-only view of bytes: its own
    # signature), on a row of its own that is given back
    row = table.new_row(0)
    table.account(row, bytes(12), 0)
    table.release(row)
