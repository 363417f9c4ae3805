"""`spacesim serve --demo-space`: a live space whose host reads the clips, found again
(not made again) after a restart."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp
import pytest

from spacesim import rtc
from spacesim.client.session import RoomClient, connect_audio
from spacesim.server import launch
from spacesim.server.demo_space import DEMO_HOST, DEMO_TITLE

pytestmark = pytest.mark.timeout(90)


async def demo_spaces(client: RoomClient) -> list[str]:
    listed = await client.spaces()
    return [s["id"] for s in listed["spaces"] if s["host"] == DEMO_HOST]


async def test_the_demo_space_is_heard_and_is_the_same_after_a_restart(tmp_path: Path) -> None:
    rtc.use_host_addresses(["127.0.0.1"])
    db, port = tmp_path / "demo.db", launch.free_port()
    proc, url = launch.start(db, port, args=["--demo-space"])
    try:
        launch.wait_up(proc, url)
        async with aiohttp.ClientSession() as http:
            fan = RoomClient(url, "fan", http)
            for _ in range(100):  # the demo host joins just after the server answers
                if found := await demo_spaces(fan):
                    break
                await asyncio.sleep(0.1)
            assert len(found) == 1, found
            space = found[0]
            assert (await fan.spaces())["spaces"][0]["title"] == DEMO_TITLE
            got: list[int] = []
            link = await connect_audio(fan, space, lambda slot, p, at: got.append(slot))
            try:
                for _ in range(100):
                    if len(got) >= 50:  # a second of the host's speech
                        break
                    await asyncio.sleep(0.1)
                assert len(got) >= 50, len(got)
            finally:
                await link.close()
            launch.stop(proc)
            proc, _ = launch.start(db, port, args=["--demo-space"])
            launch.wait_up(proc, url)
            await asyncio.sleep(1.0)  # time for a second demo space, were one to be made
            assert await demo_spaces(fan) == [space]
    finally:
        launch.stop(proc)


def test_demo_space_needs_dev_mode(tmp_path: Path) -> None:
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "spacesim.cli", "serve", "--db", str(tmp_path / "x.db"),
           "--no-dev", "--demo-space"]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "--demo-space needs dev mode" in proc.stderr + proc.stdout
