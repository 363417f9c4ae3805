"""The OpenAPI 3.1 document served at /openapi.json (the human version is docs/protocol.md)."""

from __future__ import annotations

from typing import Any

from spacesim.protocol import (
    ACTIONS,
    CURSOR_PATTERN,
    ERROR_STATUS,
    PROTOCOL_VERSION,
    REACTIONS,
    SPEAK_SETTINGS,
    USER_ID_PATTERN,
)

__all__ = ["document"]

_ERROR = {"$ref": "#/components/schemas/Error"}
_OK = {"$ref": "#/components/schemas/Result"}


_REASONS = {
    400: "malformed request",
    401: "missing, forged or expired token",
    403: "not allowed (grant, pin or rulebook)",
    404: "unknown space (or report)",
    408: "request_timeout: the body did not arrive in time",
    405: "method not allowed on this path; Allow lists the ones it takes",
    409: "refused by the rulebook in this state",
    413: "body over the server's limit",
    429: "rate limited; Retry-After says when to try again",
    500: "server fault, logged (e.g. media_setup_failed); other requests and spaces go on",
    503: "server at capacity, or server_busy: too many bodies arriving slowly (Retry-After)",
}
_HEADERS = {
    405: {"Allow": {"required": True, "schema": {"type": "string", "minLength": 1}}},
    429: {"Retry-After": {"required": True, "schema": {"type": "integer", "minimum": 1}}},
}


def _responses(
    ok: dict[str, Any], *codes: int, success: str = "200", body: bool = False
) -> dict[str, Any]:
    return {success: {"description": "OK", "content": _content(ok)}, **_errors(*codes, body=body)}


def _errors(*codes: int, auth: bool = True, body: bool = False) -> dict[str, Any]:
    """Every status a route may answer besides success, each with an Error body: 400, 401
    (`auth`: the route takes a token), `codes`, 408/413/503 (`body`: the route reads one,
    which may be slow, too large, or one too many arriving slowly), and the 405 (another
    method on the path) and 500 (a contained fault) that any route may give."""
    reads = {408, 413, 503} if body else set()
    statuses = {400, 405, 500, *codes} | ({401} if auth else set()) | reads
    out: dict[str, Any] = {}
    for code in sorted(statuses):
        out[str(code)] = {"description": _REASONS[code], "content": _content(_ERROR)}
        if code in _HEADERS:
            out[str(code)]["headers"] = _HEADERS[code]
    return out


def _content(schema: dict[str, Any]) -> dict[str, Any]:
    return {"application/json": {"schema": schema}}


def _body(
    props: dict[str, Any],
    required: list[str] | None = None,
    example: dict[str, Any] | None = None,
) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "object", "properties": props}
    if required:
        schema["required"] = required
    content = _content(schema)
    if example is not None:
        content["application/json"]["example"] = example
    return {"required": bool(required), "content": content}


def _action_variants() -> list[dict[str, Any]]:
    by_needs: dict[tuple[str, ...], list[str]] = {}
    for name, needs in sorted(ACTIONS.items()):
        by_needs.setdefault(needs, []).append(name)
    return [
        {"properties": {"action": {"enum": names}}, "required": ["action", *needs]}
        for needs, names in by_needs.items()
    ]


def _space_path() -> list[dict[str, Any]]:
    return [{"name": "space", "in": "path", "required": True, "schema": {"type": "string"}}]


