"""docs/protocol.md suffices for a client: its example hears the host through a real server."""

from __future__ import annotations

import ast
import asyncio
import re
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest

from spacesim import policy
from spacesim.protocol import AUDIENCE, ERROR_STATUS
from spacesim.server import launch

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.timeout(60)


async def test_documented_client_hears_the_host(tmp_path: Path) -> None:
    server, base = launch.start(tmp_path / "doc.db")
    try:
        await asyncio.to_thread(launch.wait_up, server, base)
        example = ROOT / "examples" / "hello_space.py"
        proc = subprocess.run(
            [sys.executable, str(example), "--base", base, "--seconds", "2"],
            capture_output=True,
            text=True,
            timeout=45,
        )
    finally:
        server.kill()
        server.wait(timeout=10)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "heard 440 Hz" in proc.stdout


def _doc_error_table() -> dict[str, int]:
    """The Errors section's table of docs/protocol.md: code -> status."""
    text = (ROOT / "docs" / "protocol.md").read_text(encoding="utf-8")
    section = text.split("\n## Errors\n", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| `([a-z_]+)` \| (\d{3}) \|", section, flags=re.MULTILINE)
    assert len(rows) == len(set(code for code, _ in rows)), "a code is listed twice"
    return {code: int(status) for code, status in rows}


def test_the_doc_lists_every_error_code_with_its_status() -> None:
    assert _doc_error_table() == dict(ERROR_STATUS)


def test_every_code_the_server_raises_is_in_error_status() -> None:
    """The rulebook's and the server's refusals (source scan): none escapes the table."""
    pattern = re.compile(r'(?:_refuse|ProtocolError|_error)\(\s*"([a-z_]+)"')
    sources = [ROOT / "spacesim" / "policy.py", *(ROOT / "spacesim" / "server").glob("*.py")]
    raised = {m for path in sources for m in pattern.findall(path.read_text(encoding="utf-8"))}
    assert len(raised) > 20
    assert raised <= set(ERROR_STATUS), raised - set(ERROR_STATUS)


# --------------------------------------------------------------------------- events


def _events_section() -> str:
    text = (ROOT / "docs" / "protocol.md").read_text(encoding="utf-8")
    return text.split("\n## Events", 1)[1].split("\n## ", 1)[0]


def _literals(node: ast.expr) -> set[str]:
    """The string constants an attr value may be (a constant, or either branch of an if)."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return {node.value}
    if isinstance(node, ast.IfExp):
        return _literals(node.body) | _literals(node.orelse)
    return set()


def _dict_items(node: ast.expr | None, local: dict[str, ast.Dict]) -> dict[str, set[str]]:
    """attr key -> its literal values, from a dict display (or a name bound to one)."""
    if isinstance(node, ast.Name):
        node = local.get(node.id)
    if not isinstance(node, ast.Dict):
        return {}
    return {
        k.value: _literals(v)
        for k, v in zip(node.keys, node.values, strict=True)
        if isinstance(k, ast.Constant) and isinstance(k.value, str)
    }


#: policy.Space's helpers whose last argument is the ``reason`` of the event they make.
_REASON_HELPERS = {"_end_now": "space_ended", "_evict": "removed"}


def _emitted_events() -> dict[str, dict[str, set[str]]]:
    """Every event kind the server can send -> its attr keys -> their literal values.

    Read from the source, so a new kind or attr cannot slip past the document: the
    rulebook's ``Event(...)`` constructions, the room's own ``event_message(...)`` calls
    (reactions, the audience count) and the attrs the room adds (``extras`` by kind).
    """
    from spacesim.server import room as room_module

    found: dict[str, dict[str, set[str]]] = {}

    def add(kind: str, items: dict[str, set[str]]) -> None:
        attrs = found.setdefault(kind, {})
        for key, values in items.items():
            attrs.setdefault(key, set()).update(values)

    for path, maker in (
        (ROOT / "spacesim" / "policy.py", "Event"),
        (ROOT / "spacesim" / "server" / "room.py", "event_message"),
    ):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for fn in ast.walk(tree):
            if not isinstance(fn, ast.FunctionDef):
                continue
            local = {
                t.id: n.value
                for n in ast.walk(fn)
                if isinstance(n, ast.Assign) and isinstance(n.value, ast.Dict)
                for t in n.targets
                if isinstance(t, ast.Name)
            }
            for call in ast.walk(fn):
                if not isinstance(call, ast.Call):
                    continue
                if isinstance(call.func, ast.Name) and call.func.id == maker and call.args:
                    first = call.args[0]
                    attrs = next((k.value for k in call.keywords if k.arg == "attrs"), None)
                    if isinstance(first, ast.Constant):
                        add(first.value, _dict_items(attrs, local))
                    elif isinstance(first, ast.Name):  # a module constant (AUDIENCE)
                        add(getattr(room_module, first.id), _dict_items(attrs, local))
                    # else `ev.kind`: the rulebook's events passed on, scanned above
                # the rulebook's helpers that build an event's reason from their last argument
                helper = call.func.attr if isinstance(call.func, ast.Attribute) else None
                last = call.args[-1] if call.args else None
                if helper in _REASON_HELPERS and isinstance(last, ast.Constant):
                    add(_REASON_HELPERS[helper], {"reason": {last.value}})
            # attrs the room adds to the rulebook's events: `if kind == "X": extras[i] = {...}`
            for branch in ast.walk(fn):
                test = branch.test if isinstance(branch, ast.If) else None
                if not (
                    isinstance(test, ast.Compare)
                    and isinstance(test.left, ast.Name)
                    and test.left.id == "kind"
                    and isinstance(test.comparators[0], ast.Constant)
                ):
                    continue
                for n in branch.body:
                    if (
                        isinstance(n, ast.Assign)
                        and isinstance(n.targets[0], ast.Subscript)
                        and isinstance(n.targets[0].value, ast.Name)
                        and n.targets[0].value.id == "extras"
                    ):
                        add(test.comparators[0].value, _dict_items(n.value, {}))
    return found


def _doc_event_rows() -> dict[str, str]:
    """The event table of the Events section: kind -> the rest of its row."""
    rows = re.findall(r"^\| `([a-z_]+)` \|(.*)$", _events_section(), flags=re.MULTILINE)
    assert len(rows) == len(set(kind for kind, _ in rows)), "an event kind is listed twice"
    return dict(rows)


def test_the_source_scan_sees_every_event_kind() -> None:
    """The scan below is only as good as what it finds: every kind of the rulebook, and
    the attrs we know of."""
    emitted = _emitted_events()
    posts = {"post_pinned", "post_shared", "post_unpinned"}  # the posts shown in a space
    assert set(policy.EVENT_KINDS) | {"reaction", AUDIENCE, "caption", *posts} == set(emitted)
    assert set(emitted["caption"]) == {"speaker", "text", "final", "start", "end", "gap"}
    assert emitted["captions_changed"]["captions"] == {"on", "off"}
    assert set(emitted["report_filed"]) == {"reason", "target_type", "report_id"}
    assert emitted["blocked"]["scope"] == {"personal", "space"}
    assert set(emitted[AUDIENCE]) == {"participants", "listeners"}
    assert emitted["space_ended"]["reason"] == {
        "host_ended",
        "host_left",
        "host_removed",
        "moderation",
    }
    assert emitted["removed"]["reason"] == {"removed", "blocked", "moderation"}


def test_the_doc_lists_every_event_kind_and_attr() -> None:
    rows = _doc_event_rows()
    emitted = _emitted_events()
    assert set(rows) == set(emitted), (set(emitted) - set(rows), set(rows) - set(emitted))
    missing = [
        (kind, word)
        for kind, attrs in emitted.items()
        for key, values in attrs.items()
        for word in (key, *values)
        if f"`{word}`" not in rows[kind]
    ]
    assert not missing, f"attrs (or their values) not in the doc's event table: {missing}"


# --------------------------------------------------------------------------- close codes


def _server_close_codes() -> set[int]:
    """Every WebSocket close code the server sends: explicit ``close(code=...)`` calls,
    a bare ``close(...)`` (aiohttp's default 1000), and 1009 for a message over
    ``max_msg_size`` (aiohttp web_ws.py: a WebSocketError closes with its code)."""
    from spacesim.server import app as app_module

    tree = ast.parse((ROOT / "spacesim" / "server" / "app.py").read_text(encoding="utf-8"))
    codes: set[int] = set()
    for call in ast.walk(tree):
        if not isinstance(call, ast.Call):
            continue
        keywords = {k.arg: k.value for k in call.keywords}
        is_ws_close = isinstance(call.func, ast.Attribute) and call.func.attr == "close"
        if is_ws_close and keywords.keys() & {"code", "drain", "message"}:
            code = keywords.get("code")
            if code is None:
                codes.add(int(aiohttp.WSCloseCode.OK))
            elif isinstance(code, ast.Constant):
                codes.add(int(code.value))
            else:
                assert isinstance(code, ast.Name), ast.dump(code)
                codes.add(int(getattr(app_module, code.id)))
        if "max_msg_size" in keywords:
            codes.add(int(aiohttp.WSCloseCode.MESSAGE_TOO_BIG))
    return codes


def test_the_doc_lists_every_websocket_close_code() -> None:
    codes = _server_close_codes()
    assert {1000, 4401, 1009} <= codes
    documented = {int(c) for c in re.findall(r"^\| (\d{4}) \|", _events_section(), re.MULTILINE)}
    assert codes <= documented, codes - documented


def test_every_code_a_stream_ends_with_is_documented() -> None:
    """The error frame before the server closes a stream (room.py `_end`, `_cut_off`)."""
    source = (ROOT / "spacesim" / "server" / "room.py").read_text(encoding="utf-8")
    codes = set(re.findall(r'_end\(\s*\w+,\s*"([a-z_]+)"', source))
    codes |= set(re.findall(r'_cut_off\(.*, "([a-z_]+)"\)$', source, re.MULTILINE))
    assert {"too_slow", "removed", "space_ended"} <= codes, codes
    events = _events_section()
    assert all(f"`error`: `{code}`" in events for code in codes), codes
