"""The room server's HTTP API, WebSocket event stream and signalling (aiohttp).

Every request is authenticated with a signed token, checked against the grant and
then against the rulebook (`spacesim.policy`). Every refusal is a 4xx with a reason;
an unexpected error in one space answers 500 for that request only and leaves the
other spaces untouched. See docs/protocol.md for the contract.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import logging
import math
import re
import secrets
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeGuard

from aiohttp import WebSocketError, WSMsgType, web

from spacesim import policy
from spacesim.protocol import (
    CURSOR_PATTERN,
    PROTOCOL_VERSION,
    ProtocolError,
    error_body,
    is_user_id,
    is_utf8,
    parse_action,
)
from spacesim.server import metrics
from spacesim.server.auth import (
    MODERATE,
    SPACE_CREATE,
    SPACE_JOIN,
    AuthError,
    Claims,
    DevIssuer,
    Forbidden,
    is_loopback_host,
    require,
    verify_token,
)
from spacesim.server.captions import Captioner, to_webvtt
from spacesim.server.posts import Posts, captioner_transcribe
from spacesim.server.recording import Recordings
from spacesim.server.records import ServerRecorder
from spacesim.server.room import RateLimiter, Room, Throttles, text_frame
from spacesim.server.store import (
    Conflict,
    InvalidArgument,
    NotFound,
    SpaceRecord,
    Store,
    StoreError,
    open_store,
)

__all__ = ["ServerConfig", "create_app"]

log = logging.getLogger("spacesim.server")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

CONFIG: web.AppKey[ServerConfig] = web.AppKey("config", object)  # type: ignore[arg-type]
STATE: web.AppKey[ServerState] = web.AppKey("state", object)  # type: ignore[arg-type]

#: Spaces a host may create: (per second, burst) -- 10 a minute, 5 at once.
SPACE_CREATES = (10 / 60, 5.0)
#: The largest listener cap a space may be created with (null = no cap).
MAX_LISTENER_CAP = 1_000_000_000
#: Participants per page of GET /v1/spaces/{id}/participants: default and maximum.
PAGE_DEFAULT = 100
PAGE_MAX = 500
#: GET /v1/spaces/{id}/participants: ``after`` (empty = from the start) and ``limit``, the
#: same patterns as the OpenAPI's (`re` with fullmatch: ``$`` alone would take a final "\n").
_CURSOR = re.compile(CURSOR_PATTERN.removesuffix("$"))
_DIGITS = re.compile(r"[0-9]{1,18}")
#: WebSocket close code when the stream's token expires (docs/protocol.md, Events).
WS_TOKEN_EXPIRED = 4401
#: WebSocket close code when a stream keeps sending after its messages are refused as
#: too many (docs/protocol.md, Events).
WS_FLOOD = 4429
#: The one route that takes ``?token=`` (browsers cannot set headers on a WebSocket).
EVENTS_ROUTE = "/v1/spaces/{space}/events"


@dataclass(frozen=True)
class ServerConfig:
    """How a server runs; `spacesim serve` fills it from the command line."""

    db: Path
    secret: bytes
    dev: bool = True
    ice_hosts: tuple[str, ...] = ("127.0.0.1",)
    capacity: int | None = None  # forwarded streams; None = no admission control
    slots: int = policy.HEARD_AT_ONCE  # audio streams each client receives
    max_body: int = 256 * 1024
    record_dir: Path | None = None  # write the server's own records (source=server) here
    # Slow and vanished clients (docs/protocol.md, Errors and Presence):
    # s for a request's headers, and an idle keep-alive: longer than aiohttp's client
    # keeps an idle connection (15 s, aiohttp/connector.py BaseConnector), so a client
    # never reuses a connection the server has just closed
    header_timeout: float = 20.0
    body_timeout: float = 10.0  # s for a request's body once its headers are in
    max_body_reads: int = 100  # bodies still arriving at once; more -> 503 server_busy
    presence_timeout: float = 30.0  # s without audio nor event stream -> left
    ws_rate: float = 50.0  # messages a second one event stream may send (after a burst)
    ws_burst: float = 100.0
    recording_dir: Path | None = None  # recordings and clips; None: next to the db file
    posts_dir: Path | None = None  # voice posts' and DMs' audio; None: next to the db file
    # durable state in PostgreSQL (a postgresql:// URL: `open_store`) instead of the SQLite
    # file `db`; the files (recordings, posts' audio) still go beside `db`
    store: str | None = None

    @property
    def recordings_path(self) -> Path:
        """Where the Ogg/Opus recordings and clips go (`recording_dir` or beside `db`)."""
        return self.recording_dir or self.db.parent / f"{self.db.stem}-recordings"

    caption_workers: int = 1  # speech recogniser processes (started at the first caption)
    posts_sweep_s: float = 60.0  # s between two sweeps of expired Fleets (one at startup)
    # Cluster (spacesim.server.cluster): the Redis URL (None: one node, no Redis), this
    # node's id (None: a random one) and the base URL other nodes and clients reach it at
    cluster: str | None = None
    node_id: str | None = None
    public_url: str | None = None
    relay_host: str | None = None  # the node-to-node relay's address (None: ice_hosts[0])
    # Networks whose clients may take dev tokens too (besides loopback), e.g. a test's
    # veth pairs to nodes in network namespaces (`serve --dev-network`)
    dev_networks: tuple[str, ...] = ()

    @property
    def posts_path(self) -> Path:
        """Where voice posts' and voice DMs' Ogg/Opus files go."""
        return self.posts_dir or self.db.parent / f"{self.db.stem}-posts"


class ServerState:
    """Rooms in memory, the store on disk; rebuilt from the store after a restart."""

    def __init__(self, config: ServerConfig, store: Store) -> None:
        self.config = config
        self.store = store
        self.rooms: dict[str, Room] = {}
        self.media: dict[str, Any] = {}  # space id -> MediaRoom (created on first connect)
        self.closed_media: dict[str, int] = {}  # counters of media rooms already closed
        self.touched: set[str] = set()  # other spaces a block just removed someone from
        self.throttles = Throttles()  # per-user limits, across all of this server's rooms
        self.creations = RateLimiter(*SPACE_CREATES)  # spaces created, per host
        self.body_reads = 0  # request bodies being read (see `_body`)
        self.presence: dict[tuple[str, str], asyncio.TimerHandle] = {}  # (space, user)
        self.tasks: set[asyncio.Task[None]] = set()  # presence timeouts being applied
        self.recorder: ServerRecorder | None = (
            ServerRecorder(config.record_dir) if config.record_dir else None
        )
        self.recordings = Recordings(config.recordings_path, store, self.media)
        self.cluster: Any = None  # spacesim.server.cluster.Cluster with --cluster
        self.captioner = Captioner(config.caption_workers)
        self.posts = Posts(
            config.posts_path,
            store,
            store.now,  # type: ignore[attr-defined]  # store_posts: the store's clock
            captioner_transcribe(self.captioner),
            config.posts_sweep_s,
        )

    def recover(self) -> None:
        """Scheduled and live spaces come back after a crash; clients rejoin."""
        for row in self.store.spaces_to_recover():
            self.rooms[row.id] = self._room_for(
                row.id,
                row.host,
                policy.SpaceStatus(row.status),
                row.who_may_speak,
                row.listener_cap,
                self.store.captions_enabled(row.id),
            )
        self.recordings.recover(set(self.rooms))

    def _room_for(
        self,
        space_id: str,
        host: str,
        status: policy.SpaceStatus,
        who: str,
        listener_cap: int | None = None,
        captions: bool = False,
    ) -> Room:
        removed = set()
        for entry in self.store.audit_log(space=space_id):  # the audit log is the history
            how = entry.attrs.get("action") if entry.action == "moderate" else entry.action
            barred = how == "remove" or (how == "block" and entry.attrs.get("scope") != "personal")
            if barred and entry.target and entry.target != host:
                removed.add(entry.target)
        space = policy.Space(
            space_id,
            host,
            limits=policy.Limits(listener_cap=listener_cap),
            who_may_speak=policy.WhoMaySpeak(who),
            host_follows=self.store.follows_of(host),
            blocked=self.store.blocked_by(host),
            status=status,
            removed=removed - {host},
            past_participants={p.user for p in self.store.participations(space=space_id)},
            recording=_recording_on(self.store, space_id),
            captions=captions,
        )
        room = Room(space, persist=self.store, slots=self.config.slots)
        room.on_host_block = self._host_blocked
        room.throttles = self.throttles
        if self.recorder is not None:
            room.sinks.append(self.recorder.sink)
        room.sinks.append(self.recordings.on_event)
        room.sinks.append(
            lambda msg: self.tap_captions(room) if msg.get("kind") == "captions_changed" else None
        )
        if self.cluster is not None:  # the other nodes' event streams of this space
            room.remote = self.cluster.publisher(space_id)
        return room

    def tap_captions(self, room: Room) -> None:
        """The media plane calls the caption tap only while captions are on: with them
        off, forwarding a packet makes no call for captions at all."""
        media = self.media.get(room.id)
        if media is not None:
            media.on_heard = self.captioner.space(room).tap if room.space.captions else None

    def create(
        self,
        host: str,
        title: str,
        who: str,
        scheduled_for: float | None,
        listener_cap: int | None = None,
        captions: bool = False,
    ) -> Room:
        space_id = "s-" + secrets.token_hex(6)
        status = policy.SpaceStatus.SCHEDULED if scheduled_for else policy.SpaceStatus.LIVE
        self.store.create_space(
            space_id,
            host=host,
            title=title,
            status=status.value,
            who_may_speak=who,
            scheduled_for=scheduled_for,
            at=time.time(),
            listener_cap=listener_cap,
        )
        self.store.record_join(space_id, host, "host", time.time())
        if captions:
            self.store.set_captions(space_id, True)
            self.captioner.warm()
        room = self._room_for(space_id, host, status, who, listener_cap, captions)
        self.rooms[space_id] = room
        return room

    def _host_blocked(self, source: Room, user: str) -> None:
        """Memory agrees with the store at once: the host's other spaces bar `user` too."""
        for room in list(self.rooms.values()):
            same_host = room is not source and room.space.host == source.space.host
            if same_host and room.host_blocked(user):
                self.touched.add(room.id)  # _drop_gone closes the user's media there

    def forget(self, room: Room) -> None:
        """An ended room leaves memory (its media closed first); the store still has it,
        and `ended` answers for it from there."""
        if self.rooms.get(room.id) is room:
            del self.rooms[room.id]

    def room(self, space_id: str) -> Room:
        room = self.rooms.get(space_id)
        if room is None:
            if self.ended(space_id) is not None:
                raise ProtocolError("space_ended", f"space {space_id!r} has ended")
            raise ProtocolError("not_found", f"no space {space_id!r} on this server")
        return room

    def ended(self, space_id: str) -> SpaceRecord | None:
        """An ended space that is not loaded (e.g. after a restart), read from the store."""
        if space_id in self.rooms:
            return None
        try:
            record = self.store.get_space(space_id)
        except StoreError:  # unknown, or not even a valid id
            return None
        return record if record.status is policy.SpaceStatus.ENDED else None

    def ended_snapshot(self, record: SpaceRecord) -> dict[str, Any]:
        """What `Room.snapshot` says of an ended space: nobody present, its settings."""
        limits = policy.Limits(listener_cap=record.listener_cap)
        counts = ("participants", "listeners", "stage", "hands", "invites")
        return {
            "id": record.id,
            "host": record.host,
            "status": policy.SpaceStatus.ENDED.value,
            "who_may_speak": policy.WhoMaySpeak(record.who_may_speak).value,
            "counts": dict.fromkeys(counts, 0),
            "stage": [],
            "muted": [],
            "hands": [],
            "invites": {},
            "limits": {
                "max_cohosts": limits.max_cohosts,
                "max_speakers": limits.max_speakers,
                "listener_cap": limits.listener_cap,
            },
            "slots": self.config.slots,
            "recording": False,
            "captions": self.store.captions_enabled(record.id),
        }


