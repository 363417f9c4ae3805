"""bench_fidelity's level sizing (`choose_sizing`): the speakers and the audience that fill
the server's core, from probe runs at two speaker counts (pure; no load run)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from bench_fidelity import Probe, choose_sizing


def probes(a: float, b: float, sa: float, sb: float, n: int = 150) -> list[Probe]:
    """Probes at 1 and 3 speakers of a server costing a + b K cores a listener (idle
    0.01) and a swarm costing sa + sb K (its senders' process 0.05 + 0.01 K)."""
    return [
        Probe(k, n, 0.01 + n * (a + b * k), 0.01, n * (sa + sb * k), 0.05 + 0.01 * k)
        for k in (1, 3)
    ]


def test_the_connection_and_packet_costs_are_told_apart() -> None:
    s = choose_sizing(probes(0.56e-3, 0.2e-3, 0.2e-3, 0.05e-3), cores=1.0, max_speakers=12)
    assert s.per_connection == pytest.approx(0.56e-3)
    assert s.per_speaker == pytest.approx(0.2e-3)
    assert s.idle == pytest.approx(0.01)
    # the fewest speakers whose past-saturation level (1.1 x N_sat) fits 880 listeners:
    # K = 3 gives N_sat = 0.99 / 1.16e-3 = 853 (938 > 880), K = 4 gives 733 (807)
    assert s.speakers == 4
    assert s.n_sat == pytest.approx(0.99 / (0.56e-3 + 4 * 0.2e-3))
    assert s.swarm_at_sat == pytest.approx(s.n_sat * 0.4e-3 + 0.05 + 0.04)
    assert s.note == ""


def test_a_swarm_dear_per_listener_takes_more_speakers() -> None:
    """A listener costing the swarm 1 ms/s: at K = 4 the swarm would need 0.8 core at
    N_sat, so more speakers (fewer listeners for the same load) until it fits."""
    law = probes(0.56e-3, 0.28e-3, 1.0e-3, 0.07e-3)
    s = choose_sizing(law, cores=1.0, max_speakers=12)
    assert s.speakers > 4
    assert s.swarm_at_sat <= 0.8
    fewer = choose_sizing(law, cores=1.0, swarm_share=2, max_speakers=12)
    assert fewer.speakers < s.speakers and fewer.n_sat > s.n_sat
    # the server forwards a listener at most 3 speakers (its slots): no more than 3
    capped = choose_sizing(law, cores=1.0)
    assert capped.speakers == 3 and "swarm" in capped.note


def test_no_speaker_count_fits_the_swarm_says_so() -> None:
    s = choose_sizing(probes(0.5e-3, 0.2e-3, 5e-3, 5e-3), cores=1.0, max_speakers=6)
    assert "swarm" in s.note
    assert s.swarm_at_sat > 0.8


def test_sizing_needs_two_speaker_counts() -> None:
    same = [Probe(2, 100, 0.2, 0.01, 0.1), Probe(2, 100, 0.21, 0.01, 0.1)]
    with pytest.raises(ValueError):
        choose_sizing(same, cores=1.0)
