"""Participant pages, bounded snapshots, audience counts, clock_ns and the event fan-out
over real HTTP and WebSocket connections."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import socket
import struct
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from spacesim import rtc
from spacesim.server import app as app_module
from spacesim.server.app import STATE, ServerConfig, ServerState, create_app
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
        got: list[str] = []
        while len([k for k in got if k == "participant_joined"]) < 2:
            got.append((await ws.receive_json(timeout=5))["kind"])
        assert set(got) <= {"participant_joined", "audience"}


# ---------------------------------------------------------------- the fan-out on real sockets


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[tuple[Api, ServerState]]:
    rtc.use_host_addresses(["127.0.0.1"])
    config = ServerConfig(db=tmp_path / "s.db", secret=SECRET)
    app = create_app(config)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    async with aiohttp.ClientSession() as http:
        yield Api(http, str(server.make_url("")).rstrip("/")), app[STATE]
    await server.close()


def padded(i: int, size: int) -> dict[str, Any]:
    """A synthetic event whose JSON text is exactly `size` bytes (ASCII)."""
    msg: dict[str, Any] = {"type": "event", "kind": "test", "i": i, "pad": ""}
    msg["pad"] = "x" * (size - len(json.dumps(msg)))
    assert len(json.dumps(msg)) == size
    return msg


def frames(data: bytes) -> tuple[list[tuple[int, bytes]], bytes]:
    """Whole unmasked frames (opcode, payload) at the start of `data`, and the rest."""
    out, i = [], 0
    while len(data) - i >= 2:
        n, head = data[i + 1] & 0x7F, 2
        assert not data[i + 1] & 0x80 and data[i] & 0x80  # unmasked, FIN
        if n == 126:
            (n,), head = struct.unpack_from("!H", data, i + 2), 4
        elif n == 127:
            (n,), head = struct.unpack_from("!Q", data, i + 2), 10
        if len(data) - i < head + n:
            break
        out.append((data[i] & 0x0F, data[i + head : i + head + n]))
        i += head + n
    return out, data[i:]


class RawClient:
    """A WebSocket client on a bare socket with a small receive buffer: it reads only
    when told to, so it can stop reading like a stuck client."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.rest = b""

    @classmethod
    async def connect(cls, api: Api, space: str, user: str) -> RawClient:
        loop = asyncio.get_running_loop()
        host, port = api.base.removeprefix("http://").rsplit(":", 1)
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.setblocking(False)
        await loop.sock_connect(sock, (host, int(port)))
        key = base64.b64encode(os.urandom(16)).decode()
        await loop.sock_sendall(
            sock,
            f"GET /v1/spaces/{space}/events?token={await api.token(user)} HTTP/1.1\r\n"
            f"Host: {host}:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
            "Sec-WebSocket-Extensions: permessage-deflate\r\n\r\n".encode(),
        )
        client = cls(sock)
        head = b""
        while b"\r\n\r\n" not in head:
            head += await loop.sock_recv(sock, 4096)
        head, client.rest = head.split(b"\r\n\r\n", 1)
        assert head.startswith(b"HTTP/1.1 101") and b"permessage-deflate" not in head.lower()
        return client

    async def read(
        self, until: Callable[[list[tuple[int, bytes]]], bool]
    ) -> list[tuple[int, bytes]]:
        """Frames until `until(frames so far)` holds; each (opcode, payload)."""
        got: list[tuple[int, bytes]] = []
        loop = asyncio.get_running_loop()
        while True:
            new, self.rest = frames(self.rest)
            got += new
            if until(got):
                return got
            data = await asyncio.wait_for(loop.sock_recv(self.sock, 65536), 5)
            assert data, "closed"
            self.rest += data