def _recording_on(store: Store, space_id: str) -> bool:
    """Whether the space's recording was being written (it goes on after a restart)."""
    rec = store.get_recording(space_id)  # type: ignore[attr-defined]  # store_recording
    return rec is not None and rec.status == "recording"


# --------------------------------------------------------------------------- helpers


def _json(data: Any, status: int = 200) -> web.Response:
    return web.json_response(data, status=status)


def _error(
    code: str, reason: str, status: int, extra: dict[str, Any] | None = None
) -> web.Response:
    return _json(error_body(code, reason, extra), status)


async def _body(request: web.Request) -> dict[str, Any]:
    if not request.body_exists:  # not `can_read_body`: False once read (the cluster's
        return {}  # proxy reads it first, and answers here after a take-over)
    config, state = request.app[CONFIG], request.app[STATE]
    announced = request.content_length
    if announced is not None and announced > config.max_body:  # refused before reading
        raise web.HTTPRequestEntityTooLarge(max_size=config.max_body, actual_size=announced)
    slow = not request.content.is_eof()  # not all here yet: a slow body holds a slot
    if slow and state.body_reads >= config.max_body_reads:
        raise ProtocolError(
            "server_busy", "too many request bodies are arriving slowly", retry_after=1
        )
    state.body_reads += slow
    try:  # aiohttp itself would wait for a body forever
        async with asyncio.timeout(config.body_timeout):
            await request.read()
    except TimeoutError:
        raise ProtocolError(
            "request_timeout", f"the body did not arrive within {config.body_timeout:g} s"
        ) from None
    finally:
        state.body_reads -= slow
    try:
        data = await request.json()  # the body read above, decoded
    except (ValueError, RecursionError, LookupError):  # bad JSON, bad UTF-8, bad charset
        raise ProtocolError("bad_json", "the body is not valid JSON") from None
    if not isinstance(data, dict):
        raise ProtocolError("bad_request", "the body must be a JSON object")
    if _bad_strings(data):
        raise ProtocolError("bad_request", "strings must be valid Unicode (no lone surrogates)")
    return data


