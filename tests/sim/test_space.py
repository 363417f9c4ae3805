"""The whole Space in the simulator: the stage as written, host moderation, the timeline,
the lifecycle and the event stream's cost, each through the policy and `behaviour`."""

from __future__ import annotations

import json
from typing import Any

import pandas as pd
import pytest

from spacesim.sim import simulate
from tests.sim.builders import QUIET_AUDIENCE, fixed_crowd, merge, scenario


def kind(records: pd.DataFrame, name: str) -> pd.DataFrame:
    return records[records["kind"] == name]


def attrs(frame: pd.DataFrame, key: str) -> list[Any]:
    return [json.loads(a).get(key) if isinstance(a, str) else None for a in frame["attrs"]]


def test_the_stage_is_seated_as_written_and_the_first_active_speakers_talk() -> None:
    sc = fixed_crowd(20, 120, rooms={"cohosts": 2, "speakers": 3}, speaking={"active_speakers": 4})
    rec = simulate(sc, seed=1).records
    joined = kind(rec, "participant_joined")
    stage = joined[~joined["participant"].str.contains("/L")]
    assert sorted(stage["role"]) == sorted(["host", "cohost", "cohost"] + ["speaker"] * 3)
    assert (stage["t"] == 0).all()
    assert set(kind(rec, "cohost_added")["participant"]) == {"room-0/cohost0", "room-0/cohost1"}
    assert len(kind(rec, "speaker_granted")) == 3
    talkers = set(kind(rec, "talk_spurt")["participant"])
    assert talkers == {"room-0/host", "room-0/cohost0", "room-0/cohost1", "room-0/speaker0"}


def test_a_muted_speaker_sends_nothing_until_they_unmute() -> None:
    # host + one speaker talk, without DTX: 2 senders x 10 listeners x 50 packets a second,
    # and each hears the other on stage: 1,100 packets a second
    sc = fixed_crowd(
        10,
        300,
        rooms={"speakers": 1},
        speaking={"active_speakers": 2, "dtx": False},
        moderation={"unmute_after": None},
        timeline=[{"at": 100, "action": "mute_all"}, {"at": 200, "action": "unmute"}],
    )
    rec = simulate(sc, seed=2).records
    fwd = kind(rec, "packets_forwarded").set_index("t")["value"]
    assert fwd.loc[20:100].mean() == pytest.approx(1100, rel=0.01)
    assert fwd.loc[101:200].mean() == pytest.approx(550, rel=0.01)  # the host only
    assert fwd.loc[201:300].mean() == pytest.approx(1100, rel=0.01)  # talking again
    spurts = kind(rec, "talk_spurt")
    muted = spurts[(spurts["participant"] == "room-0/speaker0")]
    assert not ((muted["t"] > 100) & (muted["t"] <= 200)).any()
    assert (muted["t"] > 200).any()
    assert kind(rec, "muted")["t"].tolist() == [100.0]
    assert kind(rec, "unmuted")["t"].tolist() == [200.0]


def _moderated(action: str, rate: str = "6/min", **extra: Any) -> pd.DataFrame:
    field = {"mute": "mute_rate", "mute_all": "mute_all_rate", "demote": "demote_rate"}.get(
        action, f"{action}_rate"
    )
    sc = fixed_crowd(
        200,
        600,
        rooms={"cohosts": 1, "speakers": 4},
        speaking={"active_speakers": 3},
        moderation={field: rate, **extra},
    )
    rec = simulate(sc, seed=5).records
    done = kind(rec, "moderation_action")
    assert len(done) > 0 and set(attrs(done, "action")) == {action}
    assert (done["participant"] == "room-0/host").all()
    return rec


def test_host_mutes_then_the_speaker_unmutes_themself() -> None:
    rec = _moderated("mute", unmute_after="5s")
    muted, unmuted = kind(rec, "muted"), kind(rec, "unmuted")
    assert len(muted) > 20 and set(attrs(muted, "actor")) == {"room-0/host"}
    assert set(muted["role"]) <= {"cohost", "speaker"}  # never the host
    assert len(unmuted) >= len(muted) - 3  # each unmutes a few seconds later
    assert len(kind(rec, "moderation_action")) == len(muted)


def test_host_mutes_everyone_on_stage() -> None:
    rec = _moderated("mute_all", unmute_after="5s")
    muted = kind(rec, "muted")
    assert set(muted["participant"]) == {"room-0/cohost0"} | {
        f"room-0/speaker{i}" for i in range(4)
    }


def test_host_demotes_speakers() -> None:
    rec = _moderated("demote", rate="1/min")
    revoked = kind(rec, "speaker_revoked")
    assert len(revoked) == 4  # the four speakers seated at the start, then nobody is left
    assert set(attrs(revoked, "actor")) == {"room-0/host"}
    assert (revoked["role"] == "listener").all()


