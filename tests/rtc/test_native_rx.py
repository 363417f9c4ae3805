"""spacesim.rtc.native_rx: the native receive loop and lite listeners' rows."""

from __future__ import annotations

import asyncio
import os
import random
import socket
import struct
import time
from pathlib import Path

import pylibsrtp
import pytest

from spacesim import rtc
from spacesim.client.listener import ListenerStats, NativeListenerStats
from spacesim.client.opus import mark
from spacesim.rtc import native_rx

pytestmark = pytest.mark.skipif(not native_rx.available(), reason="no native receive loop")

FRAME = b"\x78" + b"\x01" * 40


class _Protocol(asyncio.DatagramProtocol):
    """A protocol with a __dict__, as aioice's StunProtocol has."""


def packet(ssrc: int, seq: int, sender: int, mark_seq: int, t_ns: int, kind: int = 0) -> bytes:
    """An RTP packet with a marked Opus payload; `kind` 1 adds a header extension and
    padding, 2 sends no mark."""
    b0 = 0x80
    ext = pad = b""
    if kind == 1:
        b0 |= 0x30  # X and P
        ext = struct.pack("!HH", 0xBEDE, 1) + b"\x10\xff\x00\x00"
        pad = b"\x00\x00\x03"
    header = struct.pack("!BBHII", b0, 111, seq & 0xFFFF, seq * 960 & 0xFFFFFFFF, ssrc)
    body = FRAME if kind == 2 else mark(FRAME, sender, mark_seq, t_ns)
    return header + ext + body + pad


def test_a_row_counts_as_listener_stats_does() -> None:
    """Stream sequences (wrap, loss, duplicates, a rejoin), marks (extension, padding,
    none), latencies, first times and more streams than a row holds: the same figures."""
    rng = random.Random(7)
    packets: list[tuple[bytes, int]] = []
    for stream in range(native_rx.STREAMS + 3):  # a rejoin every stream: old ones retire
        seq = rng.randrange(65_536)
        for _ in range(rng.randrange(5, 60)):
            seq += 1 if rng.random() > 0.1 else rng.randrange(2, 5)  # some lost
            if rng.random() < 0.05:
                seq -= 3  # a late duplicate
            sender = rng.randrange(1, 4)
            t = rng.randrange(1_000, 50_000_000)
            packets.append((packet(stream, seq, sender, seq, t, rng.randrange(3)), t + 777))
    py, nat = ListenerStats(offset_ns=5), NativeListenerStats(offset_ns=5)
    assert py.first_audio_ns is None and nat.first_audio_ns is None
    for i, (p, arrival) in enumerate(packets):
        py.on_rtp(0, p, arrival)
        nat.on_rtp(0, p, arrival)
        if i % 97 == 0:
            assert py.drain() == nat.drain()
    assert py.totals() == nat.totals()
    assert (py.first_audio_ns, py.first_packet_ns, py.unmarked) == (
        nat.first_audio_ns,
        nat.first_packet_ns,
        nat.unmarked,
    )
    lat, heard = py.drain()
    assert (sorted(lat), sorted(heard)) == tuple(map(sorted, nat.drain()))


async def test_the_reader_counts_known_streams_natively() -> None:
    """A socket adopted with a row: a stream's first packet goes through `deliver`
    (which routes it), the rest are counted in the row with the kernel's arrival time;
    a forged packet is an SRTP error, a STUN datagram goes to `handle` with its address."""
    loop = asyncio.get_running_loop()
    reader = rtc.BatchReader.of(loop, 0.02)
    assert reader is not None
    await asyncio.sleep(0.05)
    key = os.urandom(30)
    policy = pylibsrtp.Policy
    tx = pylibsrtp.Session(policy(key=key, ssrc_type=policy.SSRC_ANY_OUTBOUND))
    rx = pylibsrtp.Session(policy(key=key, ssrc_type=policy.SSRC_ANY_INBOUND))
    transport, protocol = await loop.create_datagram_endpoint(
        _Protocol, local_addr=("127.0.0.1", 0)
    )
    stats = NativeListenerStats()
    direct = rtc.DirectRtp([])
    delivered: list[int] = []
    handled: list[tuple[bytes, object]] = []

    def deliver(p: bytes, arrival_ns: int) -> None:
        direct.delivered += 1
        delivered.append(arrival_ns)
        stats.on_rtp(0, p, arrival_ns)

    def handle(data: bytes, addr: object, arrival_ns: int) -> bool:
        handled.append((data, addr))
        return False

    assert reader.adopt(transport, protocol, direct, rx, handle, deliver, stats.native_row)
    addr = transport.get_extra_info("sockname")
    stun = b"\x00\x01\x00\x00\x21\x12\xa4\x42" + os.urandom(12)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as out:
        out.bind(("127.0.0.1", 0))
        sent_ns = time.monotonic_ns()
        for seq in range(40):
            out.sendto(tx.protect(packet(99, seq, 1, seq, time.monotonic_ns())), addr)
            if seq == 0:
                await asyncio.sleep(0.05)  # read alone: the stream's first packet
        bad = bytearray(tx.protect(packet(99, 40, 1, 40, sent_ns)))
        bad[-1] ^= 0xFF
        out.sendto(bytes(bad), addr)
        out.sendto(stun, addr)
        source = out.getsockname()
        await asyncio.sleep(0.1)
    try:
        assert len(delivered) == 1 and direct.rtp == 40 and stats.totals() == (40, 0)
        assert direct.srtp_errors == 1 and handled == [(stun, source)]
        lat, heard = stats.drain()
        assert heard == [1] and len(lat) == 40
        assert all(0 <= v < 0.01 for v in lat)  # kernel arrival times, not the tick's
    finally:
        transport.close()
    await asyncio.sleep(0)
    assert direct.rtp == 40 and not direct.native  # the count outlives the socket


_COMPILE_IN_A_PROCESS = """
import asyncio
from spacesim.rtc import batch, native_rx

async def main() -> None:
    assert batch.BatchReader.of(asyncio.get_running_loop(), 0.02) is not None

asyncio.run(main())
print(sum(native_rx.account_fn().stats.cache_hits.values()))
"""


def test_a_second_process_loads_the_account_kernel_from_numbas_cache(tmp_path: Path) -> None:
    """Each swarm process reads through the batch reader: the cached kernel must be
    found by the next process, not compiled again (~3 s a process here) with one more
    entry added to the cache's index for good."""
    import subprocess
    import sys

    env = os.environ | {"NUMBA_CACHE_DIR": str(tmp_path)}
    hits = [
        subprocess.run(
            [sys.executable, "-c", _COMPILE_IN_A_PROCESS],
            env=env, capture_output=True, text=True, check=True, timeout=120,
        ).stdout.split()[-1]
        for _ in range(2)
    ]  # fmt: skip
    assert hits == ["0", "1"]
    assert len(list(tmp_path.rglob("*account*.nbc"))) == 1
