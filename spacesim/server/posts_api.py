"""HTTP routes of posts, voice posts, DMs, Fleets, timelines, notifications and the
posts shown in a space (docs/protocol.md, Posts, DMs and Fleets).

Voice uploads stream (``request.content``, never read whole; aiohttp's
``client_max_size`` applies only to ``read()``/``json()``, web_request.py) through
`OggOpusCheck`; audio files are served by aiohttp's `FileResponse`, which answers
``Range`` requests with 206 (aiohttp/web_fileresponse.py).
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web

from spacesim import policy
from spacesim.protocol import ProtocolError
from spacesim.server.app import (
    CONFIG,
    STATE,
    ServerState,
    _allow,
    _body,
    _claims,
    _json,
    _user_id,
)
from spacesim.server.auth import SPACE_CREATE, SPACE_JOIN, Claims
from spacesim.server.posts import FLEET_TTL_S, MAX_TEXT, VOICE_MAX_BYTES
from spacesim.server.room import Room
from spacesim.server.store_posts import PostRecord, SpacePost

__all__ = ["notify_space_started", "routes"]

routes = web.RouteTableDef()

_POST_ID = re.compile(r"p-[0-9a-f]{16}")
_DIGITS = re.compile(r"[0-9]{1,18}")
_OGG = {"Content-Type": "audio/ogg"}
#: Longest wait a client may ask of ``GET /v1/notifications?wait=`` (seconds).
MAX_WAIT_S = 30


def _user(request: web.Request) -> tuple[Claims, ServerState]:
    claims = _claims(request)
    _allow(claims, (SPACE_CREATE, SPACE_JOIN), None)
    return claims, request.app[STATE]


def post_json(post: PostRecord) -> dict[str, Any]:
    audio = None
    if post.audio_bytes is not None:
        audio = {
            "bytes": post.audio_bytes,
            "duration_s": post.duration_s,
            "url": f"/v1/posts/{post.id}/audio",
        }
    captions = None
    if post.captions is not None:
        captions = {"status": post.captions, "text": post.caption_text}
    return {
        "id": post.id,
        "author": post.author,
        "kind": post.kind,
        "text": post.text,
        "created_at": post.created_at,
        "expires_at": post.expires_at,
        "recipient": post.recipient,
        "reply_to": post.reply_to,
        "audio": audio,
        "captions": captions,
    }


def _text(value: object, required: bool) -> str:
    if value is None and not required:
        return ""
    if not isinstance(value, str) or len(value) > MAX_TEXT or (required and not value):
        need = "a non-empty string" if required else "a string"
        raise ProtocolError("bad_request", f"'text' must be {need} of at most {MAX_TEXT} chars")
    return value


def _readable(state: ServerState, viewer: str, post: PostRecord | None, post_id: str) -> PostRecord:
    """The post if `viewer` may read it; otherwise as unknown as a post that never was."""
    store = state.store
    if post is not None and policy.may_read_post(
        viewer,
        post.kind,
        post.author,
        post.recipient,
        follows_author=post.author in store.follows_of(viewer),
        blocked_by_author=store.is_blocked(post.author, viewer),
    ):
        return post
    raise ProtocolError("not_found", f"no post {post_id!r} you can read")


def _find(state: ServerState, viewer: str, post_id: str) -> PostRecord:
    post = state.store.get_post(post_id) if _POST_ID.fullmatch(post_id) else None  # type: ignore[attr-defined]
    return _readable(state, viewer, post, post_id)


def _may_message(state: ServerState, sender: str, recipient: str) -> None:
    if sender == recipient:
        raise ProtocolError("self_target", "cannot send a direct message to yourself")
    store = state.store
    outcome = policy.may_message(
        store.is_blocked(recipient, sender), store.is_blocked(sender, recipient)
    )
    if not outcome:
        raise ProtocolError(outcome.code or "blocked", outcome.reason or "blocked")


async def _chunks(request: web.Request) -> AsyncIterator[bytes]:
    """The body as it arrives; each piece must come within the body timeout."""
    timeout = request.app[CONFIG].body_timeout
    while True:
        try:
            async with asyncio.timeout(timeout):
                chunk = await request.content.readany()
        except TimeoutError:
            raise ProtocolError(
                "request_timeout", f"no audio arrived for {timeout:g} s; upload again"
            ) from None
        if not chunk:
            return
        yield chunk


async def _create(
    request: web.Request,
    kind: str,
    *,
    voice: bool,
    recipient: str | None = None,
    reply_to: str | None = None,
) -> web.Response:
    claims, state = _user(request)
    author = claims.sub
    posts = state.posts
    if voice:
        text = _text(request.query.get("text"), required=False)
        captions = request.query.get("captions", "false")
        if captions not in ("true", "false"):
            raise ProtocolError("bad_request", "'captions' must be true or false")
        announced = request.content_length
        if announced is not None and announced > VOICE_MAX_BYTES:  # before reading
            raise ProtocolError("too_large", f"the audio is over {VOICE_MAX_BYTES:,} bytes")
    else:
        body = await _body(request)
        text = _text(body.get("text"), required=True)
        captions = "false"
    if recipient is not None:
        state.store.add_user(recipient, recipient)  # as a follow does: users are implicit
        _may_message(state, author, recipient)
    posts.sends.check(author, "posts")
    post_id = posts.new_id()
    size: int | None = None
    duration: float | None = None
    if voice:
        size, duration = await posts.receive(post_id, _chunks(request))
        duration = round(duration, 3)
    now = state.store.now()  # type: ignore[attr-defined]
    record = PostRecord(
        post_id,
        author,
        kind,
        text,
        now,
        recipient=recipient,
        reply_to=reply_to,
        expires_at=now + FLEET_TTL_S if kind == "fleet" else None,
        audio_bytes=size,
        duration_s=duration,
        captions="pending" if captions == "true" and kind != "dm" else None,
    )
    state.store.add_post(record)  # type: ignore[attr-defined]
    if record.captions == "pending":
        posts.caption(post_id)
    return _json(post_json(record), 201)


@routes.post("/v1/posts")
async def create_post(request: web.Request) -> web.Response:
    return await _create(request, "post", voice=False)


@routes.post("/v1/posts/voice")
async def create_voice_post(request: web.Request) -> web.Response:
    """A voice tweet: the body is an Ogg/Opus file (at most 140 s), streamed."""
    return await _create(request, "post", voice=True)


@routes.post("/v1/fleets")
async def create_fleet(request: web.Request) -> web.Response:
    return await _create(request, "fleet", voice=False)


@routes.post("/v1/fleets/voice")
async def create_voice_fleet(request: web.Request) -> web.Response:
    return await _create(request, "fleet", voice=True)


def _recipient(request: web.Request) -> str:
    user = request.match_info["user"]
    if not _user_id(user):
        raise ProtocolError("bad_request", "the path must name a user id (1-64 chars)")
    return user


@routes.post("/v1/dms/{user}")
async def send_dm(request: web.Request) -> web.Response:
    return await _create(request, "dm", voice=False, recipient=_recipient(request))


@routes.post("/v1/dms/{user}/voice")
async def send_voice_dm(request: web.Request) -> web.Response:
    """A voice message to one user: the body is an Ogg/Opus file, streamed."""
    return await _create(request, "dm", voice=True, recipient=_recipient(request))


@routes.get("/v1/dms/{user}")
async def conversation(request: web.Request) -> web.Response:
    """The caller's messages with one user, both ways, newest first."""
    claims, state = _user(request)
    other = _recipient(request)
    found = state.store.dms_between(claims.sub, other, _limit(request))  # type: ignore[attr-defined]
    return _json({"with": other, "messages": [post_json(p) for p in found]})


