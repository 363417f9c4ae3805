"""The wire contract between the room server and its clients (see docs/protocol.md).

JSON over HTTP for requests, JSON over a WebSocket for the event stream, SDP for
WebRTC. Event names are the record vocabulary's (`spacesim.results.KINDS`), so what a
client sees on the wire is what the records call it. This module is the one place that
names actions, events and error codes; the server and the clients both import it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

__all__ = [
    "ACTIONS",
    "AUDIENCE",
    "CLIP_RETENTION_S",
    "ERROR_STATUS",
    "PROTOCOL_VERSION",
    "REACTIONS",
    "SPEAK_SETTINGS",
    "USER_ID_PATTERN",
    "ProtocolError",
    "error_body",
    "event_message",
    "is_user_id",
    "is_utf8",
    "parse_action",
]

PROTOCOL_VERSION = "1"

#: How long the server keeps a clip (seconds; docs/protocol.md, "Retention"), then
#: deletes its file and listing. `spacesim capacity --spaces` sizes clip storage by it.
CLIP_RETENTION_S = 30 * 24 * 3600.0

#: Actions a participant posts to ``POST /v1/spaces/{id}/actions`` (or sends on the
#: WebSocket): name -> the fields it needs besides ``action``.
ACTIONS: Mapping[str, tuple[str, ...]] = {
    "raise_hand": (),
    "lower_hand": (),
    "accept_invite": (),
    "decline_invite": (),
    "invite": ("target",),
    "approve": ("target",),
    "decline": ("target",),
    "demote": ("target",),
    "add_cohost": ("target",),
    "remove_cohost": ("target",),
    "mute": ("target",),
    "unmute": ("target",),
    "mute_all": (),
    "remove": ("target",),
    "block": ("target",),
    "report": (),  # optional target (absent = the space itself) and reason
    "react": ("emoji",),
    "set_who_may_speak": ("setting",),
    "start_recording": (),  # host only: the server records the space (docs/protocol.md)
    "stop_recording": (),
    "captions_on": (),
    "captions_off": (),
}

#: The coalesced audience-count event (attrs ``participants``, ``listeners``): what
#: subscribers off stage get instead of each listener's join and leave, at most once per
#: second per space.
AUDIENCE = "audience"

REACTIONS = frozenset({"💯", "✋", "👍", "👏", "😂", "❤️", "🔥", "🙏", "😢", "🎉"})

#: Refusal codes (the rulebook's and the server's) -> HTTP status.
ERROR_STATUS: Mapping[str, int] = {
    "bad_request": 400,
    "bad_json": 400,
    "bad_sdp": 400,
    "unknown_action": 400,
    "missing_field": 400,
    "bad_target": 409,
    "self_target": 409,
    "unauthorized": 401,
    "forbidden": 403,
    "not_allowed": 403,
    "blocked": 403,
    "removed": 403,
    "speaking_restricted": 403,
    "not_found": 404,
    "method_not_allowed": 405,
    "conflict": 409,
    "not_present": 409,
    "already_present": 409,
    "already_live": 409,
    "not_started": 409,
    "space_ended": 409,
    "stage_full": 409,
    "cohosts_full": 409,
    "hand_already_raised": 409,
    "no_raised_hand": 409,
    "not_on_stage": 409,
    "not_a_listener": 409,
    "no_invite": 409,
    "room_full": 409,
    "request_timeout": 408,
    "clip_out_of_range": 409,
    "no_recording": 409,
    "pins_full": 409,
    "bad_audio": 400,
    "audio_too_long": 413,
    "too_large": 413,
    "rate_limited": 429,
    "internal": 500,
    "media_setup_failed": 500,
    "server_full": 503,
    "server_busy": 503,
}


class ProtocolError(Exception):
    """A request the server refuses; `code` maps to an HTTP status via `ERROR_STATUS`.

    `extra`: machine-readable fields the error body carries besides ``error`` and
    ``reason`` (e.g. ``slots`` with ``bad_sdp``). `retry_after`: whole seconds until a
    throttled action (``rate_limited``) may succeed; the body carries it as
    ``retry_after`` and the server's HTTP answer as a ``Retry-After`` header.
    """

    def __init__(
        self,
        code: str,
        reason: str,
        extra: Mapping[str, Any] | None = None,
        *,
        retry_after: int | None = None,
    ) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason
        self.extra: dict[str, Any] = dict(extra or {})
        self.retry_after = retry_after
        if retry_after is not None:
            self.extra["retry_after"] = retry_after

    @property
    def status(self) -> int:
        return ERROR_STATUS.get(self.code, 400)


def error_body(code: str, reason: str, extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    return {**(extra or {}), "error": code, "reason": reason}


def event_message(
    kind: str,
    space: str,
    participant: str,
    *,
    t: float,
    actor: str | None = None,
    role: str | None = None,
    attrs: Mapping[str, Any] | None = None,
    clock_ns: int | None = None,
) -> dict[str, Any]:
    """One event on the WebSocket stream: ``{"type": "event", "kind": ..., ...}``.

    ``clock_ns`` is the server's ``time.monotonic_ns()`` when it published the event: a
    client's arrival time minus it is the event's latency (same machine, or through
    `spacesim.client.clock`'s offset to the server's clock).
    """
    msg: dict[str, Any] = {
        "type": "event",
        "kind": kind,
        "space": space,
        "participant": participant,
        "t": t,
    }
    if clock_ns is not None:
        msg["clock_ns"] = clock_ns
    if actor is not None:
        msg["actor"] = actor
    if role is not None:
        msg["role"] = role
    if attrs:
        msg["attrs"] = dict(attrs)
    return msg


def is_utf8(text: str) -> bool:
    """False for text JSON escapes made unencodable (lone surrogates): refuse it, not 500."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates from JSON escapes
        return False
    return True