def _claims(request: web.Request) -> Claims:
    header = request.headers.get("Authorization", "")
    token = header.removeprefix("Bearer ").strip() if header.startswith("Bearer ") else ""
    resource = request.match_info.route.resource
    if not token and resource is not None and resource.canonical == EVENTS_ROUTE:
        token = request.query.get("token", "")
    if not token:
        raise AuthError("missing", "send 'Authorization: Bearer <token>'")
    claims = verify_token(request.app[CONFIG].secret, token)
    request.app[STATE].store.add_user(claims.sub, claims.sub)
    return claims


def _user_id(value: object) -> TypeGuard[str]:
    """A user id the store can hold (`protocol.USER_ID_PATTERN`, the OpenAPI's pattern)."""
    return is_user_id(value)


def _whole(value: object) -> int | None:
    """A JSON integer as JSON Schema counts them (``7`` and ``7.0`` alike), else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value if isinstance(value, int) else None


def _allow(claims: Claims, grants: tuple[str, ...], space: str | None) -> None:
    """Forbidden unless the token has one of `grants` and is not pinned to another space."""
    have = [g for g in grants if claims.has(g)]
    require(claims, have[0] if have else grants[0], space)


def _in_space(
    request: web.Request, grant: str | tuple[str, ...]
) -> tuple[Claims, ServerState, Room]:
    """The caller, the server and the space named in the path, with grant and pin checked."""
    claims = _claims(request)
    state = request.app[STATE]
    room = state.room(request.match_info["space"])
    _allow(claims, (grant,) if isinstance(grant, str) else grant, room.id)
    return claims, state, room


#: aiohttp's own refusals (routing, body size) -> the protocol's error codes.
_HTTP_CODES = {404: "not_found", 405: "method_not_allowed", 413: "too_large"}


def _bad_strings(data: Any) -> bool:
    """True if a JSON value holds a string that is not valid UTF-8 (a lone surrogate)."""
    stack = [data]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if not is_utf8(item):
                return True
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False


@web.middleware
async def errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Map refusals to 4xx with a reason; contain anything unexpected to this request."""
    try:
        return await handler(request)
    except ProtocolError as exc:
        metrics.REFUSALS.labels(exc.code).inc()
        response = _error(exc.code, exc.reason, exc.status, exc.extra)
        if exc.retry_after is not None:  # a throttle: when the next try may succeed
            response.headers["Retry-After"] = str(exc.retry_after)
        if exc.code == "request_timeout":  # the rest of a slow body is not waited for
            response.force_close()
        return response
    except Forbidden as exc:
        return _error("forbidden", str(exc), 403)
    except AuthError as exc:
        return _error("unauthorized", str(exc), 401)
    except NotFound as exc:
        return _error("not_found", str(exc), 404)
    except Conflict as exc:
        return _error("conflict", str(exc), 409)
    except InvalidArgument as exc:  # the store refused a value the API let through
        return _error("bad_request", str(exc), 400)
    # any other StoreError (the database failed) is a server fault: the 500 below, logged
    except web.HTTPException as exc:
        if exc.status >= 400 and exc.content_type != "application/json":
            code = _HTTP_CODES.get(exc.status, "bad_request" if exc.status < 500 else "internal")
            response = _error(code, exc.reason, exc.status)
            if "Allow" in exc.headers:  # 405: which methods the resource takes
                response.headers["Allow"] = exc.headers["Allow"]
            return response
        raise
    except Exception:  # a bug: this request fails, the server and other spaces go on
        log.exception("unhandled error in %s %s", request.method, request.path)
        return _error("internal", "internal error; see the server log", 500)


# --------------------------------------------------------------------------- routes

routes = web.RouteTableDef()


@routes.get("/healthz")
async def healthz(request: web.Request) -> web.Response:
    # clock_ns: the server's monotonic clock, the common reference of load processes on
    # several machines (spacesim.client.clock estimates their offsets to it)
    return _json({"ok": True, "protocol": PROTOCOL_VERSION, "clock_ns": time.monotonic_ns()})


@routes.get("/openapi.json")
async def openapi(request: web.Request) -> web.Response:
    from spacesim.server.openapi import document

    return _json(document())


@routes.get("/metrics")
async def metrics_endpoint(request: web.Request) -> web.Response:
    state = request.app[STATE]
    body, content_type = metrics.render(
        state.rooms.values(), state.media.values(), state.closed_media, state.captioner.families()
    )
    return web.Response(body=body, headers={"Content-Type": content_type})


def _dev_client(remote: str, host: str, networks: Sequence[str]) -> bool:
    """A client that may take dev tokens: loopback addressing localhost, or (both its
    address and the Host it named) inside one of `networks` (``serve --dev-network``)."""
    if is_loopback_host(remote) and is_loopback_host(host):
        return True
    if not networks:
        return False
    name = host.rpartition(":")[0] if host.count(":") == 1 else host
    try:
        ips = [ipaddress.ip_address(remote), ipaddress.ip_address(name.strip("[]"))]
    except ValueError:
        return False
    nets = [ipaddress.ip_network(n, strict=False) for n in networks]
    return all(any(ip in net for net in nets) for ip in ips)


@routes.post("/v1/dev/token")
async def dev_token(request: web.Request) -> web.Response:
    config = request.app[CONFIG]
    if not config.dev:
        raise ProtocolError("forbidden", "dev tokens are disabled on this server")
    if not _dev_client(request.remote or "", request.host, config.dev_networks):
        raise ProtocolError(  # and a loopback Host header: no DNS rebinding from a web page
            "forbidden", "dev tokens are only for loopback clients addressing localhost"
        )
    body = await _body(request)
    user = body.get("user")
    if not _user_id(user):
        raise ProtocolError("bad_request", "'user' must be a user id of 1-64 chars")
    moderator = body.get("moderator", False)
    if not isinstance(moderator, bool):  # not coerced: "false" or {} must not mean anything
        raise ProtocolError("bad_request", "'moderator' must be true or false")
    token = DevIssuer(config.secret).token(user, moderator=moderator)
    return _json({"token": token, "user": user})


