"""The swarm's host and listener behaviour on an in-memory server (tests/load/fakes.py)."""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from typing import Any

import pytest

from spacesim.load import api
from spacesim.load.dryrun import dry_run
from spacesim.load.voice import sender_id
from spacesim.protocol import ACTIONS
from spacesim.results import Row
from spacesim.scenario import Scenario, parse_scenario

from .fakes import FakeClient, FakeServer

pytestmark = pytest.mark.timeout(60)

BASE: dict[str, Any] = {
    "name": "fake",
    "duration": 30,
    "seed": 5,
    "rooms": {"count": 1, "cohosts": 0, "speakers": 1},
    "speaking": {"active_speakers": 1},
    "arrivals": {"kind": "constant", "rate": "20/s"},
    "session": {"kind": "fixed", "mean": "60s"},
    "audience": {"hand_raise_rate": 0, "reaction_rate": 0, "report_rate": 0, "block_rate": 0},
}


def scenario(**sections: Any) -> Scenario:
    data = {k: (dict(v) if isinstance(v, dict) else v) for k, v in BASE.items()}
    for key, value in sections.items():
        data[key] = {**data.get(key, {}), **value} if isinstance(value, dict) else value
    return parse_scenario(data)


class Reports:
    def __init__(self) -> None:
        self.calls: list[tuple[str, float, BaseException | None]] = []

    def __call__(self, name: str, seconds: float, exc: BaseException | None) -> None:
        self.calls.append((name, seconds, exc))

    def failures(self) -> list[tuple[str, BaseException]]:
        return [(n, e) for n, _, e in self.calls if e is not None]

    def names(self) -> Counter[str]:
        return Counter(n for n, _, _ in self.calls)


async def run(
    sc: Scenario, seconds: float, listeners: int = 3
) -> tuple[list[Row], FakeServer, Reports]:
    server, reports = FakeServer(), Reports()
    try:
        rows = await dry_run(sc, server.client, seconds, listeners, report=reports)
    finally:
        await server.close()
    # Every action the swarm sent is one the protocol names.
    assert set(server.actions) <= set(ACTIONS), set(server.actions) - set(ACTIONS)
    return rows, server, reports


def kinds(rows: list[Row]) -> Counter[str]:
    return Counter(r[0] for r in rows)


def attrs(row: Row) -> dict[str, Any]:
    return json.loads(row[6]) if row[6] else {}


async def test_stage_seated_as_written_and_only_talkers_send() -> None:
    sc = scenario(
        rooms={"cohosts": 2, "speakers": 3, "listener_cap": 7, "who_may_speak": "followed"},
        speaking={"active_speakers": 3, "talk_spurt": "10s", "pause": "10ms"},
    )
    server = FakeServer()
    rows = await dry_run(sc, server.client, 1.5, listeners=2)
    fs = next(iter(server.spaces.values()))
    assert fs.created["listener_cap"] == 7 and fs.created["who_may_speak"] == "followed"
    assert fs.created["scheduled_for"] is None
    host = fs.space.host
    joined = [(r[3], r[4]) for r in rows if r[0] == "participant_joined" and r[4] != "listener"]
    assert joined == [
        (host, "host"),
        (f"{host}-co0", "cohost"),
        (f"{host}-co1", "cohost"),
        (f"{host}-spk0", "speaker"),
        (f"{host}-spk1", "speaker"),
        (f"{host}-spk2", "speaker"),
    ]
    assert kinds(rows)["cohost_added"] == 2 and kinds(rows)["speaker_granted"] == 3
    # The first three of [host, co-hosts, speakers] talk; the others send nothing.
    heard = Counter(
        s for r in rows if r[0] == "packets_received" for s in attrs(r).get("senders", [])
    )
    talkers = {sender_id(u) for u in (host, f"{host}-co0", f"{host}-co1")}
    assert set(heard) == talkers
    assert kinds(rows)["audio_latency"] > 0


async def test_lifecycle_scheduled_start_and_end() -> None:
    sc = scenario(rooms={"starts_at": "1s", "ends_at": "2.5s"})
    t0 = time.time()
    rows, server, reports = await run(sc, 3.5)
    fs = next(iter(server.spaces.values()))
    assert fs.created["scheduled_for"] == pytest.approx(t0 + 1.0, abs=0.2)
    started = [r[1] for r in rows if r[0] == "space_started"]
    ended = [r[1] for r in rows if r[0] == "space_ended"]
    assert started == [pytest.approx(1.0, abs=0.3)]
    assert ended == [pytest.approx(2.5, abs=0.3)]
    listeners = [r[1] for r in rows if r[0] == "participant_joined" and r[4] == "listener"]
    assert listeners and min(listeners) >= 1.0  # arrivals count from the start
    stage = [r[1] for r in rows if r[0] == "participant_joined" and r[4] == "speaker"]
    assert stage and min(stage) >= 1.0  # the stage is seated once live
    assert not reports.failures()  # the end is quiet for listeners


