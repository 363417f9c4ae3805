"""Per-user throttles (429 ``rate_limited`` with ``Retry-After``) and ended rooms freed
from memory, over real HTTP on 127.0.0.1."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from spacesim import rtc
from spacesim.protocol import ProtocolError
from spacesim.server.app import STATE, ServerConfig, ServerState, create_app
from spacesim.server.room import RateLimiter
from tests.server.test_app import SECRET, Api

pytestmark = pytest.mark.timeout(60)


class Srv(Api):
    """The test client, with the server's state and the headers of each answer."""

    state: ServerState

    async def raw(
        self, method: str, path: str, user: str, body: Any = None
    ) -> tuple[int, Any, aiohttp.typedefs.LooseHeaders]:
        headers = {"Authorization": f"Bearer {await self.token(user)}"}
        r = await self.http.request(method, f"{self.base}{path}", headers=headers, json=body)
        return r.status, json.loads(await r.text()), r.headers

    async def until_429(
        self, method: str, path: str, user: str, body: Any, tries: int
    ) -> tuple[list[int], Any, Any]:
        """Send the request up to `tries` times; the statuses, and the 429's body and headers."""
        codes: list[int] = []
        for _ in range(tries):
            status, data, headers = await self.raw(method, path, user, body)
            codes.append(status)
            if status == 429:
                return codes, data, headers
        raise AssertionError(f"never throttled: {codes}")


@pytest.fixture
async def srv(tmp_path: Path) -> AsyncIterator[Srv]:
    rtc.use_host_addresses(["127.0.0.1"])
    app = create_app(ServerConfig(db=tmp_path / "t.db", secret=SECRET))
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    async with aiohttp.ClientSession() as http:
        client = Srv(http, str(server.make_url("")).rstrip("/"))
        client.state = app[STATE]
        yield client
    await server.close()


def _throttled(data: Any, headers: Any, most: int) -> None:
    assert data["error"] == "rate_limited" and data["reason"], data
    retry = headers["Retry-After"]
    assert retry.isdigit() and 1 <= int(retry) <= most, retry
    assert data["retry_after"] == int(retry)


def test_retry_after_is_the_ceiling_of_the_wait_for_the_next_token() -> None:
    now = [0.0]
    limiter = RateLimiter(10 / 60, 2, lambda: now[0])  # one token per 6 s
    limiter.check("u", "things")
    limiter.check("u", "things")
    with pytest.raises(ProtocolError) as refused:
        limiter.check("u", "things")
    assert refused.value.code == "rate_limited" and refused.value.retry_after == 6
    now[0] = 4.5  # 0.75 of a token: 1.5 s to go, rounded up
    with pytest.raises(ProtocolError) as refused:
        limiter.check("u", "things")
    assert refused.value.retry_after == 2 and refused.value.extra == {"retry_after": 2}
    now[0] = 6.0
    limiter.check("u", "things")
    limiter.check("other", "things")  # per key


async def test_reports_blocks_and_self_mute_toggles_are_throttled_per_user(srv: Srv) -> None:
    space = await srv.space("host")
    for user in ("fan", "x"):
        assert (await srv.join(space, user))[0] == 200
    acts = f"/v1/spaces/{space}/actions"
    report = {"action": "report", "target": "x", "reason": "spam"}
    codes, data, headers = await srv.until_429("POST", acts, "fan", report, 10)
    assert codes == [200] * 5 + [429], codes
    _throttled(data, headers, 6)
    other = await srv.space("host2")  # a user's limit holds across spaces
    assert (await srv.join(other, "fan"))[0] == 200
    status, data, headers = await srv.raw(
        "POST", f"/v1/spaces/{other}/actions", "fan", {"action": "report"}
    )
    assert status == 429
    _throttled(data, headers, 6)
    assert (await srv.act(space, "x", "report", target="fan"))[0] == 200  # per user

    # personal blocks by a listener (no authority): 10 at once, then refused
    codes, data, headers = await srv.until_429(
        "POST", acts, "x", {"action": "block", "target": "fan"}, 15
    )
    assert 429 not in codes[:10] and codes[-1] == 429, codes
    _throttled(data, headers, 6)

    toggles = []
    for i in range(30):
        action = "mute" if i % 2 == 0 else "unmute"
        status, data, headers = await srv.raw(
            "POST", acts, "host", {"action": action, "target": "host"}
        )
        toggles.append(status)
        if status == 429:
            _throttled(data, headers, 1)
            break
    assert toggles[:10] == [200] * 10 and toggles[-1] == 429, toggles


