"""The room server end to end over real sockets on 127.0.0.1: HTTP, WebSocket and WebRTC."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import signal
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer
from aiortc import RTCSessionDescription

from spacesim import policy, rtc
from spacesim.protocol import ERROR_STATUS, SPEAK_SETTINGS
from spacesim.results import KINDS
from spacesim.server import launch
from spacesim.server.app import ServerConfig, create_app
from spacesim.server.auth import issue_token
from spacesim.server.openapi import document
from spacesim.server.store import StoreError, open_store
from tests.server.test_media import Client, opus_tone

for _name in ("aioice", "aiortc", "aiohttp.access"):
    logging.getLogger(_name).setLevel(logging.WARNING)

SECRET = b"0123456789abcdef0123456789abcdef"
SLOTS = 3
pytestmark = pytest.mark.timeout(30)


class Api:
    """A small HTTP client for one server; `as_(user)` gives a user's headers."""

    def __init__(self, http: aiohttp.ClientSession, base: str) -> None:
        self.http = http
        self.base = base
        self.tokens: dict[str, str] = {}

    async def token(self, user: str, moderator: bool = False) -> str:
        if user not in self.tokens:
            r = await self.http.post(
                f"{self.base}/v1/dev/token", json={"user": user, "moderator": moderator}
            )
            assert r.status == 200, await r.text()
            self.tokens[user] = (await r.json())["token"]
        return self.tokens[user]

    async def call(
        self, method: str, path: str, user: str | None = None, body: Any = None, raw: Any = None
    ) -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {await self.token(user)}"} if user else {}
        kwargs: dict[str, Any] = {"headers": headers}
        if raw is not None:
            kwargs["data"] = raw
        elif body is not None:
            kwargs["json"] = body
        r = await self.http.request(method, f"{self.base}{path}", **kwargs)
        text = await r.text()
        try:
            return r.status, json.loads(text)
        except json.JSONDecodeError:
            return r.status, text

    async def space(self, host: str, **body: Any) -> str:
        status, data = await self.call("POST", "/v1/spaces", host, {"title": "t", **body})
        assert status == 201, data
        return str(data["id"])

    async def act(self, space: str, user: str, action: str, **fields: Any) -> tuple[int, Any]:
        return await self.call(
            "POST", f"/v1/spaces/{space}/actions", user, {"action": action, **fields}
        )

    async def join(self, space: str, user: str) -> tuple[int, Any]:
        return await self.call("POST", f"/v1/spaces/{space}/join", user, {})

    async def present(
        self, space: str, user: str, query: str = "limit=2", cursor: str | None = None
    ) -> dict[str, str]:
        """Everyone present, user -> role, walking GET .../participants page by page."""
        out: dict[str, str] = {}
        after = f"&after={cursor}" if cursor else ""
        for _ in range(1000):
            path = f"/v1/spaces/{space}/participants?{query}{after}"
            status, page = await self.call("GET", path, user)
            assert status == 200, page
            out.update((p["user"], p["role"]) for p in page["participants"])
            if page["next"] is None:
                return out
            after = f"&after={page['next']}"
        raise AssertionError("the pages never end")


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[Api]:
    rtc.use_host_addresses(["127.0.0.1"])
    config = ServerConfig(db=tmp_path / "s.db", secret=SECRET, slots=SLOTS, capacity=60)
    server = TestServer(create_app(config), host="127.0.0.1")
    await server.start_server()
    async with aiohttp.ClientSession() as http:
        yield Api(http, str(server.make_url("")).rstrip("/"))
    await server.close()


class AudioClient(Client):
    """The media test's client, joined through the HTTP API instead of the media room."""

    async def join_api(self, api: Api, space: str) -> dict[str, Any]:
        if self.track is not None:
            self.pc.addTransceiver(self.track, direction="sendonly")
        slots = [self.pc.addTransceiver("audio", direction="recvonly") for _ in range(SLOTS)]
        await self.pc.setLocalDescription(await self.pc.createOffer())
        status, data = await api.call(
            "POST", f"/v1/spaces/{space}/join", self.name, {"sdp": self.pc.localDescription.sdp}
        )
        assert status == 200, data
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=data["sdp"], type="answer"))
        for i, t in enumerate(slots):
            rtc.tap_rtp(t.receiver, self._recorder(i))
        return dict(data)

    def received(self) -> list[bytes]:
        return [p for slot in range(SLOTS) for p in self.payloads(slot)]


@pytest.fixture
async def clients() -> AsyncIterator[list[AudioClient]]:
    made: list[AudioClient] = []
    yield made
    for c in made:
        await c.close()


async def until(cond: Any, timeout: float = 8.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.02)


# --------------------------------------------------------------------------- audio


async def test_speaker_heard_by_two_listeners_with_identical_payloads(
    api: Api, clients: list[AudioClient]
) -> None:
    space = await api.space("host")
    tone = opus_tone(440.0)
    host = AudioClient("host", tone)
    a, b = AudioClient("a"), AudioClient("b")
    clients += [host, a, b]
    await host.join_api(api, space)
    for c in (a, b):
        data = await c.join_api(api, space)
        assert data["role"] == "listener" and data["slots"] == SLOTS
    await until(lambda: len(a.received()) >= 50 and len(b.received()) >= 50)
    for c in (a, b):
        got = c.received()
        start = tone.index(got[0])
        assert got[:50] == list(tone[start : start + 50])  # forwarded untouched, in order


@pytest.mark.parametrize(
    ("actor", "action"),
    [("host", "demote"), ("host", "mute"), ("host", "remove"), ("bob", "demote")],
)
async def test_listener_unheard_until_approved_then_silenced(
    api: Api, clients: list[AudioClient], actor: str, action: str
) -> None:
    space = await api.space("host")
    bob_tone = opus_tone(660.0, frames=600)
    bob, ann = AudioClient("bob", bob_tone), AudioClient("ann")
    clients += [bob, ann]
    await ann.join_api(api, space)
    await bob.join_api(api, space)
    await asyncio.sleep(0.5)  # bob sends all along; as a listener he is dropped
    assert ann.received() == []
    assert (await api.act(space, "bob", "raise_hand"))[0] == 200
    status, data = await api.act(space, "host", "approve", target="bob")
    assert status == 200 and data["events"][0]["kind"] == "speaker_granted"
    await until(lambda: len(ann.received()) >= 20)
    assert set(ann.received()) <= set(bob_tone)
    status, data = await api.act(space, actor, action, target="bob")
    assert status == 200, data
    await asyncio.sleep(0.2)  # packets already in flight
    heard = len(ann.received())
    await asyncio.sleep(0.5)
    assert len(ann.received()) == heard  # silence once off stage, muted or removed


