"""The server's fan-out in machine code: one call sends a packet to every listener of a slot.

At 400 listeners the Python per send (rewrite, header, ``srtp_protect`` through cffi,
``socket.sendto`` with its address tuple) was ~3 us of ~14 us per forwarded packet, a
quarter of the server's CPU (py-spy and ``perf`` on ``benchmarks/bench_sfu.py``). Here a
numba kernel loops over the listeners of one slot: it rewrites sequence number and
timestamp from per-listener arrays (the rule of ``spacesim.server.media._SlotStream``),
builds the RTP packet in a scratch buffer, protects it in place with libsrtp's
``srtp_protect`` (the function pylibsrtp's ``Session.protect`` calls, through its
compiled cffi module) and sends it with libc's ``sendto`` on the listener's socket.

A listener it cannot serve (no direct path armed: TURN relay, asyncio holding a queue,
just connected) stops the kernel at that listener with the rewritten numbers, and the
caller sends it the Python way and calls the kernel again from the next listener, so
the order of sends is the order of lanes. A refused ``sendto`` (EAGAIN or an error)
stops it too, with the protected packet left in the scratch buffer for asyncio's
transport (which queues it, or reports the error its way).

Compiled once per machine: ``cache=True`` keeps the machine code next to this file (or
in numba's per-user cache dir when that is not writable). The libsrtp function is named
to LLVM with ``llvmlite.binding.add_symbol`` and called as an ``ExternalFunction``, so
nothing of this process (no ctypes pointer) is baked into the cached code.
"""

from __future__ import annotations

import random
import threading
from typing import Any

import llvmlite.binding as llvm
import numpy as np
from numba import njit, types
from pylibsrtp._binding import ffi as _ffi
from pylibsrtp._binding import lib as _lib

from spacesim.rtc import internals as _i

__all__ = ["FanOut", "load"]

# The rows of FanOut.tab[k] (int64, one column per lane)
GEN, SEQ_OFF, TS_OFF, LAST_SEQ, LAST_TS, LAST_MS = 0, 1, 2, 3, 4, 5
ACTIVE, ARMED, SRTP, FD, SALEN, SSRC, PT = 6, 7, 8, 9, 10, 11, 12
N_PKT, N_OCT, N_TX, RTP_TS, NTP = 13, 14, 15, 16, 17
_ROWS = 18
# out[]: lane reached, sends done, then the lane's rewritten seq, ts, marker, and the
# protected length (SENDTO_FAILED) or libsrtp's error code (SRTP_FAILED)
O_LANE, O_SENT, O_SEQ, O_TS, O_MARK, O_ARG = 0, 1, 2, 3, 4, 5
# kernel results
DONE, LIMIT, PYTHON, SENDTO_FAILED, SRTP_FAILED = 0, 1, 2, 3, 4

_SA_SIZE = 32  # room for a sockaddr_in6 (28 bytes)
_MSG_DONTWAIT = 0x40  # Linux <bits/socket.h>; the socket is non-blocking anyway (asyncio)
# pylibsrtp/__init__.py: SRTP_MAX_TRAILER_LEN = 16 + 128 (the most protect appends)
SCRATCH = 2048
MAX_PACKET = SCRATCH - (16 + 128)
_SYMBOL = "spacesim_srtp_protect"
_U64 = (1 << 64) - 1
_NO_COUNTS = (0, 0, 0, 0, 0)  # take_counts of a lane with no sends since the last


_i.register(
    __name__,
    _i.attr(_lib, "srtp_protect", "pylibsrtp._binding lib.srtp_protect (libsrtp 2's signature)"),
)


def _signature_ok() -> bool:
    """libsrtp 2's ``srtp_protect(srtp_t, void *rtp_hdr, int *len_ptr)`` -- libsrtp 3 has
    another; pylibsrtp's cdef (pylibsrtp/_binding) says which one the wheel carries."""
    t = _ffi.typeof(_lib.srtp_protect)
    return (
        len(t.args) == 3 and t.args[2].cname == "int *" and t.result.kind in ("primitive", "enum")
    )


if not _signature_ok():
    raise ImportError(f"unexpected srtp_protect in pylibsrtp: {_ffi.typeof(_lib.srtp_protect)}")
llvm.add_symbol(_SYMBOL, int(_ffi.cast("uintptr_t", _ffi.addressof(_lib, "srtp_protect"))))
_protect: Any = types.ExternalFunction(_SYMBOL, types.int32(types.uintp, types.uintp, types.uintp))
# ssize_t sendto(int fd, const void *buf, size_t len, int flags, const struct sockaddr
# *addr, socklen_t addrlen) -- resolved from the process's libc by name
_sendto: Any = types.ExternalFunction(
    "sendto",
    types.intp(types.int32, types.uintp, types.uintp, types.int32, types.uintp, types.uint32),
)
_lock = threading.Lock()
_loaded = False


