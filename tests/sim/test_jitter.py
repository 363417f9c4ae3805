"""Jitter on an order-keeping flow: the swarm relay's rule, in closed form."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from spacesim.sim import simulate
from spacesim.sim.jitter import ordered_delay
from tests.sim.builders import fixed_crowd


def relay(jitter: np.ndarray, spacing: float) -> np.ndarray:
    """spacesim.client.netem's rule: a datagram leaves at its due time, but never before
    the previous one of its flow (packets arrive every `spacing` s)."""
    out = np.empty_like(jitter)
    prev = -np.inf
    for i, j in enumerate(jitter):
        prev = max(j, prev - spacing)
        out[i] = prev
    return out


@pytest.mark.parametrize(
    ("mean", "spacing"), [(0.020, 0.020 / 3), (0.005, 0.020 / 3), (0.020, 0.020), (0.005, 0.020)]
)
def test_ordered_delay_has_the_relays_distribution(mean: float, spacing: float) -> None:
    rng = np.random.default_rng(1)
    e = rng.standard_exponential(100_000)
    model = np.array([ordered_delay(x, mean, spacing) for x in e])
    measured = relay(rng.standard_exponential(100_000) * mean, spacing)
    for q in (0.1, 0.5, 0.95, 0.99):
        assert np.quantile(model, q) == pytest.approx(np.quantile(measured, q), rel=0.03), q
    assert model.mean() == pytest.approx(measured.mean(), rel=0.02)


def test_no_flow_or_far_apart_packets_keep_the_exponential() -> None:
    for e in (0.0, 0.01, 0.7, 3.0, 12.0, 40.0):
        assert ordered_delay(e, 0.01, 0.0) == pytest.approx(0.01 * e)
        assert ordered_delay(e, 0.001, 1.0) == pytest.approx(0.001 * e, rel=1e-3, abs=1e-9)
    assert ordered_delay(1.0, 0.0, 0.02) == 0.0


def test_ordered_delay_rises_with_the_draw_and_joins_its_tail() -> None:
    e = np.linspace(0.0, 45.0, 4001)
    d = [ordered_delay(x, 0.02, 0.02 / 3) for x in e]
    assert all(b >= a for a, b in itertools.pairwise(d))
    # the table meets the asymptote it hands over to at e = 30
    assert ordered_delay(29.999, 0.02, 0.02 / 3) == pytest.approx(
        ordered_delay(30.001, 0.02, 0.02 / 3), rel=1e-3
    )


def test_simulated_latency_keeps_each_flows_order() -> None:
    # three speakers on a path of 20 ms jitter and no base delay: the speaker's flow
    # (50 packets/s) and the listener's (150: three streams) each keep their order, so
    # the mean is 25.5 + 38.5 ms (netem's rule, above), not 2 x 20 ms
    sc = fixed_crowd(
        20,
        120,
        network={"rtt": 0, "jitter": "20ms", "loss": 0},
        rooms={"speakers": 2},
        speaking={"active_speakers": 3, "dtx": False},
        sim={"latency_sample": 20},
    )
    rec = simulate(sc, seed=3).records
    lat = rec.loc[(rec["kind"] == "audio_latency") & (rec["t"] > 10), "value"]
    rng = np.random.default_rng(2)
    up = relay(rng.standard_exponential(200_000) * 0.020, 0.020).mean()
    down = relay(rng.standard_exponential(200_000) * 0.020, 0.020 / 3).mean()
    assert lat.mean() == pytest.approx(up + down, rel=0.06)