@routes.post("/v1/follows")
async def follow(request: web.Request) -> web.Response:
    claims = _claims(request)
    _allow(claims, (SPACE_CREATE, SPACE_JOIN), None)
    body = await _body(request)
    user = body.get("user")
    if not _user_id(user):
        raise ProtocolError("bad_request", "'user' must be a user id (1-64 chars)")
    if user == claims.sub:  # well formed, but who asks decides: the rulebook's code
        raise ProtocolError("self_target", "cannot follow yourself")
    state = request.app[STATE]
    state.store.add_user(user, user)
    state.store.follow(claims.sub, user)
    for room in state.rooms.values():
        if room.space.host == claims.sub:
            room.space.follow(user)
    return _json({"ok": True})


@routes.post("/v1/spaces")
async def create_space(request: web.Request) -> web.Response:
    claims = _claims(request)
    require(claims, "space:create")
    body = await _body(request)
    title = body.get("title", "")
    who = body.get("who_may_speak", "everyone")
    when = body.get("scheduled_for")
    if not isinstance(title, str) or len(title) > 200:
        raise ProtocolError("bad_request", "'title' must be a string of at most 200 chars")
    if not isinstance(who, str) or who not in {w.value for w in policy.WhoMaySpeak}:
        raise ProtocolError("bad_request", "'who_may_speak' must be everyone, followed or invited")
    if when is not None and (
        not isinstance(when, int | float)
        or isinstance(when, bool)
        or not 0 < when < 1e11  # finite, after 1970, before year 5138
    ):
        raise ProtocolError("bad_request", "'scheduled_for' must be unix seconds")
    cap = body.get("listener_cap")
    if cap is not None and ((cap := _whole(cap)) is None or not 0 <= cap <= MAX_LISTENER_CAP):
        raise ProtocolError(
            "bad_request",
            f"'listener_cap' must be null or an integer from 0 to {MAX_LISTENER_CAP:,}",
        )
    recording = body.get("recording", False)
    if not isinstance(recording, bool):
        raise ProtocolError("bad_request", "'recording' must be true or false")
    captions = body.get("captions", False)
    if not isinstance(captions, bool):
        raise ProtocolError("bad_request", "'captions' must be true or false")
    state = request.app[STATE]
    state.creations.check(claims.sub, "spaces created")
    room = state.create(claims.sub, title, who, float(when) if when else None, cap, captions)
    if state.cluster is not None:  # this node is its origin
        await state.cluster.claim(room.id)
    if room.space.status is policy.SpaceStatus.LIVE:
        _notify_started(state, room)
    if recording:  # the host's first action: persisted, audited, on the event stream
        room.apply(claims.sub, "start_recording", {})
    return _json(room.snapshot(), 201)


@routes.get("/v1/spaces")
async def list_spaces(request: web.Request) -> web.Response:
    """The live and scheduled spaces (what a client offers to join), newest first; ended
    spaces are read one at a time by id. On a cluster, any node lists every live node's
    spaces (each node holds only the rooms whose origin it is)."""
    claims = _claims(request)
    _allow(claims, (SPACE_JOIN, MODERATE), None)
    status = request.query.get("status")
    if status is not None and status not in ("live", "scheduled"):
        raise ProtocolError("bad_request", "'status' must be live or scheduled")
    limit_text = request.query.get("limit", str(PAGE_DEFAULT))
    if not (_DIGITS.fullmatch(limit_text) and 1 <= int(limit_text) <= PAGE_MAX):
        raise ProtocolError("bad_request", f"'limit' must be an integer from 1 to {PAGE_MAX}")
    limit = int(limit_text)
    state = request.app[STATE]
    count, rows = local_spaces(state, status, limit)
    if state.cluster is not None:
        more_count, more = await state.cluster.others_spaces(status, limit)
        seen = {row["item"]["id"] for row in rows}
        rows += [row for row in more if row["item"]["id"] not in seen]
        count += more_count
        rows.sort(key=lambda row: row["created_at"], reverse=True)
    return _json({"spaces": [row["item"] for row in rows[:limit]], "count": count})


def local_spaces(state: ServerState, status: str | None, limit: int) -> tuple[int, list[Any]]:
    """How many of this process's rooms are live or scheduled (or of `status`), and the
    newest `limit` of them as ``{"created_at", "item"}`` (``item``: the listing's entry;
    ``created_at`` orders the entries of several nodes)."""
    rooms = [
        r
        for r in state.rooms.values()
        if r.space.status is not policy.SpaceStatus.ENDED
        and (status is None or r.space.status.value == status)
    ]
    records = sorted(
        (state.store.get_space(r.id) for r in rooms), key=lambda rec: rec.created_at, reverse=True
    )
    by_id = {r.id: r for r in rooms}
    rows = []
    for rec in records[:limit]:
        snap = by_id[rec.id].snapshot()
        item = {
            "id": rec.id,
            "host": rec.host,
            "title": rec.title,
            "status": snap["status"],
            "scheduled_for": rec.scheduled_for,
            "counts": snap["counts"],
            "captions": snap["captions"],
        }
        rows.append({"created_at": rec.created_at, "item": item})
    return len(records), rows


@routes.get("/v1/spaces/{space}")
async def get_space(request: web.Request) -> web.Response:
    claims = _claims(request)
    state = request.app[STATE]
    space_id = request.match_info["space"]
    ended = state.ended(space_id)  # not loaded: read-only, from the store
    if ended is not None:
        _allow(claims, (SPACE_JOIN, MODERATE), space_id)
        return _json(state.ended_snapshot(ended))
    _, _, room = _in_space(request, (SPACE_JOIN, MODERATE))
    return _json(room.snapshot())


@routes.get("/v1/spaces/{space}/slots")
async def list_slots(request: web.Request) -> web.Response:
    """Who holds each listen slot now: the RTP stream does not say (no CSRC), so a client
    that shows who is speaking pairs this with each slot's audio level."""
    claims = _claims(request)
    state = request.app[STATE]
    space_id = request.match_info["space"]
    slots: list[str | None] = [None] * state.config.slots
    if state.ended(space_id) is not None:  # nobody is heard in an ended space
        _allow(claims, (SPACE_JOIN, MODERATE), space_id)
        return _json({"space": space_id, "slots": slots})
    _, _, room = _in_space(request, (SPACE_JOIN, MODERATE))
    media = state.media.get(room.id)
    if media is not None:
        for user, k in media.speaker_slots().items():
            slots[k] = user
    return _json({"space": space_id, "slots": slots})


