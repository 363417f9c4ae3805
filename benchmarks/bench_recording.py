"""Extra server CPU per recorded packet: recording on vs off, in the same run.

What runs: the media plane's real per-packet path (`MediaRoom._forward`: gate, slot,
and -- when the space records -- the append to its `Track` buffer) for ``--spaces``
spaces with one speaker each, fed real 20 ms Opus packets (libopus, a speech-band tone)
in RTP packets at a simulated 50 packets/s per speaker, and -- recording on -- the
real `Recordings` manager: its writer thread lays each second's packets out on the
timeline and writes them as Ogg pages to files in a temporary directory, once per
simulated second per space, exactly as the server's flush loop does.

Why not through real WebRTC clients: the forwarding path costs ~25 us per packet with
several us of run-to-run noise (bench_sfu), more than the few us recording adds, so
the difference would drown. Here there are no listeners, so the forwarding fan-out is
empty in both cases and the difference is the recording's own cost: the append on
the media loop plus the writer thread's page building, CRCs and file writes. CPU is
``time.process_time()`` (user + sys of every thread of this process), so the writer
thread and the kernel's write() work count.

Per run, off and on alternate (``--runs`` pairs); the figure is the median over runs
of (on - off) CPU / packets recorded. ``off`` is printed as the baseline.

Run: ``python benchmarks/bench_recording.py [--spaces 20] [--seconds 30] [--runs 5]``.
"""

from __future__ import annotations

import argparse
import asyncio
import fractions
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import av
import numpy as np

from spacesim import rtc
from spacesim.server.media import MediaRoom, _Peer
from spacesim.server.recording import Recordings
from spacesim.server.store_memory import MemoryStore


def opus_packets(n: int = 500) -> list[bytes]:
    """Real Opus packets (20 ms, 32 kb/s) of a tone gliding through the speech band."""
    ctx: Any = av.CodecContext.create("libopus", "w")
    ctx.sample_rate = 48000
    ctx.layout = "mono"
    ctx.format = "s16"
    ctx.bit_rate = 32000
    out: list[bytes] = []
    phase = 0.0
    t = np.arange(960)
    for i in range(n):
        f = 200 + 600 * (i % 100) / 100
        x = (np.sin(phase + 2 * np.pi * f * t / 48000) * 8000).astype(np.int16)
        phase = (phase + 2 * np.pi * f * 960 / 48000) % (2 * np.pi)
        frame = av.AudioFrame.from_ndarray(x.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = 48000
        frame.pts = i * 960
        frame.time_base = fractions.Fraction(1, 48000)
        out += [bytes(p) for p in ctx.encode(frame)]
    return out


async def one_run(
    payloads: list[bytes], spaces: int, seconds: int, record: bool
) -> tuple[float, float]:
    """CPU seconds for `spaces` x `seconds` x 50 packets through the media path, and the
    writer thread's share of it."""
    with tempfile.TemporaryDirectory() as tmp:
        store = MemoryStore()
        store.add_user("h", "h", 0.0)
        media: dict[str, Any] = {}
        recs = Recordings(Path(tmp), store, media)
        rooms = []
        for k in range(spaces):
            sid = f"s-{k}"
            room = MediaRoom(lambda _: True, slots=3)
            media[sid] = room
            store.create_space(sid, host="h", title="", status="live", who_may_speak="everyone")
            if record:
                store.set_recording(sid, True)
                recs._begin(sid)
            rooms.append((room, _Peer(f"spk{k}", None)))  # type: ignore[arg-type]
        (Path(tmp) / "clips").mkdir()
        packets = [
            rtc.RtpPacket(payload_type=111, sequence_number=i & 0xFFFF, timestamp=i * 960)
            for i in range(len(payloads))
        ]
        for p, payload in zip(packets, payloads, strict=True):
            p.payload = payload
        start = time.process_time()
        n = 0
        t_ms = 1_000_000
        for _second in range(seconds):
            for _ in range(50):
                for room, peer in rooms:
                    await room._forward(peer, packets[n % len(packets)], t_ms)
                n += 1
                t_ms += 20
            if record:
                await recs.flush()  # the flush loop's once-a-second write
        tracks = list(recs.tracks.values())
        if record:
            await recs.close()
        cpu = time.process_time() - start
        writer = sum(t.cpu_s for t in tracks)
        if record:
            assert sum(r.recorder is None for r, _ in rooms) == spaces  # stopped by close
            files = list(Path(tmp).glob("*.opus"))
            assert len(files) == spaces and all(f.stat().st_size > 1000 for f in files)
        return cpu, writer


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--spaces", type=int, default=20)
    ap.add_argument("--seconds", type=int, default=30, help="simulated seconds per run")
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    payloads = opus_packets()
    n = args.spaces * args.seconds * 50
    off: list[float] = []
    on: list[float] = []
    extra: list[float] = []
    thread: list[float] = []
    asyncio.run(one_run(payloads, 2, 2, True))  # warm-up (imports, first files)
    for _ in range(args.runs):
        a, _ = asyncio.run(one_run(payloads, args.spaces, args.seconds, False))
        b, w = asyncio.run(one_run(payloads, args.spaces, args.seconds, True))
        thread.append(w / n * 1e6)
        off.append(a / n * 1e6)
        on.append(b / n * 1e6)
        extra.append((b - a) / n * 1e6)
    mean_bytes = statistics.mean(len(p) for p in payloads)
    print(
        f"{n} packets a run ({args.spaces} spaces x {args.seconds} s x 50/s), "
        f"{mean_bytes:.0f} B of Opus each, {args.runs} runs"
    )
    print(f"  recording off (baseline): {statistics.median(off):.2f} us/packet  {off}")
    print(f"  recording on:             {statistics.median(on):.2f} us/packet")
    print(f"  extra per recorded packet: runs {[round(x, 2) for x in extra]}")
    print(
        f"  of which the writer thread (timeline, pages, CRC, write): "
        f"{statistics.median(thread):.2f} us/packet; the rest is the media loop's append "
        f"and the flush scheduling"
    )
    print(f"FIGURE recording_us_per_packet={statistics.median(extra):.2f} us")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
