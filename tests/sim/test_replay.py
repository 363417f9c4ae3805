"""Replays: a measured run's trace drives the simulator (`spacesim.sim.replay`)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest

from spacesim.analysis import likeforlike, runs
from spacesim.cli import main
from spacesim.results import Row, Run, RunMeta, load_run, records_frame, write_run
from spacesim.scenario import parse_scenario
from spacesim.sim import replay, simulate
from spacesim.sim.trace import Path as NetPath
from spacesim.sim.trace import trace_of

SCENARIO = {
    "name": "replay-unit",
    "duration": "30s",
    "seed": 3,
    "rooms": {"count": 1, "cohosts": 1},
    "speaking": {"active_speakers": 2, "dtx": True},
    "arrivals": {"kind": "constant", "rate": "1/s"},
    "session": {"kind": "fixed", "mean": "100s"},
    # One path for everybody: a replay must take the recorded ones instead.
    "network": [{"share": 1.0, "rtt": "60ms", "jitter": "10ms"}],
    "audience": {"host_response_time": "5s", "approval": 0.0, "speaker_stint": "50s"},
}
SLOW = {"rtt": 0.15, "jitter": 0.02, "loss": 0.01}
FAST = {"rtt": 0.04, "jitter": 0.005, "loss": 0.002}
ROOM = "s-abc"


def _row(kind: str, t: float, who: str, role: str, value: float = math.nan, attrs=None) -> Row:
    return (kind, t, ROOM, who, role, value, json.dumps(attrs) if attrs else None)


#: What a swarm recorded: two stage members, four listeners (one refused), spurts, a
#: hand answered after 1.3 s, reactions, an event stream opened by one listener.
ROWS: list[Row] = [
    _row("participant_joined", 1.0, "host-x-0", "host", 0.5, SLOW),
    _row("participant_joined", 1.5, "host-x-0-co0", "cohost", 0.4, FAST),
    _row("talk_spurt", 2.0, "host-x-0", "host", 1.5),
    _row("talk_spurt", 3.0, "host-x-0-co0", "cohost", 1.0),
    _row("participant_joined", 3.2, "l-1", "listener", 0.2, FAST),
    _row("talk_spurt", 5.0, "host-x-0", "host", 2.0),
    _row("events_received", 5.0, "l-1", "listener", 2.0),
    _row("participant_joined", 7.5, "l-2", "listener", 0.5, SLOW),
    _row("join_refused", 9.0, "l-3", "listener", attrs={"reason": "server_full"}),
    _row("reaction", 10.3, "l-2", "listener", 1.0),
    _row("reaction", 10.6, "l-1", "listener", 1.0),
    _row("participant_joined", 12.25, "l-4", "listener", 0.25, FAST),
    _row("participant_left", 13.2, "l-1", "listener", 10.0),
    _row("hand_raised", 14.2, "l-2", "listener"),
    _row("speaker_granted", 15.5, "l-2", "listener", 1.3),
    _row("talk_spurt", 16.0, "l-2", "speaker", 1.0),
    _row("participant_left", 16.25, "l-4", "listener", 4.0),
    _row("speaker_revoked", 18.5, "l-2", "listener"),
    _row("reaction", 20.1, "l-2", "listener", 1.0),
]


def measured(rows: list[Row] = ROWS) -> Run:
    sc = parse_scenario(SCENARIO)
    meta = RunMeta(
        run_id="load-unit",
        source="load",
        scenario_name=sc.name,
        scenario_hash=sc.content_hash(),
        seed=sc.seed,
        started_at="2026-01-01T00:00:00+00:00",
        duration=30.0,
        scenario=sc.model_dump(mode="json"),
    )
    return Run(records_frame(rows, meta.run_id, "load"), meta)


def _of(rec: pd.DataFrame, kind: str, **eq: str) -> pd.DataFrame:
    out = rec[rec["kind"].astype(str) == kind]
    for col, v in eq.items():
        out = out[out[col].astype(str) == v]
    return out


def test_the_trace_reads_what_the_swarm_had() -> None:
    tr = trace_of(measured())
    assert tr.replay_of == "load-unit" and tr.duration == 30.0
    (room,) = tr.rooms
    assert [(m.pid, m.role) for m in room.stage] == [
        ("host-x-0", "host"),
        ("host-x-0-co0", "cohost"),
    ]
    assert room.stage[0].path == NetPath(**SLOW) and room.stage[0].spurts == (
        (2.0, 1.5),
        (5.0, 2.0),
    )
    got = [(m.pid, m.arrived, m.length, m.refused, m.subscribed) for m in room.listeners]
    assert got == [
        ("l-1", 3.0, 10.0, False, True),
        ("l-2", 7.0, None, False, False),
        ("l-3", 9.0, None, True, False),
        ("l-4", 12.0, 4.0, False, False),
    ]
    assert room.answers[0].pid == "l-2" and room.answers[0].granted and room.answers[0].wait == 1.3
    assert room.stints == (("l-2", 3.0),)


def test_a_replay_has_the_measured_arrivals_lengths_paths_and_spurts() -> None:
    run = replay(measured())
    assert run.meta.extra["replay_of"] == "load-unit" and run.meta.source == "sim"
    rec = run.records
    joined = _of(rec, "participant_joined", role="listener")
    assert list(joined["participant"]) == ["l-1", "l-2", "l-3", "l-4"]
    assert list(joined["t"]) == [3.0, 7.0, 9.0, 12.0]  # the join requests, exactly
    paths = {p: json.loads(a) for p, a in zip(joined["participant"], joined["attrs"], strict=True)}
    assert paths["l-1"] == FAST and paths["l-2"] == SLOW and paths["l-4"] == FAST
    stage = _of(rec, "participant_joined")
    stage_paths = dict(zip(stage["participant"], stage["attrs"], strict=True))
    assert json.loads(stage_paths["room-0/host"]) == SLOW
    assert json.loads(stage_paths["room-0/cohost0"]) == FAST
    left = _of(rec, "participant_left", role="listener").set_index("participant")["value"]
    assert left["l-1"] == pytest.approx(10.0, abs=1e-9) and left["l-4"] == pytest.approx(
        4.0, abs=1e-9
    )
    # Talk spurts: the simulator records each at its end, with its length.
    host = _of(rec, "talk_spurt", participant="room-0/host")
    assert list(host["t"]) == pytest.approx([3.5, 7.0])
    assert list(host["value"]) == pytest.approx([1.5, 2.0])
    co = _of(rec, "talk_spurt", participant="room-0/cohost0")
    assert list(co["t"]) == pytest.approx([4.0]) and list(co["value"]) == pytest.approx([1.0])
    # The hand: raised by l-2 when measured, answered as measured (approval is 0 in the
    # scenario, so a drawn answer would decline), on stage for the measured stint.
    raised = _of(rec, "hand_raised")
    assert list(raised["participant"]) == ["l-2"] and list(raised["t"]) == pytest.approx([14.2])
    granted = _of(rec, "speaker_granted", participant="l-2")
    assert list(granted["value"]) == pytest.approx([1.3])
    assert list(_of(rec, "talk_spurt", participant="l-2")["t"]) == pytest.approx([17.0])
    assert list(_of(rec, "speaker_revoked", participant="l-2")["t"]) == pytest.approx([18.5])
    assert _of(rec, "reaction")["value"].sum() == 3
    # The event stream: of the measured listeners only l-1 opened it; l-3, whom the real
    # server refused and the model admits, has drawn choices (events_share 100 %, a
    # fixed 100 s session: still there at the end).
    assert set(_of(rec, "events_received")["participant"]) == {"l-1", "l-3"}
    assert "l-3" not in set(left.index)


def test_a_replay_is_deterministic_and_an_independent_draw_is_not_a_replay() -> None:
    a, b = replay(measured(), seed=1), replay(measured(), seed=1)
    pd.testing.assert_frame_equal(
        a.records.drop(columns="run_id"), b.records.drop(columns="run_id")
    )
    drawn = simulate(parse_scenario(SCENARIO))
    assert "replay_of" not in drawn.meta.extra and drawn.meta.extra["draws"] == "independent"
    joined = _of(drawn.records, "participant_joined", role="listener")
    assert joined["attrs"].isna().all()  # paths are recorded by replays only
    assert runs.labels([a, drawn])[0].startswith("sim (replay): ")
    assert runs.labels([a, drawn])[1].startswith("sim (independent draw): ")


def test_a_replay_places_each_listener_on_the_node_the_cluster_did() -> None:
    """Like for like on a cluster: the measured run's placement, not a fresh draw (which
    split 20 listeners 9/11 where the cluster had 13/7 and moved the nodes' fan-out
    spreads). The origin (the host's node) is the model's node-0 for room 0."""
    sc = dict(SCENARIO, server={"nodes": 2})
    where = {f"l-{i}": "node-2" if i % 3 == 0 else "node-7" for i in range(1, 21)}
    rows: list[Row] = [
        _row("participant_joined", 1.0, "host-x-0", "host", 0.5, {**FAST, "node": "node-7"})
    ]
    rows += [
        _row("participant_joined", 2.0 + i, pid, "listener", 0.2, {**FAST, "node": node})
        for i, (pid, node) in enumerate(where.items())
    ]
    got = replay(measured(rows), parse_scenario({**sc, "duration": "40s"}))
    joined = _of(got.records, "participant_joined", role="listener")
    placed = {
        p: json.loads(a)["node"]
        for p, a in zip(joined["participant"], joined["attrs"], strict=True)
    }
    model = {"node-7": "node-0", "node-2": "node-1"}  # origin first, then by name
    assert placed == {pid: model[node] for pid, node in where.items()}


def test_a_run_without_participants_cannot_be_replayed() -> None:
    with pytest.raises(ValueError, match="no participant_joined"):
        replay(measured([_row("reaction", 1.0, "l-1", "listener", 1.0)]))


def test_simulate_replay_on_the_command_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    m = measured()
    write_run(tmp_path / "load", m.records, m.meta)
    out = tmp_path / "replay"
    assert main(["simulate", "--replay", str(tmp_path / "load"), "--out", str(out), "--quiet"]) == 0
    assert "replay of load-unit" in capsys.readouterr().out
    assert load_run(out).meta.extra["replay_of"] == "load-unit"
    assert main(["simulate", "x.yaml", "--replay", str(tmp_path / "load")]) == 2
    assert main(["simulate"]) == 2
    assert main(["simulate", "--replay", str(tmp_path / "nothing")]) == 2
    assert "nothing" in capsys.readouterr().err


def test_gap_table_gives_the_replay_gap_and_the_independent_spread() -> None:
    m = measured()
    rep = replay(m)
    draws = [simulate(parse_scenario(SCENARIO), seed=s) for s in (1, 2, 3)]
    ((got, replays, independent),) = likeforlike.groups([m, rep, *draws])
    assert got is m and replays == [rep] and independent == draws
    table = likeforlike.gap_table(m, replays, independent)
    row = table.loc["join_time.p50"]
    sims = [runs.summary(r).loc["join_time", "p50"] for r in draws]
    assert row["seeds"] == 3
    assert row["independent_min"] == min(sims) and row["independent_max"] == max(sims)
    assert row["replay_gap"] == pytest.approx(row["replay"] / row["measured"] - 1)
