"""The cluster's HTTP side: the proxy to a space's origin node, event streams served from
the space's Redis channel, and the node-to-node routes (docs/protocol.md, Cluster)."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import aiohttp
from aiohttp import WSMsgType, web

from spacesim.client.session import refused
from spacesim.protocol import PROTOCOL_VERSION, ProtocolError
from spacesim.server.app import (
    CLOSE_GRACE_S,
    EVENTS_ROUTE,
    STATE,
    WS_TOKEN_EXPIRED,
    Handler,
    ServerConfig,
    _allow,
    _body,
    _claims,
    _error,
    _in_space,
    _json,
    _watch_presence,
    _ws_action,
    local_spaces,
    media_setup_errors,
)
from spacesim.server.auth import SPACE_JOIN
from spacesim.server.cluster import Cluster, NodeGone, NodeInfo
from spacesim.server.room import RateLimiter, Subscriber

__all__ = ["node", "route", "routes"]

#: Request headers a proxied request keeps, and response headers its answer keeps.
_ASK = ("Authorization", "Content-Type", "Accept", "Range", "If-Range")
_ANSWER = ("Content-Type", "Retry-After", "Allow", "Content-Range", "Accept-Ranges")


def node(config: ServerConfig) -> Cluster:
    """This server's cluster node, from `serve --cluster` (started with the app)."""
    assert config.cluster is not None
    url = config.public_url or f"http://{config.ice_hosts[0]}"
    return Cluster(
        config.cluster,
        node_id=config.node_id,
        public_url=url,
        relay_host=config.relay_host or config.ice_hosts[0],
        secret=config.secret,
        slots=config.slots,
    )


@web.middleware
async def route(request: web.Request, handler: Handler) -> web.StreamResponse:
    """A space's requests go to its origin node: proxied, except event streams, which are
    served here from the space's channel."""
    state = request.app[STATE]
    cluster: Cluster = state.cluster
    space = request.match_info.get("space")
    if space is None or space in state.rooms or request.path.startswith("/cluster/"):
        return await handler(request)
    for _ in range(2):
        origin = await cluster.origin_of(space)
        if origin is None:  # here, unknown, or its origin is gone: answered from here
            return await handler(request)
        resource = request.match_info.route.resource
        if resource is not None and resource.canonical == EVENTS_ROUTE:
            return await _mirror_events(request, cluster, origin, space)
        try:
            return await _proxy(request, cluster, origin)
        except NodeGone:  # its port is closed: it died; take the space over and answer
            await cluster.unreachable(origin.id)
    raise ProtocolError("server_busy", f"the space {space}'s node is changing", retry_after=1)


async def _proxy(request: web.Request, cluster: Cluster, origin: NodeInfo) -> web.Response:
    """The origin's answer to the request (`NodeGone` when its port is closed)."""
    assert cluster.http is not None
    body = await request.read()
    headers = {h: request.headers[h] for h in _ASK if h in request.headers}
    try:
        async with cluster.http.request(
            request.method, origin.url + str(request.rel_url), data=body, headers=headers
        ) as r:
            data = await r.read()
            answer = web.Response(status=r.status, body=data)
            for h in _ANSWER:
                if h in r.headers:
                    answer.headers[h] = r.headers[h]
            return answer
    except (aiohttp.ClientConnectionError, TimeoutError) as exc:
        if refused(exc):
            raise NodeGone(origin.url) from None
        raise ProtocolError(
            "server_busy", f"the space's node {origin.id} did not answer", retry_after=1
        ) from None


async def _ask(
    cluster: Cluster, origin: NodeInfo, path: str, token: str, body: dict[str, Any]
) -> tuple[int, dict[str, Any]]:
    """A request to the origin on the user's behalf (their own token)."""
    assert cluster.http is not None
    headers = {"Authorization": f"Bearer {token}"}
    try:
        async with cluster.http.post(origin.url + path, json=body, headers=headers) as r:
            return r.status, dict(await r.json(content_type=None))
    except (aiohttp.ClientConnectionError, TimeoutError, ValueError) as exc:
        if refused(exc):  # dead: the client's retry is taken over here (`route`)
            await cluster.unreachable(origin.id)
        raise ProtocolError(
            "server_busy", f"the space's node {origin.id} did not answer", retry_after=1
        ) from None


def _token(request: web.Request) -> str:
    header = request.headers.get("Authorization", "")
    return header.removeprefix("Bearer ").strip() or request.query.get("token", "")


