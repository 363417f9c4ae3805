"""A space's listener cap, set when the space is created, over real HTTP on 127.0.0.1."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.server.test_app import Api, _serve

pytestmark = pytest.mark.timeout(60)


async def test_a_bad_listener_cap_is_refused_with_a_reason(tmp_path: Path) -> None:
    proc, base = await _serve(tmp_path / "bad.db", 0)
    try:
        async with aiohttp.ClientSession() as http:
            api = Api(http, base)
            bad: Any
            for bad in (-1, 1.5, "10", True, [3], 10**10):
                status, data = await api.call(
                    "POST", "/v1/spaces", "host", {"title": "t", "listener_cap": bad}
                )
                assert status == 400 and data["error"] == "bad_request", bad
                assert "listener_cap" in data["reason"]
    finally:
        proc.kill()
        proc.wait(timeout=10)


async def test_listener_cap_refuses_joins_with_room_full_and_survives_kill_9(
    tmp_path: Path,
) -> None:
    db = tmp_path / "cap.db"
    proc, base = await _serve(db, 0)
    try:
        async with aiohttp.ClientSession() as http:
            api = Api(http, base)
            status, created = await api.call(
                "POST", "/v1/spaces", "host", {"title": "t", "listener_cap": 2}
            )
            assert status == 201 and created["limits"]["listener_cap"] == 2
            space = created["id"]
            _, free = await api.call("POST", "/v1/spaces", "host", {"title": "u"})
            assert free["limits"]["listener_cap"] is None
            assert (await api.join(space, "a"))[0] == 200
            assert (await api.join(space, "b"))[0] == 200
            status, refused = await api.join(space, "c")
            assert status == 409 and refused["error"] == "room_full" and refused["reason"]
            assert (await api.join(space, "a"))[0] == 200  # a rejoin is not a new listener
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=10)
        proc, base = await _serve(db, 0)
        async with aiohttp.ClientSession() as http:
            api = Api(http, base)
            status, state = await api.call("GET", f"/v1/spaces/{space}", "host")
            assert status == 200 and state["limits"]["listener_cap"] == 2
            for user in ("a", "b"):  # the crash dropped everyone; they rejoin
                assert (await api.join(space, user))[0] == 200
            status, refused = await api.join(space, "c")
            assert status == 409 and refused["error"] == "room_full"
            assert (await api.call("POST", f"/v1/spaces/{space}/leave", "a"))[0] == 200
            assert (await api.join(space, "c"))[0] == 200  # a seat came free
    finally:
        proc.kill()
        proc.wait(timeout=10)
