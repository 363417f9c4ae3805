"""spacesim's server vs Janus VideoRoom: the same scenario through the swarm's target drivers.

The scenario: one space, one speaker (the host) sending marked Opus packets every 20 ms
without pauses, N lite listeners (`spacesim.client.listener.ListenerStats`: socket-level
receive, no decoding) -- N = 50, 100, 200 by default. Each case runs through the
swarm's driver for its target URL (`spacesim.load.targets.client_factory`): spacesim's
protocol for ``http://`` (a ``spacesim serve`` on 127.0.0.1), the Janus driver for
``janus://`` (Janus 1.1.2 VideoRoom in a network namespace, `spacesim janus up`'s
`spacesim.load.janus_server`; Janus skips loopback candidates, so the swarm reaches it
over a veth pair). Every packet stays on this machine.

Cores: both servers (every thread: ``/proc/PID/task``) are pinned to CPU 0 with the
case's speaker process (50 packets/s), the case's listener process (one asyncio loop)
to CPU 1, so the listeners do not compete with the server, and a busy listener loop
cannot delay the speaker's packets (on this 2-core machine other work may still share
the cores; the listeners' own CPU is printed per case). All of them run at nice
`NICE` so that other work on a shared machine delays their packets less.

Per case, after every listener is connected and audio has flowed for ``WARMUP`` s, the
swarm takes ``--windows`` windows of ``--window`` s. Per window:

* server CPU: user + system time of the server process (``/proc/PID/stat``, all its
  threads) -- read the same way for both, so the figure is comparable;
* packets: what the listeners received (``ListenerStats.totals``) -- the same count for
  both targets (each listener hears one stream; neither server forwards the speaker's
  packets back to it). µs per packet = CPU / packets; the case's figure is the median
  over windows;
* delivery = packets received / (N x packets the speaker sent), over all windows;
* latency: every marked packet's arrival (kernel receive time) minus its send mark, on
  the monotonic clock all processes share, pooled over the listeners.

Each (target, N) runs ``--reps`` times, the targets alternating; the figures are the
medians over repetitions (CPU per packet) and of the repetitions' percentiles (latency).
``FIGURE janus_us_per_packet`` and ``FIGURE spacesim_us_per_packet`` are at the
largest N; ``FIGURE spacesim_vs_janus`` is spacesim's µs per packet over Janus's there
(> 1: spacesim costs more per packet), the baseline (Janus) measured in the same run.

Measured on the final main of 2026-12-07 (c8596d7: spacesim's direct send path), the
machine otherwise idle, defaults (``--reps 3 --windows 4 --window 2``), medians of 3:

    N    target    us/packet  cores  delivery  p50 ms  p99 ms
    50   spacesim       30.0   0.08    1.0000    1.19    1.88
    50   janus          53.0   0.13    1.0000    1.73    3.09    ratio 0.57
    100  spacesim       22.4   0.11    1.0000    1.47    2.46
    100  janus          49.5   0.25    0.9975    2.85    5.41    ratio 0.45
    200  spacesim       22.6   0.23    1.0025    2.31    4.12
    200  janus          43.7   0.44    0.9996    4.95   10.97    ratio 0.52

    FIGURE janus_us_per_packet=43.7 us / spacesim_us_per_packet=22.6 us / ratio 0.52

Before the direct send path (the same day, the machine shared with other work, load
averages 4-18), medians of 3: spacesim 44.0 / 39.3 / 29.6 us and Janus 49.7 / 46.4 /
43.0 us at N = 50 / 100 / 200 (ratio 0.69 at 200).
An earlier run of the earlier path without the raised priority gave 37.1 / 28.5 us
(ratio 0.77) at N = 200: the per-packet CPU of both is stable to ~15 %; Janus's varied
more between repetitions (36-53 us at N = 200) than spacesim's. Janus's figure is
within FACTS.md's ~51 us (its default VideoRoom configuration, one thread per handle).
On a shared machine latency at N = 200 is not a property of either server: with other
work on both cores, packets queue for CPU (delivery above 1 in a window is such a queue
draining). Janus's joins are slower through the driver
(~24 s for 200 listeners vs ~8 s): each takes a few HTTP round trips whose answers
come on the shared long poll.

Run: ``python benchmarks/bench_targets.py [--listeners 50 100 200] [--reps 3]
[--windows 4] [--window 2]`` as root (network namespace, veth pair).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import math
import multiprocessing as mp
import os
import resource
import statistics
import sys
import tempfile
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

SERVER_CPU = 0
SWARM_CPU = 1
WARMUP = 1.5  # s of audio before the first window
CONNECT_AT_ONCE = 10  # listeners connecting concurrently
CASE_TIMEOUT = 240.0
#: Niceness of the servers and the swarm: on a machine others share (load averages of
#: 10-20 on 2 cores were seen), their runnable processes otherwise delay every packet
#: by scheduling alone. Priority changes when CPU is given, not how much a packet costs.
NICE = -10
_CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, all threads (proc(5) fields 14 and 15)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK


def pin(pid: int, cpu: int) -> None:
    """Pin every thread of `pid` to `cpu` at `NICE` (new threads inherit both)."""
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(ProcessLookupError, PermissionError):
            if cpu < (os.cpu_count() or 1):
                os.sched_setaffinity(int(task.name), {cpu})
            os.setpriority(os.PRIO_PROCESS, int(task.name), NICE)


def nearest_rank(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return float(s[min(len(s) - 1, int(q * len(s)))]) if s else math.nan


# ------------------------------------------------------------------ one case (child processes)


def _quiet_logs() -> None:
    for name in ("aioice", "aiortc", "spacesim"):
        logging.getLogger(name).setLevel(logging.ERROR)


async def _speaker_main(url: str, conn: Connection, sent: Any) -> None:
    """Create the space, publish into it; `sent` (shared) counts the packets sent."""
    import aiohttp

    from spacesim import rtc
    from spacesim.client.speaker import SpeakerTrack, tone_packets
    from spacesim.load.targets import client_factory

    _quiet_logs()
    rtc.use_host_addresses(["127.0.0.1"])  # the Janus driver replaces it with the veth's
    async with aiohttp.ClientSession() as http:
        factory = client_factory(url, http)
        host = factory("host")
        space = await host.create_space("bench", "everyone")
        track = SpeakerTrack(tone_packets(440.0, 2.0), sender_id=1)
        pub = await host.connect_audio(space, lambda *a: None, publish=track)
        conn.send(space)
        loop = asyncio.get_running_loop()
        done = asyncio.Event()
        loop.add_reader(conn.fileno(), done.set)  # any message: stop
        while not done.is_set():
            sent.value = track.sent
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(done.wait(), 0.02)
        loop.remove_reader(conn.fileno())
        with contextlib.suppress(Exception):
            await pub.close()
        with contextlib.suppress(Exception):
            await host.end_space(space)
        close = getattr(factory, "close", None)
        if close is not None:
            await close()


def _speaker(conn: Connection, url: str, sent: Any) -> None:
    # With the server: it is light (50 packets/s), and off the listeners' core.
    pin(os.getpid(), SERVER_CPU)
    try:
        asyncio.run(_speaker_main(url, conn, sent))
    except BaseException as exc:
        conn.send(("error", repr(exc)))


async def _listeners_main(
    url: str, space: str, n: int, server_pid: int, sent: Any, windows: int, window: float
) -> dict[str, Any]:
    import aiohttp

    from spacesim import rtc
    from spacesim.client.listener import ListenerStats
    from spacesim.load.targets import client_factory

    _quiet_logs()
    rtc.use_host_addresses(["127.0.0.1"])
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
        factory = client_factory(url, http)
        stats = [ListenerStats() for _ in range(n)]
        links: list[Any] = []
        joined: list[ListenerStats] = []
        failed: list[str] = []
        t = time.monotonic()
        for i in range(0, n, CONNECT_AT_ONCE):
            batch = range(i, min(n, i + CONNECT_AT_ONCE))
            got = await asyncio.gather(
                *(factory(f"l{k}").connect_audio(space, stats[k].on_rtp,
                                                 read_every=ListenerStats.read_every)
                  for k in batch),
                return_exceptions=True,
            )  # fmt: skip
            for k, link in zip(batch, got, strict=True):
                if isinstance(link, BaseException):
                    failed.append(repr(link))
                else:
                    links.append(link)
                    joined.append(stats[k])
        if len(failed) > n // 10:
            raise RuntimeError(f"{len(failed)} of {n} listeners failed to join: {failed[:3]}")
        stats, n = joined, len(joined)  # a few failed joins: measure the others
        connect_s = time.monotonic() - t
        await asyncio.sleep(WARMUP)
        per_window: list[dict[str, float]] = []
        latencies: list[float] = []
        got_all, sent_all = 0, 0
        me0 = cpu_seconds(os.getpid())
        for _ in range(windows):
            for s in stats:
                for snd in s.senders.values():
                    snd.latencies = []
            cpu0, sent0 = cpu_seconds(server_pid), sent.value
            got0 = sum(s.totals()[0] for s in stats)
            await asyncio.sleep(window)
            cpu1, sent1 = cpu_seconds(server_pid), sent.value
            got1 = sum(s.totals()[0] for s in stats)
            for s in stats:
                for snd in s.senders.values():
                    latencies += snd.latencies
            got, n_sent = got1 - got0, sent1 - sent0
            got_all, sent_all = got_all + got, sent_all + n_sent
            per_window.append({
                "cpu": cpu1 - cpu0,
                "us_per_packet": (cpu1 - cpu0) / got * 1e6 if got else math.nan,
            })  # fmt: skip
        swarm_cores = (cpu_seconds(os.getpid()) - me0) / (windows * window)
        silent = sum(1 for s in stats if not s.totals()[0])
        for link in links:
            with contextlib.suppress(Exception):
                await link.close()
        close = getattr(factory, "close", None)
        if close is not None:
            await close()
    return {
        "us_per_packet": statistics.median(w["us_per_packet"] for w in per_window),
        "delivery": got_all / (n * sent_all) if sent_all else math.nan,
        "p50_ms": nearest_rank(latencies, 0.5) * 1e3,
        "p99_ms": nearest_rank(latencies, 0.99) * 1e3,
        "server_cores": statistics.median(w["cpu"] for w in per_window) / window,
        "swarm_cores": swarm_cores,
        "connect_s": connect_s,
        "silent_listeners": silent,
        "failed_joins": len(failed),
    }


def _listeners(conn: Connection, *args: Any) -> None:
    pin(os.getpid(), SWARM_CPU)
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 8192), hard))
    try:
        conn.send(("ok", asyncio.run(_listeners_main(*args))))
    except BaseException as exc:
        conn.send(("error", repr(exc)))
    conn.close()


def run_case(url: str, n: int, server_pid: int, windows: int, window: float) -> dict[str, Any]:
    """One speaker process, one listener process of `n` listeners; the listeners' result."""
    ctx = mp.get_context("fork")
    sent = ctx.Value("q", 0, lock=False)
    sp_parent, sp_child = ctx.Pipe()
    speaker = ctx.Process(target=_speaker, args=(sp_child, url, sent))
    speaker.start()
    procs = [speaker]
    try:
        if not sp_parent.poll(60):
            raise TimeoutError(f"{url}: the speaker did not publish within 60 s")
        space = sp_parent.recv()
        if isinstance(space, tuple):
            raise RuntimeError(f"{url} speaker: {space[1]}")
        parent, child = ctx.Pipe(duplex=False)
        args = (child, url, space, n, server_pid, sent, windows, window)
        listeners = ctx.Process(target=_listeners, args=args)
        listeners.start()
        procs.append(listeners)
        child.close()
        if not parent.poll(CASE_TIMEOUT):
            raise TimeoutError(f"{url} N={n}: no result within {CASE_TIMEOUT:.0f} s")
        status, result = parent.recv()
    finally:
        with contextlib.suppress(OSError):
            sp_parent.send("stop")
        for proc in reversed(procs):
            proc.join(15)
            if proc.is_alive():
                proc.kill()
                proc.join()
    if status != "ok":
        raise RuntimeError(f"{url} N={n}: {result}")
    return dict(result)