@routes.post(r"/v1/fleets/{post:p-[0-9a-f]{16}}/reply")
async def reply_to_fleet(request: web.Request) -> web.Response:
    """A reply to a Fleet is a direct message to its author (naming the Fleet)."""
    claims, state = _user(request)
    fleet = _find(state, claims.sub, request.match_info["post"])
    if fleet.kind != "fleet":
        raise ProtocolError("not_found", f"no Fleet {fleet.id!r}")
    return await _create(request, "dm", voice=False, recipient=fleet.author, reply_to=fleet.id)


@routes.get(r"/v1/posts/{post:p-[0-9a-f]{16}}")  # not /v1/posts/voice
async def get_post(request: web.Request) -> web.Response:
    claims, state = _user(request)
    return _json(post_json(_find(state, claims.sub, request.match_info["post"])))


@routes.get(r"/v1/posts/{post:p-[0-9a-f]{16}}/audio")
async def get_post_audio(request: web.Request) -> web.StreamResponse:
    """The post's Ogg/Opus file (Range requests served)."""
    claims, state = _user(request)
    post = _find(state, claims.sub, request.match_info["post"])
    path = state.posts.path(post.id)
    if post.audio_bytes is None or not path.exists():
        raise ProtocolError("not_found", f"post {post.id!r} has no audio")
    return web.FileResponse(path, headers=_OGG)


