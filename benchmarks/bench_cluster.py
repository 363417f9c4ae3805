"""Server CPU per delivered packet on one node and on a two-node cluster, and the latency
the cascade adds.

What runs (all on 127.0.0.1, every process with a deadline): per run, two cases, one
after the other, each with a fresh database:

* ``single``: one plain `spacesim serve` (no Redis), pinned to the first core;
* ``cluster``: `spacesim.server.launch.cluster` -- a `redis-server` and two
  `spacesim serve --cluster` nodes sharing one SQLite file.

Pinning (``--pin``, `placement`): by default (``each``) node i is pinned to core i (the
issue's "one core each"; the single node to the first) and the clients are left to the
scheduler, so on this 2-core machine every server core also runs client work, in both
cases alike. ``--pin one`` puts the server processes of both cases on the first core
and the clients on the others (no client work on the servers' core, but the two nodes
then share it); ``--pin none`` leaves everything to the scheduler.

N: ``--listeners`` defaults to 400, bench_sfu's N, split over the two nodes (about 200
each, by the placement rule): one speaker, as in bench_sfu, so the two figures are of
the same room. Each node's fixed cost (heartbeats, timers: ~0.0045 core idle against
0.0020 for a plain server) is a smaller share of its work the more listeners it has; at
the earlier default of 60 it was most of the overhead.

In each case this process creates one space on the (first) node and speaks in it (a
`SpeakerTrack` looping a clip; the host's media stays on the space's origin node); two
listener processes (this script with ``--listen``) connect ``--listeners`` lite
listeners in all, through the first node: in the cluster each join is placed by power of
two choices, so about half land on each node, and the origin relays each packet once to
the other node. Once every listener is connected and the audio has flowed ``--warmup``
s, a window of ``--window`` s is measured: every server process's CPU (user + sys from
/proc, so Redis and the clients are not counted) and, in the listener processes, each
listener's packets that arrived in the window and their latency (the speaker's send
stamp in the payload to the kernel's arrival time, one machine's monotonic clock), for
the packets the speaker sent in the window.

Figures: ``cluster_us_per_packet`` = all nodes' CPU / packets delivered in the window
(2 nodes); ``cluster_overhead`` = that / the single node's us/packet in the same run;
``cascade_latency_p50`` = median latency of the listeners on the second node (relayed)
minus that of the listeners on the origin, in the same window. Each is the median over
``--runs`` runs. The run also prints delivery (packets received / listeners x packets
the speaker sent in the window, as any listener saw them) and how the listeners were split.

Measured here (a 2-core VM shared with other work, load average 3-20; 100 listeners,
5 runs of 15 s windows): single node 40.3 us/packet; ``cluster_us_per_packet`` 50.8 us,
``cluster_overhead`` 1.171 (runs 1.10-1.24), ``cascade_latency_p50`` 0.49 ms; delivery
99.9-100 % in both cases, the listeners split 43-57 to 49-51. On the final main of
2026-12-07 (c8596d7, direct send path), the machine otherwise idle: 200 listeners, 3
runs: single node 20.5 us, ``cluster_us_per_packet`` 24.7 us, ``cluster_overhead``
1.169, ``cascade_latency_p50`` 0.38 ms; the defaults (60 listeners): 27.4 / 40.0 us,
1.383 (each node's fixed cost over fewer packets), 0.40 ms.

After the relay's receive path was made lean (clusterfid, 2026-12-07), 400 listeners,
3 runs of 10 s windows, the machine shared with other helpers' benchmarks: ``--pin
each`` (load average 3.7-5.8): single node 16.5 us/packet, ``cluster_us_per_packet``
16.1 us, ``cluster_overhead`` **0.987** (runs 0.91-1.06), ``cascade_latency_p50``
1.28 ms; ``--pin one`` (load average 0.6-1.9): 14.0 / 15.8 us, **1.085** (1.07-1.38), 0.32 ms (the
two nodes on one core; node-2's fan-out of a relayed packet waits for node-1's). Delivery
99.0-100 % in all, the listeners split 198-202.

Where the overhead comes from (each measured apart):

* **The relay.** Encoding and tagging a datagram costs the origin ~2.2 us per packet and
  node (`Relay.encode`, ids encoded once per (space, user)); receiving one ~4.3 us on the
  other node (`Relay.datagram_received`: the tag checked on a memoryview, the ids decoded
  once, a slotted `RelayedPacket` instead of aiortc's `RtpPacket`, and the fan-out run in
  the receive call instead of a Task per packet -- ~12 us before). At 50 packets/s that
  is ~0.03 % of a core: the relay is not where the overhead is.
* **Each node's fixed cost.** An idle cluster node costs 0.0045 core against 0.0020 for
  a plain server (heartbeats every 0.5 s: a write and a read of the registry, two Redis
  round trips, and the pub/sub reader; profiled in process with cProfile over 10 s idle,
  the heartbeat is ~0.003 core of it, a third of that in the loopback `send`, which
  charges Redis's wake-up to the node): the second node adds ~0.007 core, ~2 % of two
  nodes' ~0.3 core at N = 400 (~10 % at the earlier default of 60 listeners). Putting the
  registry's write and read in one pipeline would halve the round trips (liveness code:
  left to its owner).
* **The machine.** The rest moves with the pinning and the outside load by more than the
  costs above: pinned one core each, each node shares its core with listener processes
  (there is no third core); pinned both to one core, the nodes take turns. Two plain
  servers with 50 idle listeners each cost what one with 100 does (0.089 core), so the
  split itself is not what costs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

from spacesim.client.opus import read_mark_fields
from spacesim.client.rtp import payload as rtp_payload
from spacesim.client.session import AudioLink, RoomClient, connect_audio
from spacesim.client.speaker import SpeakerTrack, load_clip
from spacesim.server import launch

TICK = os.sysconf("SC_CLK_TCK")


def proc_cpu(pid: int) -> float:
    """CPU seconds (user + system) a process has used, from /proc/PID/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