@routes.get("/v1/spaces/{space}/participants")
async def list_participants(request: web.Request) -> web.Response:
    """Who is present, in join order, a page at a time (the snapshot carries counts only)."""
    claims = _claims(request)
    state = request.app[STATE]
    space_id = request.match_info["space"]
    room: Room | None = None
    if state.ended(space_id) is not None:  # an ended space has nobody present
        _allow(claims, (SPACE_JOIN, MODERATE), space_id)
    else:
        _, _, room = _in_space(request, (SPACE_JOIN, MODERATE))
    query = request.query
    after_text = query.get("after", "")
    if not _CURSOR.fullmatch(after_text):  # ASCII digits: str.isdigit() takes "²" too
        raise ProtocolError("bad_request", "'after' must be a cursor from a previous page")
    limit_text = query.get("limit", str(PAGE_DEFAULT))
    if not (_DIGITS.fullmatch(limit_text) and 1 <= int(limit_text) <= PAGE_MAX):
        raise ProtocolError("bad_request", f"'limit' must be an integer from 1 to {PAGE_MAX}")
    role_text = query.get("role")
    role = None
    if role_text is not None:
        try:
            role = policy.Role(role_text)
        except ValueError:
            roles = ", ".join(r.value for r in policy.Role)
            raise ProtocolError("bad_request", f"'role' must be one of {roles}") from None
    if room is None:  # an ended space not loaded: nobody is present
        return _json({"participants": [], "next": None, "count": 0})
    page, cursor = room.participants_page(
        int(after_text) if after_text else None, int(limit_text), role
    )
    return _json(
        {
            "participants": [{"user": u, "role": r.value} for u, r in page],
            "next": None if cursor is None else str(cursor),
            "count": room.count(role),
        }
    )


@routes.get("/v1/spaces/{space}/captions")
async def list_captions(request: web.Request) -> web.Response:
    """The space's final captions, live or ended: JSON, or WebVTT (``?format=vtt`` or
    ``Accept: text/vtt``)."""
    claims = _claims(request)
    state = request.app[STATE]
    space_id = request.match_info["space"]
    if state.ended(space_id) is not None:
        _allow(claims, (SPACE_JOIN, MODERATE), space_id)
    else:
        _in_space(request, (SPACE_JOIN, MODERATE))
    fmt = request.query.get("format")
    if fmt is not None and fmt not in ("json", "vtt"):
        raise ProtocolError("bad_request", "'format' must be json or vtt")
    if fmt is None:
        fmt = "vtt" if "text/vtt" in request.headers.get("Accept", "") else "json"
    found = state.store.captions(space_id)
    if fmt == "vtt":
        return web.Response(text=to_webvtt(found), content_type="text/vtt", charset="utf-8")
    items = [
        {"id": c.id, "speaker": c.speaker, "start": c.start, "end": c.end, "text": c.text}
        | ({"gap": True} if c.gap else {})
        for c in found
    ]
    return _json({"space": space_id, "captions": items})


@routes.post("/v1/spaces/{space}/start")
async def start_space(request: web.Request) -> web.Response:
    return await _lifecycle(request, "start")


@routes.post("/v1/spaces/{space}/end")
async def end_space(request: web.Request) -> web.Response:
    return await _lifecycle(request, "end")


async def _lifecycle(request: web.Request, action: str) -> web.Response:
    claims, state, room = _in_space(request, "space:create")
    events = room.lifecycle(claims.sub, action)
    if action == "end":
        await _retire(state, room)
    elif any(e.get("kind") == "space_started" for e in events):
        _notify_started(state, room)
    return _json({"ok": True, "events": events})


@routes.post("/v1/spaces/{space}/join")
async def join_space(request: web.Request) -> web.Response:
    """Join as a listener and, with an SDP offer in the body, connect audio."""
    claims, state, room = _in_space(request, "space:join")
    body = await _body(request)
    offer = body.get("sdp")
    if offer is not None and (not isinstance(offer, str) or "v=0" not in offer):
        raise ProtocolError("bad_sdp", "'sdp' must be an SDP offer", {"slots": state.config.slots})
    avoid = body.get("avoid", [])  # cluster nodes the client just lost its media on
    if not isinstance(avoid, list) or len(avoid) > 16 or not all(isinstance(a, str) for a in avoid):
        raise ProtocolError("bad_request", "'avoid' must be a list of at most 16 node ids")
    user = claims.sub
    present = room.space.role_of(user) is not None
    if not present:
        _admit(state, room)
        events = room.join(user)
    else:
        events = []  # rejoining after a dropped connection: keep the role
    answer = None
    if offer is not None:
        try:
            answer = await _connect(state, room, user, offer, frozenset(avoid))
        except ProtocolError as exc:
            if not present and exc.code != "conflict":  # conflict: a newer join goes on
                room.leave(user)
            raise
        except BaseException:
            if not present:
                room.leave(user)
            raise
        if room.space.role_of(user) is None:  # removed, blocked or ended while connecting
            await _close_media(state, room.id, user)
            raise ProtocolError("not_present", f"{user} left the space while connecting")
    metrics.JOINS.inc()
    reply = {
        "participant": user,
        "role": room.space.role_of(user),
        "sdp": answer,
        "events": events,
        "space": room.snapshot(),
        "slots": state.config.slots,
    }
    if state.cluster is not None:  # which node carries the media (docs/protocol.md, Cluster)
        reply["node"] = state.cluster.node_of(room.id, user)
    return _json(reply)


def _notify_started(state: ServerState, room: Room) -> None:
    """The host's followers are told (docs/protocol.md, Notifications)."""
    from spacesim.server.posts_api import notify_space_started

    notify_space_started(state, room, state.store.get_space(room.id).title)


def _admit(state: ServerState, room: Room) -> None:
    """Admission control: refuse a join that would exceed the forwarded-stream budget."""
    cap = state.config.capacity
    if cap is None:
        return
    slots = state.config.slots

    def per_participant(r: Room) -> int:
        return policy.streams_reserved(
            sum(1 for u in r.space.stage() if r.space.may_be_heard(u)), slots
        )

    heard = per_participant(room)
    streams = sum(len(r.space.participants) * per_participant(r) for r in state.rooms.values())
    if streams + heard > cap:
        metrics.JOINS_REFUSED.inc()
        raise ProtocolError(
            "server_full",
            f"server at capacity ({streams} of {cap} forwarded streams); try another server",
        )


