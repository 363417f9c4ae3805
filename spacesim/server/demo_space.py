"""`spacesim serve --demo-space`: a live space hosted by a synthetic speaker who reads the
shipped clips in a loop, so that the web page at / has something to play at once.

The host is an ordinary client of the protocol (`spacesim.client`: a dev token, create or
find the space, join with an offer), run on the server's own event loop. After a restart
it finds its space again (`GET /v1/spaces`) and rejoins it instead of making another.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

import aiohttp
from aiohttp import web

from spacesim.client.session import ClientError, RoomClient, connect_audio
from spacesim.client.speaker import SILENCE, SpeakerTrack, clip_names, load_clip

__all__ = ["DEMO_HOST", "DEMO_TITLE", "attach", "host_demo"]

log = logging.getLogger("spacesim.server.demo")

DEMO_HOST = "demo-host"
DEMO_TITLE = "Demo: the shipped clips, read in a loop"
#: Silence between two clips (20 ms frames): a pause a listener hears, and where live
#: captions end an utterance.
PAUSE_FRAMES = 40


def _script() -> list[bytes]:
    packets: list[bytes] = []
    for name in clip_names():
        packets += load_clip(name)
        packets += [SILENCE] * PAUSE_FRAMES
    return packets


async def _find_or_create(client: RoomClient) -> str:
    """The demo host's live space on this server, else a new one (captions on)."""
    listed = await client.spaces(status="live")
    for space in listed["spaces"]:
        if space["host"] == DEMO_HOST:
            return str(space["id"])
    return await client.create_space(DEMO_TITLE, captions=True)


async def host_demo(base: str, slots: int, ready: asyncio.Event | None = None) -> None:
    """Host the demo space at `base` until cancelled (waits for the server to answer)."""
    async with aiohttp.ClientSession() as http:
        client = RoomClient(base, DEMO_HOST, http)
        for _ in range(600):  # the server is starting in this same process
            try:
                space = await _find_or_create(client)
                break
            except ClientError as exc:
                if exc.code != "unreachable":
                    raise
                await asyncio.sleep(0.05)
        else:
            raise RuntimeError(f"{base} never answered")
        track = SpeakerTrack(_script(), sender_id=0, loop=True)
        link = await connect_audio(
            client, space, lambda slot, packet, at: None, publish=track, slots=slots
        )
        log.info("demo space %s: %s speaks the clips in a loop", space, DEMO_HOST)
        if ready is not None:
            ready.set()
        try:
            await asyncio.Event().wait()  # until cancelled: the server is stopping
        finally:
            await link.close()


def attach(app: web.Application, base: str, slots: int) -> None:
    """Run `host_demo` for as long as `app` runs; a failure is logged, not fatal."""

    async def demo(app: web.Application) -> AsyncIterator[None]:
        task = asyncio.create_task(host_demo(base, slots))
        task.add_done_callback(_log_failure)
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task

    app.cleanup_ctx.append(demo)


def _log_failure(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("the demo space stopped: %r", task.exception())
