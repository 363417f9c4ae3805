"""HTTP routes of recordings and clips (docs/protocol.md, Recording and clips).

The file routes answer with aiohttp's `FileResponse`, which serves ``Range`` requests
(206 with ``Content-Range``; 416 for a range outside the file) and ``HEAD`` from the
file itself (aiohttp/web_fileresponse.py); the file is read in the server's thread pool.
"""

from __future__ import annotations

import math
import re
import time
from typing import Any

from aiohttp import web

from spacesim.protocol import ProtocolError
from spacesim.server.app import (
    STATE,
    ServerState,
    _allow,
    _body,
    _claims,
    _json,
    media_setup_errors,
)
from spacesim.server.auth import MODERATE, SPACE_JOIN
from spacesim.server.recording import CLIP_MAX_S, CLIP_RETENTION_S
from spacesim.server.store import StoreError
from spacesim.server.store_recording import ClipRecord

__all__ = ["routes"]

routes = web.RouteTableDef()

_CLIP_ID = re.compile(r"c-[0-9a-f]{16}")
_OGG = {"Content-Type": "audio/ogg"}


def _space(request: web.Request) -> tuple[str, ServerState, str]:
    """The caller, the server and the space (live or ended) named in the path."""
    claims = _claims(request)
    state = request.app[STATE]
    space_id = request.match_info["space"]
    try:
        record = state.store.get_space(space_id)
    except StoreError:
        raise ProtocolError("not_found", f"no space {space_id!r} on this server") from None
    _allow(claims, (SPACE_JOIN, MODERATE), space_id)
    # those barred from the space do not hear it afterwards either (moderators aside)
    user = claims.sub
    if not claims.has(MODERATE):
        if state.store.is_blocked(record.host, user):
            raise ProtocolError("blocked", f"{user} is blocked from this space")
        room = state.rooms.get(space_id)
        if room is not None and user in room.space.removed:
            raise ProtocolError("removed", f"{user} was removed from this space")
    return user, state, space_id


async def _recording(state: ServerState, space_id: str) -> Any:
    """The space's recording row, its file written up to now; `no_recording` if none."""
    await state.recordings.settle()  # a stop under way: its last pages
    rec = state.store.get_recording(space_id)  # type: ignore[attr-defined]
    if rec is None:
        raise ProtocolError("no_recording", f"space {space_id!r} has not been recorded")
    if space_id in state.recordings.tracks:  # being written: what is buffered, first
        await state.recordings.flush(space_id)
    if not state.recordings.path(space_id).exists():  # the files were removed by hand
        raise ProtocolError("no_recording", f"space {space_id!r} has no recording file")
    return rec


@routes.get("/v1/spaces/{space}/recording")
async def get_recording(request: web.Request) -> web.StreamResponse:
    """The space's Ogg/Opus file as written so far (Range requests served)."""
    _, state, space_id = _space(request)
    await _recording(state, space_id)
    return web.FileResponse(state.recordings.path(space_id), headers=_OGG)


@routes.get("/v1/spaces/{space}/recording/info")
async def recording_info(request: web.Request) -> web.Response:
    _, state, space_id = _space(request)
    rec = await _recording(state, space_id)
    writing = space_id in state.recordings.tracks
    duration = await state.recordings.duration(space_id)
    path = state.recordings.path(space_id)
    return _json(
        {
            "space": space_id,
            "status": "recording" if writing else "stopped",
            "started_at": rec.started_at,
            "stopped_at": None if writing else rec.stopped_at,
            "duration_s": round(duration, 3),
            "bytes": path.stat().st_size,
        }
    )


def _number(body: dict[str, Any], name: str) -> float | None:
    value = body.get(name)
    if value is None and name not in body:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ProtocolError("bad_request", f"'{name}' must be a number of seconds")
    return float(value)


def _clip_json(clip: ClipRecord) -> dict[str, Any]:
    return {
        "id": clip.id,
        "space": clip.space,
        "user": clip.user,
        "start_s": clip.start_s,
        "duration_s": clip.duration_s,
        "bytes": clip.bytes,
        "created_at": clip.created_at,
        "expires_at": clip.expires_at,
    }