# --------------------------------------------------------------------------- rules


ACTIONS: list[tuple[str, dict[str, str]]] = [
    ("approve", {"target": "hand"}),
    ("decline", {"target": "hand"}),
    ("invite", {"target": "lis2"}),
    ("demote", {"target": "spk2"}),
    ("add_cohost", {"target": "lis2"}),
    ("mute", {"target": "spk2"}),
    ("mute_all", {}),
    ("remove", {"target": "lis2"}),
    ("block", {"target": "lis2"}),
    ("set_who_may_speak", {"setting": "invited"}),
]
ALLOWED = {
    "host": {a for a, _ in ACTIONS},
    "cohost": {"approve", "decline", "invite", "demote", "mute", "mute_all", "remove", "block"},
    "speaker": {"block"},  # a personal block: allowed, with no effect on the space
    "listener": {"block"},
}


async def _room_with_every_role(api: Api) -> str:
    space = await api.space("host")
    for user in ("co", "spk", "spk2", "lis", "lis2", "hand"):
        assert (await api.join(space, user))[0] == 200
    assert (await api.act(space, "host", "add_cohost", target="co"))[0] == 200
    for user in ("spk", "spk2"):
        assert (await api.act(space, "host", "invite", target=user))[0] == 200
        assert (await api.act(space, user, "accept_invite"))[0] == 200
    assert (await api.act(space, "hand", "raise_hand"))[0] == 200
    return space


@pytest.mark.parametrize("role", ["host", "cohost", "speaker", "listener"])
@pytest.mark.parametrize(("action", "fields"), ACTIONS, ids=[a for a, _ in ACTIONS])
async def test_every_role_and_privileged_action(
    api: Api, role: str, action: str, fields: dict[str, str]
) -> None:
    space = await _room_with_every_role(api)
    actor = {"host": "host", "cohost": "co", "speaker": "spk", "listener": "lis"}[role]
    status, data = await api.act(space, actor, action, **fields)
    if action in ALLOWED[role]:
        assert status == 200, data
    else:
        assert status == 403 and data["error"] == "not_allowed", data


async def test_block_prevents_join_and_removes_a_present_user(api: Api) -> None:
    space = await api.space("host")
    assert (await api.join(space, "troll"))[0] == 200
    status, data = await api.act(space, "host", "block", target="troll")
    assert status == 200 and [e["kind"] for e in data["events"]] == ["blocked", "removed"]
    status, data = await api.join(space, "troll")
    assert status == 403 and data["error"] == "blocked"
    other = await api.space("host")  # the host's block holds in their other spaces too
    assert (await api.join(other, "troll"))[0] == 403


async def test_events_stream_uses_the_record_vocabulary(api: Api) -> None:
    space = await api.space("host")
    token = await api.token("host")
    url = f"{api.base}/v1/spaces/{space}/events?token={token}"
    async with api.http.ws_connect(url) as ws:
        hello = await ws.receive_json(timeout=5)
        assert hello["type"] == "hello" and hello["space"]["id"] == space
        await api.join(space, "zoe")
        await api.act(space, "zoe", "raise_hand")
        await api.act(space, "zoe", "react", emoji="🔥")
        got = [await ws.receive_json(timeout=5) for _ in range(4)]
        kinds = [m["kind"] for m in got if m["kind"] != "audience"]  # the host is on stage
        assert kinds == ["participant_joined", "hand_raised", "reaction"]
        assert set(kinds) <= set(KINDS)
        audience = [m for m in got if m["kind"] == "audience"]
        assert audience[0]["attrs"] == {"participants": 2, "listeners": 1}
        await ws.send_str("not json")  # a bad message gets an error, the stream lives on
        assert (await ws.receive_json(timeout=5))["error"] == "bad_json"
        await ws.send_json({"id": 1, "action": "decline", "target": "zoe"})
        msgs = [await ws.receive_json(timeout=5) for _ in range(2)]
        assert {(m["type"], m.get("kind")) for m in msgs} == {
            ("event", "hand_declined"),
            ("result", None),
        }
        await ws.send_json({"id": 2, "action": "lower_hand"})  # the host has no hand up
        refused = await ws.receive_json(timeout=5)
        assert refused["type"] == "error" and refused["id"] == 2 and refused["reason"]


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("method", "path", "user", "raw", "status", "code"),
    [
        ("POST", "/v1/spaces", "u", b"{not json", 400, "bad_json"),
        ("POST", "/v1/spaces", "u", b"[1, 2]", 400, "bad_request"),
        ("POST", "/v1/spaces", "u", b'{"who_may_speak": "nobody"}', 400, "bad_request"),
        ("GET", "/v1/spaces/s-nope", "u", None, 404, "not_found"),
        ("POST", "/v1/spaces/s-nope/join", "u", b"{}", 404, "not_found"),
        ("POST", "/v1/spaces", None, b"{}", 401, "unauthorized"),
        ("POST", "/v1/dev/token", None, b'{"user": ""}', 400, "bad_request"),
    ],
)
async def test_bad_requests_get_a_4xx_with_a_reason(
    api: Api, method: str, path: str, user: str | None, raw: bytes | None, status: int, code: str
) -> None:
    got, data = await api.call(method, path, user, raw=raw)
    assert got == status and data["error"] == code and data["reason"], data


@pytest.mark.parametrize(
    ("method", "path", "status", "code", "allow"),
    [
        ("GET", "/v1/nowhere", 404, "not_found", None),
        ("POST", "/v1/spaces/s-x/unknown-verb", 404, "not_found", None),
        ("DELETE", "/v1/spaces", 405, "method_not_allowed", "POST"),
        ("PUT", "/healthz", 405, "method_not_allowed", "GET"),
    ],
)
async def test_unknown_routes_and_methods_get_404_and_405(
    api: Api, method: str, path: str, status: int, code: str, allow: str | None
) -> None:
    r = await api.http.request(method, f"{api.base}{path}")
    data = await r.json()
    assert (r.status, data["error"]) == (status, code) and data["reason"], data
    assert ERROR_STATUS[code] == status
    if allow is not None:
        assert allow in r.headers["Allow"]


async def test_a_too_large_body_is_413_too_large(api: Api) -> None:
    status, data = await api.call("POST", "/v1/spaces", "u", raw=b" " * (300 * 1024))
    assert (status, data["error"]) == (413, "too_large"), data