def load() -> None:
    """Compile the kernel, or load it from numba's cache (~3 s the first time on a
    machine, ~0.1 s after). `FanOut` calls it, so a server's first room pays it when it
    is created, before any listener is connected -- never a packet."""
    global _loaded
    if _loaded:
        return
    with _lock:
        if not _loaded:
            s = np.zeros(1, np.int64)
            b = np.zeros(1, np.uint8)
            _fan_out(
                np.zeros((_ROWS, 0), np.int64), b.reshape(1, 1), b, np.zeros(1, np.int32),
                s, b"", 0, 0, 0, 0, 0, 0, -1, 0, 1, 0, 1, 1,
            )  # fmt: skip
            _loaded = True


@njit(cache=True, nogil=True)
def _fan_out(
    tab: Any,
    sa: Any,
    scratch: Any,
    lenbuf: Any,
    out: Any,
    payload: Any,
    seq: int,
    ts: int,
    marker: int,
    gen: int,
    now_ms: int,
    ntp: int,
    skip: int,
    start: int,
    limit: int,
    hi: int,
    frame: int,
    clock_per_ms: int,
) -> int:
    plen = len(payload)
    n = 12 + plen
    fits = n <= MAX_PACKET
    buf = scratch.ctypes.data
    lenp = lenbuf.ctypes.data
    sabase = sa.ctypes.data
    sent = 0
    i = start
    while i < hi:
        if tab[ACTIVE, i] == 0 or i == skip:
            i += 1
            continue
        if sent >= limit:
            out[O_LANE] = i
            out[O_SENT] = sent
            return LIMIT
        # spacesim.server.media._SlotStream.rebase and the loop of MediaRoom._fan_out
        if tab[GEN, i] != gen:
            step = frame
            last_ms = tab[LAST_MS, i]
            if last_ms >= 0:
                step = max(frame, min((now_ms - last_ms) * clock_per_ms, 1 << 30))
            tab[GEN, i] = gen
            tab[SEQ_OFF, i] = (tab[LAST_SEQ, i] + 1 - seq) & 0xFFFF
            tab[TS_OFF, i] = (tab[LAST_TS, i] + step - ts) & 0xFFFFFFFF
            mark = 1
        else:
            mark = marker
        out_seq = (seq + tab[SEQ_OFF, i]) & 0xFFFF
        out_ts = (ts + tab[TS_OFF, i]) & 0xFFFFFFFF
        d = (out_seq - tab[LAST_SEQ, i]) & 0xFFFF
        if 0 < d < 0x8000:  # newer: a late packet never moves the slot back
            tab[LAST_SEQ, i] = out_seq
            tab[LAST_TS, i] = out_ts
            tab[LAST_MS, i] = now_ms
        if tab[ARMED, i] == 0 or not fits:
            out[O_LANE] = i
            out[O_SENT] = sent
            out[O_SEQ] = out_seq
            out[O_TS] = out_ts
            out[O_MARK] = mark
            return PYTHON
        # RTP fixed header (RFC 3550): V=2 | M PT | seq | timestamp | SSRC
        ssrc = tab[SSRC, i]
        scratch[0] = 0x80
        scratch[1] = (mark << 7) | tab[PT, i]
        scratch[2] = out_seq >> 8
        scratch[3] = out_seq & 0xFF
        scratch[4] = (out_ts >> 24) & 0xFF
        scratch[5] = (out_ts >> 16) & 0xFF
        scratch[6] = (out_ts >> 8) & 0xFF
        scratch[7] = out_ts & 0xFF
        scratch[8] = (ssrc >> 24) & 0xFF
        scratch[9] = (ssrc >> 16) & 0xFF
        scratch[10] = (ssrc >> 8) & 0xFF
        scratch[11] = ssrc & 0xFF
        for j in range(plen):
            scratch[12 + j] = payload[j]
        lenbuf[0] = n
        rc = _protect(tab[SRTP, i], buf, lenp)
        if rc != 0:
            out[O_LANE] = i
            out[O_SENT] = sent
            out[O_ARG] = rc
            return SRTP_FAILED
        m = lenbuf[0]
        tab[N_PKT, i] += 1
        tab[N_OCT, i] += plen
        tab[N_TX, i] += m
        tab[RTP_TS, i] = out_ts
        tab[NTP, i] = ntp
        sent += 1
        r = _sendto(tab[FD, i], buf, m, _MSG_DONTWAIT, sabase + i * _SA_SIZE, tab[SALEN, i])
        if r < 0:
            out[O_LANE] = i
            out[O_SENT] = sent
            out[O_ARG] = m
            return SENDTO_FAILED
        i += 1
    out[O_LANE] = hi
    out[O_SENT] = sent
    return DONE