@routes.post("/v1/spaces/{space}/clips")
async def cut_clip(request: web.Request) -> web.Response:
    """Cut [start, start + duration) (at most 30 s) of the recording into a clip file.

    While the recording is being written, a clip lies in its last 30 s (``start``
    absent: the last ``duration`` seconds); after, anywhere in it.
    """
    user, state, space_id = _space(request)
    body = await _body(request)
    duration = _number(body, "duration")
    start = _number(body, "start")
    if duration is None or not 0 < duration <= CLIP_MAX_S:
        raise ProtocolError("bad_request", f"'duration' must be seconds in (0, {CLIP_MAX_S:g}]")
    if start is not None and start < 0:
        raise ProtocolError("bad_request", "'start' must be seconds from the recording's start")
    await _recording(state, space_id)
    recs = state.recordings
    total = await recs.duration(space_id)
    live = space_id in recs.tracks
    if start is None:
        start = max(0.0, total - duration)
    if start > total:
        raise ProtocolError(
            "clip_out_of_range", f"the recording holds {total:.1f} s; 'start' is past its end"
        )
    if live and start < total - CLIP_MAX_S:
        raise ProtocolError(
            "clip_out_of_range",
            f"while recording, a clip starts in the last {CLIP_MAX_S:g} s "
            f"(from {max(0.0, total - CLIP_MAX_S):.1f} s)",
        )
    recs.cuts.check(user, "clips")
    clip = await recs.cut(space_id, start, min(duration, total - start))
    now = time.time()
    record = ClipRecord(
        clip.id,
        space_id,
        user,
        round(clip.start_s, 3),
        round(clip.duration_s, 3),
        clip.bytes,
        now,
        now + CLIP_RETENTION_S,
    )
    state.store.add_clip(record)  # type: ignore[attr-defined]
    return _json(_clip_json(record), 201)


@routes.get("/v1/spaces/{space}/clips")
async def list_clips(request: web.Request) -> web.Response:
    _, state, space_id = _space(request)
    clips = state.store.clips(space_id)  # type: ignore[attr-defined]
    return _json({"clips": [_clip_json(c) for c in clips]})


@routes.get("/v1/spaces/{space}/clips/{clip}")
async def get_clip(request: web.Request) -> web.StreamResponse:
    _, state, space_id = _space(request)
    clip_id = request.match_info["clip"]
    clip = state.store.get_clip(clip_id) if _CLIP_ID.fullmatch(clip_id) else None  # type: ignore[attr-defined]
    path = state.recordings.clip_path(clip_id)
    if clip is None or clip.space != space_id or not path.exists():
        raise ProtocolError("not_found", f"no clip {clip_id!r} in space {space_id!r}")
    return web.FileResponse(path, headers=_OGG)


@routes.post("/v1/spaces/{space}/replay")
async def replay(request: web.Request) -> web.Response:
    """Hear the recording over WebRTC from ``offset`` seconds (docs/protocol.md)."""
    from spacesim.server.replay import Replays

    _, state, space_id = _space(request)
    body = await _body(request)
    offer = body.get("sdp")
    slots = state.config.slots
    if offer is not None and (not isinstance(offer, str) or "v=0" not in offer):
        raise ProtocolError("bad_sdp", "'sdp' must be an SDP offer", {"slots": slots})
    offset = _number(body, "offset") or 0.0
    if offset < 0:
        raise ProtocolError("bad_request", "'offset' must be seconds from the recording's start")
    await _recording(state, space_id)
    recs = state.recordings
    duration = await recs.duration(space_id)
    answer = None
    if offer is not None:
        if recs.replays is None:
            recs.replays = Replays()
        with media_setup_errors(slots):
            answer = await recs.replays.start(recs.path(space_id), offset, offer, slots)
    return _json({"sdp": answer, "offset": offset, "duration_s": round(duration, 3)})
