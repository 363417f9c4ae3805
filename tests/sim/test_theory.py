"""The model checked against queueing theory, not against itself.

Each test isolates one mechanism in a long run and compares a closed-form result:
Erlang C for the moderators' M/M/c queue, Little's law for concurrency, and
offered load / capacity for a node's utilisation.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from spacesim.sim import simulate
from tests.sim.builders import QUIET_AUDIENCE, fixed_crowd, merge, scenario


def erlang_c_wait(lam: float, mu: float, c: int) -> float:
    """Mean time in queue (before service) of an M/M/c queue."""
    a = lam / mu
    assert a < c, "unstable queue"
    top = a**c / math.factorial(c) * c / (c - a)
    p_wait = top / (sum(a**k / math.factorial(k) for k in range(c)) + top)
    return p_wait / (c * mu - lam)


def test_moderator_queue_matches_erlang_c() -> None:
    # rho = 0.5: over 200,000 reports the estimate's spread across seeds is ~1.4 %,
    # so a 5 % tolerance is ~3.7 standard errors (rho = 0.67 gave ~3.3 %: too loose).
    listeners, c, review = 1000, 3, 1.5
    lam = 1.0  # reports per second over the room
    duration = 200_000.0
    sc = fixed_crowd(
        listeners,
        duration,
        audience=merge(
            QUIET_AUDIENCE,
            {
                "report_rate": lam / listeners,
                "space_report_share": 0,
                "moderators": c,
                "review_time": review,
                "outcomes": {"dismiss": 1, "remove": 0, "block": 0},
            },
        ),
        sim={"tick": "10s", "latency_sample": 0},
        speaking={"active_speakers": 0},
    )
    records = simulate(sc, seed=3).records
    resolved = records[records["kind"] == "report_resolved"]
    assert len(resolved) > 190_000
    waits = np.array([json.loads(a)["queue_wait"] for a in resolved["attrs"]])
    expected = erlang_c_wait(lam, 1 / review, c)
    assert waits.mean() == pytest.approx(expected, rel=0.05)
    # Sojourn = wait + exponential review: checks the service side too.
    assert resolved["value"].mean() == pytest.approx(expected + review, rel=0.05)


@pytest.mark.parametrize(
    "session",
    [
        {"kind": "exponential", "mean": "5m"},
        {"kind": "lognormal", "mean": "5m", "sigma": 1.2},
        {"kind": "fixed", "mean": "5m"},
    ],
)
def test_concurrency_matches_littles_law(session: dict[str, object]) -> None:
    rate, mean = 2.0, 300.0
    sc = scenario(
        duration=20_000,
        arrivals={"kind": "poisson", "rate": rate},
        session=session,
        sim={"warmup": 3000, "latency_sample": 0},
    )
    records = simulate(sc, seed=11).records
    concurrency = records.loc[records["kind"] == "concurrency", "value"]
    assert concurrency.mean() == pytest.approx(rate * mean, rel=0.05)


@pytest.mark.parametrize(("dtx", "n"), [(False, 250), (True, 300)])
def test_node_utilisation_matches_offered_load(dtx: bool, n: int) -> None:
    speakers, cores = 2, 1.0
    # 20,000 s holds ~7,700 talk spurts per speaker: the activity estimate's spread is
    # ~0.5 %, well inside the 3 % tolerance.
    sc = fixed_crowd(
        n,
        20_000,
        speaking={"active_speakers": speakers, "dtx": dtx},
        server={"cores": cores, "cpu_per_packet": "30us", "cpu_per_connection": "20us"},
        sim={"warmup": 100, "latency_sample": 0},
    )
    records = simulate(sc, seed=5).records
    util = records.loc[records["kind"] == "node_utilisation", "value"].mean()
    sp = sc.speaking
    sending = speakers * (sp.activity if dtx else 1.0)
    connections = n + 1 + sc.rooms.speakers  # listeners, host, speakers
    offered = (
        n * sending * sp.packets_per_second * sc.server.cpu_per_packet
        + connections * sc.server.cpu_per_connection
    )
    peak = n * speakers * sp.packets_per_second * sc.server.cpu_per_packet
    assert peak / cores < 0.95  # the check is about a node that never saturates
    assert util == pytest.approx(offered / cores, rel=0.03)
