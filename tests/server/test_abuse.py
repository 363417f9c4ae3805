"""A bounded abuse run against a real `spacesim serve` process (issue 12): 500 WebSocket
connections, a message flood, slow bodies, join/leave churn. `/healthz` (timed by a
separate process, so this one's own load does not count) stays under 100 ms (the 95th
percentile of each phase; on a quiet machine the slowest of all is ~30-70 ms; before the
event stream yielded per message, ~0.7-2 s under the flood), and once the abusers are
gone the server's RSS and open descriptors are back within 5 % of where a first,
identical round left them (the first round fills the allocator's arenas, the second
shows whether anything is kept)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import resource
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from spacesim.server import launch
from tests.server.test_app import Api

pytestmark = pytest.mark.timeout(120)

HEALTHZ_LIMIT_S = 0.100
CONNECTIONS = 500

#: Times GET /healthz every `gap` s for `seconds` s; prints the latencies (s) as JSON.
PROBE = """
import json, sys, time, urllib.request
url, seconds, gap = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
out, end = [], time.monotonic() + seconds
while time.monotonic() < end:
    t0 = time.perf_counter()
    with urllib.request.urlopen(url, timeout=10) as r:
        r.read()
    out.append(time.perf_counter() - t0)
    time.sleep(gap)
print(json.dumps(out))
"""


def _room_for_fds(need: int) -> None:
    """Raise this process's soft descriptor limit (the server inherits it) if too low."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < need:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(need, hard), hard))


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


