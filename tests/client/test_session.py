"""RoomClient against a real server on 127.0.0.1: limits, participant pages, the hello."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest

from spacesim.client.session import ClientError, RoomClient

pytestmark = pytest.mark.timeout(30)


async def test_room_client_caps_lists_and_streams(base: str) -> None:
    async with aiohttp.ClientSession() as http:
        host = RoomClient(base, "host", http)
        space = await host.create_space("capped", "everyone", listener_cap=3)
        later = await host.create_space("later", scheduled_for=4e9)
        assert (await host.space(later))["status"] == "scheduled"
        for i in range(3):
            await RoomClient(base, f"u{i}", http).join(space)
        with pytest.raises(ClientError) as info:
            await RoomClient(base, "u3", http).join(space)
        assert info.value.status == 409 and info.value.code == "room_full"
        everyone = [p async for p in host.participants(space, page_size=2)]
        assert everyone == [
            {"user": "host", "role": "host"},
            *({"user": f"u{i}", "role": "listener"} for i in range(3)),
        ]
        assert [p["user"] async for p in host.participants(space, role="host")] == ["host"]
        stream = host.events(space)
        hello = await anext(stream)
        assert hello["type"] == "hello" and hello["space"]["limits"]["listener_cap"] == 3
        await host.act(space, "react", emoji="🔥")
        event = await anext(stream)
        assert event["kind"] == "reaction" and isinstance(event["clock_ns"], int)
        await stream.aclose()
        quiet = host.events(space, hello=False)
        first = asyncio.ensure_future(anext(quiet))
        await asyncio.sleep(0.3)  # connected by now
        await host.act(space, "react", emoji="👏")
        seen = [await first]
        while seen[-1].get("kind") != "reaction":
            seen.append(await anext(quiet))
        assert all(m["type"] == "event" for m in seen)
        await quiet.aclose()
