"""Client CPU per received packet: lite, probe and default aiortc listeners.

What runs (all on 127.0.0.1, every process with a hard deadline):

* the reference server, ``spacesim serve`` as a subprocess (temporary database);
* one speaker process: the host of a new space, publishing a packaged speech clip
  (`SpeakerTrack`, marked pre-encoded Opus, 50 packets/s) via `connect_audio`;
* per round (``--runs``), one worker process per listener kind, run one after the
  other, each holding N listeners of that kind:

  - ``lite``: the swarm's lite listener, `connect_audio` + `lite_stats()`'s ``on_rtp``
    (`NativeListenerStats`: RTP taken at the socket by
    `spacesim.rtc.receive_rtp_direct`, which once audio flows hands the socket to the
    `spacesim.rtc.BatchReader`: every ``read_every`` (100 ms) one call of the native
    loop, `spacesim.rtc.native_rx`: epoll, ``recvmmsg`` with the kernel's receive times,
    SRTP unprotected in place by libsrtp, the packet counted in the listener's row; no
    Python per packet, no aiortc receive path, no decoding);
  - ``callback``: the same-run baseline, a lite listener read the way the direct path
    reads without the batch reader: Python `ListenerStats.on_rtp` called from each
    datagram's socket callback (asyncio's ``_read_ready``), the clock read there;
  - ``probe``: `connect_audio` + `ProbeStats.on_rtp` (the same path + aiortc's jitter
    buffer, a libopus decode of every released frame and its RMS);
  - ``default``: the baseline, a plain aiortc `RTCPeerConnection` with ``slots``
    recvonly transceivers joined with `RoomClient.join`, one task per track awaiting
    ``track.recv()`` (aiortc's receive path, jitter buffer and decoder thread run).

Inside a worker, after all N are connected and ``--warmup`` s of audio, it takes the
process's CPU time (``os.times()`` user + sys, all threads, so aiortc's decoder threads
count; never wall-clock, since other work shares the machine) and its received-packet
count, waits ``--window`` s and takes both again: us/packet = CPU delta / packets
delta. Packets are marked RTP packets counted by `ListenerStats` (lite, probe) or
decoded frames returned by ``recv()`` (default; one 20 ms frame per packet). The
figure includes everything the process does per listener in that window -- RTCP,
ICE consent checks, asyncio -- not only the callback. Each kind's figure is the
median over the rounds; the ratio to the default listener is taken per round (the
kinds of one round ran back to back) and its median printed.
listeners per core = 1e6 / (50 x us/packet): one speaker heard, 50 packets/s each.

``--profile`` additionally runs cProfile over each listener worker's window and prints
the top functions (profiling inflates the cost; the figures of that run are not
representative).

Recorded 2026-12-07 (2 cores shared with three other helpers' work, load average ~3),
``--lite 300 --callback 300 --probe 0 --default 0 --runs 3``: lite **4.8 us/packet**
(4.4-5.8; 4,202 listeners per core), callback 20.8 us (17.6-21.6), **3.75x** cheaper
per round (3.7-4.7x). The batch reader as it was before the native loop (856aea6:
Python per datagram, 20 ms ticks), same command, same hour: 13.7 us (12.6-15.1), so
2.9x. Of the change, reading every 100 ms instead of 20 ms (more datagrams per
``recvmmsg``, fewer wake-ups) is worth ~2x of it: 11.3, 5.7 and 4.6 us at 20, 50 and
100 ms in one series. Where the rest goes (``perf``, 20 ms reads): the kernel ~33 %,
libsrtp (AES-GCM with an OpenSSL context set up per packet, stream lookup) ~31 %, the
interpreter ~25 % (aioice's consent checks, the loop, per-listener timers), the
compiled loop ~4 %.

Recorded 2026-12-06 (2 cores, quiet machine), defaults, median of 3 rounds, four
runs: lite 17.5-18.5 us/packet (1,081-1,140 per core, 21.5-24.3x cheaper than the
default listener), probe 89-96 us (208-224 per core, 4.1-4.7x; 70 us when run alone),
default 390-440 us (46-51 per core). Lite alone (``--probe 0 --default 0``): 17.0 us
(1,174 per core); with ``--lite 400``: 15.3 us (1,307 per core), as the
batch reader's fixed costs spread. Inside the lite worker (instrumented separately),
per packet: epoll 0.8, ``recvmsg_into`` 3.0, SRTP 3.0, `ListenerStats` 4.0, STUN and
RTCP 1.5, outside the reader 2 us. History of the lite figure: 56 us through aiortc's
receive path with ``tap_rtp``; 24.5-29 us with the per-datagram socket callback
(2026-11-25); 20 us once the reader batched reads; 17-18.5 us with SRTP unprotected in
place.

Run: ``OPENBLAS_NUM_THREADS=1 python benchmarks/bench_swarm.py [--lite 100]
[--callback 100] [--probe 40] [--default 10] [--runs 3] [--warmup 3] [--window 8] [--profile]``.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import multiprocessing as mp
import os
import statistics
import sys
import tempfile
import threading
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from spacesim.server import launch

PACKETS_PER_S = 50
SLOTS = 3
CONNECT_TIMEOUT = 20.0
KINDS = ("lite", "callback", "probe", "default")


def _quiet() -> None:
    for name in ("aioice", "aiortc"):
        logging.getLogger(name).setLevel(logging.WARNING)


def _watchdog(seconds: float) -> None:
    t = threading.Timer(seconds, os._exit, args=(3,))
    t.daemon = True
    t.start()


async def _wait_connected(pcs: list[Any], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while any(pc.connectionState != "connected" for pc in pcs):
        bad = [pc.connectionState for pc in pcs if pc.connectionState in ("failed", "closed")]
        if bad:
            raise ConnectionError(f"{len(bad)} connections {bad[0]}")
        if time.monotonic() > deadline:
            n = sum(pc.connectionState == "connected" for pc in pcs)
            raise TimeoutError(f"only {n}/{len(pcs)} connected after {timeout} s")
        await asyncio.sleep(0.02)


# ---------------------------------------------------------------------- speaker


async def _speaker_main(conn: Connection, base: str) -> None:
    import aiohttp

    from spacesim import rtc
    from spacesim.client.session import RoomClient, connect_audio
    from spacesim.client.speaker import SpeakerTrack, clip_names, load_clip

    rtc.use_host_addresses(["127.0.0.1"])

    def ignore(slot: int, packet: bytes, arrival_ns: int) -> None:
        return None

    loop = asyncio.get_running_loop()
    async with aiohttp.ClientSession() as http:
        host = RoomClient(base, "speaker", http)
        space = await host.create_space("bench_swarm")
        clip = clip_names()[0]
        track = SpeakerTrack(load_clip(clip), sender_id=1)
        link = await connect_audio(host, space, ignore, publish=track)
        await _wait_connected([link.pc], CONNECT_TIMEOUT)
        conn.send((space, clip))
        await loop.run_in_executor(None, conn.recv)  # "stop"
        conn.send({"sent": track.sent, "skipped": track.skipped})


def _speaker(conn: Connection, base: str, max_s: float) -> None:
    _watchdog(max_s)
    _quiet()
    asyncio.run(_speaker_main(conn, base))
    os._exit(0)


# ---------------------------------------------------------------------- listeners


async def _worker_main(
    kind: str, n: int, base: str, space: str, warmup: float, window: float, profile: bool
) -> dict[str, Any]:
    import aiohttp
    from aiortc import RTCSessionDescription
    from aiortc.mediastreams import MediaStreamError

    from spacesim import rtc
    from spacesim.client.listener import ListenerStats, lite_stats
    from spacesim.client.probe import ProbeStats
    from spacesim.client.session import RoomClient, connect_audio

    rtc.use_host_addresses(["127.0.0.1"])
    pcs: list[Any] = []
    stats: list[Any] = []
    frames = [0]
    tasks: list[asyncio.Task[None]] = []

    async def consume(track: Any) -> None:
        try:
            while True:
                await track.recv()
                frames[0] += 1
        except MediaStreamError:
            return

    t_connect = time.monotonic()
    async with aiohttp.ClientSession() as http:
        for i in range(n):
            client = RoomClient(base, f"{kind}-{i}", http)
            if kind in ("lite", "callback", "probe"):
                st: Any = {"lite": lite_stats, "callback": ListenerStats, "probe": ProbeStats}[
                    kind
                ]()
                every = None if kind == "callback" else st.read_every
                link = await connect_audio(client, space, st.on_rtp, slots=SLOTS, read_every=every)
                stats.append(st)
                pcs.append(link.pc)
            else:
                pc = rtc.new_peer_connection()

                @pc.on("track")
                def on_track(track: Any) -> None:
                    tasks.append(asyncio.ensure_future(consume(track)))

                for _ in range(SLOTS):
                    pc.addTransceiver("audio", direction="recvonly")
                await pc.setLocalDescription(await pc.createOffer())
                data = await client.join(space, pc.localDescription.sdp)
                answer = RTCSessionDescription(sdp=str(data["sdp"]), type="answer")
                await pc.setRemoteDescription(answer)
                pcs.append(pc)
        await _wait_connected(pcs, CONNECT_TIMEOUT)
        connect_s = time.monotonic() - t_connect

        def received() -> int:
            if kind == "default":
                return frames[0]
            return sum(s.totals()[0] + s.unmarked for s in stats)

        await asyncio.sleep(warmup)
        prof = None
        if profile:
            import cProfile

            prof = cProfile.Profile()
            prof.enable()
        t0, p0, w0 = os.times(), received(), time.monotonic()
        await asyncio.sleep(window)
        t1, p1, w1 = os.times(), received(), time.monotonic()
        c0, c1 = t0.user + t0.system, t1.user + t1.system
        if prof is not None:
            import io
            import pstats

            prof.disable()
            out = io.StringIO()
            pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(18)
            print(f"--- cProfile, {kind} worker window (tottime) ---", file=sys.stderr)
            print(out.getvalue(), file=sys.stderr)
        # Leave properly (DTLS close_notify): otherwise the server keeps forwarding to
        # this worker's dead listeners until their consent expires (~30 s), and the
        # next worker is measured on a busier machine.
        await asyncio.wait_for(
            asyncio.gather(*(pc.close() for pc in pcs), return_exceptions=True), 15
        )

    packets = p1 - p0
    result: dict[str, Any] = {
        "kind": kind,
        "n": n,
        "connect_s": connect_s,
        "cpu_s": c1 - c0,
        "sys_s": t1.system - t0.system,
        "wall_s": w1 - w0,
        "packets": packets,
        "expected": n * PACKETS_PER_S * (w1 - w0),
        "us_per_packet": (c1 - c0) * 1e6 / packets if packets else float("nan"),
        "us_per_listener_s": (c1 - c0) * 1e6 / n / (w1 - w0),
    }
    if stats:
        lat = sorted(x for s in stats for x in s.drain()[0])
        result["latency_p50_ms"] = lat[len(lat) // 2] * 1e3 if lat else float("nan")
        result["lost"] = sum(s.totals()[1] for s in stats)
    if kind == "probe":
        q = [s.quality() for s in stats if isinstance(s, ProbeStats)]
        fr, au, err = (sum(x[k] for x in q) for k in range(3))
        result["audible_fraction"] = au / fr if fr else float("nan")
        result["decode_errors"] = err
    return result


def _worker(conn: Connection, args: tuple[Any, ...], max_s: float) -> None:
    _watchdog(max_s)
    _quiet()
    try:
        conn.send(asyncio.run(_worker_main(*args)))
    except Exception as exc:  # report, do not hang the parent
        conn.send({"error": f"{type(exc).__name__}: {exc}"})
    os._exit(0)


# ---------------------------------------------------------------------- main


def _median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def _line(r: dict[str, Any]) -> str:
    extra = ""
    if "latency_p50_ms" in r:
        extra += f"  latency p50 {r['latency_p50_ms']:.1f} ms, lost {r['lost']}"
    if "audible_fraction" in r:
        extra += f"  audible {r['audible_fraction']:.3f}, decode errors {r['decode_errors']}"
    return (
        f"{r['kind']:8s} N={r['n']:3d}  connect {r['connect_s']:.1f} s  "
        f"cpu {r['cpu_s']:.3f} s (sys {r['sys_s']:.3f}) / {r['wall_s']:.1f} s  "
        f"packets {r['packets']} of ~{r['expected']:.0f}  "
        f"{r['us_per_packet']:.1f} us/packet ({r['us_per_listener_s']:.0f} us/listener/s)"
        f"{extra}"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--lite", type=int, default=100, help="lite listeners (0 = skip)")
    ap.add_argument(
        "--callback", type=int, default=100, help="lite listeners read in the socket callback"
    )
    ap.add_argument("--probe", type=int, default=40, help="probe listeners (0 = skip)")
    ap.add_argument("--default", type=int, default=10, help="default aiortc listeners")
    ap.add_argument("--runs", type=int, default=3, help="rounds; figures are medians")
    ap.add_argument("--warmup", type=float, default=3.0, help="s of audio before the window")
    ap.add_argument("--window", type=float, default=8.0, help="measurement window, s")
    ap.add_argument("--profile", action="store_true", help="cProfile the lite worker")
    args = ap.parse_args()
    t0 = time.monotonic()
    ctx = mp.get_context("spawn")
    per_worker_s = CONNECT_TIMEOUT + args.warmup + args.window + 30
    kinds = [k for k in KINDS if getattr(args, k) > 0]
    runs: list[dict[str, dict[str, Any]]] = []
    with tempfile.TemporaryDirectory() as tmp:
        server, base = launch.start(Path(tmp) / "bench.db")
        launch.wait_up(server, base)
        speaker = None
        try:
            parent, child = ctx.Pipe()
            max_s = (len(kinds) * args.runs + 1) * per_worker_s
            speaker = ctx.Process(target=_speaker, args=(child, base, max_s), daemon=True)
            speaker.start()
            if not parent.poll(CONNECT_TIMEOUT + 10):
                raise RuntimeError("speaker did not connect")
            space, clip = parent.recv()
            print(f"server {base}, space {space}, speaker plays clip {clip!r}")
            for k in range(args.runs):
                results: dict[str, dict[str, Any]] = {}
                for kind in kinds:
                    n = getattr(args, kind)
                    wp, wc = ctx.Pipe()
                    wargs = (kind, n, base, space, args.warmup, args.window, args.profile)
                    w = ctx.Process(target=_worker, args=(wc, wargs, per_worker_s), daemon=True)
                    w.start()
                    if not wp.poll(per_worker_s + 5):
                        w.kill()
                        print(f"run {k + 1} {kind}: no result (timed out)")
                        continue
                    r = wp.recv()
                    w.join(5)
                    if "error" in r:
                        print(f"run {k + 1} {kind}: {r['error']}")
                        continue
                    results[kind] = r
                    print(f"run {k + 1} {_line(r)}", flush=True)
                runs.append(results)
            parent.send("stop")
            if parent.poll(5):
                s = parent.recv()
                print(f"speaker sent {s['sent']} packets, skipped {s['skipped']} slots")
        finally:
            if speaker is not None and speaker.is_alive():
                speaker.kill()
            launch.stop(server)
    us = {kind: _median([r[kind]["us_per_packet"] for r in runs if kind in r]) for kind in kinds}
    n_runs = {kind: sum(kind in r for r in runs) for kind in kinds}
    probes = [r["probe"] for r in runs if "probe" in r]
    if probes:
        from spacesim.client.probe import reference_audible_fraction
        from spacesim.client.speaker import load_clip

        ref = reference_audible_fraction(load_clip(clip))
        audible = _median([p["audible_fraction"] for p in probes])
        print(f"probe audible fraction {audible:.3f} (clip decoded locally: {ref:.3f})")
    print(f"total {time.monotonic() - t0:.0f} s")
    for kind in kinds:
        ratio = ""
        ratios = [
            r["default"]["us_per_packet"] / r[kind]["us_per_packet"]
            for r in runs
            if kind != "default" and kind in r and "default" in r
        ]
        if ratios:
            ratio = f", {_median(ratios):.1f}x cheaper than the default aiortc listener"
        per_core = 1e6 / (PACKETS_PER_S * us[kind])
        print(
            f"{kind:8s} median of {n_runs[kind]}: {us[kind]:.1f} us/packet, "
            f"{per_core:.0f} listeners per core{ratio}"
        )
    speedup = [
        r["callback"]["us_per_packet"] / r["lite"]["us_per_packet"]
        for r in runs
        if "lite" in r and "callback" in r
    ]
    if speedup:
        print(f"lite (native batch reader) vs socket callback, per round: {speedup}")
    for kind in kinds:
        print(f"FIGURE {kind}_us_per_packet={us[kind]:.1f} us")
    if speedup:
        print(f"FIGURE lite_speedup_vs_callback={_median(speedup):.2f} ratio")
    for kind in ("lite", "probe"):
        if kind in kinds:
            print(f"FIGURE {kind}_listeners_per_core={1e6 / (PACKETS_PER_S * us[kind]):.0f}")


if __name__ == "__main__":
    main()