async def test_timeline_runs_at_its_times() -> None:
    sc = scenario(
        rooms={"cohosts": 1, "speakers": 2},
        speaking={"active_speakers": 2},
        moderation={"unmute_after": None},
        timeline=[
            {"at": "0.5s", "action": "mute_all"},
            {"at": "1s", "action": "unmute"},
            {"at": "1.5s", "action": "demote"},
            {"at": "2s", "action": "invite"},
            {"at": "2.5s", "action": "cohost_handover"},
            {"at": "3s", "action": "remove"},
            {"at": "3.5s", "action": "end"},
        ],
    )
    rows, server, reports = await run(sc, 4.0, listeners=4)
    done = [(attrs(r)["action"], attrs(r)["at"], r[1]) for r in rows if r[0] == "timeline_action"]
    assert [a for a, _, _ in done] == [
        "mute_all", "unmute", "demote", "invite", "cohost_handover", "remove", "end"
    ]  # fmt: skip
    for _, at, t in done:
        assert at <= t < at + 0.3
    assert server.actions["mute_all"] == 1 and server.actions["unmute"] >= 2
    assert server.actions["demote"] == 1 and server.actions["add_cohost"] >= 2
    assert kinds(rows)["space_ended"] == 1
    assert not reports.failures()


async def test_moderation_rates_drive_the_hosts_actions() -> None:
    sc = scenario(
        rooms={"cohosts": 1, "speakers": 3},
        speaking={"active_speakers": 2},
        moderation={
            "mute_rate": "3/s",
            "unmute_after": "0.2s",
            "mute_all_rate": "1/s",
            "demote_rate": "1/s",
            "invite_rate": "3/s",
            "invite_acceptance": 1,
            "remove_rate": "1/s",
            "block_rate": "1/s",
            "cohost_handover_rate": "1/s",
        },
    )
    rows, server, reports = await run(sc, 4.0, listeners=6)
    actions = Counter(attrs(r)["action"] for r in rows if r[0] == "moderation_action")
    assert {"mute", "mute_all", "invite"} <= set(actions)
    assert len(actions) >= 4
    # Muted stage members unmute themselves; invited listeners accept and speak.
    assert server.actions["unmute"] >= 1 and server.actions["accept_invite"] >= 3
    names = reports.names()
    assert names["mute"] == actions["mute"] and names["speak"] >= 1
    # The policy events behind them are records, as in the simulator.
    seen = kinds(rows)
    assert seen["muted"] >= actions["mute"] and seen["unmuted"] >= 1
    assert seen["speaker_invited"] >= actions["invite"] - 1
    assert not reports.failures(), reports.failures()


async def test_remove_block_and_cohost_handover_pick_present_listeners() -> None:
    sc = scenario(
        rooms={"cohosts": 2, "speakers": 1},
        moderation={"remove_rate": "4/s", "block_rate": "4/s", "cohost_handover_rate": "5/s"},
    )
    rows, server, reports = await run(sc, 4.5, listeners=20)
    done = [attrs(r) for r in rows if r[0] == "moderation_action"]
    assert {"remove", "block", "cohost_handover"} <= {a["action"] for a in done}
    joined = {r[3] for r in rows if r[0] == "participant_joined" and r[4] == "listener"}
    assert {a["target"] for a in done} <= joined
    # a handover with both co-host seats taken: the longest-serving co-host steps down
    assert server.actions["remove_cohost"] >= 1
    assert not reports.failures(), reports.failures()


async def test_event_share_and_event_latency() -> None:
    sc = scenario(audience={"events_share": 1, "reaction_rate": "120/min"})
    rows, _, reports = await run(sc, 3.0)
    lat = [r[5] for r in rows if r[0] == "event_latency"]
    assert lat and all(0 <= v < 0.1 for v in lat)
    assert sum(r[5] for r in rows if r[0] == "events_received") >= len(lat)
    assert reports.names()["event_latency"] >= 1
    none = scenario(audience={"events_share": 0, "reaction_rate": "120/min"})
    rows, _, _ = await run(none, 3.5)
    assert kinds(rows)["events_received"] == 0 and kinds(rows)["reaction"] > 0