async def _connect(
    state: ServerState, room: Room, user: str, offer: str, avoid: frozenset[str] = frozenset()
) -> str:
    """The SDP answer; what went wrong, if anything, as the client's fault (bad_sdp),
    a race (not_present, conflict) or the server's (media_setup_failed, logged by
    `MediaRoom.connect` with its cause)."""
    from spacesim.server.media import MediaRoom, Superseded

    if state.cluster is not None:  # a listener may be placed on another node
        placed, _ = await state.cluster.connect(room, user, offer, avoid)
        if placed is not None:
            return str(placed)
    media = state.media.get(room.id)
    if media is None:
        media = MediaRoom(room.space.may_be_heard, slots=state.config.slots)
        media.on_lost = lambda user: _watch_presence(state, room.id, user)
        state.media[room.id] = media
        state.tap_captions(room)
        state.recordings.attach(room.id, media)
        if state.cluster is not None:
            media.relays.append(state.cluster.relay_sink(room.id))
    try:
        with media_setup_errors(state.config.slots):
            answer: str = await media.connect(user, offer)
    except Superseded:
        if room.space.role_of(user) is None:  # removed, blocked or ended while connecting
            raise ProtocolError("not_present", f"{user} left the space while connecting") from None
        raise ProtocolError(
            "conflict", f"a newer join of {user} replaced this connection while it was set up"
        ) from None
    return answer


@contextlib.contextmanager
def media_setup_errors(slots: int) -> Iterator[None]:
    """Audio setup failures as the protocol names them, for joins and replays alike: the
    client's offer (400 ``bad_sdp``, with the ``slots`` it must carry) or the server's own
    fault (500 ``media_setup_failed``; `spacesim.server.media` logged the cause)."""
    from spacesim.server.media import MediaSetupError

    try:
        yield
    except ValueError as exc:
        raise ProtocolError(
            "bad_sdp", f"cannot use this SDP offer: {exc}", {"slots": slots}
        ) from None
    except MediaSetupError:
        raise ProtocolError(
            "media_setup_failed",
            "the server could not set up the audio connection; see the server log",
        ) from None


def _watch_presence(state: ServerState, space_id: str, user: str) -> None:
    """`user` lost a connection (audio or events): unless one is back within
    ``presence_timeout`` seconds, they leave the space as if they had asked to."""
    key = (space_id, user)
    old = state.presence.pop(key, None)
    if old is not None:
        old.cancel()

    def due() -> None:
        state.presence.pop(key, None)
        task = asyncio.ensure_future(_presence_due(state, space_id, user))
        state.tasks.add(task)
        task.add_done_callback(state.tasks.discard)

    delay = state.config.presence_timeout
    state.presence[key] = asyncio.get_running_loop().call_later(delay, due)


async def _presence_due(state: ServerState, space_id: str, user: str) -> None:
    room = state.rooms.get(space_id)
    if room is None or room.space.role_of(user) is None or room.has_stream(user):
        return
    media = state.media.get(space_id)
    if media is not None and user in media.participants():  # reconnected (or connecting)
        return
    if state.cluster is not None and state.cluster.placed_at(space_id, user):  # on another node
        return
    log.info("presence timeout: %s left %s (no audio, no event stream)", user, space_id)
    try:
        room.leave(user)
        if room.space.status is policy.SpaceStatus.ENDED:  # the host vanished
            await _retire(state, room)
    except Exception:  # a bug; nobody's request is waiting for this
        log.exception("presence timeout of %s in %s failed", user, space_id)


async def _retire(state: ServerState, room: Room) -> None:
    """An ended space: close its media (its counters kept), then free the room."""
    await _close_media(state, room.id)
    state.captioner.retire(room.id)
    state.forget(room)


async def _close_media(state: ServerState, space_id: str, user: str | None = None) -> None:
    if state.cluster is not None:  # a listener placed on another node is closed there
        state.cluster.closed(space_id, user)
    media = state.media.get(space_id)
    if media is None:
        return
    if user is None:
        state.media.pop(space_id, None)
        for key, value in media.stats().items():  # counters must never go backwards
            if key in ("received", "forwarded", "dropped"):
                state.closed_media[key] = state.closed_media.get(key, 0) + int(value)
        await media.close_all()
    else:
        await media.close(user)


@routes.post("/v1/spaces/{space}/leave")
async def leave_space(request: web.Request) -> web.Response:
    claims = _claims(request)
    state = request.app[STATE]
    space_id = request.match_info["space"]
    if state.ended(space_id) is not None:  # freed from memory: nobody is there to leave
        _allow(claims, (SPACE_JOIN,), space_id)
        return _json({"ok": True, "events": []})
    claims, state, room = _in_space(request, SPACE_JOIN)
    events = room.leave(claims.sub)
    await _close_media(state, room.id, claims.sub)
    if room.space.status is policy.SpaceStatus.ENDED:
        await _retire(state, room)
    return _json({"ok": True, "events": events})


@routes.post("/v1/spaces/{space}/actions")
async def act(request: web.Request) -> web.Response:
    claims, state, room = _in_space(request, "space:join")
    action, fields = parse_action(await _body(request))
    events = room.apply(claims.sub, action, fields)
    await _drop_gone(state, room)
    return _json({"ok": True, "events": events})


async def _drop_gone(state: ServerState, room: Room) -> None:
    """Close the media of anyone the last action removed (they stop hearing at once), in
    this space and the host's others (a space-wide block reaches them all)."""
    others = [state.rooms[i] for i in state.touched if i in state.rooms]
    state.touched.clear()
    for other in [room, *others]:
        if state.cluster is not None:
            for user in state.cluster.placed_users(other.id):
                if other.space.role_of(user) is None:
                    state.cluster.closed(other.id, user)
        media = state.media.get(other.id)
        if media is not None:
            for user in list(media.participants()):
                if other.space.role_of(user) is None:
                    await media.close(user)
        if other.space.status is policy.SpaceStatus.ENDED:  # e.g. moderation ended it
            await _retire(state, other)


