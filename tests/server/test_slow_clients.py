"""Slow, flooding and vanished clients (issue 12): header and body timeouts, a cap on slow
bodies, a fair and rate-limited event stream, client faults logged as such, and a
presence timeout. Real sockets on 127.0.0.1, short timeouts configured."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import multiprocessing as mp
import os
import socket
import struct
import time
import urllib.request
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import WSMsgType, web
from aiohttp.client_exceptions import ClientConnectionResetError
from aiohttp.test_utils import TestServer

from spacesim import rtc
from spacesim.server import launch
from spacesim.server.app import STATE, WS_FLOOD, ServerConfig, ServerState, create_app
from tests.server.test_app import SECRET, Api, AudioClient, until

pytestmark = pytest.mark.timeout(60)

Serve = Callable[..., Any]


@pytest.fixture
async def serve(tmp_path: Path) -> AsyncIterator[Serve]:
    """serve(**config) -> (Api, ServerState, host, port): a server on 127.0.0.1."""
    rtc.use_host_addresses(["127.0.0.1"])
    servers: list[TestServer] = []
    async with aiohttp.ClientSession() as http:

        async def make(**config: Any) -> tuple[Api, ServerState, str, int]:
            db = tmp_path / f"s{len(servers)}.db"
            app = create_app(ServerConfig(db=db, secret=SECRET, **config))
            server = TestServer(app, host="127.0.0.1")
            await server.start_server()
            servers.append(server)
            base = str(server.make_url("")).rstrip("/")
            return Api(http, base), app[STATE], "127.0.0.1", int(server.port or 0)

        yield make
    for server in servers:
        await server.close()


async def _open(port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    return sock


async def _read_all(sock: socket.socket, timeout: float) -> tuple[bytes, float]:
    """Everything the server sends until it closes the socket, and when it closed."""
    loop = asyncio.get_running_loop()
    got = b""
    async with asyncio.timeout(timeout):
        while data := await loop.sock_recv(sock, 65536):
            got += data
    return got, time.monotonic()


def _post_head(path: str, token: str, length: int) -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {length}\r\n\r\n"
    ).encode()


def _answer(raw: bytes) -> tuple[int, dict[str, str], Any]:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), headers, json.loads(body)


# --------------------------------------------------------------------------- HTTP


async def test_a_client_dribbling_headers_is_disconnected_after_the_header_timeout(
    serve: Serve,
) -> None:
    _, _, _, port = await serve(header_timeout=0.5)
    sock = await _open(port)
    loop = asyncio.get_running_loop()
    t0 = time.monotonic()
    await loop.sock_sendall(sock, b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n")
    for _ in range(3):  # still sending, a byte at a time: that does not buy more time
        await asyncio.sleep(0.1)
        await loop.sock_sendall(sock, b"X")
    got, closed = await _read_all(sock, 5)
    sock.close()
    assert got == b"" and 0.4 < closed - t0 < 2.0


async def test_a_body_that_does_not_arrive_is_refused_with_408(serve: Serve) -> None:
    api, _, _, port = await serve(body_timeout=0.5)
    token = await api.token("host")
    sock = await _open(port)
    t0 = time.monotonic()
    await asyncio.get_running_loop().sock_sendall(
        sock, _post_head("/v1/spaces", token, 1000) + b'{"title": '
    )
    got, closed = await _read_all(sock, 20)  # 408, then closed
    sock.close()
    status, headers, body = _answer(got)
    assert status == 408 and body["error"] == "request_timeout" and body["reason"]
    assert headers.get("Connection") == "close"
    assert closed - t0 < 2.5  # the timeout, then as long again for the rest (lingering)


async def test_a_huge_announced_body_is_refused_at_once(serve: Serve) -> None:
    api, _, _, port = await serve(body_timeout=30)
    token = await api.token("host")
    sock = await _open(port)
    loop = asyncio.get_running_loop()
    await loop.sock_sendall(sock, _post_head("/v1/spaces", token, 10**12))
    async with asyncio.timeout(2):  # not after the body timeout
        got = await loop.sock_recv(sock, 65536)
    sock.close()
    status, _, body = _answer(got)
    assert status == 413 and body["error"] == "too_large"


async def test_slow_bodies_beyond_the_cap_get_503_and_others_go_on(serve: Serve) -> None:
    api, state, _, port = await serve(max_body_reads=2, body_timeout=10)
    token = await api.token("host")
    loop = asyncio.get_running_loop()
    slow = []
    for _ in range(2):
        sock = await _open(port)
        await loop.sock_sendall(sock, _post_head("/v1/spaces", token, 100) + b"{")
        slow.append(sock)
    await until(lambda: state.body_reads == 2, 5)
    third = await _open(port)
    await loop.sock_sendall(third, _post_head("/v1/spaces", token, 100) + b"{")
    async with asyncio.timeout(2):
        got = await loop.sock_recv(third, 65536)
    third.close()
    status, headers, body = _answer(got)
    assert status == 503 and body["error"] == "server_busy" and headers["Retry-After"] == "1"
    assert body["retry_after"] == 1
    # a body that comes with its headers is not held up by the slow ones
    assert (await api.call("POST", "/v1/spaces", "host", {"title": "t"}))[0] == 201
    for sock in slow:  # the slow ones give up: their reads no longer count
        sock.close()
    await until(lambda: state.body_reads == 0, 5)
    assert (await api.call("POST", "/v1/spaces", "host", {"title": "u"}))[0] == 201


# --------------------------------------------------------------------------- WebSocket


def _frame(payload: bytes, opcode: int = 1) -> bytes:
    """A masked client frame (RFC 6455 §5.2) with a zero mask."""
    n = len(payload)
    if n < 126:
        head = struct.pack("!BB", 0x80 | opcode, 0x80 | n)
    else:
        head = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, n)
    return head + b"\0\0\0\0" + payload


def _ws_socket(port: int, space: str, token: str, rcvbuf: int = 0) -> socket.socket:
    """A blocking socket upgraded to the event stream (its 101 and hello not read)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.connect(("127.0.0.1", port))
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        f"GET /v1/spaces/{space}/events?token={token} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
        "Sec-WebSocket-Version: 13\r\n\r\n".encode()
    )
    return sock