def document() -> dict[str, Any]:
    """Build the document; it is small enough to build on each request."""
    s = {"type": "string"}
    user = {"type": "string", "minLength": 1, "maxLength": 64, "pattern": USER_ID_PATTERN}
    field = {"type": "string", "minLength": 1, "maxLength": 500}  # an action's text field
    space_ref = {"$ref": "#/components/schemas/Space"}
    member_ref = {"$ref": "#/components/schemas/Member"}
    roles = ["host", "cohost", "speaker", "listener"]
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "spacesim reference room server",
            "version": PROTOCOL_VERSION,
            "description": "Audio rooms with Twitter Spaces rules. See docs/protocol.md.",
        },
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {
                "Error": {
                    "type": "object",
                    "required": ["error", "reason"],
                    "properties": {
                        "error": {"enum": sorted(ERROR_STATUS)},
                        "reason": s,
                        "slots": {
                            "type": "integer",
                            "description": "bad_sdp: the listen sections an offer must carry",
                        },
                        "retry_after": {
                            "type": "integer",
                            "description": "rate_limited: seconds until a retry may succeed",
                        },
                    },
                },
                "Event": {
                    "type": "object",
                    "required": ["type", "kind", "space", "participant", "t"],
                    "properties": {
                        "type": {"const": "event"},
                        "kind": s,
                        "space": s,
                        "participant": s,
                        "actor": s,
                        "role": s,
                        "t": {"type": "number"},
                        "clock_ns": {
                            "type": "integer",
                            "description": "server monotonic clock (ns) when published",
                        },
                        "attrs": {
                            "type": "object",
                            "properties": {
                                "report_id": {
                                    "type": "integer",
                                    "description": "report_filed: the id moderation takes",
                                }
                            },
                        },
                    },
                },
                "Result": {
                    "type": "object",
                    "properties": {
                        "ok": {"type": "boolean"},
                        "events": {
                            "type": "array",
                            "items": {"$ref": "#/components/schemas/Event"},
                        },
                    },
                },
                "Space": {
                    "type": "object",
                    "properties": {
                        "id": s,
                        "host": s,
                        "status": {"enum": ["scheduled", "live", "ended"]},
                        "who_may_speak": {"enum": ["everyone", "followed", "invited"]},
                        "counts": {
                            "type": "object",
                            "properties": {
                                k: {"type": "integer"}
                                for k in ("participants", "listeners", "stage", "hands", "invites")
                            },
                        },
                        "stage": {"type": "array", "items": member_ref},
                        "muted": {"type": "array", "items": s},
                        "hands": {"type": "array", "items": s, "maxItems": 20},
                        "invites": {"type": "object", "maxProperties": 20},
                        "limits": {
                            "type": "object",
                            "properties": {
                                "max_cohosts": {"type": "integer"},
                                "max_speakers": {"type": "integer"},
                                "listener_cap": {"type": ["integer", "null"]},
                            },
                        },
                        "slots": {
                            "type": "integer",
                            "description": "recvonly listen sections a join offer must carry",
                        },
                        "recording": {"type": "boolean"},
                        "captions": {"type": "boolean", "description": "live captions on"},
                    },
                },
                "Captions": _captions_schema(),
                "SpaceList": {
                    "type": "object",
                    "required": ["spaces", "count"],
                    "properties": {
                        "spaces": {
                            "type": "array",
                            "items": {
                                "type": "object",
                                "required": ["id", "host", "title", "status", "counts"],
                                "properties": {
                                    "id": s,
                                    "host": s,
                                    "title": s,
                                    "status": {"enum": ["scheduled", "live"]},
                                    "scheduled_for": {"type": ["number", "null"]},
                                    "counts": {"type": "object"},
                                    "captions": {"type": "boolean"},
                                },
                            },
                        },
                        "count": {
                            "type": "integer",
                            "description": "how many there are in all (spaces: at most limit)",
                        },
                    },
                },
                "Member": {
                    "type": "object",
                    "required": ["user", "role"],
                    "properties": {"user": s, "role": {"enum": roles}},
                },
                "Participants": {
                    "type": "object",
                    "required": ["participants", "next", "count"],
                    "properties": {
                        "participants": {"type": "array", "items": member_ref},
                        "next": {"type": ["string", "null"]},
                        "count": {"type": "integer"},
                    },
                },
                "Clip": {
                    "type": "object",
                    "required": ["id", "space", "user", "start_s", "duration_s", "bytes"],
                    "properties": {
                        "id": s,
                        "space": s,
                        "user": s,
                        "start_s": {"type": "number"},
                        "duration_s": {"type": "number"},
                        "bytes": {"type": "integer"},
                        "created_at": {"type": "number"},
                        "expires_at": {"type": "number"},
                    },
                },
                "Action": {
                    "type": "object",
                    "required": ["action"],
                    "properties": {
                        "action": {"enum": sorted(ACTIONS)},
                        "target": field,
                        "reason": field,
                        "emoji": {"enum": sorted(REACTIONS)},
                        "setting": {"enum": list(SPEAK_SETTINGS)},
                    },
                    # each action with the fields it needs (missing_field otherwise)
                    "oneOf": _action_variants(),
                },
            },
        },
        "security": [{"bearer": []}],
        "paths": {
            "/healthz": {
                "get": {
                    "security": [],
                    "summary": "Liveness, the protocol version and the server's clock (clock_ns)",
                    "responses": {
                        "200": {
                            "description": "OK",
                            "content": _content(
                                {
                                    "type": "object",
                                    "required": ["ok", "protocol", "clock_ns"],
                                    "properties": {
                                        "ok": {"type": "boolean"},
                                        "protocol": s,
                                        "clock_ns": {"type": "integer"},
                                    },
                                }
                            ),
                        },
                        **_errors(auth=False),
                    },
                }
            },
            "/metrics": {
                "get": {
                    "security": [],
                    "summary": "Prometheus metrics",
                    "responses": {
                        "200": {
                            "description": "Prometheus text exposition",
                            "content": {"text/plain": {"schema": s}},
                        },
                        **_errors(auth=False),
                    },
                }
            },
            "/v1/dev/token": {
                "post": {
                    "security": [],
                    "summary": "Mint a token (dev mode only)",
                    "requestBody": _body(
                        {"user": user, "moderator": {"type": "boolean"}}, ["user"]
                    ),
                    "responses": {
                        "200": {
                            "description": "OK",
                            "content": _content(
                                {
                                    "type": "object",
                                    "required": ["token", "user"],
                                    "properties": {"token": s, "user": s},
                                }
                            ),
                        },
                        **_errors(403, auth=False, body=True),
                    },
                }
            },
            "/v1/follows": {
                "post": {
                    "summary": "Follow a user (matters for who_may_speak=followed)",
                    "requestBody": _body({"user": user}, ["user"]),
                    "responses": _responses(_OK, 403, 409, body=True),
                }
            },
            "/v1/spaces": {
                "get": {
                    "summary": "Live and scheduled spaces on this server, newest first",
                    "parameters": [
                        {
                            "name": "status",
                            "in": "query",
                            "schema": {"enum": ["live", "scheduled"]},
                        },
                        {
                            "name": "limit",
                            "in": "query",
                            "schema": {
                                "type": "integer",
                                "minimum": 1,
                                "maximum": 500,
                                "default": 100,
                            },
                        },
                    ],
                    "responses": _responses({"$ref": "#/components/schemas/SpaceList"}, 403),
                },
                "post": {
                    "summary": "Create a space; live now, or scheduled with scheduled_for",
                    "requestBody": _body(
                        {
                            "title": {"type": "string", "maxLength": 200},
                            "who_may_speak": {"enum": ["everyone", "followed", "invited"]},
                            "scheduled_for": {
                                "type": ["number", "null"],
                                "exclusiveMinimum": 0,
                                "exclusiveMaximum": 1e11,
                                "description": "unix seconds; absent or null: live now",
                            },
                            "listener_cap": {
                                "type": ["integer", "null"],
                                "minimum": 0,
                                "maximum": 1_000_000_000,
                            },
                            "recording": {"type": "boolean"},
                            "captions": {"type": "boolean", "description": "live captions on"},
                        },
                        example={"title": "Town hall", "recording": True, "captions": True},
                    ),
                    "responses": _responses(space_ref, 403, 429, success="201", body=True),
                },
            },
            "/v1/spaces/{space}": {
                "get": {
                    "parameters": _space_path(),
                    "summary": "State",
                    "responses": _responses(space_ref, 403, 404),
                }
            },
            "/v1/spaces/{space}/slots": {
                "get": {
                    "parameters": _space_path(),
                    "summary": "Who holds each listen slot now (null: nobody)",
                    "responses": _responses(
                        {
                            "type": "object",
                            "required": ["space", "slots"],
                            "properties": {
                                "space": s,
                                "slots": {"type": "array", "items": {"type": ["string", "null"]}},
                            },
                        },
                        403,
                        404,
                    ),
                }
            },
            "/v1/spaces/{space}/participants": {
                "get": {
                    "parameters": [
                        *_space_path(),
                        {
                            "name": "after",
                            "in": "query",
                            "schema": {"type": "string", "pattern": CURSOR_PATTERN},
                        },
                        {
                            "name": "limit",
                            "in": "query",
                            "schema": {
                                "type": "integer",
                                "minimum": 1,
                                "maximum": 500,
                                "default": 100,
                            },
                        },
                        {"name": "role", "in": "query", "schema": {"enum": roles}},
                    ],
                    "summary": "Participants in join order, a page at a time (next = cursor)",
                    "responses": _responses(
                        {"$ref": "#/components/schemas/Participants"}, 403, 404
                    ),
                }
            },
            "/v1/spaces/{space}/captions": _captions_path(),
            "/v1/spaces/{space}/start": {
                "post": {
                    "parameters": _space_path(),
                    "summary": "Start a scheduled space (host)",
                    "responses": _responses(_OK, 403, 404, 409),
                }
            },
            "/v1/spaces/{space}/end": {
                "post": {
                    "parameters": _space_path(),
                    "summary": "End the space (host)",
                    "responses": _responses(_OK, 403, 404, 409),
                }
            },
            "/v1/spaces/{space}/join": {
                "post": {
                    "parameters": _space_path(),
                    "summary": "Join as a listener; with an SDP offer, connect audio",
                    "requestBody": _body(
                        {
                            "sdp": {
                                "type": ["string", "null"],
                                "description": "an SDP offer; absent or null: join without audio",
                            },
                            "avoid": {
                                "type": "array",
                                "items": s,
                                "maxItems": 16,
                                "description": "cluster nodes not to place the audio on (the "
                                "node a rejoining client just lost); ignored by a single server",
                            },
                        }
                    ),
                    "responses": _responses(
                        {
                            "type": "object",
                            "properties": {
                                "participant": s,
                                "role": s,
                                "sdp": {
                                    "type": ["string", "null"],
                                    "description": "the SDP answer; null when joined without one",
                                },
                                "slots": {"type": "integer"},
                                "space": space_ref,
                            },
                        },
                        403,
                        404,
                        409,
                        500,
                        503,
                        body=True,
                    ),
                }
            },
            "/v1/spaces/{space}/leave": {
                "post": {
                    "parameters": _space_path(),
                    "summary": "Leave",
                    "responses": _responses(_OK, 403, 404, 409),
                }
            },
            "/v1/spaces/{space}/actions": {
                "post": {
                    "parameters": _space_path(),
                    "summary": "Act: hands, stage, moderation, reactions",
                    "requestBody": {
                        "required": True,
                        "content": _content({"$ref": "#/components/schemas/Action"}),
                    },
                    "responses": _responses(_OK, 403, 404, 409, 429, body=True),
                }
            },
            "/v1/spaces/{space}/events": {
                "get": {
                    "parameters": _space_path(),
                    "summary": "WebSocket: events out, actions in (token may be ?token=)",
                    "responses": {
                        "101": {"description": "switching to WebSocket"},
                        **_errors(403, 404, 409),
                    },
                }
            },
            **_recording_paths(),
            **_posts_paths(),
            "/v1/moderation/spaces/{space}": {
                "post": {
                    "parameters": _space_path(),
                    "summary": "Platform moderation: resolve a report (grant 'moderate')",
                    "requestBody": _body(
                        {
                            "action": {"enum": ["dismiss", "remove", "block", "end"]},
                            "target": user,
                            "report": {"type": "integer", "minimum": 1},
                        },
                        ["action"],
                    ),
                    "responses": _responses(_OK, 403, 404, 409, body=True),
                }
            },
        },
    }


