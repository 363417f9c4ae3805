"""The stage hears its speakers: the origin forwards each sender's stream to the other
stage members too, as the reference server does (a replayed swarm run showed the model
a quarter of the packets short without it)."""

from __future__ import annotations

import pytest

from spacesim.results import summarise
from spacesim.scenario import parse_scenario
from spacesim.sim import simulate


def _forwarded(speakers: int, active: int, slots: int = 3) -> float:
    """Packets the node forwards per second."""
    sc = parse_scenario(
        {
            "name": "stage-only",
            "duration": "10s",
            "rooms": {"count": 1, "speakers": speakers},
            "speaking": {"active_speakers": active, "dtx": False},
            "arrivals": {"kind": "constant", "rate": "0/s"},  # nobody but the stage
            "session": {"kind": "fixed", "mean": "1s"},
            "server": {"slots": slots},
        }
    )
    rec = simulate(sc).records
    ticks = int((rec["kind"] == "packets_forwarded").sum())  # one a second
    return float(summarise(rec).loc["packets_forwarded", "value"]) / ticks


def test_each_sender_reaches_every_other_stage_member() -> None:
    pps = 50  # 20 ms packets, sent continuously without DTX
    # Host talking, two speakers listening: two streams.
    assert _forwarded(2, 1) == pytest.approx(2 * pps, rel=0.01)
    # Host and one speaker talking, a second speaker silent: each talker hears the other,
    # the silent one hears both: four streams.
    assert _forwarded(2, 2) == pytest.approx(4 * pps, rel=0.01)
    assert _forwarded(0, 1) == 0  # the host alone forwards nothing


def test_a_member_hears_at_most_the_servers_slots() -> None:
    # The server forwards each participant at most HEARD_AT_ONCE (3) speakers and drops a
    # further one's packets (spacesim.server.media, "Slots"); five of six on stage talk.
    pps = 50
    # each talker hears the four others, capped at three; the silent speaker hears three
    assert _forwarded(5, 5) == pytest.approx((5 * 3 + 3) * pps, rel=0.01)
    # under the cap nothing changes: two talkers, four listening members
    assert _forwarded(5, 2) == pytest.approx((2 * 1 + 4 * 2) * pps, rel=0.01)
    # a server with one slot (spacesim serve --slots 1, the scenario's server.slots)
    assert _forwarded(5, 5, slots=1) == pytest.approx(6 * pps, rel=0.01)


@pytest.mark.parametrize("slots", [3, 2])
def test_listeners_hear_at_most_the_servers_slots(slots: int) -> None:
    """Five speakers talk; each of 20 listeners receives `slots` streams, not five."""
    n, pps = 20, 50
    sc = parse_scenario(
        {
            "name": "five-talkers",
            "duration": "30s",
            "rooms": {"count": 1, "cohosts": 0, "speakers": 4},
            "speaking": {"active_speakers": 5, "dtx": False},
            "arrivals": {
                "kind": "flash_crowd",
                "base": 0,
                "bursts": [{"at": 0, "size": n, "over": 1}],
            },
            "session": {"kind": "fixed", "mean": "1h"},
            "audience": {"hand_raise_rate": 0, "reaction_rate": 0, "report_rate": 0},
            "server": {"slots": slots},
        }
    )
    rec = simulate(sc, seed=1).records
    fwd = rec[(rec["kind"] == "packets_forwarded") & (rec["t"] > 10)]["value"]
    stage = 5 * slots  # each of the five hears `slots` of the other four
    assert fwd.mean() == pytest.approx((n * slots + stage) * pps, rel=0.01)
