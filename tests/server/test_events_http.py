"""Participant pages, bounded snapshots, audience counts and clock_ns over real HTTP."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from spacesim import rtc
from spacesim.server.app import ServerConfig, create_app
from tests.server.test_app import SECRET, Api

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[Api]:
    rtc.use_host_addresses(["127.0.0.1"])
    config = ServerConfig(db=tmp_path / "s.db", secret=SECRET)
    server = TestServer(create_app(config), host="127.0.0.1")
    await server.start_server()
    async with aiohttp.ClientSession() as http:
        yield Api(http, str(server.make_url("")).rstrip("/"))
    await server.close()


async def test_participants_are_listed_page_by_page(api: Api) -> None:
    space = await api.space("host")
    for i in range(7):
        assert (await api.join(space, f"u{i}"))[0] == 200
    status, page = await api.call("GET", f"/v1/spaces/{space}/participants?limit=3", "u0")
    assert status == 200 and page["count"] == 8 and page["next"]
    assert page["participants"] == [
        {"user": "host", "role": "host"},
        {"user": "u0", "role": "listener"},
        {"user": "u1", "role": "listener"},
    ]
    await api.call("POST", f"/v1/spaces/{space}/leave", "u3")
    await api.join(space, "late")
    rest = await api.present(space, "u0", "limit=3", page["next"])
    assert list(rest) == ["u2", "u4", "u5", "u6", "late"]
    status, default = await api.call("GET", f"/v1/spaces/{space}/participants", "u0")
    assert len(default["participants"]) == 8 and default["next"] is None
    await api.act(space, "u5", "raise_hand")
    await api.act(space, "host", "approve", target="u5")
    status, speakers = await api.call("GET", f"/v1/spaces/{space}/participants?role=speaker", "u0")
    assert speakers == {
        "participants": [{"user": "u5", "role": "speaker"}],
        "next": None,
        "count": 1,
    }
    assert list(await api.present(space, "u0", "role=listener&limit=2")) == [
        "u0", "u1", "u2", "u4", "u6", "late",
    ]  # fmt: skip


@pytest.mark.parametrize(
    "query", ["limit=0", "limit=501", "limit=x", "after=-1", "after=abc", "role=king"]
)
async def test_bad_page_parameters_are_refused(api: Api, query: str) -> None:
    space = await api.space("host")
    status, data = await api.call("GET", f"/v1/spaces/{space}/participants?{query}", "host")
    assert status == 400 and data["error"] == "bad_request" and data["reason"]


async def test_participants_need_a_token_and_a_space(api: Api) -> None:
    space = await api.space("host")
    assert (await api.call("GET", f"/v1/spaces/{space}/participants"))[0] == 401
    assert (await api.call("GET", "/v1/spaces/s-nope/participants", "host"))[0] == 404


async def test_join_answer_and_hello_are_bounded_and_events_carry_clock_ns(api: Api) -> None:
    space = await api.space("host")
    for i in range(30):
        await api.join(space, f"u{i}")
    status, joined = await api.join(space, "me")
    assert status == 200 and "participants" not in joined["space"]
    assert joined["space"]["counts"]["participants"] == 32
    assert joined["events"][0]["clock_ns"] <= time.monotonic_ns()
    url = f"{api.base}/v1/spaces/{space}/events?token={await api.token('me')}"
    before = time.monotonic_ns()
    async with api.http.ws_connect(url) as ws:
        hello = await ws.receive_json(timeout=5)
        assert hello["type"] == "hello" and "participants" not in hello["space"]
        assert hello["space"]["counts"] == {
            "participants": 32,
            "listeners": 31,
            "stage": 1,
            "hands": 0,
            "invites": 0,
        }
        assert hello["space"]["stage"] == [{"user": "host", "role": "host"}]
        assert isinstance(hello["clock_ns"], int)
        t0 = time.monotonic_ns()
        await api.act(space, "u3", "react", emoji="🎉")
        ev = await ws.receive_json(timeout=5)
        arrived = time.monotonic_ns()
        assert ev["kind"] == "reaction" and t0 <= ev["clock_ns"] <= arrived
        assert before <= hello["clock_ns"]
        await api.join(space, "quiet")  # a listener's join: this listener hears a count
        ev = await ws.receive_json(timeout=5)  # within a second
        assert ev["kind"] == "audience" and ev["attrs"]["participants"] == 33
        assert ev["attrs"]["listeners"] == 32 and ev["clock_ns"] <= time.monotonic_ns()


async def test_a_platform_moderator_sees_every_listener_join(api: Api) -> None:
    space = await api.space("host")
    token = await api.token("mod", moderator=True)
    async with api.http.ws_connect(f"{api.base}/v1/spaces/{space}/events?token={token}") as ws:
        await ws.receive_json(timeout=5)  # hello
        await api.join(space, "a")
        await api.join(space, "b")
        got = []
        while len([k for k in got if k == "participant_joined"]) < 2:
            got.append((await ws.receive_json(timeout=5))["kind"])
        assert set(got) <= {"participant_joined", "audience"}