def _ogg(summary: str, *codes: int, params: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """A GET answering an Ogg/Opus file, whole or (Range) in part."""
    audio = {"audio/ogg": {"schema": {"type": "string", "format": "binary"}}}
    return {
        "get": {
            "parameters": params or _space_path(),
            "summary": summary,
            "responses": {
                "200": {"description": "the file", "content": audio},
                "206": {"description": "the requested range (Range)", "content": audio},
                "416": {"description": "the range is outside the file"},
                **_errors(*codes),
            },
        }
    }


#: From an answer naming a recorded space to its replay.
_REPLAY_LINK = {
    "operationRef": "#/paths/~1v1~1spaces~1{space}~1replay/post",
    "parameters": {"space": "$response.body#/space"},
}


def _clip_created() -> dict[str, Any]:
    """The cut's answer, linked to the clip's file and the recording's replay (so fuzzers
    follow the new id to real resources)."""
    out = _responses(
        {"$ref": "#/components/schemas/Clip"}, 403, 404, 409, 429, success="201", body=True
    )
    out["201"]["links"] = {
        "GetClip": {
            "operationRef": "#/paths/~1v1~1spaces~1{space}~1clips~1{clip}/get",
            "parameters": {"space": "$response.body#/space", "clip": "$response.body#/id"},
        },
        "Replay": _REPLAY_LINK,  # a space with a clip has a recording: replay it
    }
    return out


def _recording_paths() -> dict[str, Any]:
    """Recording and clips (docs/protocol.md, Recording and clips)."""
    s = {"type": "string"}
    clip_ref = {"$ref": "#/components/schemas/Clip"}
    clip_path = [
        *_space_path(),
        {"name": "clip", "in": "path", "required": True, "schema": s},
    ]
    info = _responses(
        {
            "type": "object",
            "required": ["space", "status", "duration_s", "bytes"],
            "properties": {
                "space": s,
                "status": {"enum": ["recording", "stopped"]},
                "started_at": {"type": "number"},
                "stopped_at": {"type": ["number", "null"]},
                "duration_s": {"type": "number"},
                "bytes": {"type": "integer"},
            },
        },
        403,
        404,
        409,
    )
    info["200"]["links"] = {"Replay": _REPLAY_LINK}
    return {
        "/v1/spaces/{space}/recording": _ogg(
            "The space's Ogg/Opus recording as written so far (Range requests)", 403, 404, 409
        ),
        "/v1/spaces/{space}/recording/info": {
            "get": {
                "parameters": _space_path(),
                "summary": "The recording's status, duration and size",
                "responses": info,
            }
        },
        "/v1/spaces/{space}/clips": {
            "get": {
                "parameters": _space_path(),
                "summary": "The space's clips (not expired), oldest first",
                "responses": _responses(
                    {
                        "type": "object",
                        "required": ["clips"],
                        "properties": {"clips": {"type": "array", "items": clip_ref}},
                    },
                    403,
                    404,
                ),
            },
            "post": {
                "parameters": _space_path(),
                "summary": "Cut a clip (at most 30 s; the last 30 s while recording)",
                "requestBody": _body(
                    {
                        "duration": {"type": "number", "exclusiveMinimum": 0, "maximum": 30},
                        "start": {"type": "number", "minimum": 0},
                    },
                    ["duration"],
                ),
                "responses": _clip_created(),
            },
        },
        "/v1/spaces/{space}/replay": {
            "post": {
                "parameters": _space_path(),
                "summary": "Hear the recording over WebRTC from an offset (an SDP offer as join's)",
                "requestBody": _body(
                    {
                        "sdp": {
                            "type": ["string", "null"],
                            "description": "an SDP offer; absent or null: only the answer's "
                            "offset and duration",
                        },
                        "offset": {"type": "number", "minimum": 0},
                    }
                ),
                "responses": _responses(
                    {
                        "type": "object",
                        "required": ["sdp", "offset", "duration_s"],
                        "properties": {
                            "sdp": {"type": ["string", "null"]},
                            "offset": {"type": "number"},
                            "duration_s": {"type": "number"},
                        },
                    },
                    403,
                    404,
                    409,
                    500,
                    body=True,
                ),
            }
        },
        "/v1/spaces/{space}/clips/{clip}": _ogg(
            "A clip's Ogg/Opus file", 403, 404, params=clip_path
        ),
    }


def _captions_schema() -> dict[str, Any]:
    number = {"type": "number"}
    return {
        "type": "object",
        "required": ["space", "captions"],
        "properties": {
            "space": {"type": "string"},
            "captions": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["id", "speaker", "start", "end", "text"],
                    "properties": {
                        "id": {"type": "integer"},
                        "speaker": {"type": "string"},
                        "start": number,
                        "end": number,
                        "text": {"type": "string"},
                        "gap": {"type": "boolean", "description": "speech skipped (overload)"},
                    },
                },
            },
        },
    }


