"""Parity: each scenario field is honoured by exactly the engines that declare it.

Every field declares its engines (`spacesim.scenario.field_engines`). Each engine is
run here on a scenario that sets every field away from its default while the
scenario models' attribute reads are recorded; a field declared for an engine that
never reads it fails, and so does a field an engine reads without declaring it. So
making an engine ignore a field (or quietly start depending on one) breaks this test.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
from collections.abc import Iterator
from typing import Any, get_args

from spacesim import scenario as scen
from spacesim.results import check_slos, summarise
from spacesim.scenario import (
    DOCUMENTATION_FIELDS,
    ENGINE_NAMES,
    Scenario,
    field_engines,
    parse_scenario,
)

Read = tuple[type, str]

#: A scenario with every field away from its default (times short, rates high).
FULL: dict[str, Any] = {
    "name": "parity",
    "description": "every field set",
    "duration": "30s",
    "seed": 7,
    "rooms": {
        "count": 2,
        "cohosts": 1,
        "speakers": 2,
        "who_may_speak": "followed",
        "host_follows": 0.5,
        "listener_cap": 40,
        "starts_at": "2s",
        "ends_at": "26s",
    },
    "session": {"kind": "lognormal", "mean": "12s", "sigma": 0.8},
    "speaking": {
        "active_speakers": 3,
        "talk_spurt": "1.5s",
        "pause": "1s",
        "packet_interval": "20ms",
        "dtx": True,
    },
    "audience": {
        "hand_raise_rate": "120/min",
        "host_response_time": "300ms",
        "approval": 0.6,
        "speaker_stint": "1s",
        "reaction_rate": "30/min",
        "report_rate": "60/min",
        "space_report_share": 0.3,
        "block_rate": "3/min",
        "events_share": 0.8,
        "moderators": 1,
        "review_time": "1s",
        "outcomes": {"dismiss": 0.4, "remove": 0.3, "block": 0.3},
    },
    "moderation": {
        "mute_rate": "30/min",
        "unmute_after": "2s",
        "mute_all_rate": "6/min",
        "demote_rate": "6/min",
        "invite_rate": "60/min",  # invites reach subscribed listeners only: enough of them
        "invite_acceptance": 0.7,
        "remove_rate": "6/min",
        "block_rate": "6/min",
        "cohost_handover_rate": "6/min",
    },
    "features": {
        "captions": 1.0,
        "recording": 1.0,
        "clip_rate": "30/min",
        "replay_rate": "120/min",
        "replay_http_share": 0.4,
    },
    "posts": {
        "users": 50,
        "followers": 10,
        "voice_posts_per_day": "2/min",
        "voice_dms_per_day": "3/min",
        "fleets_per_day": "4/min",
        "fleet_voice_share": 0.5,
        "length_mean": "10s",
        "length_sigma": 0.5,
        "bitrate": 24000,
        "plays_per_post": 5,
        "fleet_view_share": 0.5,
        "play_delay": "5s",
        "tick": "2s",
    },
    "timeline": [  # every action once, a second apart from 3 s; the space ends last
        {"at": f"{3 + i}s", "action": a}
        for i, a in enumerate(
            sorted(get_args(scen.TimelineAction), key=lambda a: a in {"end", "host_leave"})
        )
    ],
    "network": [
        {"share": 0.6, "rtt": "40ms", "jitter": "5ms", "loss": 0.01},
        {"share": 0.4, "rtt": "120ms", "jitter": "20ms", "loss": 0.02},
    ],
    "server": {
        "nodes": 2,
        "cores": 1.5,
        "cpu_per_packet": "25us",
        "cpu_per_join": "4ms",
        "cpu_per_connection": "15us",
        "cpu_per_event": "8us",
        "cpu_fixed": 0.01,
        "fanout_delay": "20us",
        "forward_delay": "1ms",
        "max_streams": 5000,
        "slots": 2,
        "socket_buffer": 262144,
        "edge_delay": "1ms",
        "asr_cost": 0.3,
        "recorded_packet_bytes": 50,
    },
    "slo": {
        "join_p95": "2s",
        "first_audio_p95": "3s",
        "audio_latency_p95": "300ms",
        "delivery_ratio": 0.95,
        "hand_wait_p95": "30s",
    },
    "sim": {"tick": "0.5s", "latency_sample": 10, "warmup": "1s"},
    "load": {"probe_fraction": 0.2, "browser_probes": 2},
}

ARRIVALS: list[dict[str, Any]] = [
    {"kind": "constant", "rate": "2/s"},
    {"kind": "poisson", "rate": "2/s"},
    {"kind": "ramp", "start": "1/s", "end": "3/s", "over": "10s"},
    {"kind": "flash_crowd", "base": "0.5/s", "bursts": [{"at": "3s", "size": 20, "over": "4s"}]},
    {"kind": "piecewise", "steps": [{"at": 0, "rate": "1/s"}, {"at": "8s", "rate": "3/s"}]},
]


def ending() -> Scenario:
    """FULL, its spaces ending at 3 s by ``rooms.ends_at`` (no timeline): replay
    listeners arrive within the few seconds the swarm's check runs."""
    data = copy.deepcopy(FULL)
    data["arrivals"] = ARRIVALS[0]
    data["rooms"]["ends_at"] = "3s"
    data["timeline"] = []
    return parse_scenario(data, "parity")