def _limit(request: web.Request, default: int = 50, most: int = 200) -> int:
    text = request.query.get("limit", str(default))
    if not (_DIGITS.fullmatch(text) and 1 <= int(text) <= most):
        raise ProtocolError("bad_request", f"'limit' must be an integer from 1 to {most}")
    return int(text)


@routes.get("/v1/timeline")
async def timeline(request: web.Request) -> web.Response:
    """The posts and Fleets of the caller and of whom they follow, newest first."""
    claims, state = _user(request)
    store = state.store
    me = claims.sub
    authors = {a for a in store.follows_of(me) if not store.is_blocked(a, me)} | {me}
    found = store.posts_by(authors, ("post", "fleet"), limit=_limit(request))  # type: ignore[attr-defined]
    return _json({"posts": [post_json(p) for p in found]})


@routes.get("/v1/users/{user}/posts")
async def user_posts(request: web.Request) -> web.Response:
    """One user's posts (and their Fleets, if the caller follows them), newest first."""
    claims, state = _user(request)
    author = _recipient(request)
    store = state.store
    found = store.posts_by({author}, ("post", "fleet"), limit=_limit(request))  # type: ignore[attr-defined]
    visible = [p for p in found if _may_read(state, claims.sub, p)]
    return _json({"user": author, "posts": [post_json(p) for p in visible]})


def _may_read(state: ServerState, viewer: str, post: PostRecord) -> bool:
    try:
        _readable(state, viewer, post, post.id)
    except ProtocolError:
        return False
    return True


@routes.get("/v1/notifications")
async def notifications(request: web.Request) -> web.Response:
    """The caller's notifications after cursor ``after``; ``wait`` seconds (at most 30)
    to wait for one if there is none yet (a long poll)."""
    claims, state = _user(request)
    after_text = request.query.get("after", "") or "0"
    wait_text = request.query.get("wait", "0")
    if not _DIGITS.fullmatch(after_text):
        raise ProtocolError("bad_request", "'after' must be the cursor of a previous answer")
    if not (_DIGITS.fullmatch(wait_text) and int(wait_text) <= MAX_WAIT_S):
        raise ProtocolError("bad_request", f"'wait' must be whole seconds from 0 to {MAX_WAIT_S}")
    limit = _limit(request)
    store = state.store
    found = store.notifications(claims.sub, int(after_text), limit)  # type: ignore[attr-defined]
    if not found and int(wait_text):
        signal = state.posts.waiter(claims.sub)
        try:
            async with asyncio.timeout(min(int(wait_text), state.posts.max_wait_s)):
                await signal.wait()
        except TimeoutError:
            pass
        finally:
            state.posts.unwait(claims.sub, signal)
        found = store.notifications(claims.sub, int(after_text), limit)  # type: ignore[attr-defined]
    items = [{"id": n.id, "kind": n.kind, "attrs": n.attrs, "at": n.at} for n in found]
    return _json({"notifications": items, "next": str(found[-1].id) if found else after_text})


def notify_space_started(state: ServerState, room: Room, title: str) -> None:
    """Tell the host's followers their space is live (what a flash crowd reacts to)."""
    host = room.space.host
    followers = state.store.followers_of(host)
    if not followers:
        return
    attrs = {"space": room.id, "host": host, "title": title}
    state.store.add_notifications(followers, "space_started", attrs)  # type: ignore[attr-defined]
    state.posts.wake(followers)