@pytest.mark.parametrize("who", ["invited", "followed"])
async def test_refused_hand_raises_are_not_failures(who: str) -> None:
    sc = scenario(rooms={"who_may_speak": who}, audience={"hand_raise_rate": "36000/h"})
    _, server, reports = await run(sc, 3.5)
    if who == "invited":
        assert server.actions["raise_hand"] == 0  # the join answer forbids asking
    else:
        assert server.actions["raise_hand"] >= 2  # asked, refused speaking_restricted
    assert not reports.failures()


async def test_an_approved_listener_speaks_and_is_heard() -> None:
    sc = scenario(
        speaking={"active_speakers": 1, "talk_spurt": "5s", "pause": "10ms"},
        audience={
            "hand_raise_rate": "36000/h",
            "host_response_time": "50ms",
            "approval": 1,
            "speaker_stint": "60s",
        },
    )
    rows, _, reports = await run(sc, 3.5, listeners=3)
    granted = [r[3] for r in rows if r[0] == "speaker_granted" and r[4] == "listener"]
    assert granted
    ids = {sender_id(u) for u in granted}
    heard = {s for r in rows if r[0] == "packets_received" for s in attrs(r).get("senders", [])}
    assert ids & heard  # a granted listener's packets reached other listeners
    assert any(r[0] == "talk_spurt" and r[3] in granted for r in rows)
    assert not reports.failures()


def test_every_action_name_in_the_load_code_is_the_protocols() -> None:
    """Literal action names the swarm posts (``.act(space, "x"``, the host's ``on("x"``)
    are all in `protocol.ACTIONS`, and no module keeps its own emoji list."""
    import ast
    from pathlib import Path

    import spacesim.load

    names: set[str] = set()
    for path in Path(spacesim.load.__file__).parent.glob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            func = node.func
            fname = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            args = node.args
            if fname == "act" and len(args) >= 2:
                lit = args[1] if not (isinstance(args[0], ast.Constant)) else args[0]
            elif fname == "on" and args:
                lit = args[0]
            else:
                continue
            if isinstance(lit, ast.Constant) and isinstance(lit.value, str):
                names.add(lit.value)
        assert "EMOJIS = " not in path.read_text(encoding="utf-8"), path
    assert {"raise_hand", "react", "invite", "add_cohost", "accept_invite"} <= names
    assert names <= set(ACTIONS), names - set(ACTIONS)


def test_every_error_code_the_load_code_checks_is_the_protocols() -> None:
    """Refusal codes the swarm compares ``.code`` with (directly or through a named set)
    are all codes of `protocol.ERROR_STATUS`: a renamed code cannot silently stop matching."""
    import ast
    from pathlib import Path

    import spacesim.load
    from spacesim.protocol import ERROR_STATUS

    codes: set[str] = set()
    for path in Path(spacesim.load.__file__).parent.glob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Compare) and any(
                isinstance(side, ast.Attribute) and side.attr == "code"
                for side in [node.left, *node.comparators]
            ):
                codes |= {
                    c.value
                    for side in node.comparators
                    for c in ast.walk(side)
                    if isinstance(c, ast.Constant) and isinstance(c.value, str)
                }
            if isinstance(node, ast.Assign) and any(
                isinstance(t, ast.Name) and t.id in {"QUIET_END", "EXPECTED"} for t in node.targets
            ):
                codes |= {
                    c.value
                    for c in ast.walk(node.value)
                    if isinstance(c, ast.Constant) and isinstance(c.value, str)
                }
    assert {"stage_full", "room_full", "space_ended"} <= codes
    assert codes <= set(ERROR_STATUS), codes - set(ERROR_STATUS)


async def test_a_listener_the_server_forgot_rejoins_instead_of_leaving() -> None:
    """A restarted server answers a listener's action ``not_present`` before the listener
    has noticed its connection is gone: the listener rejoins (``reconnected``) and stays."""
    import asyncio

    sc = scenario(speaking={"dtx": True}, audience={"reaction_rate": "600/min"})
    server, reports = FakeServer(), Reports()

    async def forget() -> None:  # the in-memory presence is lost; connections look alive
        await asyncio.sleep(1.5)
        for fs in server.spaces.values():
            for user in [u for u in fs.links if u.startswith("l-")]:
                fs.space.leave(user)

    task = asyncio.get_running_loop().create_task(forget())
    try:
        rows = await dry_run(sc, server.client, 4.0, 3, report=reports)
    finally:
        task.cancel()
        await server.close()
    back = {r[3] for r in rows if r[0] == "reconnected"}
    left_early = {r[3] for r in rows if r[0] == "participant_left" and r[1] < 3.9}
    assert back and not left_early
    assert not reports.failures()