async def test_forged_and_expired_tokens_are_refused(api: Api) -> None:
    good = await api.token("eve")
    forged = good[:-2] + ("AA" if not good.endswith("AA") else "BB")
    expired = issue_token(SECRET, "eve", ["space:create"], ttl=10, now=time.time() - 60)
    other_key = issue_token(b"another-secret-of-32-bytes-here!", "eve", ["space:create"], ttl=60)
    for token in (forged, expired, other_key, "garbage"):
        r = await api.http.post(
            f"{api.base}/v1/spaces", json={}, headers={"Authorization": f"Bearer {token}"}
        )
        assert r.status == 401, token
        assert (await r.json())["reason"]


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({"action": "dance"}, 400, "unknown_action"),
        ({"action": "approve"}, 400, "missing_field"),
        ({"action": "react", "emoji": "🦄"}, 400, "bad_request"),
        ({"action": "approve", "target": "nobody"}, 409, "no_raised_hand"),
        ({"action": "lower_hand"}, 409, "not_present"),
    ],
)
async def test_bad_actions_get_the_rulebook_reason(
    api: Api, body: dict[str, str], status: int, code: str
) -> None:
    space = await api.space("host")
    actor = "host" if body.get("action") in ("approve", "react", "dance") else "stranger"
    got, data = await api.call("POST", f"/v1/spaces/{space}/actions", actor, body)
    assert (got, data["error"]) == (status, code), data


async def test_bad_sdp_is_refused_and_the_join_undone(api: Api) -> None:
    space = await api.space("host")
    for sdp in ("hello", "v=0\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\n"):
        status, data = await api.call("POST", f"/v1/spaces/{space}/join", "al", {"sdp": sdp})
        assert status == 400 and data["error"] == "bad_sdp", data
        assert data["slots"] == SLOTS  # machine-readable: how many listen sections to offer
    assert "al" not in await api.present(space, "al")


async def _offer(slots: int = SLOTS) -> str:
    """A well-formed offer from a real aiortc client (its connection closed again)."""
    pc = rtc.new_peer_connection()
    for _ in range(slots):
        pc.addTransceiver("audio", direction="recvonly")
    await pc.setLocalDescription(await pc.createOffer())
    sdp: str = pc.localDescription.sdp
    await pc.close()
    return sdp


async def test_an_offer_aiortc_refuses_is_still_the_clients_fault(api: Api) -> None:
    """The right shape (parse_offer passes) but no ICE credentials: aiortc refuses it."""
    space = await api.space("host")
    sdp = "\r\n".join(line for line in (await _offer()).split("\r\n") if "ice-" not in line)
    status, data = await api.call("POST", f"/v1/spaces/{space}/join", "al", {"sdp": sdp})
    assert status == 400 and data["error"] == "bad_sdp", data
    assert "ICE" in data["reason"]
    assert "al" not in await api.present(space, "al")