# --------------------------------------------------------------------------- listeners


async def listen(url: str, space: str, n: int, prefix: str) -> None:
    """A listener process: connect `n` lite listeners, say ``ready``, then read the window
    (monotonic ns ``t0 t1``) on stdin and print each listener's node, packets and p50."""
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
        t0, t1 = (int(x) for x in line.split())
        out = []
        for node, got in zip(nodes, arrivals, strict=True):
            inside = [(seq, lat_ns) for sent, seq, lat_ns in got if t0 <= sent < t1]
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


def placement(pin: str, nodes: int) -> tuple[list[set[int] | None], set[int] | None]:
    """CPUs for each server process, and for the clients (None: not pinned); see the
    module docstring."""
    cores = sorted(os.sched_getaffinity(0))
    if pin == "none" or len(cores) < 2:
        return [None] * nodes, None
    if pin == "each":
        return [{cores[i % len(cores)]} for i in range(nodes)], None
    return [{cores[0]} for _ in range(nodes)], set(cores[1:])


async def case(
    urls: list[str], pids: list[int], args: argparse.Namespace, name: str
) -> dict[str, Any]:
    """One speaker, `args.listeners` listeners through urls[0]; the window's figures."""
    servers, clients = placement(args.pin, len(pids))
    for pid, cpus in zip(pids, servers, strict=True):
        if cpus is not None:
            os.sched_setaffinity(pid, cpus)
    if clients is not None:  # this process (the speaker) and, below, the listeners
        os.sched_setaffinity(0, clients)
    async with aiohttp.ClientSession() as http:
        host = RoomClient(urls[0], "host", http)
        space = await host.create_space(f"bench-{name}")
        track = SpeakerTrack(load_clip("welcome"), sender_id=1, loop=True)
        speaker = await connect_audio(host, space, lambda *a: None, publish=track)
        procs = []
        per = [args.listeners // 2, args.listeners - args.listeners // 2]
        for i, n in enumerate(per):
            procs.append(
                await asyncio.create_subprocess_exec(
                    sys.executable,
                    __file__,
                    "--listen",
                    urls[0],
                    space,
                    str(n),
                    f"l{i}-",
                    stdin=asyncio.subprocess.PIPE,
                    stdout=asyncio.subprocess.PIPE,
                    limit=1 << 24,  # one JSON line with every listener's packets
                )
            )
            if clients is not None:
                os.sched_setaffinity(procs[-1].pid, clients)
        try:
            for p in procs:
                assert p.stdout is not None
                line = await asyncio.wait_for(p.stdout.readline(), 180)
                if line.strip() != b"ready":
                    raise RuntimeError(f"a listener process failed: {line!r}")
            await asyncio.sleep(args.warmup)
            cpu0 = [proc_cpu(pid) for pid in pids]
            t0 = time.monotonic_ns()
            await asyncio.sleep(args.window)
            t1 = time.monotonic_ns()
            cpu1 = [proc_cpu(pid) for pid in pids]
            rows: list[dict[str, Any]] = []
            for p in procs:
                assert p.stdin is not None and p.stdout is not None
                p.stdin.write(f"{t0} {t1}\n".encode())
                await p.stdin.drain()
                rows += json.loads(await asyncio.wait_for(p.stdout.readline(), 60))
        finally:
            track.stop()
            for p in procs:
                if p.returncode is None:
                    try:
                        await asyncio.wait_for(p.wait(), 30)
                    except TimeoutError:
                        p.kill()
            await speaker.close()
    cpu = sum(b - a for a, b in zip(cpu0, cpu1, strict=True))
    packets = sum(r["packets"] for r in rows)
    sent = set().union(*(r.pop("seqs") for r in rows))  # the speaker's packets in the window
    expected = len(rows) * len(sent)
    by_node: dict[str, list[float]] = {}
    for r in rows:
        if r["p50_ms"] is not None:
            by_node.setdefault(r["node"], []).append(r["p50_ms"])
    return {
        "us_per_packet": cpu / packets * 1e6 if packets else float("nan"),
        "cpu_cores": [(b - a) / ((t1 - t0) / 1e9) for a, b in zip(cpu0, cpu1, strict=True)],
        "delivery": packets / expected if expected else float("nan"),
        "split": {k: len(v) for k, v in sorted(by_node.items())},
        "p50_ms": {k: statistics.median(v) for k, v in sorted(by_node.items())},
    }


async def single(workdir: Path, args: argparse.Namespace) -> dict[str, Any]:
    workdir.mkdir(parents=True, exist_ok=True)
    with open(workdir / "server.log", "wb") as log:
        proc, url = launch.start(workdir / "server.db", log=log)
        try:
            launch.wait_up(proc, url)
            return await case([url], [proc.pid], args, "single")
        finally:
            launch.stop(proc)


async def cluster(workdir: Path, args: argparse.Namespace) -> dict[str, Any]:
    with launch.cluster(workdir, nodes=2) as (_, procs):
        await asyncio.sleep(1.5)  # both nodes in each other's registry (0.5 s beats)
        return await case([u for _, u in procs], [p.pid for p, _ in procs], args, "cluster")


async def run(args: argparse.Namespace) -> None:
    one: list[float] = []
    two: list[float] = []
    ratio: list[float] = []
    cascade: list[float] = []
    with tempfile.TemporaryDirectory(prefix="bench-cluster-") as tmp:
        for i in range(args.runs):
            a = await single(Path(tmp) / f"single-{i}", args)
            b = await cluster(Path(tmp) / f"cluster-{i}", args)
            print(f"run {i + 1}: single {json.dumps(a)}", flush=True)
            print(f"run {i + 1}: cluster {json.dumps(b)}", flush=True)
            one.append(a["us_per_packet"])
            two.append(b["us_per_packet"])
            ratio.append(b["us_per_packet"] / a["us_per_packet"])
            lat = b["p50_ms"]
            if "node-1" in lat and "node-2" in lat:
                cascade.append(lat["node-2"] - lat["node-1"])
    print(f"single node: {statistics.median(one):.1f} us/packet (median of {args.runs})")
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
    ap.add_argument("--window", type=float, default=10.0)
    ap.add_argument("--warmup", type=float, default=3.0)
    ap.add_argument(
        "--pin",
        choices=("each", "one", "none"),
        default="each",
        help="server processes: one core each (default); all on the first core and the "
        "clients on the others; or unpinned",
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