def _captions_path() -> dict[str, Any]:
    """GET /v1/spaces/{space}/captions: the stored finals, JSON or WebVTT."""
    ok = _responses({"$ref": "#/components/schemas/Captions"}, 403, 404)
    ok["200"]["content"]["text/vtt"] = {"schema": {"type": "string"}}
    return {
        "get": {
            "parameters": [
                *_space_path(),
                {"name": "format", "in": "query", "schema": {"enum": ["json", "vtt"]}},
            ],
            "summary": "Final live captions, live or ended; ?format=vtt (or Accept) for WebVTT",
            "responses": ok,
        }
    }


def _post_schema() -> dict[str, Any]:
    """A post, Fleet or DM as the server answers it (docs/protocol.md, Posts)."""
    n = {"type": ["number", "null"]}
    ns = {"type": ["string", "null"]}
    return {
        "type": "object",
        "required": ["id", "author", "kind", "text", "created_at", "expires_at", "audio"],
        "properties": {
            "id": {"type": "string"},
            "author": {"type": "string"},
            "kind": {"enum": ["post", "fleet", "dm"]},
            "text": {"type": "string"},
            "created_at": {"type": "number"},
            "expires_at": {**n, "description": "Fleets: created_at + 24 h; else null"},
            "recipient": ns,
            "reply_to": ns,
            "audio": {
                "type": ["object", "null"],
                "required": ["bytes", "duration_s", "url"],
                "properties": {
                    "bytes": {"type": "integer"},
                    "duration_s": {"type": "number"},
                    "url": {"type": "string"},
                },
            },
            "captions": {
                "type": ["object", "null"],
                "properties": {
                    "status": {"enum": ["pending", "done", "failed"]},
                    "text": ns,
                },
            },
        },
    }