def test_host_invites_listeners_who_accept_and_talk() -> None:
    rec = _moderated("invite", invite_acceptance=0.5)
    invited = kind(rec, "speaker_invited")
    granted = kind(rec, "speaker_granted")
    guests = granted[granted["participant"].str.contains("/L")]
    declined = kind(rec, "invite_declined")
    assert len(invited) > 20 and len(guests) > 5 and len(declined) > 5
    assert len(invited) == len(guests) + len(declined)
    assert set(guests["participant"]) & set(kind(rec, "talk_spurt")["participant"])


def test_host_removes_listeners() -> None:
    rec = _moderated("remove")
    removed = kind(rec, "removed")
    assert len(removed) > 30 and set(attrs(removed, "reason")) == {"removed"}
    left = kind(rec, "participant_left")
    assert attrs(left, "reason").count("removed") == len(removed)
    assert kind(rec, "concurrency")["value"].iloc[-1] == 200 - len(removed)


def test_host_blocks_listeners_space_wide() -> None:
    rec = _moderated("block")
    blocked = kind(rec, "blocked")
    assert len(blocked) > 30 and set(attrs(blocked, "scope")) == {"space"}
    assert len(kind(rec, "removed")) == len(blocked)


def test_cohost_handover_frees_the_longest_serving_seat_first() -> None:
    rec = _moderated("cohost_handover", rate="1/min")
    added = kind(rec, "cohost_added")
    removed = kind(rec, "cohost_removed")
    handed = added[added["t"] > 0]
    assert len(handed) > 3
    # one co-host at the start, two seats: the second handover needs the first to step down
    assert len(removed) == len(handed) - 1
    assert removed["participant"].iloc[0] == "room-0/cohost0"
    assert removed["participant"].iloc[1] == handed["participant"].iloc[0]


def test_timeline_actions_run_at_their_times_in_every_room() -> None:
    sc = fixed_crowd(
        50,
        200,
        rooms={"count": 2, "speakers": 3},
        moderation={"unmute_after": None},
        timeline=[
            {"at": 61.5, "action": "mute_all"},
            {"at": 70.25, "action": "unmute"},
            {"at": 80, "action": "demote"},
            {"at": 90, "action": "invite"},
            {"at": 100, "action": "remove"},
            {"at": 110, "action": "block"},
            {"at": 120, "action": "cohost_handover"},
            {"at": 130, "action": "mute"},
            {"at": 150, "action": "end"},
        ],
    )
    rec = simulate(sc, seed=3).records
    done = kind(rec, "timeline_action")
    assert len(done) == 18
    assert (done["t"] == pd.Series(attrs(done, "at"), index=done.index)).all()
    assert all(attrs(done, "ok"))
    revoked = kind(rec, "speaker_revoked")
    by_host = [
        isinstance(a, str) and json.loads(a).get("actor") not in (None, p)
        for a, p in zip(revoked["attrs"], revoked["participant"], strict=True)
    ]
    assert set(revoked.loc[by_host, "t"]) == {80}  # others: invitees' stints ending
    for name, at in [
        ("unmuted", 70.25),
        ("speaker_invited", 90),
        ("cohost_added", 120),
        ("space_ended", 150),
    ]:
        assert set(kind(rec, name).loc[lambda f: f["t"] > 0, "t"]) == {at}, name
    assert set(kind(rec, "muted")["t"]) == {61.5, 130.0}
    assert len(kind(rec, "removed").loc[lambda f: f["t"] == 100]) == 2


def test_a_scheduled_space_starts_then_ends_and_everyone_leaves() -> None:
    sc = scenario(
        duration=400,
        arrivals={"kind": "constant", "rate": "1/s"},
        session={"kind": "fixed", "mean": "1h"},
        rooms={"starts_at": 100, "ends_at": 300},
        audience={"reaction_rate": "1/min"},
    )
    rec = simulate(sc, seed=1).records
    assert kind(rec, "space_started")["t"].tolist() == [100.0]
    assert kind(rec, "space_ended")["t"].tolist() == [300.0]
    joined = kind(rec, "participant_joined")
    listeners = joined[joined["participant"].str.contains("/L")]
    assert listeners["t"].min() == pytest.approx(101.0)  # the profile's clock starts at 100
    assert listeners["t"].max() < 300 and len(listeners) == 199
    assert (joined["t"] >= 100).all()  # the stage is seated when the host starts
    left = kind(rec, "participant_left")
    assert len(left) == len(joined) and (left["t"] == 300).all()
    conc = kind(rec, "concurrency").set_index("t")["value"]
    assert conc.loc[:100].max() == 0 and conc.loc[300:].max() == 0
    for name in ("reaction", "talk_spurt", "audio_latency", "events_received"):
        t = kind(rec, name)["t"]
        assert len(t) and t.min() >= 100 and t.max() <= 301, name