async def test_space_creation_is_throttled_per_host(srv: Srv) -> None:
    body = {"title": "t"}
    codes, data, headers = await srv.until_429("POST", "/v1/spaces", "host", body, 10)
    assert codes == [201] * 5 + [429], codes
    _throttled(data, headers, 6)
    assert (await srv.raw("POST", "/v1/spaces", "another", body))[0] == 201


async def test_reactions_and_hands_429_carry_retry_after(srv: Srv) -> None:
    space = await srv.space("host")
    await srv.join(space, "fan")
    acts = f"/v1/spaces/{space}/actions"
    _, data, headers = await srv.until_429(
        "POST", acts, "fan", {"action": "react", "emoji": "👏"}, 30
    )
    _throttled(data, headers, 1)
    for _ in range(4):
        status, data, headers = await srv.raw("POST", acts, "fan", {"action": "raise_hand"})
        if status == 429:
            break
        await srv.act(space, "fan", "lower_hand")
    assert status == 429
    _throttled(data, headers, 10)


async def test_a_throttled_action_on_the_websocket_answers_retry_after(srv: Srv) -> None:
    space = await srv.space("host")
    await srv.join(space, "fan")
    url = f"{srv.base}/v1/spaces/{space}/events?token={await srv.token('fan')}"
    async with srv.http.ws_connect(url) as ws:
        assert (await ws.receive_json(timeout=5))["type"] == "hello"
        for i in range(30):
            await ws.send_json({"id": i, "action": "react", "emoji": "🔥"})
            while (reply := await ws.receive_json(timeout=5))["type"] == "event":
                pass
            assert reply["id"] == i
            if reply["type"] == "error":
                break
        assert reply["error"] == "rate_limited" and reply["retry_after"] == 1, reply


async def test_ended_rooms_leave_memory_and_still_answer_from_the_store(srv: Srv) -> None:
    state = srv.state
    live = await srv.space("keeper")
    ended = []
    for i in range(200):
        host = f"h{i % 40}"  # 5 spaces per host: within the creation limit
        space = await srv.space(host)
        how = i % 3
        if how == 0:
            status, data = await srv.call("POST", f"/v1/spaces/{space}/end", host)
        elif how == 1:
            status, data = await srv.call("POST", f"/v1/spaces/{space}/leave", host)
        else:
            await srv.token("mod", moderator=True)
            status, data = await srv.call(
                "POST", f"/v1/moderation/spaces/{space}", "mod", {"action": "end"}
            )
        assert status == 200, data
        ended.append(space)
    assert list(state.rooms) == [live]
    for space in ended[:12]:
        status, data = await srv.call("GET", f"/v1/spaces/{space}", "fan")
        assert status == 200 and data["status"] == "ended", data
        status, data = await srv.call("GET", f"/v1/spaces/{space}/participants", "fan")
        assert status == 200 and data == {"participants": [], "next": None, "count": 0}
        status, data = await srv.join(space, "fan")
        assert status == 409 and data["error"] == "space_ended", data
        status, data = await srv.act(space, "fan", "raise_hand")
        assert status == 409 and data["error"] == "space_ended", data
        status, data = await srv.call("POST", f"/v1/spaces/{space}/leave", "fan")
        assert status == 200 and data == {"ok": True, "events": []}, data
    status, data = await srv.call("GET", f"/v1/spaces/{live}", "fan")
    assert status == 200 and data["status"] == "live"
