"""Issue 12 §1: authorisation of every route, dev mode, tokens in URLs and logs, token
expiry on open streams, lone surrogates, and host blocks across the host's spaces.

Real HTTP and WebSockets on 127.0.0.1, like tests/server/test_app.py.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from spacesim import cli, rtc
from spacesim.client.session import RoomClient
from spacesim.server import app as app_module
from spacesim.server.app import STATE, ServerConfig, create_app
from spacesim.server.auth import DEV_TOKEN_TTL, is_loopback_host, issue_token, verify_token

SECRET = b"0123456789abcdef0123456789abcdef"
ALL = ["space:create", "space:join", "moderate"]
pytestmark = pytest.mark.timeout(30)


class Server:
    def __init__(self, server: TestServer, http: aiohttp.ClientSession) -> None:
        self.server = server
        self.http = http
        self.base = str(server.make_url("")).rstrip("/")
        self.state = server.app[STATE]

    async def call(
        self, method: str, path: str, token: str | None = None, body: Any = None, **kw: Any
    ) -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        headers |= kw.pop("headers", {})
        r = await self.http.request(method, f"{self.base}{path}", json=body, headers=headers, **kw)
        text = await r.text()
        try:
            return r.status, json.loads(text)
        except ValueError:
            return r.status, text

    def token(self, user: str, grants: list[str] = ALL, **kw: Any) -> str:
        return issue_token(SECRET, user, grants, kw.pop("ttl", 600.0), **kw)

    async def space(self, host: str, **body: Any) -> str:
        status, data = await self.call("POST", "/v1/spaces", self.token(host), {"title": "t"})
        assert status == 201, data
        return str(data["id"])

    def fingerprint(self) -> Any:
        """Everything a request could change: rooms, roles, statuses, follows, blocks."""
        store = self.state.store
        rooms = sorted(
            (
                r.id,
                r.space.status.value,
                sorted((u, str(v)) for u, v in r.space.participants.items()),
            )
            for r in self.state.rooms.values()
        )
        users = {u for r in self.state.rooms.values() for u in r.space.participants}
        return rooms, {u: (store.follows_of(u), store.blocked_by(u)) for u in sorted(users)}


@pytest.fixture
async def srv(tmp_path: Path) -> AsyncIterator[Server]:
    rtc.use_host_addresses(["127.0.0.1"])
    config = ServerConfig(db=tmp_path / "s.db", secret=SECRET)
    server = TestServer(create_app(config), host="127.0.0.1")
    await server.start_server()
    async with aiohttp.ClientSession() as http:
        yield Server(server, http)
    await server.close()


ROUTES = [
    ("GET", "/v1/spaces/{s}", None),
    ("GET", "/v1/spaces/{s}/participants", None),
    ("GET", "/v1/spaces/{s}/events", None),
    ("POST", "/v1/spaces/{s}/join", {}),
    ("POST", "/v1/spaces/{s}/leave", {}),
    ("POST", "/v1/spaces/{s}/end", {}),
    ("POST", "/v1/spaces/{s}/start", {}),
    ("POST", "/v1/spaces/{s}/actions", {"action": "mute_all"}),
    ("POST", "/v1/moderation/spaces/{s}", {"action": "end"}),
    ("POST", "/v1/spaces", {"title": "x"}),
    ("POST", "/v1/follows", {"user": "zed"}),
]


async def test_authorisation_matrix_refusals_change_nothing(srv: Server) -> None:
    space = await srv.space("h")
    other = await srv.space("h")  # the space the pinned token is for
    for user in ("a", "b"):
        status, data = await srv.call("POST", f"/v1/spaces/{space}/join", srv.token(user))
        assert status == 200, data
    good = srv.token("h")
    callers: dict[str, tuple[dict[str, str], str, int]] = {
        "none": ({}, "", 401),
        "forged": ({"Authorization": f"Bearer {good[:-4]}AAAA"}, "", 401),
        "other key": (
            {"Authorization": "Bearer " + issue_token(b"x" * 32, "h", ALL, 600)},
            "",
            401,
        ),
        "tampered": ({"Authorization": f"Bearer {'x' + good[1:]}"}, "", 401),
        "expired": (
            {"Authorization": "Bearer " + srv.token("h", ttl=10, now=time.time() - 60)},
            "",
            401,
        ),
        "grant-less": ({"Authorization": "Bearer " + srv.token("h", [])}, "", 403),
        "pinned elsewhere": ({"Authorization": "Bearer " + srv.token("h", space=other)}, "", 403),
        "query token": ({}, f"?token={good}", 401),  # only the WebSocket takes ?token=
    }
    before = srv.fingerprint()
    for method, template, body in ROUTES:
        path = template.format(s=space)
        for who, (headers, query, expected) in callers.items():
            if who == "query token" and path.endswith("/events"):
                continue  # allowed there (test_query_token_only_on_the_websocket)
            status, data = await srv.call(method, path + query, None, body, headers=headers)
            assert status == expected, (method, path, who, status, data)
            assert data["error"] == ("unauthorized" if expected == 401 else "forbidden")
            assert data["reason"], data
            assert srv.fingerprint() == before, (method, path, who)
    # the valid token passes the auth checks everywhere (the rulebook may still refuse)
    for method, template, body in ROUTES:
        path = template.format(s=space)
        status, data = await srv.call(method, path, good, body)
        assert status != 401 and not (status == 403 and data["error"] == "forbidden"), (
            path,
            data,
        )


async def test_leave_with_a_grantless_or_pinned_token_does_not_end_the_hosts_space(
    srv: Server,
) -> None:
    space = await srv.space("h")
    other = await srv.space("h")
    for token in (srv.token("h", []), srv.token("h", space=other)):
        status, data = await srv.call("POST", f"/v1/spaces/{space}/leave", token, {})
        assert status == 403, data
        assert srv.state.rooms[space].space.status.value == "live"
    status, _ = await srv.call("POST", f"/v1/spaces/{other}/leave", srv.token("h", space=other))
    assert status == 200  # the pin's own space


# --------------------------------------------------------------------------- dev mode


@pytest.mark.parametrize(
    ("host", "status"),
    [
        (None, 200),  # aiohttp sends 127.0.0.1:port
        ("localhost", 200),
        ("localhost:8080", 200),
        ("127.3.2.1:99", 200),
        ("[::1]:8080", 200),
        ("evil.example", 403),
        ("evil.example:8080", 403),
        ("10.0.0.1", 403),
        ("localhost.evil.example", 403),
    ],
)
async def test_dev_tokens_need_a_loopback_host_header(
    srv: Server, host: str | None, status: int
) -> None:
    headers = {"Host": host} if host else {}
    got, data = await srv.call("POST", "/v1/dev/token", body={"user": "u"}, headers=headers)
    assert got == status, data
    if status == 403:
        assert data["error"] == "forbidden" and "loopback" in data["reason"]
    else:
        claims = verify_token(SECRET, data["token"])
        assert claims.exp - claims.iat == DEV_TOKEN_TTL == 3600


def test_loopback_addresses() -> None:
    for name in ("127.0.0.1", "::1", "::ffff:127.0.0.1", "localhost", "[::1]", "127.9.9.9:1"):
        assert is_loopback_host(name), name
    for name in ("0.0.0.0", "::", "10.1.2.3", "192.168.1.1:80", "", "example.com", "[::2]:1"):
        assert not is_loopback_host(name), name


def test_serve_refuses_dev_mode_on_a_public_bind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    ran: list[dict[str, Any]] = []
    monkeypatch.setattr(aiohttp.web, "run_app", lambda app, **kw: ran.append(kw))
    db = str(tmp_path / "s.db")
    assert cli.main(["serve", "--host", "0.0.0.0", "--db", db]) == 2
    assert cli.main(["serve", "--host", "::", "--db", db]) == 2
    assert not ran
    assert cli.main(["serve", "--host", "0.0.0.0", "--db", db, "--no-dev"]) == 0
    assert cli.main(["serve", "--host", "localhost", "--db", db]) == 0
    with caplog.at_level(logging.WARNING, logger="spacesim.server"):
        assert cli.main(["serve", "--host", "0.0.0.0", "--db", db, "--dev-on-public-bind"]) == 0
    assert "dev mode on a non-loopback bind" in caplog.text
    assert len(ran) == 3


# --------------------------------------------------------------------------- tokens in URLs


async def test_query_token_only_on_the_websocket_and_never_logged(
    srv: Server, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="aiohttp.access")  # before the first connection
    token = srv.token("h")
    space = await srv.space("h")
    status, data = await srv.call("GET", f"/v1/spaces/{space}?token={token}")
    assert status == 401, data
    url = f"{srv.base}/v1/spaces/{space}/events?token={token}"
    async with srv.http.ws_connect(url) as ws:
        hello = await ws.receive_json(timeout=5)
        assert hello["type"] == "hello"
    await asyncio.sleep(0.2)  # the access log line of the upgrade is written at its end
    lines = [r.getMessage() for r in caplog.records if r.name == "aiohttp.access"]
    assert len(lines) >= 2, lines
    assert all(token not in line for line in lines), lines
    assert any("token=[redacted]" in line for line in lines), lines
    assert all(token not in str(vars(r)) for r in caplog.records)


def test_redaction_of_log_lines() -> None:
    assert app_module.redact("GET /a?x=1&token=abc.def&y=2 HTTP/1.1") == (
        "GET /a?x=1&token=[redacted]&y=2 HTTP/1.1"
    )
    assert app_module.redact("GET /a?TOKEN=abc HTTP/1.1") == "GET /a?TOKEN=[redacted] HTTP/1.1"
    assert app_module.redact("GET /a?mytoken=abc") == "GET /a?mytoken=abc"


# --------------------------------------------------------------------------- expiry on a stream


async def test_an_expiring_token_closes_its_stream_with_4401(srv: Server) -> None:
    space = await srv.space("h")
    token = srv.token("a", ttl=1.0)
    status, _ = await srv.call("POST", f"/v1/spaces/{space}/join", srv.token("a"), {})
    assert status == 200
    headers = {"Authorization": f"Bearer {token}"}
    async with srv.http.ws_connect(f"{srv.base}/v1/spaces/{space}/events", headers=headers) as ws:
        assert (await ws.receive_json(timeout=5))["type"] == "hello"
        while True:
            msg = await ws.receive(timeout=5)
            if msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED):
                break
        assert ws.close_code == 4401


async def test_actions_after_expiry_are_refused_on_an_open_stream(
    srv: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    space = await srv.space("h")
    status, _ = await srv.call("POST", f"/v1/spaces/{space}/join", srv.token("a"), {})
    assert status == 200
    headers = {"Authorization": f"Bearer {srv.token('a', ttl=60)}"}
    async with srv.http.ws_connect(f"{srv.base}/v1/spaces/{space}/events", headers=headers) as ws:
        assert (await ws.receive_json(timeout=5))["type"] == "hello"
        # the wall clock jumps past the expiry before the timer fires
        fake = SimpleNamespace(time=lambda: time.time() + 120, monotonic_ns=time.monotonic_ns)
        monkeypatch.setattr(app_module, "time", fake)
        await ws.send_json({"id": 1, "action": "raise_hand"})
        while True:
            msg = await ws.receive(timeout=5)
            if msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED):
                break
            assert msg.type is aiohttp.WSMsgType.TEXT
            assert json.loads(msg.data).get("type") != "result", msg.data
        assert ws.close_code == 4401
    room = srv.state.rooms[space]
    assert room.space.role_of("a") is not None
    assert room.space.hand_queue() == ()  # the raise_hand was refused


async def test_room_client_mints_a_new_token_when_one_expires(srv: Server) -> None:
    space = await srv.space("h")
    rc = RoomClient(srv.base, "a", srv.http)
    rc._token = srv.token("a", ttl=10, now=time.time() - 60)  # already expired
    assert (await rc.space(space))["id"] == space
    rc._token = srv.token("a", ttl=1.0)  # expires while the stream is open
    await rc.join(space)
    rc._token = srv.token("a", ttl=1.0)
    seen: list[dict[str, Any]] = []

    async def read() -> None:
        async for msg in rc.events(space):
            seen.append(msg)

    reader = asyncio.create_task(read())
    await asyncio.sleep(2.0)  # past the expiry: the server closed with 4401, rc reconnected
    assert not reader.done()
    host = RoomClient(srv.base, "h", srv.http)
    await host.act(space, "react", emoji="👏")  # reactions reach every stream
    await asyncio.wait_for(_until(lambda: any(m.get("kind") == "reaction" for m in seen)), 5)
    reader.cancel()
    assert [m["type"] for m in seen].count("hello") == 1


async def _until(cond: Any) -> None:
    while not cond():
        await asyncio.sleep(0.05)


# --------------------------------------------------------------------------- strings


@pytest.mark.parametrize(
    ("path", "raw"),
    [
        ("/v1/spaces", b'{"title": "\\ud800"}'),
        ("/v1/spaces", b'{"title": "ok", "\\udfff": 1}'),
        ("/v1/follows", b'{"user": "\\ud800x"}'),
        ("/v1/spaces/{s}/actions", b'{"action": "report", "reason": "\\ud800"}'),
        ("/v1/spaces/{s}/actions", b'{"action": "remove", "target": "\\ud800"}'),
        ("/v1/moderation/spaces/{s}", b'{"action": "remove", "target": "\\udc00"}'),
    ],
)
async def test_lone_surrogates_are_a_400_with_a_reason(srv: Server, path: str, raw: bytes) -> None:
    space = await srv.space("h")
    before = srv.fingerprint()
    status, data = await srv.call(
        "POST",
        path.format(s=space),
        srv.token("h"),
        data=raw,
        headers={"Content-Type": "application/json"},
    )
    assert status == 400, data
    assert data["error"] == "bad_request" and data["reason"], data
    assert srv.fingerprint() == before


async def test_lone_surrogates_on_the_websocket_are_refused(srv: Server) -> None:
    space = await srv.space("h")
    headers = {"Authorization": f"Bearer {srv.token('h')}"}
    async with srv.http.ws_connect(f"{srv.base}/v1/spaces/{space}/events", headers=headers) as ws:
        assert (await ws.receive_json(timeout=5))["type"] == "hello"
        await ws.send_str('{"id": 3, "action": "report", "reason": "\\ud800"}')
        reply = await ws.receive_json(timeout=5)
        assert reply["type"] == "error" and reply["error"] == "bad_request", reply
    assert srv.state.store.audit_log(space=space) == [] or all(
        e.action != "report" for e in srv.state.store.audit_log(space=space)
    )


# --------------------------------------------------------------------------- blocks


async def test_a_host_block_reaches_the_hosts_other_live_spaces_at_once(srv: Server) -> None:
    first = await srv.space("h")
    second = await srv.space("h")
    unrelated = await srv.space("k")
    for space in (first, second, unrelated):
        status, data = await srv.call("POST", f"/v1/spaces/{space}/join", srv.token("u"), {})
        assert status == 200, data
    status, data = await srv.call(
        "POST", f"/v1/spaces/{first}/actions", srv.token("h"), {"action": "block", "target": "u"}
    )
    assert status == 200, data
    rooms = srv.state.rooms
    assert rooms[first].space.role_of("u") is None
    assert rooms[second].space.role_of("u") is None  # memory agrees with disk at once
    assert "u" in rooms[second].space.blocked
    assert rooms[unrelated].space.role_of("u") is not None  # another host's space
    status, data = await srv.call("POST", f"/v1/spaces/{second}/join", srv.token("u"), {})
    assert status == 403 and data["error"] == "blocked", data
    assert "u" in srv.state.store.blocked_by("h")


# --------------------------------------------------------------------------- who may stream


async def _frames_until_close(ws: aiohttp.ClientWebSocketResponse) -> list[dict[str, Any]]:
    """Every text frame up to the close (5 s at most per frame)."""
    frames = []
    while True:
        msg = await ws.receive(timeout=5)
        if msg.type is not aiohttp.WSMsgType.TEXT:
            return frames
        frames.append(json.loads(msg.data))


async def test_anyone_with_the_join_grant_may_follow_a_space_without_being_in_it(
    srv: Server,
) -> None:
    space = await srv.space("h")
    url = f"{srv.base}/v1/spaces/{space}/events"
    for token in (
        srv.token("outsider", ["space:join"]),
        srv.token("m", ["space:join", "moderate"]),
    ):
        async with srv.http.ws_connect(url, headers={"Authorization": f"Bearer {token}"}) as ws:
            hello = await ws.receive_json(timeout=5)
            assert hello["type"] == "hello" and hello["space"]["id"] == space
    assert srv.state.rooms[space].space.role_of("outsider") is None  # following is not joining
    for grants, status in ((["moderate"], 403), (["space:create"], 403)):
        r = await srv.http.get(url, headers={"Authorization": f"Bearer {srv.token('x', grants)}"})
        assert r.status == status and (await r.json())["error"] == "forbidden"


async def test_barred_users_are_refused_the_stream_with_blocked_or_removed(srv: Server) -> None:
    space = await srv.space("h")
    for user in ("r", "b"):
        status, data = await srv.call("POST", f"/v1/spaces/{space}/join", srv.token(user), {})
        assert status == 200, data
    for action, user in (("remove", "r"), ("block", "b")):
        status, data = await srv.call(
            "POST",
            f"/v1/spaces/{space}/actions",
            srv.token("h"),
            {"action": action, "target": user},
        )
        assert status == 200, data
    url = f"{srv.base}/v1/spaces/{space}/events"
    for user, code in (("r", "removed"), ("b", "blocked")):
        r = await srv.http.get(url, headers={"Authorization": f"Bearer {srv.token(user)}"})
        assert r.status == 403 and (await r.json())["error"] == code


async def test_a_removed_users_stream_ends_with_an_error_frame_then_close_1000(srv: Server) -> None:
    space = await srv.space("h")
    status, _ = await srv.call("POST", f"/v1/spaces/{space}/join", srv.token("b"), {})
    assert status == 200
    headers = {"Authorization": f"Bearer {srv.token('b')}"}
    async with srv.http.ws_connect(f"{srv.base}/v1/spaces/{space}/events", headers=headers) as ws:
        assert (await ws.receive_json(timeout=5))["type"] == "hello"
        status, _ = await srv.call(
            "POST",
            f"/v1/spaces/{space}/actions",
            srv.token("h"),
            {"action": "block", "target": "b"},
        )
        assert status == 200
        frames = await _frames_until_close(ws)
        assert frames[-1]["type"] == "error" and frames[-1]["error"] == "removed", frames
        assert ws.close_code == 1000


async def test_every_stream_ends_when_the_space_ends(srv: Server) -> None:
    space = await srv.space("h")
    headers = [{"Authorization": f"Bearer {srv.token(u)}"} for u in ("h", "outsider")]
    url = f"{srv.base}/v1/spaces/{space}/events"
    async with (
        srv.http.ws_connect(url, headers=headers[0]) as host_ws,
        srv.http.ws_connect(url, headers=headers[1]) as other_ws,
    ):
        for ws in (host_ws, other_ws):
            assert (await ws.receive_json(timeout=5))["type"] == "hello"
        status, data = await srv.call("POST", f"/v1/spaces/{space}/end", srv.token("h"), {})
        assert status == 200, data
        for ws in (host_ws, other_ws):
            frames = await _frames_until_close(ws)
            kinds = [f.get("kind") or f.get("error") for f in frames]
            assert kinds[-2:] == ["space_ended", "space_ended"], frames
            assert frames[-1]["type"] == "error"
            assert ws.close_code == 1000
    r = await srv.http.get(url, headers=headers[1])
    assert r.status == 409 and (await r.json())["error"] == "space_ended"


# --------------------------------------------------------------------------- roles by actions

#: The caller kinds of the role dimension. "unrelated" has the ordinary grants but is not
#: in the space; "moderator" has `moderate` besides them and is not in it either.
ROLES = ("host", "cohost", "speaker", "listener", "unrelated", "moderator")
ORDINARY = ["space:create", "space:join"]
OK = (200, None)
NOT_PRESENT = (409, "not_present")
NOT_ALLOWED = (403, "not_allowed")
FORBIDDEN = (403, "forbidden")


def _cells(ok: str, kind: str, **refused: tuple[int, str]) -> dict[str, tuple[int, str | None]]:
    """Expected (status, code) per role: the roles in `ok` (space-separated) succeed;
    `refused` names the others; the two callers not in the space get ``not_present``."""
    table: dict[str, tuple[int, str | None]] = {"unrelated": NOT_PRESENT, "moderator": NOT_PRESENT}
    table |= {role: OK for role in ok.split()}
    table |= refused
    assert set(table) == set(ROLES), (kind, set(ROLES) - set(table))
    return table


#: (request, preparation, expected per role, the event kind a success emits). A request
#: is an action body (strings naming a role stand for that role's user) or a route.
#: The preparation runs before the request; in the shared space all of them have run.
RAISED = (("listener", {"action": "raise_hand"}),)
INVITED = (("host", {"action": "invite", "target": "listener"}),)
SELF_MUTED = (("speaker", {"action": "mute", "target": "speaker"}),)
NOT_LISTENER = (409, "not_a_listener")
MATRIX: list[tuple[Any, tuple[Any, ...], dict[str, tuple[int, str | None]], str]] = [
    (
        {"action": "raise_hand"},
        (),
        _cells(
            "listener", "raise_hand", host=NOT_LISTENER, cohost=NOT_LISTENER, speaker=NOT_LISTENER
        ),
        "hand_raised",
    ),
    (
        {"action": "lower_hand"},
        RAISED,
        _cells(
            "listener",
            "lower_hand",
            **dict.fromkeys(("host", "cohost", "speaker"), (409, "no_raised_hand")),
        ),
        "hand_lowered",
    ),
    *(
        (
            {"action": action},
            INVITED,
            _cells(
                "listener",
                action,
                **dict.fromkeys(("host", "cohost", "speaker"), (409, "no_invite")),
            ),
            kind,
        )
        for action, kind in (
            ("accept_invite", "speaker_granted"),
            ("decline_invite", "invite_declined"),
        )
    ),
    *(
        (
            {"action": action, "target": "listener"},
            prep,
            _cells("host cohost", action, speaker=NOT_ALLOWED, listener=NOT_ALLOWED),
            kind,
        )
        for action, prep, kind in (
            ("invite", (), "speaker_invited"),
            ("approve", RAISED, "speaker_granted"),
            ("decline", RAISED, "hand_declined"),
        )
    ),
    (
        {"action": "demote", "target": "speaker"},
        (),
        _cells("host cohost speaker", "demote", listener=NOT_ALLOWED),
        "speaker_revoked",
    ),
    (
        {"action": "add_cohost", "target": "speaker"},
        (),
        _cells("host", "add_cohost", cohost=NOT_ALLOWED, speaker=NOT_ALLOWED, listener=NOT_ALLOWED),
        "cohost_added",
    ),
    (
        {"action": "remove_cohost", "target": "cohost"},
        (),
        _cells("host cohost", "remove_cohost", speaker=NOT_ALLOWED, listener=NOT_ALLOWED),
        "cohost_removed",
    ),
    (
        {"action": "mute", "target": "speaker"},
        (),
        _cells("host cohost speaker", "mute", listener=NOT_ALLOWED),
        "muted",
    ),
    (
        {"action": "unmute", "target": "speaker"},
        SELF_MUTED,
        _cells("speaker", "unmute", host=NOT_ALLOWED, cohost=NOT_ALLOWED, listener=NOT_ALLOWED),
        "unmuted",
    ),
    (
        {"action": "mute_all"},
        (),
        _cells("host cohost", "mute_all", speaker=NOT_ALLOWED, listener=NOT_ALLOWED),
        "muted",
    ),
    (
        {"action": "remove", "target": "target"},
        (),
        _cells("host cohost", "remove", speaker=NOT_ALLOWED, listener=NOT_ALLOWED),
        "removed",
    ),
    (
        {"action": "block", "target": "target"},
        (),
        _cells("host cohost speaker listener", "block"),
        "blocked",
    ),
    (
        {"action": "report", "target": "target", "reason": "spam"},
        (),
        _cells("host cohost speaker listener", "report"),
        "report_filed",
    ),
    (
        {"action": "react", "emoji": "👏"},
        (),
        _cells("host cohost speaker listener", "react"),
        "reaction",
    ),
    (
        {"action": "set_who_may_speak", "setting": "invited"},
        (),
        _cells(
            "host",
            "set_who_may_speak",
            cohost=NOT_ALLOWED,
            speaker=NOT_ALLOWED,
            listener=NOT_ALLOWED,
        ),
        "speak_setting_changed",
    ),
    (
        {"action": "captions_on"},
        (),
        _cells(
            "host", "captions_on", cohost=NOT_ALLOWED, speaker=NOT_ALLOWED, listener=NOT_ALLOWED
        ),
        "captions_changed",
    ),
    (
        "end",
        (),
        _cells("host", "end", cohost=NOT_ALLOWED, speaker=NOT_ALLOWED, listener=NOT_ALLOWED),
        "space_ended",
    ),
    (
        "start",  # on a live space: nobody may
        (),
        _cells(
            "",
            "start",
            host=(409, "already_live"),
            cohost=NOT_ALLOWED,
            speaker=NOT_ALLOWED,
            listener=NOT_ALLOWED,
        ),
        "space_started",
    ),
    (
        "moderate",
        (),
        {**dict.fromkeys(ROLES[:-1], FORBIDDEN), "moderator": OK},
        "report_resolved",
    ),
]


class Cast:
    """A live space with a user in every role: host, a co-host, a speaker, a listener and a
    second listener ("target", whom block, remove and report aim at), plus an unrelated
    user and a platform moderator who are not in it. Names end in `n`, so each cast has
    its own users (and their own per-user throttles)."""

    def __init__(self, srv: Server, n: int) -> None:
        self.srv = srv
        self.users = {r: f"{r}{n}" for r in (*ROLES, "target")}
        self.space = ""

    def token(self, role: str) -> str:
        grants = ALL if role == "moderator" else ORDINARY
        return self.srv.token(self.users[role], grants)

    async def request(self, role: str, request: Any) -> tuple[int, Any]:
        if request == "moderate":
            path, body = f"/v1/moderation/spaces/{self.space}", {"action": "dismiss"}
        elif isinstance(request, str):
            path, body = f"/v1/spaces/{self.space}/{request}", {}
        else:
            path = f"/v1/spaces/{self.space}/actions"
            body = {k: self.users.get(v, v) if k == "target" else v for k, v in request.items()}
        return await self.srv.call("POST", path, self.token(role), body)

    async def setup(self, preps: Any = ()) -> None:
        status, data = await self.srv.call("POST", "/v1/spaces", self.token("host"), {"title": "t"})
        assert status == 201, data
        self.space = data["id"]
        steps: list[tuple[str, Any]] = [
            *((r, "join") for r in ("cohost", "speaker", "listener", "target")),
            ("host", {"action": "add_cohost", "target": "cohost"}),
            ("speaker", {"action": "raise_hand"}),
            ("host", {"action": "approve", "target": "speaker"}),
            *preps,
        ]
        for role, request in steps:
            status, data = await self.request(role, request)
            assert status == 200, (role, request, data)
        for role in ("unrelated", "moderator"):  # known to the store (a token's first use)
            status, data = await self.srv.call("GET", f"/v1/spaces/{self.space}", self.token(role))
            assert status == 200, data

    def state(self) -> Any:
        """Everything a refused request could have changed, in memory and in the store."""
        srv, space = self.srv, self.space
        store = srv.state.store
        return (
            srv.fingerprint(),
            srv.state.rooms[space].snapshot(),
            store.get_space(space),
            store.participations(space=space),
            store.audit_log(space=space),
            store.reports(space=space),
            {u: store.blocks(u) for u in self.users.values()},
        )


async def test_every_action_by_every_role_is_allowed_or_refused_as_the_rulebook_says(
    srv: Server,
) -> None:
    """The refusals, all in one shared space (every preparation made): each is the
    rulebook's code and changes nothing, in memory or in the store."""
    shared = Cast(srv, 0)
    preps: list[Any] = []
    for _, steps, _, _ in MATRIX:
        preps += [step for step in steps if step not in preps]
    await shared.setup(preps)
    for request, _, expected, _ in MATRIX:
        for role, (status, code) in expected.items():
            if status == 200:
                continue
            before = shared.state()
            got, data = await shared.request(role, request)
            assert (got, data.get("error")) == (status, code), (request, role, data)
            assert data["reason"], data
            assert shared.state() == before, (request, role)


async def test_every_action_a_role_may_do_succeeds(srv: Server) -> None:
    """The other cells: each on a fresh space with its own preparation."""
    n = 0
    for request, preps, expected, kind in MATRIX:
        for role, (status, _) in expected.items():
            if status != 200:
                continue
            n += 1
            cast = Cast(srv, n)
            await cast.setup(preps)
            got, data = await cast.request(role, request)
            assert got == 200, (request, role, data)
            assert kind in [e["kind"] for e in data["events"]], (request, role, data)
    assert n == 40
