"""The stage hears its speakers: the origin forwards each sender's stream to the other
stage members too, as the reference server does (a replayed swarm run showed the model
a quarter of the packets short without it)."""

from __future__ import annotations

import pytest

from spacesim.results import summarise
from spacesim.scenario import parse_scenario
from spacesim.sim import simulate


def _forwarded(speakers: int, active: int) -> float:
    """Packets the node forwards per second."""
    sc = parse_scenario(
        {
            "name": "stage-only",
            "duration": "10s",
            "rooms": {"count": 1, "speakers": speakers},
            "speaking": {"active_speakers": active, "dtx": False},
            "arrivals": {"kind": "constant", "rate": "0/s"},  # nobody but the stage
            "session": {"kind": "fixed", "mean": "1s"},
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