@contextlib.asynccontextmanager
async def probing(base: str, seconds: float, got: list[float]) -> AsyncIterator[None]:
    """/healthz latencies from another process while the block runs (at least `seconds`)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", PROBE, f"{base}/healthz", str(seconds), "0.02",
        stdout=subprocess.PIPE,
    )  # fmt: skip
    try:
        yield
    finally:
        out, _ = await asyncio.wait_for(proc.communicate(), seconds + 30)
        got.extend(json.loads(out))


async def _tokens(api: Api, users: list[str]) -> None:
    for i in range(0, len(users), 25):
        await asyncio.gather(*(api.token(u) for u in users[i : i + 25]))


async def many_streams(api: Api, space: str, users: list[str], probe: list[float]) -> None:
    """Every user opens the event stream; events fan out to all; then they all go."""
    url = f"{api.base}/v1/spaces/{space}/events?token="
    streams: list[aiohttp.ClientWebSocketResponse] = []
    try:
        for i in range(0, len(users), 50):
            batch = users[i : i + 50]
            streams += await asyncio.gather(
                *(api.http.ws_connect(url + api.tokens[u]) for u in batch)
            )
        async with probing(api.base, 1.5, probe):
            for _ in range(3):
                await api.act(space, "host", "react", emoji="🔥")
                await asyncio.sleep(0.4)
    finally:
        await asyncio.gather(*(ws.close() for ws in streams))


async def flood(api: Api, space: str, probe: list[float], seconds: float = 2.0) -> int:
    """One client sends actions as fast as it can, reconnecting whenever it is closed."""
    url = f"{api.base}/v1/spaces/{space}/events?token={await api.token('flooder')}"
    message = json.dumps({"action": "lower_hand"})
    closed = 0
    async with probing(api.base, seconds, probe):
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            async with api.http.ws_connect(url) as ws:

                async def drain(ws: aiohttp.ClientWebSocketResponse = ws) -> None:
                    async for _ in ws:
                        pass

                reader = asyncio.create_task(drain())
                with contextlib.suppress(ConnectionError):
                    while not ws.closed and time.monotonic() < end:
                        for _ in range(100):
                            await ws.send_str(message)
                        await asyncio.sleep(0)
                await ws.close()
                await reader
                closed += ws.close_code == 4429
    return closed


async def slow_bodies(api: Api, probe: list[float], n: int = 50) -> None:
    """`n` requests that announce a body and send a little of it, then give up."""
    host, port = api.base.removeprefix("http://").rsplit(":", 1)
    token = await api.token("host")
    head = (
        f"POST /v1/spaces HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {token}\r\n"
        "Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{"
    ).encode()
    writers = []
    try:
        for _ in range(n):
            _, writer = await asyncio.open_connection(host, int(port))
            writer.write(head)
            writers.append(writer)
        async with probing(api.base, 1.0, probe):
            await asyncio.sleep(1.0)
    finally:
        for writer in writers:
            writer.close()


async def churn(api: Api, space: str, users: list[str], probe: list[float]) -> None:
    """Listeners join and leave over and over, some with their event stream open."""
    url = f"{api.base}/v1/spaces/{space}/events?token="
    async with probing(api.base, 1.0, probe):
        for _ in range(4):
            await asyncio.gather(*(api.join(space, u) for u in users))
            streams = [await api.http.ws_connect(url + api.tokens[u]) for u in users[:5]]
            await asyncio.gather(*(api.call("POST", f"/v1/spaces/{space}/leave", u) for u in users))
            await asyncio.gather(*(ws.close() for ws in streams))


async def one_round(api: Api, space: str, users: list[str]) -> dict[str, list[float]]:
    probes: dict[str, list[float]] = {k: [] for k in ("streams", "flood", "slow", "churn")}
    t0 = time.monotonic()
    await many_streams(api, space, users, probes["streams"])
    t1 = time.monotonic()
    assert await flood(api, space, probes["flood"]) >= 1  # closed with 4429 at least once
    t2 = time.monotonic()
    await slow_bodies(api, probes["slow"])
    t3 = time.monotonic()
    await churn(api, space, users[:40], probes["churn"])
    print(f"round: streams {t1 - t0:.1f} s, flood {t2 - t1:.1f} s, slow bodies {t3 - t2:.1f} s, "
          f"churn {time.monotonic() - t3:.1f} s")  # fmt: skip
    return probes


async def settled(pid: int, base_fds: int, timeout: float = 15.0) -> tuple[int, int]:
    """RSS and fds once the descriptors are back (closing sockets takes a moment)."""
    deadline = time.monotonic() + timeout
    while fd_count(pid) > base_fds * 1.05 and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
    await asyncio.sleep(0.5)
    return rss_bytes(pid), fd_count(pid)


async def test_abuse_leaves_healthz_fast_and_no_residue(tmp_path: Path) -> None:
    _room_for_fds(4 * CONNECTIONS + 256)
    proc, base = launch.start(tmp_path / "abuse.db")
    try:
        await asyncio.to_thread(launch.wait_up, proc, base)
        connector = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(connector=connector) as http:
            api = Api(http, base)
            space = await api.space("host")
            users = [f"u{i}" for i in range(CONNECTIONS)]
            await _tokens(api, ["host", "flooder", *users])
            first = await one_round(api, space, users)  # warm-up: arenas, caches, tokens
            rss0, fds0 = await settled(proc.pid, fd_count(proc.pid))
            second = await one_round(api, space, users)
            rss1, fds1 = await settled(proc.pid, fds0)
            status, _ = await api.call("GET", f"/v1/spaces/{space}", "host")
            assert status == 200  # and the server still serves
    finally:
        launch.stop(proc)
    for name, times in (first | {f"{k} (2nd)": v for k, v in second.items()}).items():
        print(f"healthz {name}: n={len(times)} max {max(times) * 1e3:.1f} ms")
        assert times, name
        ordered = sorted(times)  # a machine shared with other work has its hiccups:
        assert ordered[int(0.95 * len(ordered))] < HEALTHZ_LIMIT_S, (name, ordered[-5:])
        assert ordered[-1] < 5 * HEALTHZ_LIMIT_S, (name, ordered[-5:])  # no stall
    print(f"fds {fds0} -> {fds1}; RSS {rss0 / 2**20:.1f} -> {rss1 / 2**20:.1f} MB")
    assert fds1 <= fds0 * 1.05, (fds0, fds1)
    assert rss1 <= rss0 * 1.05, (rss0 / 2**20, rss1 / 2**20)
