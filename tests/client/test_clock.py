"""spacesim.client.clock: a process's offset to the server's clock (Cristian's algorithm)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web

from spacesim.client.clock import server_offset

AHEAD_NS = 5_000_000_000  # the fake server's clock runs 5 s ahead of ours


async def _serve(handler: web.RequestHandler) -> AsyncIterator[str]:  # type: ignore[type-arg]
    app = web.Application()
    app.router.add_get("/healthz", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


@pytest.fixture
async def ahead() -> AsyncIterator[str]:
    async def healthz(request: web.Request) -> web.Response:
        return web.json_response({"ok": True, "clock_ns": time.monotonic_ns() + AHEAD_NS})

    async for url in _serve(healthz):
        yield url


@pytest.fixture
async def foreign() -> AsyncIterator[str]:
    async def healthz(request: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    async for url in _serve(healthz):
        yield url


async def test_offset_recovers_the_servers_lead_within_half_a_round_trip(ahead: str) -> None:
    async with aiohttp.ClientSession() as http:
        est = await server_offset(http, ahead, samples=8)
    assert 0 < est.rtt_ns < 50_000_000
    assert abs(est.offset_ns - AHEAD_NS) <= est.rtt_ns // 2 + 1
    clock = est.clock()
    assert abs(clock() - time.monotonic_ns() - AHEAD_NS) <= est.rtt_ns // 2 + 1_000_000


async def test_a_server_without_a_clock_is_refused(foreign: str) -> None:
    async with aiohttp.ClientSession() as http:
        with pytest.raises(ValueError, match="clock_ns"):
            await server_offset(http, foreign)