# --------------------------------------------------------------------------- spaces


def _space_room(request: web.Request) -> tuple[Claims, ServerState, Room]:
    claims = _claims(request)
    state = request.app[STATE]
    room = state.room(request.match_info["space"])
    _allow(claims, (SPACE_JOIN,), room.id)
    return claims, state, room


def _space_items(state: ServerState, space: str) -> list[dict[str, Any]]:
    out = []
    for item in state.store.space_posts(space):  # type: ignore[attr-defined]
        post = state.store.get_post(item.post)  # type: ignore[attr-defined]
        if post is None:  # an expired Fleet the sweep has not reached yet
            continue
        out.append({"post": post_json(post), "how": item.how, "by": item.user, "at": item.at})
    return out


@routes.post("/v1/spaces/{space}/posts")
async def show_post(request: web.Request) -> web.Response:
    """Pin (host, co-hosts) or share (anyone present) a post in a live space."""
    claims, state, room = _space_room(request)
    body = await _body(request)
    how = body.get("how", "share")
    if how not in ("pin", "share"):
        raise ProtocolError("bad_request", "'how' must be pin or share")
    post_id = body.get("post")
    if not isinstance(post_id, str):
        raise ProtocolError("bad_request", "'post' must be a post id")
    user = claims.sub
    try:
        post = _find(state, user, post_id)
    except ProtocolError as exc:
        # The space (the addressed resource) is there; the post the body names is not, or
        # not for this viewer: a well-formed request the state refuses (409, as
        # bad_target), not a 404, which would say the space itself is gone (schemathesis
        # ST302, "created resource not found", read it so).
        raise ProtocolError("bad_target", f"no post {post_id!r} you can read") from exc
    if post.kind != "post":
        raise ProtocolError("bad_request", "only posts (not Fleets or DMs) are shown in a space")
    role = room.space.role_of(user)
    if how == "pin":
        shown = state.store.space_posts(room.id)  # type: ignore[attr-defined]
        pinned = len([i for i in shown if i.how == "pin"])
        outcome = policy.may_pin(role, pinned)
    else:
        outcome = policy.may_share(role)
    if not outcome:
        raise ProtocolError(outcome.code or "not_allowed", outcome.reason or "refused")
    if how == "share":
        state.posts.shares.check(user, "shared posts")
    at = state.store.now()  # type: ignore[attr-defined]
    added = state.store.add_space_post(SpacePost(room.id, post.id, user, how, at))  # type: ignore[attr-defined]
    events = []
    if added:
        if how == "pin":
            events.append(room.post_pinned(user, post.id, post.author, post.text))
        else:
            events.append(room.post_shared(user, post.id, post.author, post.text))
    return _json({"ok": True, "events": events}, 201 if added else 200)


@routes.delete("/v1/spaces/{space}/posts/{post}")
async def unpin_post(request: web.Request) -> web.Response:
    claims, state, room = _space_room(request)
    user = claims.sub
    if room.space.role_of(user) not in (policy.Role.HOST, policy.Role.COHOST):
        raise ProtocolError("not_allowed", "only the host and co-hosts unpin posts")
    post_id = request.match_info["post"]
    if not state.store.remove_space_post(room.id, post_id, "pin"):  # type: ignore[attr-defined]
        raise ProtocolError("not_found", f"post {post_id!r} is not pinned in this space")
    return _json({"ok": True, "events": [room.post_unpinned(user, post_id)]})


@routes.get("/v1/spaces/{space}/posts")
async def list_space_posts(request: web.Request) -> web.Response:
    """The space's pinned and shared posts, oldest first (also after it ended: they are
    stored with it)."""
    state = request.app[STATE]
    space_id = request.match_info["space"]
    if state.ended(space_id) is not None:
        _allow(_claims(request), (SPACE_JOIN,), space_id)
    else:
        _space_room(request)
    return _json({"space": space_id, "posts": _space_items(state, space_id)})