def _posts_paths() -> dict[str, Any]:
    """Posts, voice posts, DMs, Fleets, timeline, notifications and posts in a space
    (docs/protocol.md, Posts, DMs and Fleets)."""
    from spacesim.server.posts import MAX_TEXT

    post = _post_schema()
    text = {"type": "string", "minLength": 1, "maxLength": MAX_TEXT}
    user = {"type": "string", "minLength": 1, "maxLength": 64, "pattern": USER_ID_PATTERN}
    user_path = [{"name": "user", "in": "path", "required": True, "schema": user}]
    post_path = [{"name": "post", "in": "path", "required": True, "schema": {"type": "string"}}]
    limit = {
        "name": "limit",
        "in": "query",
        "schema": {"type": "integer", "minimum": 1, "maximum": 200, "default": 50},
    }
    audio_body = {
        "required": True,
        "description": "an Ogg/Opus file (RFC 7845), at most 140 s and 3 MiB, streamed",
        "content": {"audio/ogg": {"schema": {"type": "string", "format": "binary"}}},
    }
    voice_query = [
        {"name": "text", "in": "query", "schema": {"type": "string", "maxLength": MAX_TEXT}},
        {"name": "captions", "in": "query", "schema": {"enum": ["true", "false"]}},
    ]

    def created(summary: str, voice: bool, *codes: int, params: Any = ()) -> dict[str, Any]:
        out = _responses(post, 403, 429, *codes, success="201", body=True)
        out["201"]["links"] = {
            "GetPost": {
                "operationRef": "#/paths/~1v1~1posts~1{post}/get",
                "parameters": {"post": "$response.body#/id"},
            }
        }
        op: dict[str, Any] = {"summary": summary, "responses": out}
        if voice:
            op["parameters"] = [*params, *voice_query]
            op["requestBody"] = audio_body
        else:
            if params:
                op["parameters"] = list(params)
            op["requestBody"] = _body({"text": text}, ["text"])
        return {"post": op}

    listing = {
        "type": "object",
        "required": ["posts"],
        "properties": {"posts": {"type": "array", "items": post}},
    }
    conversation = {
        "type": "object",
        "required": ["with", "messages"],
        "properties": {"with": {"type": "string"}, "messages": {"type": "array", "items": post}},
    }
    shown = {
        "type": "object",
        "required": ["space", "posts"],
        "properties": {
            "space": {"type": "string"},
            "posts": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["post", "how", "by", "at"],
                    "properties": {
                        "post": post,
                        "how": {"enum": ["pin", "share"]},
                        "by": {"type": "string"},
                        "at": {"type": "number"},
                    },
                },
            },
        },
    }
    notes = {
        "type": "object",
        "required": ["notifications", "next"],
        "properties": {
            "notifications": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["id", "kind", "attrs", "at"],
                    "properties": {
                        "id": {"type": "integer"},
                        "kind": {"enum": ["space_started"]},
                        "attrs": {"type": "object"},
                        "at": {"type": "number"},
                    },
                },
            },
            "next": {"type": "string", "description": "the cursor for ?after="},
        },
    }
    fleet_get = {
        "get": {
            "parameters": post_path,
            "summary": "A post, Fleet or DM the caller may read (else 404)",
            "responses": _responses(post, 403, 404),
        }
    }
    return {
        "/v1/posts": created("Post a text tweet", False),
        "/v1/posts/voice": created("Post a voice tweet (Ogg/Opus body)", True, 413),
        "/v1/fleets": created("Post a text Fleet (gone after 24 h)", False),
        "/v1/fleets/voice": created("Post a voice Fleet (Ogg/Opus body)", True, 413),
        "/v1/dms/{user}": {
            **created("Send a direct message", False, 409, params=user_path),
            "get": {
                "parameters": [*user_path, limit],
                "summary": "The caller's messages with this user, newest first",
                "responses": _responses(conversation, 403),
            },
        },
        "/v1/dms/{user}/voice": created(
            "Send a voice message (Ogg/Opus body)", True, 409, 413, params=user_path
        ),
        "/v1/fleets/{post}/reply": created(
            "Reply to a Fleet: a DM to its author", False, 404, 409, params=post_path
        ),
        "/v1/posts/{post}": fleet_get,
        "/v1/posts/{post}/audio": _ogg(
            "A voice post's or DM's Ogg/Opus file (Range requests)", 403, 404, params=post_path
        ),
        "/v1/timeline": {
            "get": {
                "parameters": [limit],
                "summary": "Posts and Fleets of the caller and whom they follow, newest first",
                "responses": _responses(listing, 403),
            }
        },
        "/v1/users/{user}/posts": {
            "get": {
                "parameters": [*user_path, limit],
                "summary": "A user's posts (and Fleets, to their followers), newest first",
                "responses": _responses(listing, 403),
            }
        },
        "/v1/notifications": {
            "get": {
                "parameters": [
                    {
                        "name": "after",
                        "in": "query",
                        "schema": {"type": "string", "pattern": CURSOR_PATTERN},
                    },
                    {
                        "name": "wait",
                        "in": "query",
                        "schema": {"type": "integer", "minimum": 0, "maximum": 30},
                        "description": "seconds to wait for one if there is none (long poll)",
                    },
                    limit,
                ],
                "summary": "The caller's notifications after a cursor (space_started)",
                "responses": _responses(notes, 403),
            }
        },
        "/v1/spaces/{space}/posts": {
            "get": {
                "parameters": _space_path(),
                "summary": "Posts pinned and shared in the space, oldest first",
                "responses": _responses(shown, 403, 404, 409),
            },
            "post": {
                "parameters": _space_path(),
                "summary": "Pin (host, co-hosts; at most 3) or share (anyone present) a post",
                "requestBody": _body(
                    {"post": {"type": "string"}, "how": {"enum": ["pin", "share"]}}, ["post"]
                ),
                "responses": {
                    **_responses(_OK, 403, 404, 409, 429, success="201", body=True),
                    "200": {
                        "description": "already shown: nothing changed",
                        "content": _content(_OK),
                    },
                },
            },
        },
        "/v1/spaces/{space}/posts/{post}": {
            "delete": {
                "parameters": [*_space_path(), *post_path],
                "summary": "Unpin a post (host, co-hosts)",
                "responses": _responses(_OK, 403, 404, 409),
            }
        },
    }