class LazyClient(FakeClient):
    """Mints its credentials (0.3 s) on its first request, as `RoomClient` mints a dev
    token, unless `sign_in` was awaited first."""

    signed_in = False

    async def sign_in(self) -> None:
        if not self.signed_in:
            await asyncio.sleep(0.3)
            self.signed_in = True

    async def connect_audio(self, *args: Any, **kw: Any) -> Any:
        await self.sign_in()
        return await super().connect_audio(*args, **kw)

    async def connect_replay(self, *args: Any, **kw: Any) -> Any:
        await self.sign_in()
        return await super().connect_replay(*args, **kw)

    async def recording_info(self, *args: Any, **kw: Any) -> Any:
        await self.sign_in()
        return await super().recording_info(*args, **kw)


async def run_lazy(sc: Scenario, seconds: float, listeners: int) -> tuple[list[Row], Reports]:
    """`run` with `LazyClient` s."""
    server, reports = FakeServer(), Reports()
    try:
        rows = await dry_run(sc, lambda user, moderator=False: LazyClient(
            server, user, moderator), seconds, listeners, report=reports)  # fmt: skip
    finally:
        await server.close()
    return rows, reports


async def test_a_listeners_join_time_starts_after_it_has_signed_in() -> None:
    """A real user is signed in long before joining: minting the client's credentials
    must not be part of its join time (the simulator's join is signalling, ICE and
    DTLS)."""
    rows, reports = await run_lazy(scenario(), 2.0, 2)
    joins = [r[5] for r in rows if r[0] == "participant_joined" and r[4] == "listener"]
    assert joins and max(joins) < 0.2, joins
    assert not reports.failures()


async def _killing(
    sc: Scenario, seconds: float, kill_at: float | None
) -> tuple[list[Row], FakeServer]:
    """A run on a fake two-node cluster; node-2 dies at `kill_at` s (None: never)."""
    server = FakeServer()
    server.nodes = ["node-1", "node-2"]

    async def kill() -> None:
        if kill_at is not None:
            await asyncio.sleep(kill_at)
            server.killed["node-2"] = time.monotonic()

    task = asyncio.get_running_loop().create_task(kill())
    try:
        rows = await dry_run(sc, server.client, seconds, 4)
    finally:
        task.cancel()
        await server.close()
    return rows, server


async def test_listeners_of_a_silent_node_rejoin_elsewhere(monkeypatch: pytest.MonkeyPatch) -> None:
    """Nothing from its node (no packet, no sender report) for `LIVENESS` s: the listener
    rejoins at once (not at its next tick), naming the node, and lands on the other."""
    monkeypatch.setattr(api, "LIVENESS", 1.5)
    rows, server = await _killing(scenario(), 4.5, kill_at=1.5)
    joined = {r[3]: attrs(r)["node"] for r in rows if r[0] == "participant_joined" and r[2]}
    on_2 = {u for u, n in joined.items() if n == "node-2" and u.startswith("l-")}
    back = {r[3]: (r[1], attrs(r)) for r in rows if r[0] == "reconnected"}
    assert on_2 and set(back) == on_2, (joined, back)
    for t, a in back.values():
        assert a["node"] == "node-1" and a["from"] == "node-2" and a["cause"] == "silence"
        assert 1.5 < a["detect"] < 1.5 + 2 * api.WATCH + 0.3, a
        assert a["outage"] < 2.5 and t < 1.5 + 2.5, (t, a)
    assert {(u, a) for u, a in server.avoided if u in on_2} >= {(u, ("node-2",)) for u in on_2}


async def test_a_silent_room_on_a_live_node_is_not_a_failure(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Nobody talks (DTX): only sender reports arrive, and nobody rejoins."""
    monkeypatch.setattr(api, "LIVENESS", 1.5)
    sc = scenario(speaking={"dtx": True, "active_speakers": 0})
    rows, _ = await _killing(sc, 4.0, kill_at=None)
    assert sum(1 for r in rows if r[0] == "participant_joined") >= 4
    assert not [r for r in rows if r[0] == "reconnected"]