#: A user id: 1-64 characters, none of them a control character (C0, DEL, C1) nor one
#: that hides or reorders text (zero-width, line/paragraph separators, bidi controls, BOM).
#: One regular expression so the server and the OpenAPI `pattern` agree exactly (the
#: document says what the server takes, and schemathesis checks both directions).
USER_ID_PATTERN = "^[^\x00-\x1f\x7f-\x9f\u200b-\u200f\u2028-\u202e\u2060-\u206f\ufeff]{1,64}$"
_USER_ID = re.compile(USER_ID_PATTERN.removesuffix("$"))
#: A participants page cursor (``after``): empty or ASCII digits (``str.isdigit`` takes
#: "²"); the server and the OpenAPI share it, as with `USER_ID_PATTERN`.
CURSOR_PATTERN = "^[0-9]{0,18}$"
#: The host's settings of who may raise a hand (`policy.WhoMaySpeak`'s values).
SPEAK_SETTINGS = ("everyone", "followed", "invited")


def is_user_id(value: object) -> bool:
    """A user id the store can hold (`USER_ID_PATTERN`), valid UTF-8."""
    return isinstance(value, str) and _USER_ID.fullmatch(value) is not None and is_utf8(value)


def parse_action(body: object) -> tuple[str, dict[str, str]]:
    """Validate an action request; returns (action, fields) or raises ProtocolError."""
    if not isinstance(body, dict):
        raise ProtocolError("bad_request", "the body must be a JSON object")
    action = body.get("action")
    if not isinstance(action, str) or action not in ACTIONS:
        known = ", ".join(sorted(ACTIONS))
        raise ProtocolError("unknown_action", f"'action' must be one of: {known}")
    fields: dict[str, str] = {}
    for name in ("target", "reason", "emoji", "setting"):
        if name not in body:  # absent; null is not a string, so it is refused below
            continue
        value = body[name]
        if not isinstance(value, str) or not value or len(value) > 500 or not is_utf8(value):
            raise ProtocolError("bad_request", f"'{name}' must be a non-empty string (<= 500)")
        fields[name] = value
    # checked whatever the action, so the OpenAPI's enums hold for every request
    if "emoji" in fields and fields["emoji"] not in REACTIONS:
        raise ProtocolError("bad_request", f"unknown reaction; use one of {sorted(REACTIONS)}")
    if "setting" in fields and fields["setting"] not in SPEAK_SETTINGS:
        raise ProtocolError("bad_request", f"'setting' must be one of {', '.join(SPEAK_SETTINGS)}")
    for name in ACTIONS[action]:
        if name not in fields:
            raise ProtocolError("missing_field", f"'{action}' needs '{name}'")
    return action, fields