# ------------------------------------------------------------------ servers and the report


@contextlib.contextmanager
def spacesim_server(workdir: Path) -> Any:
    from spacesim.server import launch

    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    with open(workdir / "server.log", "wb") as log:
        proc, url = launch.start(workdir / "server.db", log=log, env=env)
        try:
            launch.wait_up(proc, url, 30.0)
            pin(proc.pid, SERVER_CPU)
            yield url, proc.pid
        finally:
            launch.stop(proc)


@contextlib.contextmanager
def janus_server() -> Any:
    from spacesim.load.janus_server import janus_in_netns

    with janus_in_netns("spacesim-bench", index=201) as inst:
        pin(inst.pid, SERVER_CPU)
        yield inst.url, inst.pid


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--listeners", type=int, nargs="+", default=[50, 100, 200])
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--windows", type=int, default=4)
    p.add_argument("--window", type=float, default=2.0)
    args = p.parse_args()
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    results: dict[tuple[str, int], list[dict[str, Any]]] = {}
    with (
        tempfile.TemporaryDirectory(prefix="bench-targets-") as tmp,
        contextlib.ExitStack() as stack,
    ):
        servers = {
            "spacesim": stack.enter_context(spacesim_server(Path(tmp))),
            "janus": stack.enter_context(janus_server()),
        }
        for rep in range(args.reps):
            for n in args.listeners:
                order = ["spacesim", "janus"] if rep % 2 == 0 else ["janus", "spacesim"]
                for target in order:
                    url, pid = servers[target]
                    r = run_case(url, n, pid, args.windows, args.window)
                    results.setdefault((target, n), []).append(r)
                    print(
                        f"rep {rep} {target:8s} N={n:3d}: {r['us_per_packet']:6.1f} us/pkt, "
                        f"server {r['server_cores']:.2f} cores, delivery {r['delivery']:.4f}, "
                        f"p50 {r['p50_ms']:.2f} ms p99 {r['p99_ms']:.2f} ms, "
                        f"swarm {r['swarm_cores']:.2f} cores, connect {r['connect_s']:.1f} s, "
                        f"silent {r['silent_listeners']}, failed joins {r['failed_joins']}",
                        flush=True,
                    )

    def med(target: str, n: int, key: str) -> float:
        return statistics.median(r[key] for r in results[(target, n)])

    print()
    print(f"{'N':>4} {'target':9} {'us/packet':>10} {'cores':>6} {'delivery':>9} "
          f"{'p50 ms':>7} {'p99 ms':>7}")  # fmt: skip
    for n in args.listeners:
        for target in ("spacesim", "janus"):
            print(
                f"{n:4d} {target:9} {med(target, n, 'us_per_packet'):10.1f} "
                f"{med(target, n, 'server_cores'):6.2f} {med(target, n, 'delivery'):9.4f} "
                f"{med(target, n, 'p50_ms'):7.2f} {med(target, n, 'p99_ms'):7.2f}"
            )
        ratio = med("spacesim", n, "us_per_packet") / med("janus", n, "us_per_packet")
        print(f"{n:4d} {'ratio':9} {ratio:10.2f}  (spacesim / janus CPU per packet)")
    top = max(args.listeners)
    janus_us = med("janus", top, "us_per_packet")
    spacesim_us = med("spacesim", top, "us_per_packet")
    print(f"FIGURE janus_us_per_packet={janus_us:.1f} us")
    print(f"FIGURE spacesim_us_per_packet={spacesim_us:.1f} us")
    print(f"FIGURE spacesim_vs_janus={spacesim_us / janus_us:.2f} ratio")


if __name__ == "__main__":
    sys.exit(main())