def test_the_host_leaving_ends_the_space() -> None:
    sc = fixed_crowd(30, 200, timeline=[{"at": 50, "action": "host_leave"}])
    rec = simulate(sc, seed=1).records
    assert kind(rec, "space_ended")["t"].tolist() == [50.0]
    assert attrs(kind(rec, "space_ended"), "reason") == ["host_left"]
    assert kind(rec, "concurrency").set_index("t")["value"].loc[51:].max() == 0
    assert kind(rec, "talk_spurt")["t"].max() <= 50


@pytest.mark.parametrize("share", [1.0, 0.5])
def test_event_cpu_grows_with_reactions_times_subscribers(share: float) -> None:
    n, stage, cost = 400, 3, 50e-6
    rates = (0.5, 2.0)  # reactions per listener per minute
    cpu = []
    for rate in rates:
        sc = fixed_crowd(
            n,
            600,
            speaking={"active_speakers": 0},
            audience=merge(QUIET_AUDIENCE, {"reaction_rate": f"{rate}/min", "events_share": share}),
            server={
                "cpu_per_packet": 0,
                "cpu_per_connection": 0,
                "cpu_per_join": 0,
                "cpu_per_event": cost,
                "cores": 8,
            },
            sim={"warmup": 30, "latency_sample": 10},
        )
        rec = simulate(sc, seed=7).records
        cpu.append(kind(rec, "node_cpu")["value"].mean())
        # every listener reacts; each reaction goes to each subscriber
        subscribers = n * share + stage
        assert cpu[-1] == pytest.approx(n * rate / 60 * subscribers * cost, rel=0.05)
        received = kind(rec, "events_received")
        assert received["value"].mean() == pytest.approx(n * rate / 60, rel=0.05)
        assert (kind(rec, "event_latency")["value"] > 0).all()
    assert cpu[1] / cpu[0] == pytest.approx(rates[1] / rates[0], rel=0.1)


def test_event_latency_grows_with_the_fan_out() -> None:
    p50 = []
    for n in (100, 1000):
        sc = fixed_crowd(
            n,
            120,
            network={"rtt": 0, "jitter": 0},
            audience=merge(QUIET_AUDIENCE, {"reaction_rate": "1/min"}),
            server={"cpu_per_event": "20us", "cores": 16},
            sim={"warmup": 20, "latency_sample": 50},
        )
        p50.append(kind(simulate(sc, seed=1).records, "event_latency")["value"].median())
    # half the fan-out on the median: n / 2 x 20 us / 16 cores (plus a little queue)
    assert p50[0] == pytest.approx(100 / 2 * 20e-6 / 16, rel=0.3)
    assert p50[1] == pytest.approx(1000 / 2 * 20e-6 / 16, rel=0.3)


FULL: dict[str, Any] = {
    "rooms": {"count": 2, "cohosts": 1, "speakers": 3, "starts_at": 20, "ends_at": 280},
    "speaking": {"active_speakers": 3},
    "audience": {
        "hand_raise_rate": "10/h",
        "reaction_rate": "2/min",
        "report_rate": "3/h",
        "block_rate": "2/h",
        "events_share": 0.6,
        "approval": 0.5,
    },
    "moderation": {
        "mute_rate": "2/min",
        "mute_all_rate": "0.5/min",
        "demote_rate": "1/min",
        "invite_rate": "1/min",
        "remove_rate": "1/min",
        "block_rate": "0.5/min",
        "cohost_handover_rate": "0.5/min",
        "unmute_after": "10s",
    },
    "timeline": [{"at": 100, "action": "mute_all"}, {"at": 150, "action": "unmute"}],
}


def test_the_whole_space_is_deterministic_per_seed() -> None:
    sc = scenario(duration=300, arrivals={"kind": "poisson", "rate": "2/s"}, **FULL)
    a = simulate(sc, seed=4).records
    b = simulate(sc, seed=4).records
    c = simulate(sc, seed=5).records
    pd.testing.assert_frame_equal(a, b)
    assert not a["value"].equals(c["value"])
    assert len(kind(a, "moderation_action")) > 10


def test_every_decision_goes_through_behaviour(monkeypatch: pytest.MonkeyPatch) -> None:
    from spacesim import behaviour

    names = [
        "session_length",
        "network_path",
        "subscribes_to_events",
        "events_in",
        "talk_phases",
        "hand_response_delay",
        "approves",
        "speaker_stint",
        "report_targets_space",
        "review_time",
        "report_outcome",
        "moderation_due",
        "pick",
        "accepts_invite",
        "unmute_delay",
        "timeline_due",
    ]
    calls = dict.fromkeys(names, 0)
    for name in names:
        real = getattr(behaviour, name)

        def counted(*args: Any, _real: Any = real, _name: str = name, **kw: Any) -> Any:
            calls[_name] += 1
            return _real(*args, **kw)

        monkeypatch.setattr(behaviour, name, counted)
    sc = scenario(duration=300, arrivals={"kind": "poisson", "rate": "2/s"}, **FULL)
    simulate(sc, seed=4)
    assert all(calls.values()), [n for n, c in calls.items() if not c]