@routes.post("/v1/moderation/spaces/{space}")
async def moderate(request: web.Request) -> web.Response:
    """Platform moderators resolve reports: dismiss, remove, block or end."""
    claims, state, room = _in_space(request, "moderate")
    body = await _body(request)
    try:
        action = policy.ModerationAction(str(body.get("action")))
    except ValueError:
        raise ProtocolError(
            "bad_request", "'action' must be dismiss, remove, block or end"
        ) from None
    target = body.get("target")
    if "target" in body and not _user_id(target):  # null too: omit it instead
        raise ProtocolError("bad_request", "'target' must be a user id")
    if target is not None and target == room.space.host and action is policy.ModerationAction.BLOCK:
        action = policy.ModerationAction.END  # barring a host from their own space ends it
    report = body.get("report")
    if "report" in body:  # null too: omit it instead
        if (report := _whole(report)) is None or not 0 < report < 2**63:
            raise ProtocolError("bad_request", "'report' must be a report id")
        filed = state.store.get_report(report)
        if filed.space != room.id:
            # well formed, just not one of this space's reports: as unknown as 999 (404)
            raise ProtocolError("not_found", f"space {room.id} has no report {report}")
        if filed.resolution is not None:
            raise ProtocolError("conflict", f"report {report} was already resolved")
    try:
        events = room.moderate(claims.sub, action, target)
        if report is not None:  # only once the decision is applied
            state.store.resolve_report(report, action.value, claims.sub, time.time())
    finally:
        await _drop_gone(state, room)  # whatever happened, the removed stop hearing
    return _json({"ok": True, "events": events})


#: Seconds a cut-off stream (too slow, removed) has to take its last frames before its
#: socket is aborted: a client that stopped reading would otherwise hold it forever.
CLOSE_GRACE_S = 5.0


@routes.get("/v1/spaces/{space}/events")
async def events_ws(request: web.Request) -> web.StreamResponse:
    """The event stream; clients may also send actions as JSON messages on it.

    Events do not go through aiohttp's WebSocket writer: the room writes one pre-built,
    uncompressed text frame to every subscriber's transport (`Room.attach`). That is
    safe with aiohttp 3.14 because (aiohttp/_websocket/writer.py,
    `WebSocketWriter.send_frame` / `_write_websocket_frame`) a frame that is not
    compressed -- and control frames (ping, pong, close) always -- is written to the
    same transport whole, by synchronous `transport.write` calls with no await in
    between, and there is no other buffer in front of the transport; with
    ``compress=False`` nothing negotiates permessage-deflate. Writes from the room are
    synchronous too, so frames never interleave on the single-threaded loop. And
    `WebSocketResponse.close` (web_ws.py) sets `closed` before it writes the close
    frame, which the room checks, so no event follows a close frame.
    """
    claims, state, room = _in_space(request, "space:join")
    # before the upgrade: a refusal is still a 403
    sub = room.subscribe(claims.sub, moderator=claims.has("moderate"))
    expiry: asyncio.TimerHandle | None = None
    ws = web.WebSocketResponse(heartbeat=20, max_msg_size=64 * 1024, compress=False)
    try:
        await ws.prepare(request)
        transport = request.transport  # the one aiohttp's own WebSocketWriter writes to
        if transport is None:  # the client went away during the upgrade
            return ws
        hello = {
            "type": "hello",
            "protocol": PROTOCOL_VERSION,
            "space": room.snapshot(),
            "clock_ns": time.monotonic_ns(),
        }
        closing: set[asyncio.Task[bool]] = set()

        def end() -> None:  # the room cut this stream off and wrote why: close it
            asyncio.get_running_loop().call_later(CLOSE_GRACE_S, transport.abort)
            task = asyncio.ensure_future(ws.close(drain=False))
            closing.add(task)
            task.add_done_callback(closing.discard)

        def expire() -> None:  # the token ran out: no more events, no more actions
            asyncio.get_running_loop().call_later(CLOSE_GRACE_S, transport.abort)
            task = asyncio.ensure_future(ws.close(code=WS_TOKEN_EXPIRED, message=b"token expired"))
            closing.add(task)
            task.add_done_callback(closing.discard)

        expiry = asyncio.get_running_loop().call_later(max(0.0, claims.exp - time.time()), expire)
        room.attach(sub, transport, ws, text_frame(json.dumps(hello).encode()), end)
        try:
            await _ws_messages(state, room, claims, ws)
        except ConnectionError as exc:  # the client went away mid-answer: its fault, not ours
            log.info("event stream of %s in %s lost: %s", claims.sub, room.id, exc)
    finally:
        if expiry is not None:
            expiry.cancel()
        room.unsubscribe(sub)
        _watch_presence(state, room.id, claims.sub)
        if isinstance(ws.exception(), WebSocketError):  # aiohttp refused a frame, closed
            log.info("event stream of %s in %s: bad frame: %s", claims.sub, room.id, ws.exception())
    return ws


async def _ws_messages(
    state: ServerState, room: Room, claims: Claims, ws: web.WebSocketResponse
) -> None:
    """Answer a stream's actions, one message at a time, fairly.

    aiohttp hands over messages already received without suspending, so a flooding client
    would hold the event loop; each message yields to it once, and a stream over
    ``ws_rate`` gets ``rate_limited`` errors, then (if it keeps on) close code 4429.
    """
    config = state.config
    messages = RateLimiter(config.ws_rate, config.ws_burst)
    refusals = RateLimiter(config.ws_rate, config.ws_burst)  # refused, yet still sending
    async for msg in ws:
        await asyncio.sleep(0)  # the other connections' turn
        if time.time() >= claims.exp:  # the timer may not have fired yet
            await ws.close(code=WS_TOKEN_EXPIRED, message=b"token expired")
            return
        if msg.type == WSMsgType.ERROR:  # a bad frame: aiohttp closed the stream already
            return
        wait = messages.take("")
        if wait > 0.0:
            if not refusals.allow(""):
                log.info("event stream of %s in %s closed: message flood", claims.sub, room.id)
                await ws.close(code=WS_FLOOD, message=b"too many messages")
                return
            seconds = max(1, math.ceil(wait))
            reason = f"more than {config.ws_rate:g} messages a second; retry in {seconds} s"
            reply: dict[str, Any] = {
                "type": "error",
                "error": "rate_limited",
                "reason": reason,
                "retry_after": seconds,
            }
        elif msg.type != WSMsgType.TEXT:
            reply = {"type": "error", "error": "bad_request", "reason": "send JSON text"}
        else:
            reply = await _ws_action(state, room, claims, msg.data)
        if ws.closed:  # e.g. the action removed this user: the stream ended meanwhile
            return
        await ws.send_json(reply)


async def _ws_action(state: ServerState, room: Room, claims: Claims, text: str) -> dict[str, Any]:
    try:
        body = json.loads(text)
    except (ValueError, RecursionError):
        return {"type": "error", "error": "bad_json", "reason": "the message is not valid JSON"}
    request_id = body.get("id") if isinstance(body, dict) else None
    if _bad_strings(body):
        reason = "strings must be valid Unicode (no lone surrogates)"
        return {"type": "error", "id": request_id, "error": "bad_request", "reason": reason}
    try:
        action, fields = parse_action(body)
        events = room.apply(claims.sub, action, fields)
        await _drop_gone(state, room)
        return {"type": "result", "id": request_id, "ok": True, "events": len(events)}
    except ProtocolError as exc:
        reply = {"type": "error", "id": request_id, "error": exc.code, "reason": exc.reason}
        if exc.retry_after is not None:  # a throttle: when the next try may succeed
            reply["retry_after"] = exc.retry_after
        return reply
    except Exception:
        log.exception("unhandled error on the event stream of %s", room.id)
        return {"type": "error", "id": request_id, "error": "internal", "reason": "internal error"}


