"""spacesim.behaviour: the decisions both engines make, checked against their laws."""

from __future__ import annotations

import itertools
import random
import statistics
from collections import Counter
from typing import Any

import numpy as np
import pytest

from spacesim import behaviour as b
from spacesim.protocol import REACTIONS
from spacesim.scenario import (
    Audience,
    Features,
    Moderation,
    NetworkProfile,
    Outcomes,
    Speaking,
    parse_scenario,
)
from spacesim.sim.draws import Draws

N = 20_000


@pytest.fixture(params=["py", "numpy"])
def rng(request: pytest.FixtureRequest) -> b.Rng:
    """Both engines' random sources must give the same laws."""
    if request.param == "py":
        return b.PyRng(random.Random(5))
    return Draws(np.random.default_rng(5))


def test_poisson_counts_have_their_mean(rng: b.Rng) -> None:
    for lam in (0.05, 2.0, 50.0):
        xs = [b.events_in(lam, 1.0, rng) for _ in range(N)]
        assert statistics.fmean(xs) == pytest.approx(lam, rel=0.05, abs=0.01)
    assert b.events_in(0.0, 1.0, rng) == 0 and b.events_in(3.0, 1.0, rng, n=0) == 0


def test_talk_phases_alternate_with_the_scenarios_means(rng: b.Rng) -> None:
    sp = Speaking(talk_spurt=1.0, pause=3.0)
    phases = b.talk_phases(sp, rng)
    first = [next(b.talk_phases(sp, rng))[0] for _ in range(4000)]
    assert statistics.fmean(first) == pytest.approx(sp.activity, abs=0.03)  # steady state
    seq = [next(phases) for _ in range(N)]
    assert all(a[0] != c[0] for a, c in itertools.pairwise(seq))
    on = statistics.fmean(d for talking, d in seq if talking)
    off = statistics.fmean(d for talking, d in seq if not talking)
    assert on == pytest.approx(1.0, rel=0.05) and off == pytest.approx(3.0, rel=0.05)


def test_report_outcomes_follow_their_shares(rng: b.Rng) -> None:
    out = Outcomes(dismiss=0.5, remove=0.3, block=0.2)
    counts = Counter(b.report_outcome(out, True, rng) for _ in range(N))
    assert counts["dismiss"] / N == pytest.approx(0.5, abs=0.02)
    assert counts["remove"] / N == pytest.approx(0.3, abs=0.02)
    assert counts["block"] / N == pytest.approx(0.2, abs=0.02)
    assert {b.report_outcome(out, False, rng) for _ in range(200)} == {"dismiss"}


def test_network_paths_follow_their_shares(rng: b.Rng) -> None:
    paths = [NetworkProfile(share=0.7, rtt=0.02), NetworkProfile(share=0.3, rtt=0.2)]
    picked = Counter(b.network_path(paths, rng).rtt for _ in range(N))
    assert picked[0.2] / N == pytest.approx(0.3, abs=0.02)


def test_host_and_listener_decisions(rng: b.Rng) -> None:
    aud = Audience(approval=0.25, host_response_time=4.0, events_share=0.6)
    assert statistics.fmean(b.approves(aud, rng) for _ in range(N)) == pytest.approx(0.25, abs=0.02)
    delays = [b.hand_response_delay(aud, rng) for _ in range(N)]
    assert statistics.fmean(delays) == pytest.approx(4.0, rel=0.05)
    subs = statistics.fmean(b.subscribes_to_events(aud, rng) for _ in range(N))
    assert subs == pytest.approx(0.6, abs=0.02)
    assert b.subscribes_to_events(Audience(events_share=1.0), rng)
    emojis = {b.reaction_emoji(rng) for _ in range(2000)}
    assert emojis == set(b.EMOJIS) and emojis <= REACTIONS
    assert b.pick([], rng) is None and b.pick(["a"], rng) == "a"


def test_moderation_actions_at_their_rates(rng: b.Rng) -> None:
    mod = Moderation(mute_rate=2.0, invite_rate=0.5, unmute_after=None)
    counts = Counter(a for _ in range(4000) for a in b.moderation_due(mod, 0.5, rng))
    assert counts["mute"] / 2000 == pytest.approx(2.0, rel=0.08)  # 4000 ticks of 0.5 s
    assert counts["invite"] / 2000 == pytest.approx(0.5, rel=0.12)
    assert set(counts) == {"mute", "invite"}
    assert b.unmute_delay(mod, rng) is None
    assert b.unmute_delay(Moderation(unmute_after=5.0), rng) is not None


