"""Server cost of the event stream: CPU per delivered event, event latency, CPU per join.

What runs (all on 127.0.0.1, every process with a hard deadline):

* A real ``spacesim serve`` process per audience size N (``spacesim.server.launch``),
  with a fresh database. Its CPU is read from ``/proc/<pid>/task/*/schedstat``
  (nanoseconds on CPU, all threads), so nothing in it is added for the benchmark.
* ``--clients`` client processes (default 2) hold the N listeners: each listener gets
  a dev token, joins (``POST /join`` without SDP: signalling only, no WebRTC) and
  subscribes to ``GET /v1/spaces/{id}/events`` with a minimal WebSocket client on an
  asyncio protocol (`_Listener`: no aiohttp reader, queue or task per socket; frames
  are cut out of each read, ``time.monotonic_ns()`` is stamped once per read, and a
  reaction's ``clock_ns`` is found by a byte search, not ``json.loads``), so that the
  clients' own cost per message (a few µs) stays small beside the server's on a
  2-core machine.

Per N (default 100, 400 and 1,000): after all listeners are subscribed, the server's
idle CPU rate is measured for ``IDLE_S`` s. Then ``--repeats`` reaction storms: for
``--storm`` s, listeners send reactions on their WebSocket (``{"action": "react"}``)
at ``EVENTS_PER_S`` events per second in all (fewer at large N so the machine keeps
up), each from a different listener in turn, so the per-user limiter (2/s, burst 10)
never refuses one. A storm ends when every client has received every reaction (or
after ``DRAIN_S`` s). Its cost per delivery is (server CPU over the storm - idle rate x
its wall time) / deliveries, deliveries = reaction events received, counted at the
clients (events x subscribers when none is lost); its latency is arrival time minus
the event's ``clock_ns`` (one machine, one monotonic clock) over all deliveries. It
includes the subscriber's position in the server's fan-out (the server writes one
frame to 1,000 sockets in turn, ~10 µs each, so the last gets it ~10 ms after the
first), the loopback kernel path, and the client process's wake-up and read (two
client processes take turns with the server on two cores). The figures are the
medians over the repeats.

``--pin`` puts every server thread on CPU 0 and the client processes on CPU 1. On a
2-core machine that made the latency worse (p95 ~41 ms at N = 1,000 against ~26 ms
unpinned): both client processes then share one core for 10,000 reads/s.

Join cost at N = 100 and N = 1,000: a batch of ``JOIN_BATCH`` more listeners (tokens
minted beforehand) join and subscribe, ten at a time; the server CPU from the first
request until ``SETTLE_S`` s after the last hello (which covers the coalesced
``audience`` events the batch causes), minus idle, divided by the batch. The ratio of
the medians over ``--repeats`` batches is ``join_cpu_ratio_1000_vs_100`` (1.0 = flat).

Audio: one forwarded packet's server CPU from ``bench_sfu``'s own case (one speaker,
``AUDIO_LISTENERS`` lite listeners, pass-through ``MediaRoom``), run in this process's
benchmark run for a figure beside the event costs.

Run: ``python benchmarks/bench_events.py [--listeners 100 400 1000] [--repeats 3]
[--storm 3] [--clients 2] [--pin] [--quick]``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import multiprocessing as mp
import os
import statistics
import sys
import tempfile
import time
from array import array
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_sfu  # benchmarks/ is not a package: imported by path

EVENTS_PER_S = 40.0  # reactions per second in a storm, at most ...
DELIVERIES_PER_S = 10_000.0  # ... and at most this many deliveries per second
IDLE_S = 2.0
DRAIN_S = 5.0
JOIN_BATCH = 50
SETTLE_S = 1.2  # > the audience interval: the batch's last audience event is counted
AUDIO_LISTENERS = 100  # enough forwards per incoming packet to price one forward
CONCURRENCY = 10
EMOJI = ("🔥", "👏", "💯", "🎉", "❤️")


def _server_cpu_ns(pid: int) -> int:
    """Nanoseconds on CPU of every thread of process `pid` (schedstat's first field)."""
    total = 0
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{task}/schedstat") as f:
                total += int(f.read().split()[0])
        except (FileNotFoundError, ProcessLookupError):  # a thread that just ended
            continue
    return total


# ---------------------------------------------------------------------- clients


class _Stats:
    """What one client process measured: reaction deliveries and their latencies (ns)."""

    def __init__(self) -> None:
        self.received = 0
        self.lat = array("q")


_REACTION = b'"kind": "reaction"'
_CLOCK_NS = b'"clock_ns": '


class _Listener(asyncio.Protocol):
    """A minimal WebSocket client over an asyncio protocol: the benchmark's listener.

    It costs a few microseconds per event instead of aiohttp's reader, parser, queue and
    task wake-up: frames are cut out of the received bytes in `data_received`, the
    arrival time is one ``time.monotonic_ns()`` per read (every frame in that read gets
    it), and a reaction's ``clock_ns`` is found by a byte search (no JSON parsing).
    Answers pings (the server's 20 s heartbeat) and closes. Sends masked text frames.
    """

    def __init__(self, stats: _Stats) -> None:
        self.stats = stats
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.upgraded = False
        self.hello: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.hello.done():
            self.hello.set_exception(ConnectionError(f"closed before the hello: {exc}"))

    def data_received(self, data: bytes) -> None:
        now = time.monotonic_ns()
        buf = self.buf
        buf += data
        if not self.upgraded:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                return
            status = bytes(buf[: buf.find(b"\r\n")])
            if not status.startswith(b"HTTP/1.1 101"):
                self.hello.set_exception(ConnectionError(status.decode(errors="replace")))
                return
            self.upgraded = True
            del buf[: end + 4]
        i, size = 0, len(buf)
        stats = self.stats
        while size - i >= 2:
            b0, n = buf[i], buf[i + 1] & 0x7F
            head = 2
            if n == 126:
                if size - i < 4:
                    break
                n, head = int.from_bytes(buf[i + 2 : i + 4], "big"), 4
            elif n == 127:
                if size - i < 10:
                    break
                n, head = int.from_bytes(buf[i + 2 : i + 10], "big"), 10
            if size - i < head + n:
                break
            start = i + head
            i = start + n
            opcode = b0 & 0x0F
            if opcode == 1:
                if not self.hello.done():
                    self.hello.set_result(bytes(buf[start:i]))
                    continue
                at = buf.find(_REACTION, start, i)
                if at < 0:
                    continue
                stats.received += 1
                at = buf.find(_CLOCK_NS, start, i)
                if at >= 0:
                    at += len(_CLOCK_NS)
                    stop = at
                    while 48 <= buf[stop] <= 57:
                        stop += 1
                    stats.lat.append(now - int(buf[at:stop]))
            elif opcode == 9:  # ping: pong with its payload
                self._send(0x8A, bytes(buf[start:i]))
            elif opcode == 8 and self.transport is not None:
                self._send(0x88, bytes(buf[start : start + 2]))
                self.transport.close()
        if i:
            del buf[:i]

    def _send(self, first: int, payload: bytes) -> None:
        assert self.transport is not None and len(payload) < 65536
        mask = os.urandom(4)
        n = len(payload)
        head = bytes((first, 0x80 | n)) if n < 126 else bytes((first, 0xFE)) + n.to_bytes(2, "big")
        m = int.from_bytes((mask * (n // 4 + 1))[:n], "big")
        masked = (int.from_bytes(payload, "big") ^ m).to_bytes(n, "big")
        self.transport.write(head + mask + masked)

    def send_text(self, text: str) -> None:
        self._send(0x81, text.encode())


async def _client_main(conn: Connection, base: str, space: str) -> None:
    import aiohttp

    loop = asyncio.get_running_loop()
    http = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0), timeout=aiohttp.ClientTimeout(total=60)
    )
    host, port = base.removeprefix("http://").rsplit(":", 1)
    tokens: dict[str, str] = {}
    sockets: dict[str, _Listener] = {}
    stats = _Stats()

    async def mint(name: str) -> None:
        async with http.post(f"{base}/v1/dev/token", json={"user": name}) as r:
            tokens[name] = (await r.json())["token"]

    async def connect(name: str) -> None:
        headers = {"Authorization": f"Bearer {tokens[name]}"}
        async with http.post(f"{base}/v1/spaces/{space}/join", json={}, headers=headers) as r:
            if r.status != 200:
                raise RuntimeError(f"join {name}: {r.status} {await r.text()}")
        _, listener = await loop.create_connection(lambda: _Listener(stats), host, int(port))
        key = base64.b64encode(os.urandom(16)).decode()
        assert listener.transport is not None
        listener.transport.write(
            f"GET /v1/spaces/{space}/events?token={tokens[name]} HTTP/1.1\r\n"
            f"Host: {host}:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
        )
        hello = json.loads(await asyncio.wait_for(listener.hello, 30))
        if hello.get("type") != "hello":
            raise RuntimeError(f"no hello for {name}: {hello}")
        sockets[name] = listener

    async def bounded(fn: Any, names: list[str]) -> None:
        sem = asyncio.Semaphore(CONCURRENCY)

        async def one(name: str) -> None:
            async with sem:
                await fn(name)

        await asyncio.gather(*(one(n) for n in names))

    async def storm(rate: float, seconds: float, start_ns: int) -> int:
        names = list(sockets)
        count = int(rate * seconds)
        for k in range(count):
            wait = (start_ns + int(k / rate * 1e9) - time.monotonic_ns()) / 1e9
            if wait > 0:
                await asyncio.sleep(wait)
            sockets[names[k % len(names)]].send_text(
                json.dumps({"id": k, "action": "react", "emoji": EMOJI[k % len(EMOJI)]})
            )
        return count

    while True:
        cmd, *args = await loop.run_in_executor(None, conn.recv)
        if cmd == "mint":
            await bounded(mint, args[0])
            conn.send("ok")
        elif cmd == "connect":
            await bounded(connect, args[0])
            conn.send("ok")
        elif cmd == "storm":
            conn.send(await storm(*args))
        elif cmd == "received":
            conn.send(stats.received)
        elif cmd == "collect":
            conn.send((stats.received, stats.lat))
            stats.received, stats.lat = 0, array("q")
        elif cmd == "stop":
            break
    with contextlib.suppress(Exception):
        await asyncio.wait_for(http.close(), 5)
    conn.send("bye")


def _client(conn: Connection, base: str, space: str, cpus: set[int] | None, max_s: float) -> None:
    bench_sfu._watchdog(max_s)
    bench_sfu._raise_fd_limit()
    if cpus:
        os.sched_setaffinity(0, cpus)
    asyncio.run(_client_main(conn, base, space))
    os._exit(0)  # skip closing a thousand sockets one by one


# ---------------------------------------------------------------------- one audience size


class Clients:
    """The client processes and the listeners each one holds."""

    def __init__(self, base: str, space: str, n: int, cpus: set[int] | None, max_s: float):
        ctx = mp.get_context("spawn")
        self.conns: list[Connection] = []
        self.procs = []
        for _ in range(n):
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=_client, args=(child, base, space, cpus, max_s), daemon=True)
            proc.start()
            child.close()
            self.conns.append(parent)
            self.procs.append(proc)
        self.next_user = 0

    def names(self, count: int) -> list[list[str]]:
        """`count` new user names, dealt round robin to the client processes."""
        names = [f"l{self.next_user + i}" for i in range(count)]
        self.next_user += count
        return [names[k :: len(self.conns)] for k in range(len(self.conns))]

    def all(self, *cmd: Any, per: list[Any] | None = None) -> list[Any]:
        for i, c in enumerate(self.conns):
            c.send((*cmd, per[i]) if per is not None else cmd)
        return [c.recv() for c in self.conns]

    def close(self) -> None:
        for c in self.conns:
            c.send(("stop",))
        for c, p in zip(self.conns, self.procs, strict=True):
            if c.poll(10):
                c.recv()
            p.join(5)
            if p.is_alive():
                p.terminate()


def _run_size(n: int, args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    import urllib.request

    from spacesim.results import nearest_rank
    from spacesim.server import launch

    bench_sfu._raise_fd_limit()  # the server inherits it: one socket per subscriber
    server, base = launch.start(workdir / f"events-{n}.db")
    out: dict[str, Any] = {"listeners": n}
    clients = None
    try:
        launch.wait_up(server, base)
        cpus = None
        if args.pin and (os.cpu_count() or 1) >= 2:
            for task in os.listdir(f"/proc/{server.pid}/task"):  # every thread it has
                os.sched_setaffinity(int(task), {0})
            cpus = {1}

        def post(path: str, body: dict[str, Any], token: str | None = None) -> Any:
            req = urllib.request.Request(
                f"{base}{path}",
                data=json.dumps(body).encode(),
                headers={"Content-Type": "application/json"}
                | ({"Authorization": f"Bearer {token}"} if token else {}),
            )
            with urllib.request.urlopen(req, timeout=10) as r:
                return json.loads(r.read())

        host = post("/v1/dev/token", {"user": "host"})["token"]
        space = post("/v1/spaces", {"title": "bench_events"}, host)["id"]
        clients = Clients(base, space, args.clients, cpus, max_s=120 + n * 0.2)
        t0 = time.monotonic()
        groups = clients.names(n)
        clients.all("mint", per=groups)
        clients.all("connect", per=groups)
        out["connect_s"] = time.monotonic() - t0
        time.sleep(0.5)

        def cpu() -> int:
            return _server_cpu_ns(server.pid)

        c0, w0 = cpu(), time.monotonic_ns()
        time.sleep(args.idle)
        idle = (cpu() - c0) / (time.monotonic_ns() - w0)  # CPU seconds per second
        out["idle_cpu"] = idle

        rate = min(EVENTS_PER_S, DELIVERIES_PER_S / n)
        storms = []
        for _ in range(args.repeats):
            clients.all("collect")  # reset the counters
            time.sleep(1.0)
            start = time.monotonic_ns() + 50_000_000
            c0, w0 = cpu(), time.monotonic_ns()
            sent = sum(clients.all("storm", rate / len(clients.conns), args.storm, start))
            deadline = time.monotonic() + DRAIN_S
            while sum(clients.all("received")) < sent * n and time.monotonic() < deadline:
                time.sleep(0.02)
            c1, w1 = cpu(), time.monotonic_ns()
            got = clients.all("collect")
            delivered = sum(g[0] for g in got)
            lat = array("q")
            for g in got:
                lat.extend(g[1])
            used = (c1 - c0) - idle * (w1 - w0)
            storms.append(
                {
                    "events": sent,
                    "delivered": delivered,
                    "delivery": delivered / max(1, sent * n),
                    "us_per_delivery": used / max(1, delivered) / 1e3,
                    "server_cpu": (c1 - c0) / (w1 - w0),
                    "p50_ms": nearest_rank(lat, 0.50) / 1e6,
                    "p95_ms": nearest_rank(lat, 0.95) / 1e6,
                    "max_ms": max(lat, default=0) / 1e6,
                }
            )
        out["rate"] = rate
        out["storms"] = storms
        out["us_per_delivery"] = statistics.median(s["us_per_delivery"] for s in storms)
        out["p50_ms"] = statistics.median(s["p50_ms"] for s in storms)
        out["p95_ms"] = statistics.median(s["p95_ms"] for s in storms)
        out["delivery"] = min(s["delivery"] for s in storms)

        if n in args.join_at:
            joins = []
            for _ in range(args.repeats):
                groups = clients.names(JOIN_BATCH)
                clients.all("mint", per=groups)
                time.sleep(SETTLE_S)  # the minting's audience-free, but let it settle
                c0, w0 = cpu(), time.monotonic_ns()
                clients.all("connect", per=groups)
                time.sleep(SETTLE_S)
                c1, w1 = cpu(), time.monotonic_ns()
                joins.append(((c1 - c0) - idle * (w1 - w0)) / JOIN_BATCH / 1e6)
            out["join_ms"] = joins
            out["join_cpu_ms"] = statistics.median(joins)
    finally:
        if clients is not None:
            clients.close()
        launch.stop(server)
    return out


def _report(r: dict[str, Any]) -> None:
    storms = " ".join(f"{s['us_per_delivery']:.1f}" for s in r["storms"])
    p95s = " ".join(f"{s['p95_ms']:.1f}" for s in r["storms"])
    print(
        f"N={r['listeners']}: {r['us_per_delivery']:.1f} us/delivery (storms: {storms}), "
        f"latency p50 {r['p50_ms']:.1f} ms, p95 {r['p95_ms']:.1f} ms (storms: {p95s}), "
        f"{r['rate']:.0f} events/s, "
        f"delivery {r['delivery'] * 100:.2f} %, server idle {r['idle_cpu'] * 100:.1f} % "
        f"of a core, busy {statistics.median(s['server_cpu'] for s in r['storms']) * 100:.0f} "
        f"% in storms; connect {r['connect_s']:.1f} s",
        flush=True,
    )
    worst = max(r["storms"], key=lambda s: s["p95_ms"])
    print(f"  worst storm: p50/p95/max {worst['p50_ms']:.1f} / {worst['p95_ms']:.1f} / "
          f"{worst['max_ms']:.1f} ms")  # fmt: skip
    if "join_cpu_ms" in r:
        js = " ".join(f"{j:.2f}" for j in r["join_ms"])
        print(f"  join + subscribe: {r['join_cpu_ms']:.2f} ms server CPU each (batches: {js})")


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--listeners", type=int, nargs="+", default=[100, 400, 1000])
    ap.add_argument("--join-at", type=int, nargs="+", default=[100, 1000])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--storm", type=float, default=3.0, help="seconds per reaction storm")
    ap.add_argument("--idle", type=float, default=IDLE_S, help="seconds of idle measurement")
    ap.add_argument("--clients", type=int, default=2, help="client processes")
    ap.add_argument("--pin", action="store_true", help="server on CPU 0, clients on CPU 1")
    ap.add_argument("--audio-windows", type=int, default=3, help="0: skip the audio case")
    ap.add_argument("--quick", action="store_true", help="a short run (smaller, fewer)")
    ap.add_argument("--dump", help="write the details as JSON here")
    args = ap.parse_args()
    if args.quick:  # smaller audiences, fewer and shorter storms
        args.listeners, args.join_at = [50, 200], [50, 200]
        args.repeats, args.storm, args.idle, args.audio_windows = 2, 1.0, 1.0, 2
    t0 = time.monotonic()
    results: dict[int, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="bench_events-") as tmp:
        for n in args.listeners:
            results[n] = _run_size(n, args, Path(tmp))
            _report(results[n])
    audio = None
    if args.audio_windows:
        audio = bench_sfu._run_case(
            "spacesim",
            20 if args.quick else AUDIO_LISTENERS,
            1,
            1,
            args.audio_windows,
            1.0 if args.quick else 2.0,
        )
        bench_sfu._report(audio)
    print(f"total {time.monotonic() - t0:.0f} s")
    if args.dump:
        with open(args.dump, "w") as f:
            json.dump({"events": results, "audio": audio}, f, default=str)
    main_n = 1000 if 1000 in results else max(results)
    for n, r in results.items():
        print(f"FIGURE event_us_per_delivery_n{n}={r['us_per_delivery']:.1f} us")
        print(f"FIGURE event_latency_p50_n{n}={r['p50_ms']:.1f} ms")
        print(f"FIGURE event_latency_p95_n{n}={r['p95_ms']:.1f} ms")
    joined = sorted(n for n in results if "join_cpu_ms" in results[n])
    print(f"FIGURE event_us_per_delivery={results[main_n]['us_per_delivery']:.1f} us")
    print(f"FIGURE event_latency_p95={results[main_n]['p95_ms']:.1f} ms")
    if len(joined) >= 2:
        lo, hi = results[joined[0]], results[joined[-1]]
        name = "join_cpu_ratio_1000_vs_100" if joined[-1] == 1000 else (
            f"join_cpu_ratio_{joined[-1]}_vs_{joined[0]}"
        )  # fmt: skip
        print(f"FIGURE {name}={hi['join_cpu_ms'] / lo['join_cpu_ms']:.2f} ratio")
    if audio is not None:
        print(f"FIGURE audio_us_per_packet={audio['us_per_packet']:.1f} us")
        ratio = results[main_n]["us_per_delivery"] / audio["us_per_packet"]
        print(f"FIGURE event_vs_audio={ratio:.2f} ratio")


if __name__ == "__main__":
    main()