async def test_frames_arrive_whole_and_in_order_for_many_subscribers_at_every_length(
    served: tuple[Api, ServerState],
) -> None:
    api, state = served
    space = await api.space("host")
    users = [f"u{i}" for i in range(40)]
    for user in users:
        await api.join(space, user)
    socks = []
    for k, user in enumerate(users):  # half offer compression: the stream never uses it
        ws = await api.http.ws_connect(
            f"{api.base}/v1/spaces/{space}/events?token={await api.token(user)}",
            compress=15 if k % 2 else 0,
        )
        assert ws.compress == 0
        assert (await ws.receive_json(timeout=5))["type"] == "hello"
        socks.append(ws)
    room = state.rooms[space]
    sizes = [60, 125, 126, 127, 65535, 65536, 65537, 1000]
    sent: list[str] = []
    for round_ in range(3):
        for size in sizes:
            msg = padded(len(sent), size)
            room._fan_out(msg)
            sent.append(json.dumps(msg))
        await api.act(space, users[round_], "react", emoji="🔥")  # a real event between
        sent.append("reaction")

        async def take(ws: aiohttp.ClientWebSocketResponse, want: list[str]) -> None:
            for expected in want:
                msg = await ws.receive(timeout=5)
                assert msg.type is aiohttp.WSMsgType.TEXT
                if expected == "reaction":
                    assert json.loads(msg.data)["kind"] == "reaction"
                else:
                    assert msg.data == expected

        await asyncio.gather(*(take(ws, sent[-len(sizes) - 1 :]) for ws in socks))
    assert room.n_subscribers == len(users)
    for ws in socks:
        await ws.close()


async def test_a_client_that_stops_reading_is_cut_off_without_delaying_the_others(
    served: tuple[Api, ServerState], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(app_module, "CLOSE_GRACE_S", 30.0)  # this test reads the end
    api, state = served
    space = await api.space("host")
    for user in ("slow", "a", "b", "c"):
        await api.join(space, user)
    slow = await RawClient.connect(api, space, "slow")
    await slow.read(lambda got: len(got) >= 1)  # the hello; then it stops reading
    room = state.rooms[space]
    (sub,) = [s for s in room._subscribers if s.user == "slow"]
    assert sub.transport is not None  # the server side of its socket: buffer little there
    server_sock = sub.transport.get_extra_info("socket")  # type: ignore[attr-defined]
    server_sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    fast = []
    for user in ("a", "b", "c"):
        ws = await api.http.ws_connect(
            f"{api.base}/v1/spaces/{space}/events?token={await api.token(user)}"
        )
        await ws.receive_json(timeout=5)
        fast.append(ws)
    sent = 0
    slowest = 0.0
    while room.n_subscribers == 4:
        assert sent < 100, "never cut off"
        msg = json.dumps(padded(sent, 32 * 1024))
        t0 = time.monotonic()
        room._fan_out(json.loads(msg))
        got = await asyncio.gather(*(ws.receive_str(timeout=5) for ws in fast))
        slowest = max(slowest, time.monotonic() - t0)
        assert got == [msg] * 3
        sent += 1
    assert 256 // 32 <= sent <= 256 // 32 + 8  # the limit, plus what the kernel holds
    assert slowest < 1.0  # nobody waited for the slow one
    assert [s.user for s in room._subscribers] == ["a", "b", "c"]
    await api.act(space, "a", "react", emoji="👏")  # the others go on
    for ws in fast:
        assert json.loads(await ws.receive_str(timeout=5))["kind"] == "reaction"
    # the slow one, reading again: every event up to the cut-off, the error, a close frame
    tail = await slow.read(lambda got: bool(got) and got[-1][0] == 8)
    texts = [payload for op, payload in tail if op == 1]
    assert [json.loads(t)["i"] for t in texts[:-1]] == list(range(sent))
    assert json.loads(texts[-1])["error"] == "too_slow"
    slow.sock.close()
    for ws in fast:
        await ws.close()


async def test_a_stuck_client_is_aborted_after_the_grace_period(
    served: tuple[Api, ServerState], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(app_module, "CLOSE_GRACE_S", 0.2)
    api, state = served
    space = await api.space("host")
    await api.join(space, "slow")
    slow = await RawClient.connect(api, space, "slow")
    await slow.read(lambda got: len(got) >= 1)
    room = state.rooms[space]
    (sub,) = list(room._subscribers)
    assert sub.transport is not None
    transport = sub.transport
    transport.get_extra_info("socket").setsockopt(  # type: ignore[attr-defined]
        socket.SOL_SOCKET, socket.SO_SNDBUF, 4096
    )
    for i in range(20):
        room._fan_out(padded(i, 32 * 1024))
    assert room.n_subscribers == 0 and transport.get_write_buffer_size() > 0
    for _ in range(50):
        await asyncio.sleep(0.05)
        if transport.get_write_buffer_size() == 0 and transport.is_closing():
            break
    assert transport.is_closing() and transport.get_write_buffer_size() == 0  # aborted
    slow.sock.close()
