"""Server robustness: /healthz under a one-client WebSocket flood, and memory per space.

What runs (all on 127.0.0.1, a real ``spacesim serve`` process with a fresh database,
started by ``spacesim.server.launch``; every phase has a deadline):

* ``/healthz`` p99. This process times ``GET /healthz`` (a new connection each, every
  ``GAP_S`` s) for ``--seconds`` s twice per run: first with nothing else going on (the
  baseline), then while a flooder process sends actions on one event stream as fast as
  it can (``{"action": "lower_hand"}`` in bursts of 100, reconnecting whenever the
  server closes the stream: with the default limits it is refused past 50 messages a
  second and closed with 4429 soon after, so the flood is mostly reconnects and refused
  messages). The figure is the median over ``--runs`` of each run's p99.
* RSS per 1,000 spaces. Spaces are created (``POST /v1/spaces``) and ended
  (``POST .../end``) ``--spaces`` at a time, ten requests in flight; the server's RSS
  (``VmRSS`` of ``/proc/<pid>/status``) before and after each batch, once the batch is
  done and the server idle for ``SETTLE_S`` s, gives the growth. A first batch warms up
  (not counted). Each host may create 5 spaces at once (the per-host throttle), so each
  batch uses fresh hosts, 5 spaces each: a batch of 1,000 also brings 200 new users
  (a row each in the store, a token bucket each in the throttle), part of the figure.
  The figure is the median growth over ``--runs`` batches, scaled to 1,000 spaces.

Run: ``python benchmarks/bench_abuse.py [--runs 5] [--seconds 3] [--spaces 1000]
[--quick]``. Targets: ``healthz_p99_under_flood`` <= 100 ms,
``rss_per_1000_spaces`` <= 0.5 MB.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import statistics
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import aiohttp

from spacesim.results import nearest_rank
from spacesim.server import launch

GAP_S = 0.01  # between two /healthz probes
SETTLE_S = 1.0  # idle before an RSS reading
SPACES_PER_HOST = 5  # the per-host creation burst (spacesim.server.app.SPACE_CREATES)
IN_FLIGHT = 10


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def _probe(base: str, seconds: float) -> list[float]:
    """/healthz latencies (ms) for `seconds` s."""
    out: list[float] = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        t0 = time.perf_counter()
        with urllib.request.urlopen(f"{base}/healthz", timeout=10) as r:
            r.read()
        out.append((time.perf_counter() - t0) * 1e3)
        time.sleep(GAP_S)
    return out


async def _token(http: aiohttp.ClientSession, base: str, user: str) -> str:
    async with http.post(f"{base}/v1/dev/token", json={"user": user}) as r:
        r.raise_for_status()
        return str((await r.json())["token"])


async def _flood(base: str, seconds: float, ready: Any) -> tuple[int, int]:
    async with aiohttp.ClientSession() as http:
        token = await _token(http, base, "bench-host")
        headers = {"Authorization": f"Bearer {token}"}
        async with http.post(f"{base}/v1/spaces", json={"title": "f"}, headers=headers) as r:
            space = (await r.json())["id"]
        url = f"{base}/v1/spaces/{space}/events?token={await _token(http, base, 'flooder')}"
        message = json.dumps({"action": "lower_hand"})
        sent = closes = 0
        ready.set()
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            async with http.ws_connect(url) as ws:

                async def drain(ws: aiohttp.ClientWebSocketResponse = ws) -> None:
                    async for _ in ws:
                        pass

                reader = asyncio.create_task(drain())
                try:
                    while not ws.closed and time.monotonic() < end:
                        for _ in range(100):
                            await ws.send_str(message)
                        sent += 100
                        await asyncio.sleep(0)
                except ConnectionError:
                    pass
                await ws.close()
                await reader
                closes += ws.close_code == 4429
        return sent, closes


def _flooder(base: str, seconds: float, ready: Any, out: Any) -> None:
    out.put(asyncio.run(_flood(base, seconds, ready)))


def healthz_run(base: str, seconds: float) -> dict[str, float]:
    """One run: p99 of /healthz alone, then under a one-client flood."""
    baseline = _probe(base, seconds)
    ctx = mp.get_context("spawn")
    ready, out = ctx.Event(), ctx.Queue()
    flooder = ctx.Process(target=_flooder, args=(base, seconds + 1.0, ready, out))
    flooder.start()
    try:
        if not ready.wait(30):
            raise RuntimeError("the flooder did not start")
        time.sleep(0.5)  # the flood under way
        flooded = _probe(base, seconds)
        sent, closes = out.get(timeout=seconds + 30)
    finally:
        flooder.join(30)
        if flooder.is_alive():
            flooder.kill()
    return {
        "baseline_p99": nearest_rank(baseline, 0.99),
        "flood_p99": nearest_rank(flooded, 0.99),
        "flood_max": max(flooded),
        "probes": len(flooded),
        "sent_per_s": sent / (seconds + 1.0),
        "closed_4429": closes,
    }


async def _spaces_batch(http: aiohttp.ClientSession, base: str, tag: str, n: int) -> None:
    """`n` spaces created and ended, by fresh hosts (5 each: the per-host burst)."""
    hosts = [f"{tag}-h{i}" for i in range(-(-n // SPACES_PER_HOST))]
    tokens: dict[str, str] = {}
    gate = asyncio.Semaphore(IN_FLIGHT)

    async def mint(host: str) -> None:
        async with gate:
            tokens[host] = await _token(http, base, host)

    async def one(k: int) -> None:
        headers = {"Authorization": f"Bearer {tokens[hosts[k // SPACES_PER_HOST]]}"}
        async with gate:
            async with http.post(f"{base}/v1/spaces", json={"title": "b"}, headers=headers) as r:
                if r.status != 201:
                    raise RuntimeError(f"create: {r.status} {await r.text()}")
                space = (await r.json())["id"]
            async with http.post(f"{base}/v1/spaces/{space}/end", headers=headers) as r:
                if r.status != 200:
                    raise RuntimeError(f"end: {r.status} {await r.text()}")

    await asyncio.gather(*(mint(h) for h in hosts))
    await asyncio.gather(*(one(k) for k in range(n)))


async def spaces_runs(base: str, pid: int, n: int, runs: int) -> list[float]:
    """RSS growth (MB) per batch of `n` spaces, after one uncounted warm-up batch."""
    growth = []
    async with aiohttp.ClientSession() as http:
        await _spaces_batch(http, base, "warm", n)
        for run in range(runs):
            await asyncio.sleep(SETTLE_S)
            before = _rss_mb(pid)
            t0 = time.monotonic()
            await _spaces_batch(http, base, f"r{run}", n)
            took = time.monotonic() - t0
            await asyncio.sleep(SETTLE_S)
            growth.append(_rss_mb(pid) - before)
            print(f"  spaces batch {run + 1}: {n} in {took:.1f} s, RSS {before:.1f} -> "
                  f"{before + growth[-1]:.1f} MB", flush=True)  # fmt: skip
    return growth


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--seconds", type=float, default=3.0, help="per /healthz measurement")
    ap.add_argument("--spaces", type=int, default=1000, help="spaces per batch")
    ap.add_argument("--quick", action="store_true", help="a short run (smoke test)")
    args = ap.parse_args()
    if args.quick:
        args.runs, args.seconds, args.spaces = 1, 1.0, 100
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="bench_abuse-") as tmp:
        proc, base = launch.start(Path(tmp) / "abuse.db")
        try:
            launch.wait_up(proc, base)
            health = []
            for run in range(args.runs):
                r = healthz_run(base, args.seconds)
                health.append(r)
                print(f"healthz run {run + 1}: p99 {r['baseline_p99']:.1f} ms alone, "
                      f"{r['flood_p99']:.1f} ms under the flood (max {r['flood_max']:.1f} ms, "
                      f"{r['probes']:.0f} probes; flooder sent {r['sent_per_s']:.0f} msg/s, "
                      f"closed with 4429 {r['closed_4429']:.0f} times)", flush=True)  # fmt: skip
            growth = asyncio.run(spaces_runs(base, proc.pid, args.spaces, args.runs))
        finally:
            launch.stop(proc)
    per_1000 = statistics.median(growth) * 1000 / args.spaces
    print(f"total {time.monotonic() - t0:.0f} s")
    base_p99 = statistics.median(r["baseline_p99"] for r in health)
    flood_p99 = statistics.median(r["flood_p99"] for r in health)
    print(f"FIGURE healthz_p99_baseline={base_p99:.1f} ms")
    print(f"FIGURE healthz_p99_under_flood={flood_p99:.1f} ms")
    print(f"FIGURE rss_per_1000_spaces={per_1000:.2f} MB")


if __name__ == "__main__":
    main()