def _no_client_faults_as_errors(caplog: pytest.LogCaptureFixture) -> None:
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert not errors, [r.getMessage() for r in errors]
    access = [r.getMessage() for r in caplog.records if r.name == "aiohttp.access"]
    assert access and not [line for line in access if '" 500 ' in line], access


async def test_a_bad_frame_closes_the_stream_and_logs_no_error(
    serve: Serve, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="aiohttp.access")
    caplog.set_level(logging.INFO, logger="spacesim.server")
    api, state, _, port = await serve()
    space = await api.space("host")
    room = state.rooms[space]
    for bad in (_frame(b"", opcode=3), _frame(b"\xff\xfe", opcode=1)):
        # a reserved opcode; a text frame that is not UTF-8
        sock = _ws_socket(port, space, await api.token("host"))
        await until(lambda: room.n_subscribers == 1, 5)
        sock.sendall(bad)
        await until(lambda: room.n_subscribers == 0, 5)
        sock.close()
    _no_client_faults_as_errors(caplog)
    assert (
        "bad frame: Unexpected opcode" in caplog.text and "bad frame: Invalid UTF-8" in caplog.text
    )


async def test_a_client_gone_mid_answer_is_logged_as_lost_not_as_a_500(
    serve: Serve, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The answer to a client's action cannot be written: the client reset its socket
    (what aiohttp raises then). That is the client's doing: INFO, no traceback, no 500."""
    caplog.set_level(logging.INFO, logger="aiohttp.access")
    caplog.set_level(logging.INFO, logger="spacesim.server")
    api, _, _, _ = await serve()
    space = await api.space("host")

    async def reset(self: web.WebSocketResponse, *args: Any, **kwargs: Any) -> None:
        raise ClientConnectionResetError("Cannot write to closing transport")

    monkeypatch.setattr(web.WebSocketResponse, "send_json", reset)
    token = await api.token("host")
    async with api.http.ws_connect(f"{api.base}/v1/spaces/{space}/events?token={token}") as ws:
        assert (await ws.receive_json(timeout=5))["type"] == "hello"
        await ws.send_json({"id": 1, "action": "lower_hand"})
        assert (await ws.receive(timeout=5)).type in (WSMsgType.CLOSE, WSMsgType.CLOSED)
    await until(lambda: "lost" in caplog.text, 5)
    _no_client_faults_as_errors(caplog)


def _run_server(db: str, port: int, config: dict[str, Any]) -> None:
    """A server process of its own (spawned), so a test's client load is not its load."""
    app = create_app(ServerConfig(db=Path(db), secret=SECRET, **config))
    web.run_app(app, host="127.0.0.1", port=port, print=None)


async def test_one_flooding_stream_does_not_hold_up_healthz(tmp_path: Path) -> None:
    """No rate limit here (set sky-high): fairness alone keeps the others served. The
    flooder reads its answers and sends 200 messages at a time: aiohttp then has many
    messages ready, which the handler took without ever suspending (~0.7 s /healthz)."""
    port = launch.free_port()
    config = {"ws_rate": 1e9, "ws_burst": 1e9}
    server = mp.get_context("spawn").Process(
        target=_run_server, args=(str(tmp_path / "f.db"), port, config)
    )
    server.start()
    base = f"http://127.0.0.1:{port}"
    try:
        await asyncio.to_thread(_wait_up, server, base)
        async with aiohttp.ClientSession() as http:
            api = Api(http, base)
            space = await api.space("host")
            url = f"{base}/v1/spaces/{space}/events?token={await api.token('host')}"
            async with http.ws_connect(url) as ws:
                stop = asyncio.Event()

                async def flood() -> None:
                    message = json.dumps({"action": "lower_hand"})
                    while not stop.is_set():
                        for _ in range(200):
                            await ws.send_str(message)
                        await asyncio.sleep(0)

                async def drain() -> None:
                    async for _ in ws:
                        pass

                tasks = [asyncio.create_task(flood()), asyncio.create_task(drain())]
                await asyncio.sleep(0.5)
                try:
                    times = sorted(await asyncio.to_thread(_probe, base, 15))
                finally:
                    stop.set()
                    await ws.close()
                    await asyncio.gather(*tasks, return_exceptions=True)
    finally:
        server.terminate()
        server.join(10)
    assert times[len(times) // 2] < 0.1, times


def _wait_up(server: Any, base: str) -> None:
    deadline = time.monotonic() + 30
    while True:
        assert server.is_alive(), "the server process died"
        try:
            launch.health(base, timeout=1.0)
            return
        except launch.ServerUnavailable:
            assert time.monotonic() < deadline, "the server never answered"
            time.sleep(0.1)


def _probe(base: str, n: int) -> list[float]:
    times = []
    for _ in range(n):
        t0 = time.monotonic()
        with urllib.request.urlopen(f"{base}/healthz", timeout=5) as r:  # else: failed
            r.read()
        times.append(time.monotonic() - t0)
        time.sleep(0.03)
    return times


async def test_a_stream_over_the_message_rate_is_refused_then_closed_with_4429(
    serve: Serve,
) -> None:
    api, _, _, _ = await serve(ws_rate=2, ws_burst=5)
    space = await api.space("host")
    token = await api.token("host")
    async with api.http.ws_connect(f"{api.base}/v1/spaces/{space}/events?token={token}") as ws:
        assert (await ws.receive_json(timeout=5))["type"] == "hello"
        for i in range(40):
            await ws.send_json({"id": i, "action": "lower_hand"})
        replies = []
        async for msg in ws:
            if msg.type == aiohttp.WSMsgType.TEXT:
                replies.append(json.loads(msg.data))
        assert ws.close_code == WS_FLOOD
    answered = [r for r in replies if r.get("error") == "no_raised_hand"]
    refused = [r for r in replies if r.get("error") == "rate_limited"]
    assert len(answered) == 5 and len(refused) == 5  # the burst, then 5 refusals, then out
    assert all(r["retry_after"] >= 1 and r["reason"] for r in refused)


# --------------------------------------------------------------------------- presence


async def test_a_participant_whose_stream_is_gone_leaves_after_the_presence_timeout(
    serve: Serve,
) -> None:
    api, state, _, _ = await serve(presence_timeout=0.5)
    space = await api.space("host")
    await api.join(space, "ann")
    await api.join(space, "bob")
    host = await api.http.ws_connect(
        f"{api.base}/v1/spaces/{space}/events?token={await api.token('host')}"
    )
    await host.receive_json(timeout=5)
    for user in ("ann", "bob"):
        ws = await api.http.ws_connect(
            f"{api.base}/v1/spaces/{space}/events?token={await api.token(user)}"
        )
        await ws.receive_json(timeout=5)
        await ws.close()
    bob = await api.http.ws_connect(  # bob comes back in time; ann does not
        f"{api.base}/v1/spaces/{space}/events?token={await api.token('bob')}"
    )
    room = state.rooms[space]
    await until(lambda: room.space.role_of("ann") is None, 5)
    await asyncio.sleep(0.6)
    assert room.space.role_of("bob") is not None
    left = []
    while not left:
        msg = await host.receive_json(timeout=5)
        if msg.get("kind") == "participant_left":
            left.append(msg["participant"])
    assert left == ["ann"]
    await bob.close()
    await host.close()


async def test_a_participant_whose_audio_connection_closed_leaves_after_the_timeout(
    serve: Serve,
) -> None:
    api, state, _, _ = await serve(presence_timeout=0.5)
    space = await api.space("host")
    carol = AudioClient("carol")
    try:
        await carol.join_api(api, space)
        await until(lambda: carol.pc.connectionState == "connected", 10)
        room = state.rooms[space]
        await asyncio.sleep(1.0)  # connected and well past the timeout: still there
        assert room.space.role_of("carol") is not None
    finally:
        await carol.close()  # gone without leaving
    await until(lambda: room.space.role_of("carol") is None, 10)
    assert room.space.role_of("host") is not None
