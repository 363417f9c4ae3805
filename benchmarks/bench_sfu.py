"""Server CPU per forwarded packet: one speaker to N listeners through spacesim.server.media.

The server (a ``MediaRoom``) runs in this process; the speaker and the listeners run in
worker processes (aiortc clients with their decoders stopped) on 127.0.0.1. The speaker
sends 20 ms packets whose payload carries its send time (``time.monotonic_ns``, the same
clock in every process); listeners record delivery and latency. Prints the server's own
CPU time per forwarded packet over a steady window, the delivery ratio and the latency
p50 / p99. Run: ``python benchmarks/bench_sfu.py [--listeners 50] [--workers 2] [--seconds 5]``.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import multiprocessing as mp
import os
import resource
import statistics
import struct
import time
from fractions import Fraction
from multiprocessing.connection import Connection
from typing import Any

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

SLOTS = 3
FILL = bytes(range(64))  # payload padding: ~80-byte packets, like 32 kbit/s Opus


def _quiet() -> None:
    for name in ("aioice", "aiortc"):
        logging.getLogger(name).setLevel(logging.WARNING)


def _raise_fd_limit() -> None:
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 20000 if hard == resource.RLIM_INFINITY else min(hard, 20000)
    resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


async def _client_main(conn: Connection, names: list[str], speak: bool, seconds: float) -> None:
    import av
    from aiortc import MediaStreamTrack, RTCSessionDescription
    from aiortc.mediastreams import MediaStreamError

    from spacesim.server import rtc

    rtc.use_host_addresses(["127.0.0.1"])
    loop = asyncio.get_running_loop()

    class Stamped(MediaStreamTrack):
        kind = "audio"

        def __init__(self) -> None:
            super().__init__()
            self.i = 0
            self.start = time.monotonic()

        async def recv(self) -> Any:
            self.i += 1
            if self.i * 0.02 > seconds:
                raise MediaStreamError
            await asyncio.sleep(max(0.0, self.start + self.i * 0.02 - time.monotonic()))
            packet = av.Packet(b"\xfc" + struct.pack("!Q", time.monotonic_ns()) + FILL)
            packet.pts = self.i * 960
            packet.time_base = Fraction(1, 48000)
            return packet

    received = 0
    latencies: list[float] = []

    async def on_packet(p: rtc.RtpPacket, arrival_ms: int) -> None:
        nonlocal received
        received += 1
        (sent,) = struct.unpack_from("!Q", p.payload, 1)
        latencies.append((time.monotonic_ns() - sent) / 1e6)

    pcs = []
    offers = []
    receivers = []
    for _ in names:
        pc = rtc.new_peer_connection()
        if speak:
            pc.addTransceiver(Stamped(), direction="sendonly")
        ts = [pc.addTransceiver("audio", direction="recvonly") for _ in range(SLOTS)]
        await pc.setLocalDescription(await pc.createOffer())
        pcs.append(pc)
        receivers.append(ts)
        offers.append(pc.localDescription.sdp)
    conn.send(offers)
    answers = await loop.run_in_executor(None, conn.recv)
    for pc, ts, answer in zip(pcs, receivers, answers, strict=True):
        await pc.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))
        for t in ts:
            rtc.tap_rtp(t.receiver, on_packet)
    await loop.run_in_executor(None, conn.recv)  # "stop"
    conn.send({"received": received, "latencies": latencies})
    for pc in pcs:
        await pc.close()


def _client(conn: Connection, names: list[str], speak: bool, seconds: float) -> None:
    _quiet()
    _raise_fd_limit()
    asyncio.run(_client_main(conn, names, speak, seconds))


async def _server(listeners: int, workers: int, seconds: float) -> dict[str, float]:
    from spacesim.server import rtc
    from spacesim.server.media import MediaRoom

    rtc.use_host_addresses(["127.0.0.1"])
    loop = asyncio.get_running_loop()
    room = MediaRoom(lambda p: p == "speaker", slots=SLOTS)
    ctx = mp.get_context("spawn")
    groups = [[f"l{i}" for i in range(w, listeners, workers)] for w in range(workers)]
    total = 1.0 + seconds + 1.0  # warm-up, window, tail
    procs = []
    conns = []
    for names, speak in [*((g, False) for g in groups), (["speaker"], True)]:
        parent, child = ctx.Pipe()
        proc = ctx.Process(target=_client, args=(child, names, speak, total + 3.0))
        proc.start()
        procs.append(proc)
        conns.append((parent, names))
    for parent, names in conns:
        offers = await loop.run_in_executor(None, parent.recv)
        answers = [await room.connect(n, o) for n, o in zip(names, offers, strict=True)]
        parent.send(answers)
    deadline = time.monotonic() + 60
    while room.stats()["listening"] < listeners + 1:
        assert time.monotonic() < deadline, f"only {room.stats()} connected"
        await asyncio.sleep(0.05)
    while room.stats()["received"] < 50:  # speaker running for ~1 s
        await asyncio.sleep(0.05)
    cpu0, fwd0, t0 = time.process_time(), room.stats()["forwarded"], time.monotonic()
    await asyncio.sleep(seconds)
    cpu1, fwd1, t1 = time.process_time(), room.stats()["forwarded"], time.monotonic()
    await asyncio.sleep(0.5)
    stats = room.stats()
    received = 0
    latencies: list[float] = []
    for parent, _ in conns:
        parent.send("stop")
    for parent, names in conns:
        result = await loop.run_in_executor(None, parent.recv)
        if names != ["speaker"]:
            received += result["received"]
            latencies += result["latencies"]
    await room.close_all()
    for proc in procs:
        proc.join(10)
    latencies.sort()
    forwarded = fwd1 - fwd0
    return {
        "us_per_packet": (cpu1 - cpu0) / max(1, forwarded) * 1e6,
        "forward_rate": forwarded / (t1 - t0),
        "delivery": received / max(1, stats["forwarded"]),
        "p50": statistics.median(latencies) if latencies else float("nan"),
        "p99": latencies[int(0.99 * (len(latencies) - 1))] if latencies else float("nan"),
        "cpu_share": (cpu1 - cpu0) / (t1 - t0),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--listeners", type=int, default=50)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--seconds", type=float, default=5.0)
    args = ap.parse_args()
    _quiet()
    _raise_fd_limit()
    r = asyncio.run(_server(args.listeners, args.workers, args.seconds))
    print(
        f"1 speaker -> {args.listeners} listeners: {r['forward_rate']:.0f} forwarded packets/s, "
        f"server CPU {r['cpu_share'] * 100:.0f} % of a core"
    )
    print(f"FIGURE sfu_us_per_packet={r['us_per_packet']:.1f} us")
    print(f"FIGURE sfu_delivery_ratio={r['delivery']:.4f}")
    print(f"FIGURE sfu_latency_p50={r['p50']:.2f} ms")
    print(f"FIGURE sfu_latency_p99={r['p99']:.2f} ms")


if __name__ == "__main__":
    main()
