"""spacesim.rtc.batch: the batch reader."""

from __future__ import annotations

import asyncio
import os
import socket
import struct
import time

import pylibsrtp

from spacesim import rtc
from spacesim.rtc.batch import _READER_ATTR


class _Protocol(asyncio.DatagramProtocol):
    """A protocol with a __dict__, as aioice's StunProtocol has (the reader wraps its
    connection_lost)."""


async def test_batch_reader_times_by_kernel_and_isolates_connections() -> None:
    """Two sockets on one reader: RTP is unprotected and delivered with the time it
    reached the socket (not the later tick), a corrupted packet is counted, other
    datagrams go to `handle`, and one connection's failing callback spares the other."""
    loop = asyncio.get_running_loop()
    reader = rtc.BatchReader.of(loop, 0.02)
    assert reader is not None
    await asyncio.sleep(0.05)  # the kernel turns timestamps on (see BatchReader.__init__)
    errors: list[dict[str, object]] = []
    loop.set_exception_handler(lambda _loop, context: errors.append(context))
    key = os.urandom(30)
    tx = pylibsrtp.Session(pylibsrtp.Policy(key=key, ssrc_type=pylibsrtp.Policy.SSRC_ANY_OUTBOUND))
    delivered: list[tuple[int, bytes, int]] = []
    handled: list[bytes] = []
    directs, addrs, transports = [], [], []
    for i in range(2):
        transport, protocol = await loop.create_datagram_endpoint(
            _Protocol, local_addr=("127.0.0.1", 0)
        )
        rx = pylibsrtp.Session(
            pylibsrtp.Policy(key=key, ssrc_type=pylibsrtp.Policy.SSRC_ANY_INBOUND)
        )
        direct = rtc.DirectRtp([])

        def deliver(packet: bytes, arrival_ns: int, i: int = i) -> None:
            if i == 0:
                raise RuntimeError("a bug in one connection's callback")
            delivered.append((i, packet, arrival_ns))

        def handle(data: bytes, addr: object, arrival_ns: int) -> bool:
            handled.append(data)
            return False

        assert reader.adopt(transport, protocol, direct, rx, handle, deliver)
        directs.append(direct)
        addrs.append(transport.get_extra_info("sockname"))
        transports.append(transport)
    rtp = struct.pack("!BBHII", 0x80, 111, 7, 960, 1234) + b"opus" * 10
    stun = b"\x00\x01\x00\x00" + b"\x21\x12\xa4\x42" + os.urandom(12)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as out:
        protected = tx.protect(rtp)
        sent_ns = time.monotonic_ns()
        for addr in addrs:
            out.sendto(protected, addr)
        bad = bytearray(tx.protect(struct.pack("!BBHII", 0x80, 111, 8, 1920, 1234) + b"x" * 40))
        bad[20] ^= 0xFF
        out.sendto(bytes(bad), addrs[1])
        out.sendto(stun, addrs[1])
        time.sleep(0.05)  # the loop is blocked: no tick can read before this returns
        await asyncio.sleep(0.1)
    try:
        assert [(i, p) for i, p, _ in delivered] == [(1, rtp)]
        assert sent_ns <= delivered[0][2] < sent_ns + 20_000_000  # well before the tick
        assert directs[1].srtp_errors == 1 and handled == [stun]
        assert len(errors) == 1 and isinstance(errors[0]["exception"], RuntimeError)
    finally:
        for t in transports:
            t.close()
        loop.set_exception_handler(None)
    # closed connections leave the reader at once; a tick later it closes and leaves
    # the loop (nothing held for a loop that is gone)
    await asyncio.sleep(0)
    assert reader._entries == {}
    await asyncio.sleep(0.1)
    assert reader._ep.closed and getattr(loop, _READER_ATTR, None) is None