def scenarios() -> list[Scenario]:
    out = []
    for arrivals in ARRIVALS:
        data = copy.deepcopy(FULL)
        data["arrivals"] = arrivals
        out.append(parse_scenario(data, "parity"))
    return out


@contextlib.contextmanager
def reads() -> Iterator[set[Read]]:
    """Record every scenario-model field an engine reads while the block runs."""
    seen: set[Read] = set()
    model = scen._Model
    plain = model.__getattribute__

    def spy(self: Any, name: str) -> Any:
        cls = type(self)
        if name in cls.model_fields:
            seen.add((cls, name))
        return plain(self, name)

    model.__getattribute__ = spy  # type: ignore[method-assign]
    try:
        yield seen
    finally:
        del model.__getattribute__


def declared(engine: str) -> dict[str, Read]:
    return {
        path: (cls, name)
        for path, (cls, name, names, _) in field_engines().items()
        if engine in names and path not in DOCUMENTATION_FIELDS
    }


def judge(engine: str, seen: set[Read]) -> None:
    """Declared-but-unread and read-but-undeclared fields, for one engine."""
    # A tagged union's `kind` is read by the type it selects: count it with its class.
    used_classes = {cls for cls, _ in seen}
    seen = seen | {(cls, "kind") for cls in used_classes if "kind" in cls.model_fields}
    want = declared(engine)
    unread = sorted(path for path, key in want.items() if key not in seen)
    everything = {
        key: path for path, key in ((p, (v[0], v[1])) for p, v in field_engines().items())
    }
    extra = sorted(everything[k] for k in seen if k in everything and k not in want.values())
    problems = []
    if unread:
        problems.append(f"declared for {engine} but never read by it: {unread}")
    if extra:
        problems.append(f"read by {engine} but not declared for it: {extra}")
    assert not problems, "\n".join(problems)


# --------------------------------------------------------------------------- declarations


def test_every_field_declares_its_engines() -> None:
    rows = field_engines()
    assert len(rows) > 60
    for path, (_, _, names, _note) in rows.items():
        assert names, f"{path} declares no engine"
        assert set(names) <= set(ENGINE_NAMES), path
    one_engine = [p for p, v in rows.items() if len(set(v[2])) == 1]
    # Load-only and sim-only fields are rare: the server model, sim knobs, load knobs,
    # and the posts model's step and bitrate (the swarm steps each second, uploads clips).
    single = {"server", "sim", "load", "speaking", "posts"}
    assert all(p.split(".")[0] in single for p in one_engine)


