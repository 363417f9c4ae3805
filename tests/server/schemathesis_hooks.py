"""Schemathesis hooks for test_schemathesis.py, loaded by its CLI (SCHEMATHESIS_HOOKS).

Only one of schemathesis's checks is narrowed, `positive_data_acceptance`: it holds that a
request the schema accepts is answered 2xx (or 401/403/404/409/429). Two 400s of
schema-valid requests pass here, and nothing else: an `sdp` string that is no usable SDP
offer, and a plain GET (no WebSocket handshake) on the event stream -- neither is
something a JSON Schema can express. Every other check runs as schemathesis ships it.
"""

from __future__ import annotations

import json
import os
from collections import defaultdict
from typing import Any

import schemathesis
from schemathesis.specs.openapi.checks import positive_data_acceptance
from schemathesis.transport.serialization import serialize_binary

#: The one 400 for a well-formed request: an `sdp` string that is not an SDP offer aiortc
#: can answer (bad_sdp: the schema says "a string"; no JSON Schema can say more). Refusals
#: that depend on who asks or on the room's state (self_target, bad_target) are 409s.
#: Likewise `bad_audio`: a voice upload's body is "binary" to the schema; whether it is a
#: whole, well-formed Ogg/Opus stream no JSON Schema can say.
CONTEXT_REFUSALS = frozenset({"bad_sdp", "bad_audio"})
EVENTS = "/v1/spaces/{space}/events"


def _error_code(response: Any) -> str | None:
    try:
        body = json.loads(response.content)
    except ValueError:
        return None
    return body.get("error") if isinstance(body, dict) else None


@schemathesis.serializer("audio/ogg")
def ogg_body(ctx: Any, value: Any) -> bytes:
    """Voice uploads: the generated "binary" value as the body, as for octet-stream."""
    return serialize_binary(value)


@schemathesis.check
def positive_data_acceptance_in_context(ctx: Any, response: Any, case: Any) -> bool | None:
    """`positive_data_acceptance`, but for `CONTEXT_REFUSALS` and the event stream's
    refusal of a plain GET (OpenAPI cannot describe a WebSocket handshake)."""
    if response.status_code == 400:
        code = _error_code(response)
        if code in CONTEXT_REFUSALS:
            return None
        upgrade = response.request.headers.get("Upgrade", "")
        if case.operation.path == EVENTS and code == "bad_request" and not upgrade:
            return None
    return positive_data_acceptance(ctx, response, case)  # type: ignore[no-any-return]


@schemathesis.check
class StatusTally:
    """Writes the statuses each operation answered to $SPACESIM_ST_TALLY at the end, so the
    test can tell that path parameters reached real spaces (2xx), not only 404s."""

    def __init__(self) -> None:
        self.seen: dict[str, set[int]] = defaultdict(set)

    def after_response(self, ctx: Any, response: Any, case: Any) -> None:
        self.seen[case.operation.label].add(response.status_code)

    def after_run(self, ctx: Any) -> None:
        path = os.environ.get("SPACESIM_ST_TALLY")
        if path:
            with open(path, "w") as f:
                json.dump({k: sorted(v) for k, v in self.seen.items()}, f, indent=1)