# --------------------------------------------------------------------------- app


def _check_fault_hook(config: ServerConfig) -> None:
    """The media plane's test-only slowdown: refused in production, loud in development."""
    from spacesim.server import media

    if not media.FAULT_BUSY_US:
        return
    if not config.dev:
        raise ValueError(f"{media.FAULT_ENV} is a test-only fault hook; unset it to run --no-dev")
    log.warning(
        "TEST-ONLY FAULT INJECTED: %s=%g: every forwarded packet burns %g us of extra CPU. "
        "Never run a real server like this.",
        media.FAULT_ENV,
        media.FAULT_BUSY_US,
        media.FAULT_BUSY_US,
    )


_TOKEN_IN_URL = re.compile(r"((?:^|[?&;\s])token=)[^&;\s\"']*", re.IGNORECASE)


def redact(text: str) -> str:
    """`text` with every ``token=...`` query value replaced by ``[redacted]``."""
    return _TOKEN_IN_URL.sub(r"\1[redacted]", text) if "token=" in text.lower() else text


class RedactTokens(logging.Filter):
    """Keep tokens out of the access log: ``?token=`` is redacted from every line."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str):
            record.msg = redact(record.msg)
        if isinstance(record.args, tuple):
            record.args = tuple(redact(a) if isinstance(a, str) else a for a in record.args)
        for key, value in list(vars(record).items()):  # the access logger's `extra` fields
            if key not in ("msg", "args") and isinstance(value, str):
                setattr(record, key, redact(value))
        return True


def _redact_access_log() -> None:
    access = logging.getLogger("aiohttp.access")
    if not any(isinstance(f, RedactTokens) for f in access.filters):
        access.addFilter(RedactTokens())


#: The web page's static files (plain HTML, CSS and JS modules: no build step, no CDN).
WEB_DIR = Path(__file__).with_name("web")
#: The page loads only its own files and talks only to this server (fetch, WebSocket);
#: CSP Level 3 lets 'self' cover ws: and wss: to the same host.
_PAGE_CSP = "default-src 'self'; connect-src 'self'; img-src 'self' data:; base-uri 'none'"


def add_web_page(app: web.Application) -> None:
    """`GET /` and `/web/...`: a browser client of the protocol. It is not part of the
    protocol, so not in the OpenAPI document (which describes what clients may call)."""

    # Served by exact name from a fixed list: no path is ever joined from the request, and
    # an unknown name is a JSON not_found like any other (aiohttp's static route answers
    # a missing file with an empty 404 and a directory with a 403).
    files = {p.name: p for p in WEB_DIR.iterdir() if p.is_file()}

    async def index(request: web.Request) -> web.StreamResponse:
        return web.FileResponse(files["index.html"], headers=_page_headers())

    async def asset(request: web.Request) -> web.StreamResponse:
        path = files.get(request.match_info["name"])
        if path is None:
            raise ProtocolError("not_found", "no such file in the web page")
        return web.FileResponse(path, headers=_page_headers())

    app.router.add_get("/", index)
    app.router.add_get("/web/{name}", asset)


def _page_headers() -> dict[str, str]:
    return {
        "Content-Security-Policy": _PAGE_CSP,
        "X-Content-Type-Options": "nosniff",
        "Cache-Control": "no-cache",
    }


def create_app(config: ServerConfig, store: Store | None = None) -> web.Application:
    """The aiohttp application; `spacesim serve` runs it, tests use it on 127.0.0.1."""
    from spacesim.rtc import use_host_addresses

    use_host_addresses(list(config.ice_hosts))
    _check_fault_hook(config)
    _redact_access_log()
    # aiohttp has no header timeout of its own, but its keep-alive timer (armed when a
    # connection opens and after each response, not pushed back by arriving bytes) closes
    # a connection whose next request's headers are not complete when it fires
    # (aiohttp/web_protocol.py, RequestHandler.connection_made / _process_keepalive).
    cluster = None
    if config.cluster is not None:
        from spacesim.server import cluster_api

        cluster = cluster_api.node(config)
    app = web.Application(
        middlewares=[errors] if cluster is None else [errors, cluster_api.route],
        client_max_size=config.max_body,
        handler_args={
            "keepalive_timeout": config.header_timeout,
            # after a refusal aiohttp reads (and drops) the rest of the body for up to
            # `lingering_time` (default 10 s) before it closes: no longer than a body may take
            "lingering_time": min(10.0, config.body_timeout),
        },
    )
    state = ServerState(config, store or open_store(config.store or config.db))
    state.cluster = cluster
    state.recover()
    app[CONFIG] = config
    app[STATE] = state
    app.add_routes(routes)
    from spacesim.server import recording_api

    app.add_routes(recording_api.routes)
    from spacesim.server import posts_api

    app.add_routes(posts_api.routes)
    add_web_page(app)
    if cluster is not None:
        app.add_routes(cluster_api.routes)

    async def startup(app: web.Application) -> None:
        # the media plane's fan-out kernel (numba): loaded from its cache (~0.3 s; the
        # first start on a machine compiles it, ~1-3 s) before the first request, not
        # when the first space's MediaRoom is created
        from spacesim.rtc import native

        native.load()
        if cluster is not None:  # before the first request: registered, spaces claimed
            await cluster.start(state)
        state.recordings.start()
        state.captioner.start()
        state.posts.recover()  # before any request: nothing expired is ever served again
        state.posts.start()
        if state.recorder is not None:
            state.recorder.start_sampling(
                lambda: [*state.media.values(), *(cluster.remote.values() if cluster else ())],
                captions=state.captioner.stats,
                recordings=state.recordings.stats,
            )

    async def shutdown(app: web.Application) -> None:
        for timer in state.presence.values():
            timer.cancel()
        state.presence.clear()
        for space_id in list(state.media):
            await _close_media(state, space_id)
        if cluster is not None:
            await cluster.close()
        await state.posts.close()
        await state.captioner.close()
        if state.recorder is not None:
            path = await state.recorder.close()
            log.info("server records written to %s", path)
        await state.recordings.close()
        state.store.close()

    app.on_startup.append(startup)
    app.on_shutdown.append(shutdown)
    return app