def test_show_lists_single_engine_fields() -> None:
    lines = scen.engine_notes()
    assert any(line.startswith("server.*") and "sim" in line for line in lines)
    assert any(line.startswith("load.*") and "load" in line for line in lines)
    assert any(line.startswith("speaking.packet_interval") for line in lines)


def test_the_tracer_sees_reads() -> None:
    sc = scenarios()[0]
    with reads() as seen:
        _ = sc.rooms.count
    assert (scen.Rooms, "count") in seen and (Scenario, "rooms") in seen


# --------------------------------------------------------------------------- engines


#: Replays of ended recordings: what both engines record of them, whatever the run.
REPLAYED = {("replay_started", "replay"), ("egress_bytes", "replay")}


def run_sim(sc: Scenario) -> set[tuple[str, str]]:
    """Run the simulator; the (kind, role) pairs it recorded."""
    from spacesim.sim.engine import simulate

    run = simulate(sc, seed=sc.seed)
    check_slos(summarise(run.records, sc.duration), sc.slo.targets())
    rec = run.records
    return {(str(k), str(r)) for k, r in zip(rec["kind"], rec["role"], strict=True)}


def test_simulator_reads_exactly_its_fields() -> None:
    runs = scenarios()  # validated outside the trace: validators are not engines
    with reads() as seen:
        recorded = [run_sim(sc) for sc in runs]
    judge("sim", seen)
    assert all(kinds >= REPLAYED for kinds in recorded)  # the timeline ends the spaces


def run_load(sc: Scenario, behave: bool, seconds: float = 8.0) -> set[tuple[str, str]]:
    """The swarm's scenario-reading code, without Locust or sockets: the load shape and,
    if `behave`, the gevent-free hosts and listeners against an in-memory server, then
    the summary and SLO check `spacesim load` prints; the (kind, role) pairs recorded."""
    from spacesim.behaviour import PyRng
    from spacesim.load.dryrun import dry_run
    from spacesim.load.posting import PostingPlan
    from spacesim.load.run import planned_browser_probes, server_capacity, server_slots
    from spacesim.load.shape import listener_targets, posters
    from spacesim.results import Recorder
    from tests.load.fakes import FakeServer

    listener_targets(sc, sc.duration, 20)
    planned_browser_probes(sc)  # `spacesim load` starts the browser probes' helper
    server_capacity(sc)  # and its embedded server with the model's admission limit
    server_slots(sc)  # and slots
    if not behave:
        return set()
    # the Poster's plan (its HTTP side is tests/load/test_load.py's voice-day run)
    assert posters(sc) == 1
    plan = PostingPlan(sc.posts, PyRng(1))
    for _ in range(5):
        for role, _seconds in plan.uploads(1.0):
            plan.uploaded(role)
        plan.plays(1.0, dict.fromkeys(plan.owed, 1))

    async def go() -> list[Any]:
        server = FakeServer()
        try:
            return await dry_run(sc, server.client, seconds=seconds, listeners=16)
        finally:
            await server.close()

    rec = Recorder("parity", "load")
    for row in asyncio.run(go()):
        rec.append(row)
    frame = rec.to_frame()
    check_slos(summarise(frame, sc.duration), sc.slo.targets())
    return {(str(k), str(r)) for k, r in zip(frame["kind"], frame["role"], strict=True)}


def test_swarm_reads_exactly_its_fields() -> None:
    runs = scenarios()
    # A few seconds of real time are a sample: a second run where every listener may
    # raise a hand makes sure hands are answered whatever this run's timing.
    everyone = runs[1].model_copy(
        update={"rooms": runs[1].rooms.model_copy(update={"who_may_speak": "everyone"})}
    )
    ended = ending()
    with reads() as seen:
        for i, sc in enumerate(runs):
            run_load(sc, behave=i == 0)  # arrivals reach the swarm only through its shape
        run_load(everyone, behave=True)
        recorded = run_load(ended, behave=True, seconds=5.0)
    judge("load", seen)
    assert recorded >= REPLAYED