async def test_a_server_fault_in_media_setup_is_a_logged_500(
    api: Api, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A usable offer, and our own setup code fails: 500 media_setup_failed (not 400
    bad_sdp, which would blame the client), the cause in the log, the join undone."""
    space = await api.space("host")
    sdp = await _offer()

    def broken_writer(transceiver: Any) -> Any:
        raise RuntimeError("writer setup bug")

    monkeypatch.setattr(rtc, "RtpWriter", broken_writer)
    with caplog.at_level(logging.ERROR, logger="spacesim.server.media"):
        status, data = await api.call("POST", f"/v1/spaces/{space}/join", "al", {"sdp": sdp})
    assert status == 500 and data["error"] == "media_setup_failed", data
    assert ERROR_STATUS["media_setup_failed"] == 500
    [record] = [r for r in caplog.records if r.name == "spacesim.server.media"]
    assert record.levelno == logging.ERROR and "al" in record.getMessage()
    assert record.exc_info is not None and "writer setup bug" in str(record.exc_info[1])
    assert "al" not in await api.present(space, "al")
    monkeypatch.undo()  # the same offer shape works once the fault is gone
    status, data = await api.call("POST", f"/v1/spaces/{space}/join", "al", {"sdp": sdp})
    assert status == 200 and data["sdp"], data


async def test_two_joins_at_once_the_newer_wins_and_the_older_is_a_conflict(api: Api) -> None:
    """The older join's connection is closed under it by the newer one: 409 conflict
    (not bad_sdp), and the participant stays (the newer join goes on)."""
    space = await api.space("host")
    offers = [await _offer(), await _offer()]
    got = await asyncio.gather(
        *(api.call("POST", f"/v1/spaces/{space}/join", "al", {"sdp": o}) for o in offers)
    )
    older, newer = sorted(got, key=lambda r: -r[0])  # whichever the server took first
    assert (older[0], older[1]["error"]) == (409, "conflict"), got
    assert newer[0] == 200 and newer[1]["sdp"], got
    assert (await api.present(space, "al"))["al"] == "listener"


async def test_the_space_publishes_how_many_listen_slots_an_offer_needs(api: Api) -> None:
    status, created = await api.call("POST", "/v1/spaces", "host", {"title": "t"})
    assert status == 201 and created["slots"] == SLOTS
    status, got = await api.call("GET", f"/v1/spaces/{created['id']}", "host")
    assert status == 200 and got["slots"] == SLOTS
    status, joined = await api.join(created["id"], "al")
    assert status == 200 and joined["space"]["slots"] == joined["slots"] == SLOTS


async def test_reactions_and_hands_are_rate_limited(api: Api) -> None:
    space = await api.space("host")
    await api.join(space, "fan")
    codes = [(await api.act(space, "fan", "react", emoji="👏"))[0] for _ in range(15)]
    assert codes[:10] == [200] * 10 and 429 in codes
    hands = []
    for _ in range(4):
        hands.append((await api.act(space, "fan", "raise_hand"))[0])
        await api.act(space, "fan", "lower_hand")
    assert 429 in hands


async def test_admission_control_refuses_with_503_and_a_reason(api: Api) -> None:
    space = await api.space("host")  # capacity 60 streams, one speaker heard
    statuses = [(await api.join(space, f"u{i}"))[0] for i in range(70)]
    assert statuses.count(503) > 0 and statuses[:50] == [200] * 50
    status, data = await api.join(space, "late")
    assert status == 503 and "capacity" in data["reason"]


async def test_an_error_in_one_space_leaves_the_others_working(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    broken, fine = await api.space("host"), await api.space("host")
    from spacesim.server import room as room_module

    original = room_module.Room.apply

    def apply(self: Any, actor: str, action: str, fields: dict[str, str]) -> Any:
        if self.id == broken:
            raise RuntimeError("boom")
        return original(self, actor, action, fields)

    monkeypatch.setattr(room_module.Room, "apply", apply)
    logging.getLogger("spacesim.server").disabled = True
    try:
        assert (await api.act(broken, "host", "mute_all"))[0] == 500
    finally:
        logging.getLogger("spacesim.server").disabled = False
    assert (await api.act(fine, "host", "mute_all"))[0] == 200
    assert (await api.call("GET", "/healthz"))[0] == 200


async def test_metrics_and_openapi(api: Api) -> None:
    space = await api.space("host")
    await api.join(space, "m1")
    status, text = await api.call("GET", "/metrics")
    assert status == 200
    for name in (
        'spacesim_spaces{status="live"}',
        'spacesim_participants{role="listener"}',
        "spacesim_packets_forwarded",
        "spacesim_packets_dropped",
        "spacesim_server_cpu_seconds",
        "spacesim_joins_refused",
    ):
        assert name in text
    status, doc = await api.call("GET", "/openapi.json")
    assert status == 200 and doc["openapi"].startswith("3.")
    assert {
        "/v1/spaces",
        "/v1/spaces/{space}/actions",
        "/v1/spaces/{space}/events",
        "/v1/spaces/{space}/participants",
    } <= set(doc["paths"])


def _nullable(schema: dict[str, Any]) -> bool:
    kind = schema.get("type")
    return isinstance(kind, list) and "null" in kind


def _props(doc: dict[str, Any], path: str) -> dict[str, Any]:
    body = doc["paths"][path]["post"]["requestBody"]["content"]["application/json"]["schema"]
    if "$ref" in body:
        body = doc["components"]["schemas"][body["$ref"].rsplit("/", 1)[1]]
    props: dict[str, Any] = body["properties"]
    return props


async def test_null_is_accepted_exactly_where_the_schema_says_nullable(api: Api) -> None:
    _, doc = await api.call("GET", "/openapi.json")
    create = _props(doc, "/v1/spaces")
    assert set(create) == {
        "title", "who_may_speak", "scheduled_for", "listener_cap", "recording", "captions"
    }  # fmt: skip
    for name, schema in create.items():
        status, data = await api.call("POST", "/v1/spaces", "host", {"title": "t", name: None})
        assert (status == 201) == _nullable(schema), (name, status, data)
        assert status in (201, 400), data
    space = await api.space("host")
    await api.join(space, "fan")
    action = _props(doc, "/v1/spaces/{space}/actions")
    for name in ("target", "reason", "emoji", "setting"):
        status, data = await api.act(space, "fan", "report", **{name: None})
        assert (status == 200) == _nullable(action[name]), (name, status, data)
    await api.token("mod", moderator=True)
    moderation = _props(doc, "/v1/moderation/spaces/{space}")
    for name in ("target", "report"):
        body = {"action": "dismiss", name: None}
        status, data = await api.call("POST", f"/v1/moderation/spaces/{space}", "mod", body)
        assert (status == 200) == _nullable(moderation[name]), (name, status, data)
    status, data = await api.call("POST", f"/v1/spaces/{space}/join", "fan", {"sdp": None})
    assert status == 200 and data["sdp"] is None
    assert _nullable(_props(doc, "/v1/spaces/{space}/join")["sdp"])
    answer = doc["paths"]["/v1/spaces/{space}/join"]["post"]["responses"]["200"]
    assert _nullable(answer["content"]["application/json"]["schema"]["properties"]["sdp"])


async def test_openapi_constraints_and_statuses_match_the_server(api: Api) -> None:
    _, doc = await api.call("GET", "/openapi.json")
    paths = doc["paths"]
    for path in ("/v1/dev/token", "/v1/follows"):
        assert _props(doc, path)["user"]["minLength"] == 1
        status, data = await api.call("POST", path, "u", {"user": ""})
        assert (status, data["error"]) == (400, "bad_request")
    when = _props(doc, "/v1/spaces")["scheduled_for"]
    assert when["exclusiveMinimum"] == 0
    for bad in (0, -5, when["exclusiveMaximum"]):
        status, data = await api.call("POST", "/v1/spaces", "u", {"scheduled_for": bad})
        assert status == 400, (bad, data)
    assert set(paths["/v1/spaces"]["post"]["responses"]) == {
        *("201", "400", "401", "403", "405", "408", "413", "429", "500", "503")
    }
    assert {"400", "401", "403", "404"} <= set(
        paths["/v1/spaces/{space}/events"]["get"]["responses"]
    )
    assert "409" in paths["/v1/spaces/{space}/leave"]["post"]["responses"]
    space = await api.space("host")
    r = await api.http.get(f"{api.base}/v1/spaces/{space}/events?token={await api.token('u')}")
    assert r.status == 400 and (await r.json())["error"] == "bad_request"  # not a WebSocket
    r = await api.http.get(f"{api.base}/v1/spaces/s-nope/events?token={await api.token('u')}")
    assert r.status == 404 and (await r.json())["error"] == "not_found"


# ------------------------------------------- the contract: what schemathesis found
# (tests/server/test_schemathesis.py fuzzes the whole document; each server bug it found
# has its own test here)


def test_every_operation_documents_405_and_500_and_body_routes_413() -> None:
    doc = document()
    bodies = {"/v1/dev/token", "/v1/follows", "/v1/spaces", "/v1/moderation/spaces/{space}"}
    bodies |= {f"/v1/spaces/{{space}}/{verb}" for verb in ("join", "actions", "clips", "replay")}
    bodies |= {"/v1/posts", "/v1/posts/voice", "/v1/fleets", "/v1/fleets/voice"}  # posts
    bodies |= {"/v1/dms/{user}", "/v1/dms/{user}/voice", "/v1/fleets/{post}/reply"}
    bodies |= {"/v1/spaces/{space}/posts"}
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            responses = op["responses"]
            assert {"405", "500"} <= set(responses), (method, path)
            assert "Allow" in responses["405"]["headers"]
            assert ("413" in responses) == (path in bodies and method == "post"), (method, path)
            if "{space}" in path:
                assert {"403", "404"} <= set(responses), (method, path)
    throttled = ("/v1/spaces", "/v1/spaces/{space}/actions", "/v1/spaces/{space}/clips")
    throttled += ("/v1/posts/voice", "/v1/dms/{user}", "/v1/spaces/{space}/posts")
    for path in throttled:
        assert "Retry-After" in doc["paths"][path]["post"]["responses"]["429"]["headers"]


@pytest.mark.parametrize("value", [{}, "true", 1, 0, None, []])
async def test_dev_token_refuses_a_moderator_flag_that_is_not_a_boolean(
    api: Api, value: Any
) -> None:
    status, data = await api.call("POST", "/v1/dev/token", body={"user": "x", "moderator": value})
    assert (status, data["error"]) == (400, "bad_request"), data


@pytest.mark.parametrize(
    "query", ["limit=\u00b2", "limit=" + "9" * 5000, "after=\u0663", "after=\u00b2", "limit=\u0663"]
)
async def test_participant_paging_takes_ascii_digits_only(api: Api, query: str) -> None:
    space = await api.space("host")  # "²".isdigit() but int("²") raised: a 500
    status, data = await api.call("GET", f"/v1/spaces/{space}/participants?{query}", "host")
    assert (status, data["error"]) == (400, "bad_request"), data


async def test_integers_with_a_zero_fraction_are_integers(api: Api) -> None:
    """JSON Schema's `integer` takes 853.0; the server took only 853."""
    status, data = await api.call("POST", "/v1/spaces", "host", {"listener_cap": 853.0})
    assert status == 201 and data["limits"]["listener_cap"] == 853, data
    space = data["id"]
    for user in ("victim", "troll"):
        await api.join(space, user)
    _, data = await api.act(space, "victim", "report", target="troll")
    report = data["events"][0]["attrs"]["report_id"]
    await api.token("mod", moderator=True)
    body = {"action": "dismiss", "report": float(report)}
    status, data = await api.call("POST", f"/v1/moderation/spaces/{space}", "mod", body)
    assert status == 200, data
    status, data = await api.call("POST", "/v1/spaces", "host", {"listener_cap": 8.5})
    assert status == 400, data


async def test_a_database_fault_is_a_logged_500_not_a_400(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    from spacesim.server.store_sqlite import SqliteStore

    def broken(self: Any, *args: Any, **kwargs: Any) -> None:
        raise StoreError("database error: disk I/O error")

    monkeypatch.setattr(SqliteStore, "add_user", broken)
    logging.getLogger("spacesim.server").disabled = True
    try:
        status, data = await api.call("GET", "/v1/spaces/s-x", "host")
    finally:
        logging.getLogger("spacesim.server").disabled = False
    assert (status, data["error"]) == (500, "internal"), data
    assert "disk" not in data["reason"]  # the fault is in the log, not told to the client


@pytest.mark.parametrize(
    ("fields", "ok"),
    [
        ({"action": "raise_hand", "emoji": "nope"}, False),  # an enum, whatever the action
        ({"action": "raise_hand", "setting": "nobody"}, False),
        ({"action": "raise_hand", "emoji": "\U0001f525", "setting": "invited"}, True),
        ({"action": "react", "emoji": "nope"}, False),
    ],
)
async def test_action_fields_hold_to_their_enums_whatever_the_action(
    api: Api, fields: dict[str, str], ok: bool
) -> None:
    space = await api.space("host")
    await api.join(space, "fan")
    status, data = await api.call("POST", f"/v1/spaces/{space}/actions", "fan", fields)
    assert (status == 200) == ok, data
    if not ok:
        assert (status, data["error"]) == (400, "bad_request"), data


@pytest.mark.parametrize(
    ("user", "ok"),
    [
        ("ana", True),
        ("caf\u00e9 \u00e0 deux", True),
        ("\u00a0nbsp", True),  # not str.isprintable(), yet nothing hides in it
        ("\U000f0000x", True),  # private use: not isprintable(), still a character
        ("tab\tbed", False),
        ("del\x7f", False),
        ("c1\x85", False),
        ("zero\u200bwidth", False),
        ("bidi\u202eflip", False),
        ("bom\ufeff", False),
        ("line\u2028sep", False),
        ("x" * 64, True),
        ("x" * 65, False),
        ("", False),
    ],
)
async def test_user_ids_match_the_documented_pattern(api: Api, user: str, ok: bool) -> None:
    pattern = _props(document(), "/v1/dev/token")["user"]["pattern"]
    assert (re.fullmatch(pattern.strip("^$"), user) is not None) == ok
    status, data = await api.call("POST", "/v1/dev/token", body={"user": user})
    assert (status == 200) == ok, data
    status, data = await api.call("POST", "/v1/follows", "host", {"user": user})
    assert (status == 200) == ok, data


async def test_following_yourself_is_self_target(api: Api) -> None:
    status, data = await api.call("POST", "/v1/follows", "host", {"user": "host"})
    assert (status, data["error"]) == (409, "self_target"), data
    from spacesim.server.openapi import document

    assert "409" in document()["paths"]["/v1/follows"]["post"]["responses"]


def test_speak_settings_are_the_rulebooks() -> None:
    assert tuple(w.value for w in policy.WhoMaySpeak) == SPEAK_SETTINGS


# --------------------------------------------------------------------------- durability


async def _serve(
    db: Path | str, port: int, cwd: Path | None = None
) -> tuple[subprocess.Popen[bytes], str]:
    """A real `spacesim serve` process, up and answering (the project's one launcher)."""
    proc, url = launch.start(db, port, cwd=cwd)
    await asyncio.to_thread(launch.wait_up, proc, url)
    return proc, url


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
async def test_kill_9_keeps_acknowledged_reports_and_blocks(
    tmp_path: Path, kind: str, request: pytest.FixtureRequest
) -> None:
    db = tmp_path / "kill.db" if kind == "sqlite" else request.getfixturevalue("pg_url")()
    port = launch.free_port()
    proc, base = await _serve(db, port, cwd=tmp_path)  # a URL's secret file goes in cwd
    try:
        async with aiohttp.ClientSession() as http:
            api = Api(http, base)
            space = await api.space("host")
            for user in ("r1", "r2", "bad", "gone", "chatty"):
                assert (await api.join(space, user))[0] == 200
            assert (await api.act(space, "host", "remove", target="gone"))[0] == 200
            assert (await api.act(space, "r1", "block", target="chatty"))[0] == 200  # personal
            acked = []
            for user in ("r1", "r2"):
                status, data = await api.act(space, user, "report", target="bad", reason="spam")
                assert status == 200
                acked.append(data["events"][0]["attrs"]["report_id"])
            assert (await api.act(space, "host", "block", target="bad"))[0] == 200
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=10)
            proc, base = await _serve(db, port, cwd=tmp_path)
            api.tokens.clear()  # the secret file survived too, but mint fresh ones anyway
            status, state = await api.call("GET", f"/v1/spaces/{space}", "host")
            assert status == 200 and state["status"] == "live"  # recovered; clients rejoin
            status, data = await api.join(space, "bad")
            assert status == 403 and data["error"] == "blocked"
            status, data = await api.join(space, "gone")  # removals survive a restart too
            assert status == 403 and data["error"] == "removed"
            assert (await api.join(space, "chatty"))[0] == 200  # a personal block bars nobody
    finally:
        proc.kill()
        proc.wait(timeout=10)
    with contextlib.closing(open_store(db)) as store:
        reports = {r.id for r in store.reports(space=space)}
        assert set(acked) <= reports
        assert store.is_blocked("host", "bad")


async def test_two_servers_on_one_postgres_database_share_durable_state(
    tmp_path: Path, pg_url: Any
) -> None:
    """Two nodes that share no disk (each its own directory) but one database: what one
    writes, the other reads (a post, a follow, a DM), both ways."""
    url, nodes = pg_url(), []
    try:
        for name in ("a", "b"):
            (tmp_path / name).mkdir()
            nodes.append(await _serve(url, launch.free_port(), cwd=tmp_path / name))
        async with aiohttp.ClientSession() as http:
            a, b = (Api(http, base) for _, base in nodes)
            status, post = await a.call("POST", "/v1/posts", "ann", {"text": "from a"})
            assert status == 201, post
            status, got = await b.call("GET", f"/v1/posts/{post['id']}", "bob")
            assert status == 200 and got["text"] == "from a", got
            assert (await b.call("POST", "/v1/follows", "bob", {"user": "ann"}))[0] == 200
            status, timeline = await a.call("GET", "/v1/timeline", "bob")
            assert [p["id"] for p in timeline["posts"]] == [post["id"]], timeline
            status, dm = await b.call("POST", "/v1/dms/ann", "bob", {"text": "hi from b"})
            assert status == 201, dm
            status, convo = await a.call("GET", "/v1/dms/bob", "ann")
            assert [m["text"] for m in convo["messages"]] == ["hi from b"], convo
    finally:
        for proc, _ in nodes:
            launch.stop(proc)


def test_serve_store_takes_a_postgres_url_and_never_prints_its_password(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    pg_url: Any,
) -> None:
    from spacesim import cli
    from spacesim.server.app import STATE
    from spacesim.server.store_postgres import PostgresStore

    apps: list[Any] = []
    monkeypatch.setattr(aiohttp.web, "run_app", lambda app, **kw: apps.append(app))
    monkeypatch.chdir(tmp_path)
    url = pg_url()
    password = re.search(r"//spacesim:(\w+)@", url)[1]  # type: ignore[index]
    assert cli.main(["serve", "--store", url]) == 0
    store = apps[0][STATE].store
    try:
        assert isinstance(store, PostgresStore) and store.url == url
    finally:
        store.close()
    assert (tmp_path / "spacesim.secret").is_file()  # a URL's files: the working directory
    out = capsys.readouterr()
    assert "store=postgresql://spacesim:***@" in out.err and password not in out.out + out.err
    nowhere = f"postgresql://spacesim:{password}@127.0.0.1:{launch.free_port()}/x"
    assert cli.main(["serve", "--db", nowhere]) == 1  # the old name of the option
    out = capsys.readouterr()
    assert "cannot open the store" in out.err and password not in out.out + out.err
    assert len(apps) == 1


async def test_an_ended_space_stays_readable_after_a_restart(tmp_path: Path) -> None:
    config = ServerConfig(db=tmp_path / "ended.db", secret=SECRET, slots=SLOTS)
    before: dict[str, Any] = {}
    for run in ("before", "after"):
        server = TestServer(create_app(config), host="127.0.0.1")
        await server.start_server()
        try:
            async with aiohttp.ClientSession() as http:
                api = Api(http, str(server.make_url("")).rstrip("/"))
                if run == "before":
                    space = await api.space("host", listener_cap=7, who_may_speak="invited")
                    assert (await api.join(space, "al"))[0] == 200
                    assert (await api.call("POST", f"/v1/spaces/{space}/end", "host"))[0] == 200
                status, state = await api.call("GET", f"/v1/spaces/{space}", "al")
                assert status == 200 and state["status"] == "ended", state
                before.setdefault("space", state)
                assert state == before["space"]  # the same resource, loaded or not
                status, page = await api.call("GET", f"/v1/spaces/{space}/participants", "al")
                assert status == 200 and page == {"participants": [], "next": None, "count": 0}
                status, data = await api.join(space, "bo")
                assert (status, data["error"]) == (409, "space_ended"), data
        finally:
            await server.close()


async def test_server_writes_its_own_records(tmp_path: Path) -> None:
    from spacesim.results import load_run

    rtc.use_host_addresses(["127.0.0.1"])
    config = ServerConfig(db=tmp_path / "r.db", secret=SECRET, record_dir=tmp_path / "run")
    server = TestServer(create_app(config), host="127.0.0.1")
    await server.start_server()
    async with aiohttp.ClientSession() as http:
        api = Api(http, str(server.make_url("")).rstrip("/"))
        space = await api.space("host")
        await api.join(space, "amy")
        await api.act(space, "amy", "raise_hand")
        await asyncio.sleep(1.2)  # one CPU sample
    await server.close()
    run = load_run(tmp_path / "run")
    assert run.meta.source == "server"
    kinds = list(run.records["kind"])
    assert kinds.count("participant_joined") == 1 and "hand_raised" in kinds
    assert "node_cpu" in kinds
    assert set(run.records["source"]) == {"server"}


async def test_scheduled_space_opens_when_the_host_starts_it(api: Api) -> None:
    status, data = await api.call(
        "POST", "/v1/spaces", "host", {"title": "later", "scheduled_for": time.time() + 3600}
    )
    assert status == 201 and data["status"] == "scheduled"
    space = data["id"]
    status, data = await api.join(space, "early")
    assert status == 409 and data["error"] == "not_started"
    status, data = await api.call("POST", f"/v1/spaces/{space}/start", "early")
    assert status == 409 and data["error"] == "not_present"  # only the host is in it yet
    status, data = await api.call("POST", f"/v1/spaces/{space}/start", "host")
    assert status == 200 and data["events"][0]["kind"] == "space_started"
    assert (await api.join(space, "early"))[0] == 200
    status, data = await api.call("POST", f"/v1/spaces/{space}/end", "host")
    assert status == 200 and data["events"][-1]["kind"] == "space_ended"
    status, data = await api.join(space, "late")
    assert status == 409 and data["error"] == "space_ended"


async def test_who_may_speak_followed_uses_the_hosts_follows(api: Api) -> None:
    space = await api.space("host", who_may_speak="followed")
    assert (await api.call("POST", "/v1/follows", "host", {"user": "friend"}))[0] == 200
    for user in ("friend", "stranger"):
        await api.join(space, user)
    assert (await api.act(space, "friend", "raise_hand"))[0] == 200
    status, data = await api.act(space, "stranger", "raise_hand")
    assert status == 403 and data["error"] == "speaking_restricted"
    status, data = await api.act(space, "host", "set_who_may_speak", setting="everyone")
    assert status == 200
    assert (await api.act(space, "stranger", "raise_hand"))[0] == 200


async def test_reports_reach_platform_moderators_who_resolve_them(api: Api) -> None:
    space = await api.space("host")
    for user in ("victim", "troll"):
        await api.join(space, user)
    status, data = await api.act(space, "victim", "report", target="troll", reason="abuse")
    assert status == 200
    report = data["events"][0]["attrs"]["report_id"]
    assert isinstance(report, int)  # the moderation endpoint takes it as it comes
    status, data = await api.act(space, "victim", "report")  # the space itself
    assert status == 200 and data["events"][0]["participant"] == space
    body = {"action": "remove", "target": "troll", "report": report}
    path = f"/v1/moderation/spaces/{space}"
    status, data = await api.call("POST", path, "victim", body)
    assert status == 403  # an ordinary token lacks the 'moderate' grant
    await api.token("mod", moderator=True)
    status, data = await api.call("POST", path, "mod", body)
    assert status == 200
    assert [e["kind"] for e in data["events"]] == ["removed", "report_resolved"]
    status, data = await api.join(space, "troll")
    assert status == 403 and data["error"] == "removed"
    status, data = await api.call("POST", path, "mod", {**body, "report": 999})
    assert status == 404
    # a report about another space: not found here (a 404 the route documents; a 400
    # would refuse a request the OpenAPI calls valid, as schemathesis found)
    other = await api.space("host2")
    status, data = await api.call(
        "POST", f"/v1/moderation/spaces/{other}", "mod", {"action": "dismiss", "report": report}
    )
    assert (status, data["error"]) == (404, "not_found"), data


@pytest.mark.parametrize(
    ("path", "raw"),
    [
        ("/v1/spaces", b'{"who_may_speak": []}'),
        ("/v1/spaces", b'{"scheduled_for": 1' + b"0" * 400 + b"}"),
        ("/v1/spaces", b'{"scheduled_for": NaN}'),
        ("/v1/spaces", b"[" * 100_000 + b"]" * 100_000),
        ("/v1/follows", b'{"user": "\\ud800"}'),
    ],
)
async def test_hostile_bodies_get_400_not_500(api: Api, path: str, raw: bytes) -> None:
    status, data = await api.call("POST", path, "u", raw=raw)
    assert status == 400, data


async def test_bad_charset_is_bad_json(api: Api) -> None:
    r = await api.http.post(
        f"{api.base}/v1/spaces",
        data=b"{}",
        headers={
            "Authorization": f"Bearer {await api.token('u')}",
            "Content-Type": "application/json; charset=bogus",
        },
    )
    assert r.status == 400


async def test_moderating_a_resolved_report_again_is_refused_and_changes_nothing(
    api: Api,
) -> None:
    space = await api.space("host")
    for user in ("victim", "bob"):
        await api.join(space, user)
    _, data = await api.act(space, "victim", "report", target="bob")
    report = data["events"][0]["attrs"]["report_id"]
    await api.token("mod", moderator=True)
    path = f"/v1/moderation/spaces/{space}"
    assert (await api.call("POST", path, "mod", {"action": "dismiss", "report": report}))[0] == 200
    status, data = await api.call(
        "POST", path, "mod", {"action": "block", "target": "bob", "report": report}
    )
    assert status == 409 and data["error"] == "conflict"
    assert "bob" in await api.present(space, "host")  # the refused decision was not applied
    status, _ = await api.call("POST", path, "mod", {"action": "remove", "report": 2**70})
    assert status == 400


async def test_a_moderator_blocking_the_host_ends_the_space(api: Api) -> None:
    space = await api.space("host")
    await api.token("mod", moderator=True)
    status, data = await api.call(
        "POST", f"/v1/moderation/spaces/{space}", "mod", {"action": "block", "target": "host"}
    )
    assert status == 200 and "space_ended" in [e["kind"] for e in data["events"]]


async def test_deeply_nested_websocket_message_is_bad_json(api: Api) -> None:
    space = await api.space("host")
    url = f"{api.base}/v1/spaces/{space}/events?token={await api.token('host')}"
    async with api.http.ws_connect(url) as ws:
        await ws.receive_json(timeout=5)  # hello
        await ws.send_str("[" * 30_000 + "]" * 30_000)
        assert (await ws.receive_json(timeout=5))["error"] == "bad_json"
        await ws.send_json({"id": 1, "action": "mute_all"})
        assert (await ws.receive_json(timeout=5))["type"] == "result"


async def test_concurrent_joins_of_one_user_leave_a_consistent_state(
    api: Api, clients: list[AudioClient]
) -> None:
    space = await api.space("host")
    twins = [AudioClient("carol"), AudioClient("carol")]
    clients += twins
    offers = []
    for c in twins:
        for _ in range(SLOTS):
            c.pc.addTransceiver("audio", direction="recvonly")
        await c.pc.setLocalDescription(await c.pc.createOffer())
        offers.append(c.pc.localDescription.sdp)
    results = await asyncio.gather(
        *(api.call("POST", f"/v1/spaces/{space}/join", "carol", {"sdp": o}) for o in offers)
    )
    statuses = sorted(status for status, _ in results)
    assert all(s < 500 for s in statuses), results
    assert ("carol" in await api.present(space, "host")) == (200 in statuses)


async def test_a_removed_user_stops_receiving_events_and_cannot_resubscribe(api: Api) -> None:
    space = await api.space("host")
    await api.join(space, "eve")
    url = f"{api.base}/v1/spaces/{space}/events?token={await api.token('eve')}"
    async with api.http.ws_connect(url) as ws:
        await ws.receive_json(timeout=5)  # hello
        assert (await api.act(space, "host", "remove", target="eve"))[0] == 200
        kinds = []
        while True:
            msg = await ws.receive(timeout=5)
            if msg.type != aiohttp.WSMsgType.TEXT:
                break
            data = json.loads(msg.data)
            kinds.append(data.get("kind") or data.get("error"))
        assert kinds[-1] == "removed" and "removed" in kinds[:-1]
    r = await api.http.get(url)
    assert r.status == 403


def test_every_route_that_reads_a_body_documents_its_slow_body_statuses() -> None:
    """408 request_timeout, 413 too_large and 503 server_busy can answer any request with
    a body (docs/protocol.md, Slow requests)."""
    from spacesim.server.openapi import document

    for path, item in document()["paths"].items():
        for method, op in item.items():
            if "requestBody" in op:
                assert {"408", "413", "503"} <= set(op["responses"]), (method, path)


async def test_a_report_about_another_space_is_not_found_there(api: Api) -> None:
    """Schema-valid (a report id) but not this space's: 404 as an unknown id, not 400."""
    one, two = await api.space("host"), await api.space("host2")
    await api.join(one, "victim")
    await api.join(one, "bob")
    _, data = await api.act(one, "victim", "report", target="bob")
    report = data["events"][0]["attrs"]["report_id"]
    await api.token("mod", moderator=True)
    body = {"action": "dismiss", "report": report}
    status, data = await api.call("POST", f"/v1/moderation/spaces/{two}", "mod", body)
    assert status == 404 and data["error"] == "not_found", data


# --------------------------------------------------------------------------- the web page


async def test_the_space_list_holds_live_and_scheduled_spaces_newest_first(api: Api) -> None:
    live = await api.space("ann", title="Live one")
    later = await api.space("bob", title="Later", scheduled_for=time.time() + 3600)
    gone = await api.space("cat", title="Over")
    assert (await api.call("POST", f"/v1/spaces/{gone}/end", "cat"))[0] == 200
    await api.join(live, "fan")
    status, data = await api.call("GET", "/v1/spaces", "fan")
    assert status == 200, data
    assert [s["id"] for s in data["spaces"]] == [later, live] and data["count"] == 2
    first, second = data["spaces"]
    assert (first["title"], first["status"], first["host"]) == ("Later", "scheduled", "bob")
    assert first["scheduled_for"] > time.time()
    assert second["scheduled_for"] is None and second["counts"]["participants"] == 2
    _, data = await api.call("GET", "/v1/spaces?status=live", "fan")
    assert [s["id"] for s in data["spaces"]] == [live]
    _, data = await api.call("GET", "/v1/spaces?limit=1", "fan")
    assert [s["id"] for s in data["spaces"]] == [later] and data["count"] == 2
    for query in ("status=ended", "limit=0", "limit=501", "limit=x"):
        status, data = await api.call("GET", f"/v1/spaces?{query}", "fan")
        assert (status, data["error"]) == (400, "bad_request"), (query, data)
    assert (await api.call("GET", "/v1/spaces"))[0] == 401
    pinned = issue_token(SECRET, "pin", ["space:join"], 3600, space=live)
    r = await api.http.get(f"{api.base}/v1/spaces", headers={"Authorization": f"Bearer {pinned}"})
    assert r.status == 403 and (await r.json())["error"] == "forbidden"


async def test_slots_say_who_is_heard_in_each_listen_slot(
    api: Api, clients: list[AudioClient]
) -> None:
    space = await api.space("host")
    host, fan = AudioClient("host", opus_tone(440.0, frames=600)), AudioClient("fan")
    clients += [host, fan]
    await host.join_api(api, space)
    await fan.join_api(api, space)
    path = f"/v1/spaces/{space}/slots"

    async def holders() -> list[str | None]:
        status, data = await api.call("GET", path, "fan")
        assert status == 200 and data["space"] == space, data
        return list(data["slots"])

    assert await holders() in ([None] * SLOTS, ["host"] + [None] * (SLOTS - 1))
    await until(lambda: len(fan.received()) >= 10)
    assert await holders() == ["host"] + [None] * (SLOTS - 1)
    assert (await api.act(space, "host", "mute", target="host"))[0] == 200
    for _ in range(100):  # the slot is freed by the host's next packet, gated off
        if await holders() == [None] * SLOTS:
            break
        await asyncio.sleep(0.05)
    assert await holders() == [None] * SLOTS
    assert (await api.call("GET", "/v1/spaces/s-nope/slots", "fan"))[0] == 404
    assert (await api.call("GET", path))[0] == 401
    assert (await api.call("POST", f"/v1/spaces/{space}/end", "host"))[0] == 200
    assert await holders() == [None] * SLOTS  # an ended space: nobody heard


WEB = Path(__file__).resolve().parents[2] / "spacesim" / "server" / "web"


async def test_the_page_and_its_modules_are_served_with_a_strict_policy(api: Api) -> None:
    r = await api.http.get(f"{api.base}/")
    page = await r.text()
    assert r.status == 200 and r.content_type == "text/html", page
    assert "default-src 'self'" in r.headers["Content-Security-Policy"]
    for module in re.findall(r'src="(/web/[^"]+)"', page) + re.findall(
        r'href="(/web/[^"]+)"', page
    ):
        r = await api.http.get(f"{api.base}{module}")
        assert r.status == 200, module
        assert r.headers["X-Content-Type-Options"] == "nosniff"
    for js in WEB.glob("*.js"):  # every module a module imports is served
        for name in re.findall(r'from "\./([^"]+)"', js.read_text()):
            r = await api.http.get(f"{api.base}/web/{name}")
            # a module script must have a JavaScript MIME type (Python 3.11 says application/)
            assert r.status == 200 and r.content_type.endswith("/javascript"), name
    for bad in ("/web/nope.js", "/web/../app.py", "/web/%2e%2e/app.py", "/web/", "/web"):
        r = await api.http.get(f"{api.base}{bad}")
        assert (r.status, (await r.json())["error"]) == (404, "not_found"), bad
    assert "/" not in document()["paths"]  # the page is a client of the protocol, not part


def test_the_page_calls_only_documented_routes() -> None:
    """docs/protocol.md and the OpenAPI are the page's contract: every route its scripts
    name (an interpolated id read as the path parameter) is a documented one."""
    paths = set(document()["paths"])
    named = set()
    for js in WEB.glob("*.js"):
        for found in re.findall(r"/v1/[A-Za-z0-9_/${}.]*", js.read_text()):
            named.add(re.sub(r"\$\{[^}]*\}", "{space}", found).rstrip("/"))
    assert named, "no routes found in the page's scripts"
    assert named <= paths, sorted(named - paths)
    assert "/v1/spaces/{space}/events" in named and "/v1/spaces/{space}/join" in named


def test_dev_tokens_go_to_loopback_or_a_named_dev_network_only() -> None:
    """``serve --dev-network``: a client there may take dev tokens when it also names an
    address there; without the option only loopback clients addressing localhost may."""
    from spacesim.server.app import _dev_client

    assert _dev_client("127.0.0.1", "localhost:8080", ())
    assert not _dev_client("10.213.201.1", "10.213.201.2:8080", ())
    nets = ("10.213.0.0/16",)
    assert _dev_client("10.213.201.1", "10.213.201.2:8080", nets)
    assert not _dev_client("10.9.0.1", "10.213.201.2:8080", nets)  # a client elsewhere
    assert not _dev_client("10.213.201.1", "evil.example:80", nets)  # DNS rebinding
    assert not _dev_client("10.213.201.1", "8.8.8.8", nets)