async def _mirror_events(
    request: web.Request, cluster: Cluster, origin: NodeInfo, space: str
) -> web.StreamResponse:
    """The event stream of a space held by another node: the hello (and the checks before
    it: blocked, removed, ended) from the origin, then the events of the space's channel,
    subscribed to before the hello is asked for, so none is missed in between."""
    claims = _claims(request)
    _allow(claims, (SPACE_JOIN,), space)
    token = _token(request)
    mirror = await cluster.mirror(space)
    sub = Subscriber(claims.sub)
    mirror.subs[sub] = claims.has("moderate")
    try:
        status, hello = await _ask(cluster, origin, f"/cluster/v1/spaces/{space}/hello", token, {})
        if status >= 400:
            return _error(hello.get("error", "internal"), hello.get("reason", ""), status)
        ws = web.WebSocketResponse(heartbeat=20, max_msg_size=64 * 1024, compress=False)
        await ws.prepare(request)
        transport = request.transport
        if transport is None:
            return ws
        loop = asyncio.get_running_loop()
        closing: set[asyncio.Task[bool]] = set()

        def close(code: int = 1000, message: bytes = b"") -> None:
            loop.call_later(CLOSE_GRACE_S, transport.abort)
            task = asyncio.ensure_future(ws.close(code=code, message=message))
            closing.add(task)
            task.add_done_callback(closing.discard)

        expiry = loop.call_later(
            max(0.0, claims.exp - time.time()), close, WS_TOKEN_EXPIRED, b"token expired"
        )
        first = {
            "type": "hello",
            "protocol": PROTOCOL_VERSION,
            "space": hello["space"],
            "clock_ns": time.monotonic_ns(),
        }
        from spacesim.server.room import text_frame

        sub.on_end = close
        transport.write(text_frame(json.dumps(first).encode()))
        held, sub.pending = sub.pending, []
        for frame in held:
            transport.write(frame)
        if sub.ended:
            close()
        sub.transport, sub.stream = transport, ws
        limit = RateLimiter(cluster_ws_rate(request), cluster_ws_rate(request) * 2)
        try:
            async for msg in ws:
                if msg.type != WSMsgType.TEXT:
                    continue
                if not limit.allow(""):
                    await ws.send_json(
                        {"type": "error", "error": "rate_limited", "reason": "too many messages"}
                    )
                    continue
                _, reply = await _ask(
                    cluster, origin, f"/cluster/v1/spaces/{space}/ws-action", token,
                    {"text": msg.data},
                )  # fmt: skip
                if ws.closed:
                    break
                await ws.send_json(reply)
        finally:
            expiry.cancel()
        return ws
    finally:
        mirror.subs.pop(sub, None)


def cluster_ws_rate(request: web.Request) -> float:
    return request.app[STATE].config.ws_rate


# --------------------------------------------------------------------------- node to node

routes = web.RouteTableDef()


def _trusted(request: web.Request) -> Cluster:
    cluster: Cluster = request.app[STATE].cluster
    if not cluster.trusted(request):
        raise ProtocolError("forbidden", "node-to-node route: other nodes of the cluster only")
    return cluster


@routes.post("/cluster/v1/media/{space}/connect")
async def media_connect(request: web.Request) -> web.Response:
    """The origin placed a listener here: set up their connection, answer its SDP."""
    cluster = _trusted(request)
    body = await _body(request)
    with media_setup_errors(cluster.slots):
        answer = await cluster.remote_connect(
            request.match_info["space"], str(body["origin"]), str(body["user"]), str(body["sdp"])
        )
    return _json({"sdp": answer, "node": cluster.id})


@routes.post("/cluster/v1/media/{space}/close")
async def media_close(request: web.Request) -> web.Response:
    """The origin closed a listener's media (or the whole room's, without ``user``)."""
    cluster = _trusted(request)
    body = await _body(request)
    user = body.get("user")
    await cluster.remote_close(request.match_info["space"], None if user is None else str(user))
    return _json({"ok": True})


@routes.post("/cluster/v1/spaces/{space}/lost")
async def media_lost(request: web.Request) -> web.Response:
    """A listener's connection on another node failed: watched for presence here."""
    cluster = _trusted(request)
    body = await _body(request)
    space, user = request.match_info["space"], str(body.get("user"))
    state = request.app[STATE]
    if cluster.placed.get(space, {}).get(user) is not None:
        cluster.placed[space].pop(user, None)
        cluster._retarget(space)
    if space in state.rooms:
        _watch_presence(state, space, user)
    return _json({"ok": True})


@routes.post("/cluster/v1/spaces/{space}/hello")
async def events_hello(request: web.Request) -> web.Response:
    """What another node's event stream of this space starts with, after the same checks
    as a stream here (the user's own token)."""
    claims, _, room = _in_space(request, "space:join")
    sub = room.subscribe(claims.sub, moderator=claims.has("moderate"))
    room.unsubscribe(sub)
    return _json({"space": room.snapshot()})


@routes.post("/cluster/v1/spaces/{space}/ws-action")
async def events_action(request: web.Request) -> web.Response:
    """An action sent on another node's event stream of this space (the user's token)."""
    claims, state, room = _in_space(request, "space:join")
    body = await _body(request)
    return _json(await _ws_action(state, room, claims, str(body.get("text", ""))))


@routes.post("/cluster/v1/spaces")
async def spaces_here(request: web.Request) -> web.Response:
    """The spaces whose origin this node is, for another node's ``GET /v1/spaces`` (which
    checked its caller's token): ``status`` and ``limit`` as there."""
    _trusted(request)
    body = await _body(request)
    status = body.get("status")
    count, rows = local_spaces(
        request.app[STATE], None if status is None else str(status), int(body.get("limit", 1))
    )
    return _json({"count": count, "spaces": rows})


@routes.get("/cluster/v1/node")
async def node_stats(request: web.Request) -> web.Response:
    """This node: id, live nodes, listeners carried, relay counters, process CPU s."""
    state = request.app[STATE]
    cluster: Cluster = state.cluster
    media = [*state.media.values(), *cluster.remote.values()]
    forwarded = sum(m.stats()["forwarded"] for m in media)
    forwarded += state.closed_media.get("forwarded", 0) + cluster.closed_forwarded
    return _json(cluster.stats() | {"forwarded": forwarded})