def test_room_features_follow_their_shares(rng: b.Rng) -> None:
    draws = [b.room_features(Features(captions=0.3, recording=0.6), rng) for _ in range(N)]
    assert statistics.fmean(c for c, _ in draws) == pytest.approx(0.3, abs=0.015)
    assert statistics.fmean(r for _, r in draws) == pytest.approx(0.6, abs=0.015)
    assert {b.room_features(Features(captions=1, recording=0), rng) for _ in range(200)} == {
        (True, False)
    }


def test_replay_arrivals_and_their_path(rng: b.Rng) -> None:
    f = Features(recording=1, replay_rate=0.5, replay_http_share=0.25)
    assert statistics.fmean(b.replay_arrivals(f, 2.0, rng) for _ in range(N)) == pytest.approx(
        1.0, abs=0.03
    )
    assert statistics.fmean(b.replays_over_http(f, rng) for _ in range(N)) == pytest.approx(
        0.25, abs=0.015
    )
    assert b.replay_arrivals(Features(), 2.0, rng) == 0  # none by default


def test_a_player_reads_whole_chunks_ahead_of_what_it_plays() -> None:
    chunk, ahead = b.PLAYER_CHUNK, b.PLAYER_AHEAD
    size, duration = 10 * chunk, 100.0  # a chunk holds 10 s
    assert b.player_bytes(0.0, duration, size) == chunk  # 10 s ahead: one chunk
    assert b.player_bytes(0.5, duration, size) == 2 * chunk
    assert b.player_bytes(35.0, duration, size) == 5 * chunk  # 45 s: into the fifth chunk
    assert b.player_bytes(95.0, duration, size) == size  # never past the file
    assert b.player_bytes(1.0, duration, size - 7) <= size - 7
    assert b.player_bytes(0.0, 4.0, 1000) == 1000  # a short recording: all of it at once
    assert b.player_bytes(5.0, 0.0, 1000) == 1000 and b.player_bytes(5.0, 10.0, 0) == 0
    assert ahead == 10.0


def test_timeline_due_in_order() -> None:
    data: dict[str, Any] = {
        "name": "t",
        "duration": "10m",
        "arrivals": {"kind": "poisson", "rate": 1},
        "session": {"mean": 60},
        "timeline": [{"at": "8m", "action": "end"}, {"at": "5m", "action": "mute_all"}],
    }
    sc = parse_scenario(data)
    assert [e.action for e in b.timeline_due(sc, 0, 600)] == ["mute_all", "end"]
    assert [e.action for e in b.timeline_due(sc, 300, 301)] == ["mute_all"]
    assert b.timeline_due(sc, 301, 480) == []


def test_place_listener_two_choices_then_least_loaded() -> None:
    """The simulator's and the cluster's placement: the less loaded of two draws; when
    it refuses, the least loaded node that admits; None when none does."""

    class Fixed:
        def __init__(self, *u: float) -> None:
            self.u = list(u)

        def uniform(self) -> float:
            return self.u.pop(0)

        def exp(self, mean: float) -> float:
            return mean

        def normal(self) -> float:
            return 0.0

        def poisson(self, lam: float) -> int:
            return 0

    loads = [5, 1, 3, 0]
    everyone = lambda i: True  # noqa: E731
    assert b.place_listener(4, loads.__getitem__, everyone, Fixed(0.0, 0.6)) == 2
    assert b.place_listener(4, loads.__getitem__, everyone, Fixed(0.3, 0.1)) == 1
    not_2 = lambda i: i != 2  # noqa: E731
    assert b.place_listener(4, loads.__getitem__, not_2, Fixed(0.0, 0.6)) == 3
    assert b.place_listener(4, loads.__getitem__, lambda i: False, Fixed(0, 0)) is None
    assert b.place_listener(1, loads.__getitem__, everyone, Fixed()) == 0
    assert b.place_listener(0, loads.__getitem__, everyone, Fixed()) is None