class FanOut:
    """The lanes of one room: per listener and slot, the rewrite state and how to send.

    A listener keeps its lane index (the same in every slot) while it is live; the
    kernel walks lanes in index order. ``refs`` holds what an armed lane points into
    (the ``pylibsrtp.Session`` whose ``srtp_t`` it uses, the socket whose fd it writes),
    so neither is freed while the kernel may use it.
    """

    def __init__(self, slots: int, frame: int, clock_per_ms: int) -> None:
        load()
        self.kernel = _fan_out
        self.slots = slots
        self.frame = frame
        self.clock_per_ms = clock_per_ms
        self.tab = np.zeros((slots, _ROWS, 0), np.int64)
        self.sa = np.zeros((0, _SA_SIZE), np.uint8)
        self.refs: list[list[Any]] = [[] for _ in range(slots)]
        self.owners: list[Any] = []
        self.hi = 0  # lanes ever used: the kernel walks [0, hi)
        self._free: list[int] = []
        self.scratch = np.zeros(SCRATCH, np.uint8)
        self.lenbuf = np.zeros(1, np.int32)
        self.out = np.zeros(8, np.int64)

    def add(self, owner: Any) -> int:
        """A new lane (fresh rewrite state in every slot) for `owner`; its index."""
        if self._free:
            i = self._free.pop()
        else:
            i = self.hi
            if i == self.tab.shape[2]:
                self._grow(max(16, 2 * i))
            self.hi = i + 1
        t = self.tab
        t[:, :, i] = 0
        for k in range(self.slots):  # as _SlotStream.__init__
            t[k, GEN, i] = -1
            t[k, LAST_SEQ, i] = random.getrandbits(16)
            t[k, LAST_TS, i] = random.getrandbits(32)
            t[k, LAST_MS, i] = -1
        t[:, ACTIVE, i] = 1
        self.owners[i] = owner
        return i

    def remove(self, i: int) -> None:
        """The lane's listener left: the kernel skips it from now on."""
        self.tab[:, ACTIVE, i] = 0
        self.tab[:, ARMED, i] = 0
        for k in range(self.slots):
            self.refs[k][i] = None
        self.owners[i] = None
        self._free.append(i)

    def _grow(self, cap: int) -> None:
        old = self.tab
        self.tab = np.zeros((self.slots, _ROWS, cap), np.int64)
        self.tab[:, :, : old.shape[2]] = old
        sa = np.zeros((cap, _SA_SIZE), np.uint8)
        sa[: self.sa.shape[0]] = self.sa
        self.sa = sa
        grow = cap - len(self.owners)
        self.owners.extend([None] * grow)
        for r in self.refs:
            r.extend([None] * grow)

    def arm(
        self, k: int, i: int, srtp: int, fd: int, addr: bytes, ssrc: int, pt: int, keep: Any
    ) -> None:
        """Let the kernel send lane `i` of slot `k`: libsrtp context `srtp` (an
        ``srtp_t``), socket `fd`, destination `addr` (a `sockaddr`); `keep` holds them."""
        self.refs[k][i] = keep
        self.sa[i, : len(addr)] = np.frombuffer(addr, np.uint8)
        t = self.tab[k]
        t[SRTP, i] = srtp
        t[FD, i] = fd
        t[SALEN, i] = len(addr)
        t[SSRC, i] = ssrc
        t[PT, i] = pt
        t[ARMED, i] = 1

    def disarm(self, k: int, i: int) -> None:
        """Lane `i` of slot `k` goes the Python way again (until armed)."""
        self.tab[k, ARMED, i] = 0
        self.refs[k][i] = None

    def armed(self, k: int, i: int) -> bool:
        return bool(self.tab[k, ARMED, i])

    def take_counts(self, k: int, i: int) -> tuple[int, int, int, int, int]:
        """(packets, payload octets, bytes sent, last RTP timestamp, last NTP) of the
        kernel's sends on the lane since the last call; the counts are reset."""
        t = self.tab[k]
        packets = int(t[N_PKT, i])
        if not packets:  # a silent slot's lane, at each report (two of three, one speaker)
            return _NO_COUNTS
        ntp = int(t[NTP, i]) & _U64  # stored as int64 (see `run`)
        c = (packets, int(t[N_OCT, i]), int(t[N_TX, i]), int(t[RTP_TS, i]), ntp)
        t[N_PKT, i] = t[N_OCT, i] = t[N_TX, i] = 0
        return c

    def stream(self, k: int, i: int) -> tuple[int, int, int, int, int, int]:
        """(gen, seq_off, ts_off, last_seq, last_ts, last_ms) of lane `i` in slot `k`."""
        t = self.tab[k]
        return tuple(int(t[r, i]) for r in (GEN, SEQ_OFF, TS_OFF, LAST_SEQ, LAST_TS, LAST_MS))  # type: ignore[return-value]

    def run(
        self,
        k: int,
        payload: bytes,
        seq: int,
        ts: int,
        marker: int,
        gen: int,
        now_ms: int,
        ntp: int,
        skip: int,
        start: int,
        limit: int,
    ) -> int:
        """Run the kernel on slot `k` from lane `start`; the result code (`out` says more).

        Every number is passed as a Python int: numba compiles one machine-code version
        per argument types, so a float or numpy scalar would cost a compile (~1 s).
        """
        return int(
            self.kernel(
                self.tab[k],
                self.sa,
                self.scratch,
                self.lenbuf,
                self.out,
                payload,
                int(seq),
                int(ts),
                int(marker),
                int(gen),
                int(now_ms),
                int(ntp - (1 << 64) if ntp >> 63 else ntp),  # NTP 32.32 is unsigned 64-bit
                int(skip),
                int(start),
                int(limit),
                self.hi,
                self.frame,
                self.clock_per_ms,
            )
        )
