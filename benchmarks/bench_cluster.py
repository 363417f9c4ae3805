"""Server CPU per delivered packet on one node and on a two-node cluster, and the latency
the cascade adds.

What runs (all on 127.0.0.1, every process with a deadline): per run, both cases are set
up side by side, each with its own database, and then measured in interleaved windows:

* ``single``: one plain `spacesim serve` (no Redis);
* ``cluster``: `spacesim.server.launch.cluster` -- a `redis-server` and two
  `spacesim serve --cluster` nodes sharing one SQLite file.

In each case this process creates one space on the (first) node with one speaker (a
`SpeakerTrack` looping a clip, gated: silent until its case's turn; the host's media
stays on the space's origin node), and two listener processes (this script with
``--listen``) connect ``--listeners`` lite listeners in all, through the first node: in
the cluster each join is placed by power of two choices, so about half land on each
node, and the origin relays each packet once to the other node. Once every listener of
both cases is connected, the cases take turns (single, cluster, cluster, single, ...,
``--rounds`` windows each): the case's speaker speaks, and after ``--warmup`` s (1 s
after the first two rounds) a window of ``--window`` s is measured: every server
process's CPU (user + sys, ns-precise from /proc/PID/task/*/schedstat, so Redis and the
clients are not counted) and, in the listener processes, each listener's packets and
their latency (the speaker's send stamp in the payload to the kernel's arrival time,
one machine's monotonic clock), for the packets the speaker sent in the case's windows.
The silent case's servers' CPU in the same window is its idle CPU (``idle_cores``: all
listeners connected, no audio: RTCP, ICE consent checks, timers, heartbeats).

Why interleaved: measured one after the other (the earlier design: single, then
cluster, 10 s each), the same case's CPU per packet moved by ~15 % from run to run on
this VM, and the clients' CPU moved with it (the host's speed, not the server's code):
the single node alone gave 11.3, 13.7, 12.3, 13.4, 11.6, 13.5 us in six runs and the
ratio 1.04-1.38 (1.38, 1.16, 1.04; 1.05, 1.17, 1.03: medians 1.16 and 1.05). Windows a
few seconds apart see the same machine, so the drift no longer lands between the two
cases; runs still spread (each is a new set of processes and connections), less.

N: ``--listeners`` defaults to 400, bench_sfu's N, split over the two nodes (about 200
each): one speaker, as in bench_sfu, so the two figures are of the same room, and the
single node's us/packet is bench_sfu's ``sfu_us_per_packet`` for the same path.

Pinning (``--pin``, `placement`), the same in both cases; CPU accounting was checked
(schedstat's ns sum and /proc/PID/stat's ticks agree within 0.5 %) and the VM has no
SMT siblings (lscpu: 1 thread per core; a busy second core slows a loop on the first by
3-6 %, the host's doing):

* ``each`` (default): server process i on core i (the issue's "one core each"; the
  single node on the first), the clients left to the scheduler at ``SCHED_IDLE``
  (``--clients-idle``, on by default; sched(7): they run only when no server wants the
  core, and a server woken by a packet preempts them at once), standing in for clients
  on machines of their own, as the swarm does in ``bench_fidelity.py --cluster``. At
  normal priority (``--no-clients-idle``) each node shares its core with ~0.3 core of
  client work while the single node leaves the second core to the clients, so the ratio
  also carried the clients' interference: medians of 1.18-1.23 against 1.14 idle;
* ``one``: every server process on the first core, the clients (~0.35 core) on the
  second: the servers of both cases work on one client-free core, and the only
  difference is the same work split over two processes (which take turns on the core,
  so ``cascade_latency_p50`` is meaningless there: node-2, woken by the relay, fans out
  before node-1 does);
* ``split``: as ``each``, and listener process i on core i too;
* ``none``: everything left to the scheduler.

Figures: ``cluster_us_per_packet`` = all nodes' CPU / packets delivered in the windows
(2 nodes); ``cluster_overhead`` = that / the single node's us/packet in the same run;
``cascade_latency_p50`` = median latency of the listeners on the second node (relayed)
minus that of the listeners on the origin, in the same windows. Each is the median over
``--runs`` runs. The run also prints delivery (packets received / listeners x packets
the speaker sent in the windows, as any listener saw them), each server's CPU while
speaking and idle, and how the listeners were split.

Measured here (2026-12-07, 400 listeners, 4 windows of 5 s per case and run; the
machine shared with other helpers' tests, load average 0.9-1.7 under the bench lock),
with the one-round-trip heartbeat:

* ``--pin each``, 3 runs: single node 10.7 us/packet, ``cluster_us_per_packet`` 12.5
  us, ``cluster_overhead`` **1.231** (runs 1.137, 1.231, 1.255), ``cascade_latency_p50``
  0.26 ms; idle (listeners connected, no audio) 0.055-0.069 core against 0.073-0.089
  for the two nodes. An earlier set of 3 (its first run still with the three-round-trip
  heartbeat): 1.176 (1.176, 1.235, 1.130).
* ``--pin one``, 3 runs: 11.6 / 13.3 us, **1.143** (1.143, 1.094, 1.222), cascade
  -0.80 ms (the nodes share a core: node-2 is woken by the relay before node-1 fans out
  and the scheduler lets it go first); idle 0.061-0.068 against 0.086-0.093. An earlier
  set of 2: 1.155 (1.148, 1.163).
* ``--pin each --clients-idle`` (now the default), 1 run: 12.9 / 14.7 us, 1.141 (idle
  0.074 / 0.097); on the merged tree (lead, load average 0.6-1.9: another helper's
  benchmark had just finished), 3 runs: 11.7 / 13.3 us, **1.141** (1.133, 1.141, 1.142),
  ``cascade_latency_p50`` 0.20 ms, delivery 1.0000.
* ``--pin split``, 1 run: 11.8 / 14.3 us, 1.207 (idle 0.069 / 0.085).

Delivery 1.0000 in every case. The single node's 10.7-13.0 us is what bench_sfu measures
for the same path (10.2-10.8 us there, idle included). Interleaving took out the drift
between cases, not the spread between runs (each run is a new set of processes and
connections): ``cluster_overhead`` is 1.14-1.16 by its median with the servers on one
core, 1.18-1.23 one core each with the clients at normal priority, 1.14 with them at
SCHED_IDLE, and single runs range 1.09-1.26.

Where the overhead comes from (each measured apart):

* **Each node's fixed cost.** Idle, no listeners, 15 s (`proc_cpu`): a plain server
  0.0028 core, a cluster node 0.0048 (Redis 0.0024) with a heartbeat of three round trips
  to Redis every 0.5 s; with the heartbeat in one round trip (`Cluster._beat`) and the
  event reader blocking instead of waking every second, 0.0036-0.0040 (Redis 0.0020).
  In process (cProfile, the cluster's machinery alone on an empty loop): 0.0031 -> 0.0019
  core. The second node adds ~0.005 core, ~2 % of the ~0.26 core of the single node.
* **The relay.** Encoding and tagging a datagram costs the origin ~2.2 us per packet and
  node (`Relay.encode`); receiving one ~4.3 us on the other node
  (`Relay.datagram_received`). At 50 packets/s that is ~0.03 % of a core.
* **The listeners' upkeep, split over two processes.** With every listener connected and
  no audio (``idle_cores``), the single node used 0.055-0.074 core and the two nodes
  0.073-0.097 together: 0.016-0.025 core more for the same 400 connections' RTCP, ICE
  consent checks and timers -- about half of the whole excess while speaking
  (0.029-0.059 core), and not the cluster's own work (heartbeat and relay: ~0.005).
* **What perf sees** (``perf record -F 997 -g`` on each case's servers through one
  ``--pin one`` run, 4 windows each; both cases deliver the same packets): speaking,
  6,326 samples for the single node against 7,583 for the two nodes (+20 %): the kernel
  (sendto, loopback delivery) 3,044 -> 3,318 (+9 %), libsrtp's protect 1,341 -> 1,394
  (+4 %), libcrypto +104, but libpython 1,544 -> 2,316 (+50 %; the interpreter loop
  ``_PyEval_EvalFrameDefault`` 728 -> 1,017). Idle, 1,829 against 2,613, libpython
  1,312 -> 1,957: most of the interpreted excess is there already without audio, i.e.
  in the listeners' upkeep rather than in the forwarding or the relay. 214 of the idle
  excess are the garbage collector (``gc_collect_main``, ``visit_*``: one or two full
  collections of a node in those 24 s; none on the single node, 2 samples while
  speaking), the rest is interpreted Python spread thin. Why the same per-listener
  upkeep costs ~30 % more per listener in a process of 200 than in one of 400 is not
  established here (fewer events per event-loop wake-up to share its cost, or colder
  caches, are the candidates); py-spy (not installed) or cProfile inside a node would
  tell which Python functions grow.
* **Not measured yet:** two plain servers with 200 listeners and a speaker each against
  one with 400 (no cluster at all) would separate what splitting over two processes
  costs on this machine from what the cluster adds.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from spacesim.client.opus import read_mark_fields
from spacesim.client.rtp import payload as rtp_payload
from spacesim.client.session import AudioLink, RoomClient, connect_audio
from spacesim.client.speaker import SpeakerTrack, load_clip
from spacesim.server import launch


def proc_cpu(pid: int) -> float:
    """CPU seconds of all of a process's threads, ns-precise: the sum of the first field
    of /proc/PID/task/*/schedstat (the scheduler's runtime; /proc/PID/stat's utime +
    stime is the same sum in 10 ms ticks -- they agreed within 0.5 % here)."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(FileNotFoundError, ProcessLookupError):
            total += int((task / "schedstat").read_text().split()[0])
    return total / 1e9


def pin_all(pid: int, cpus: set[int] | None) -> None:
    """Pin every thread of a running process (sched_setaffinity on a pid moves only that
    thread; the server's executor and allocator threads exist by the time it answers)."""
    if cpus is None:
        return
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(FileNotFoundError, ProcessLookupError):
            os.sched_setaffinity(int(task.name), cpus)


# --------------------------------------------------------------------------- listeners


async def listen(url: str, space: str, n: int, prefix: str) -> None:
    """A listener process: connect `n` lite listeners, say ``ready``, then read the
    windows (a JSON list of monotonic ns ``[t0, t1]``) on stdin and print each
    listener's node, packets sent within a window and their latency p50."""
    from spacesim import rtc

    rtc.use_host_addresses(["127.0.0.1"])
    arrivals: list[list[tuple[int, int, int]]] = []
    nodes: list[str] = []
    links: list[AudioLink] = []
    async with aiohttp.ClientSession() as http:
        for i in range(n):
            got: list[tuple[int, int, int]] = []
            arrivals.append(got)

            def on_rtp(slot: int, packet: bytes, arrival_ns: int, got: list[Any] = got) -> None:
                body = rtp_payload(packet)
                mark = None if body is None else read_mark_fields(body)
                if mark is not None:  # (send stamp, speaker's seq, latency)
                    got.append((mark[2], mark[1], arrival_ns - mark[2]))

            link = await connect_audio(
                RoomClient(url, f"{prefix}{i}", http), space, on_rtp, read_every=0.02
            )
            links.append(link)
            nodes.append(str((link.join.get("node") or {}).get("id", "single")))
        print("ready", flush=True)
        line = await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
        windows = [(int(a), int(b)) for a, b in json.loads(line)]
        out = []
        for node, got in zip(nodes, arrivals, strict=True):
            inside = [
                (seq, lat_ns) for sent, seq, lat_ns in got if any(a <= sent < b for a, b in windows)
            ]
            lat = [lat_ns for _, lat_ns in inside]
            out.append(
                {
                    "node": node,
                    "packets": len(inside),
                    "seqs": sorted({seq for seq, _ in inside}),
                    "p50_ms": statistics.median(lat) / 1e6 if lat else None,
                }
            )
        print(json.dumps(out), flush=True)
        for link in links:
            await link.close()


# --------------------------------------------------------------------------- one case


def placement(pin: str, nodes: int) -> tuple[list[set[int] | None], list[set[int] | None]]:
    """CPUs for each server process and for each of the two listener processes (None:
    not pinned); see the module docstring."""
    cores = sorted(os.sched_getaffinity(0))
    if pin == "none" or len(cores) < 2:
        return [None] * nodes, [None, None]
    if pin == "each":
        return [{cores[i % len(cores)]} for i in range(nodes)], [None, None]
    if pin == "split":
        return [{cores[i % len(cores)]} for i in range(nodes)], [{cores[0]}, {cores[1]}]
    return [{cores[0]} for _ in range(nodes)], [set(cores[1:])] * 2


@dataclass
class Case:
    """One live setup: its servers, a space with a gated speaker and its listeners."""

    name: str
    pids: list[int]
    speaking: bool = False
    track: SpeakerTrack | None = None
    speaker: AudioLink | None = None
    procs: list[asyncio.subprocess.Process] = field(default_factory=list)
    windows: list[tuple[int, int]] = field(default_factory=list)
    cpu: float = 0.0  # the servers' CPU seconds within the windows
    cpu_each: list[float] = field(default_factory=list)
    idle_each: list[float] = field(default_factory=list)  # CPU s while the other spoke
    idle_s: float = 0.0


async def setup(
    case: Case, url: str, http: aiohttp.ClientSession, args: argparse.Namespace
) -> None:
    """Create the case's space on `url`, its speaker (silent until `case.speaking`) and
    ``--listeners`` listeners in two processes, all connected."""
    servers, clients = placement(args.pin, len(case.pids))
    for pid, cpus in zip(case.pids, servers, strict=True):
        pin_all(pid, cpus)
    host = RoomClient(url, "host", http)
    space = await host.create_space(f"bench-{case.name}")
    case.track = SpeakerTrack(
        load_clip("welcome"), sender_id=1, loop=True, gate=lambda: case.speaking
    )
    case.speaker = await connect_audio(host, space, lambda *a: None, publish=case.track)
    per = [args.listeners // 2, args.listeners - args.listeners // 2]
    for i, n in enumerate(per):
        proc = await asyncio.create_subprocess_exec(
            sys.executable, __file__, "--listen", url, space, str(n), f"l{i}-",
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            limit=1 << 24,  # one JSON line with every listener's packets
        )  # fmt: skip
        case.procs.append(proc)
        pin_all(proc.pid, clients[i])
        if args.clients_idle:
            os.sched_setscheduler(proc.pid, os.SCHED_IDLE, os.sched_param(0))
    for proc in case.procs:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 180)
        if line.strip() != b"ready":
            raise RuntimeError(f"a listener process of {case.name} failed: {line!r}")


async def window(case: Case, other: Case, warmup: float, args: argparse.Namespace) -> None:
    """The case's speaker speaks: after `warmup` s, one ``--window`` of its servers' CPU
    (and of the other case's, silent, with all its listeners connected: its idle CPU)."""
    case.speaking = True
    await asyncio.sleep(warmup)
    cpu0 = [proc_cpu(pid) for pid in case.pids]
    idle0 = [proc_cpu(pid) for pid in other.pids]
    t0 = time.monotonic_ns()
    await asyncio.sleep(args.window)
    t1 = time.monotonic_ns()
    cpu1 = [proc_cpu(pid) for pid in case.pids]
    idle = [proc_cpu(pid) - a for pid, a in zip(other.pids, idle0, strict=True)]
    other.idle_each = _plus(other.idle_each, idle)
    other.idle_s += (t1 - t0) / 1e9
    case.speaking = False
    await asyncio.sleep(0.3)  # what was sent has been forwarded before the other case
    case.windows.append((t0, t1))
    each = [b - a for a, b in zip(cpu0, cpu1, strict=True)]
    case.cpu += sum(each)
    case.cpu_each = _plus(case.cpu_each, each)


def _plus(acc: list[float], each: list[float]) -> list[float]:
    return [a + b for a, b in zip(acc or [0.0] * len(each), each, strict=True)]


async def collect(case: Case) -> dict[str, Any]:
    """The listeners' packets in the case's windows: the case's figures."""
    rows: list[dict[str, Any]] = []
    for proc in case.procs:
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write(json.dumps(case.windows).encode() + b"\n")
        await proc.stdin.drain()
        rows += json.loads(await asyncio.wait_for(proc.stdout.readline(), 60))
    packets = sum(r["packets"] for r in rows)
    sent = set().union(*(r.pop("seqs") for r in rows))  # the speaker's packets in the windows
    expected = len(rows) * len(sent)
    by_node: dict[str, list[float]] = {}
    for r in rows:
        if r["p50_ms"] is not None:
            by_node.setdefault(r["node"], []).append(r["p50_ms"])
    seconds = sum(b - a for a, b in case.windows) / 1e9
    return {
        "us_per_packet": case.cpu / packets * 1e6 if packets else float("nan"),
        "cpu_cores": [c / seconds for c in case.cpu_each],
        "idle_cores": [c / case.idle_s for c in case.idle_each],
        "delivery": packets / expected if expected else float("nan"),
        "split": {k: len(v) for k, v in sorted(by_node.items())},
        "p50_ms": {k: statistics.median(v) for k, v in sorted(by_node.items())},
    }


async def close(case: Case) -> None:
    if case.track is not None:
        case.track.stop()
    for proc in case.procs:
        if proc.returncode is None:
            try:
                await asyncio.wait_for(proc.wait(), 30)
            except TimeoutError:
                proc.kill()
                await proc.wait()
    if case.speaker is not None:
        await case.speaker.close()


async def run_once(workdir: Path, args: argparse.Namespace) -> tuple[dict[str, Any], ...]:
    """Both cases live at once, their windows interleaved (single, cluster, cluster,
    single, ...): the machine's speed drifts by ~15 % over minutes here, which two cases
    measured one after the other would take for a difference between them."""
    workdir.mkdir(parents=True, exist_ok=True)
    with (
        open(workdir / "server.log", "wb") as log,
        launch.cluster(workdir / "cluster", nodes=2) as (_, nodes),
    ):
        proc, url = launch.start(workdir / "server.db", log=log)
        try:
            launch.wait_up(proc, url)
            await asyncio.sleep(1.5)  # both nodes in each other's registry (0.5 s beats)
            one = Case("single", [proc.pid])
            two = Case("cluster", [p.pid for p, _ in nodes])
            async with aiohttp.ClientSession() as http:
                try:
                    await setup(one, url, http, args)
                    await setup(two, nodes[0][1], http, args)
                    for r in range(args.rounds):  # single, cluster, cluster, single, ...
                        first, then = (one, two) if r % 2 == 0 else (two, one)
                        await window(first, then, args.warmup if r < 2 else 1.0, args)
                        await window(then, first, args.warmup if r < 2 else 1.0, args)
                    return await collect(one), await collect(two)
                finally:
                    for c in (one, two):
                        await close(c)
        finally:
            launch.stop(proc)


async def run(args: argparse.Namespace) -> None:
    one: list[float] = []
    two: list[float] = []
    ratio: list[float] = []
    cascade: list[float] = []
    delivery: list[float] = []
    with tempfile.TemporaryDirectory(prefix="bench-cluster-") as tmp:
        for i in range(args.runs):
            a, b = await run_once(Path(tmp) / f"run-{i}", args)
            print(f"run {i + 1}: single {json.dumps(a)}", flush=True)
            print(f"run {i + 1}: cluster {json.dumps(b)}", flush=True)
            print(f"run {i + 1}: cluster_overhead {b['us_per_packet'] / a['us_per_packet']:.3f}")
            one.append(a["us_per_packet"])
            two.append(b["us_per_packet"])
            ratio.append(b["us_per_packet"] / a["us_per_packet"])
            delivery += [a["delivery"], b["delivery"]]
            lat = b["p50_ms"]
            if "node-1" in lat and "node-2" in lat:
                cascade.append(lat["node-2"] - lat["node-1"])
    print(f"single node: {statistics.median(one):.1f} us/packet (median of {args.runs})")
    print(f"delivery: {min(delivery):.4f} at worst")
    print(f"FIGURE cluster_us_per_packet={statistics.median(two):.1f} us")
    print(f"FIGURE cluster_overhead={statistics.median(ratio):.3f} ratio")
    added = statistics.median(cascade) if cascade else float("nan")
    print(f"FIGURE cascade_latency_p50={added:.2f} ms")


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument(
        "--listen", nargs=4, metavar=("URL", "SPACE", "N", "PREFIX"), help=argparse.SUPPRESS
    )
    ap.add_argument("--listeners", type=int, default=400)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=4, help="windows per case and run")
    ap.add_argument("--window", type=float, default=5.0)
    ap.add_argument("--warmup", type=float, default=3.0)
    ap.add_argument(
        "--pin",
        choices=("one", "each", "split", "none"),
        default="each",
        help="server processes: one core each (default); all on the first core and the "
        "clients on the others; one core each with listener process i on core i; "
        "or unpinned",
    )
    ap.add_argument(
        "--clients-idle",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="listener processes at SCHED_IDLE (they run when no server wants the core; default)",
    )
    args = ap.parse_args()
    if args.listen:
        url, space, n, prefix = args.listen
        asyncio.run(listen(url, space, int(n), prefix))
        return
    from spacesim import rtc

    rtc.use_host_addresses(["127.0.0.1"])
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
