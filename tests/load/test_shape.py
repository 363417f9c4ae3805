"""The M/G/∞ audience curve (`Scenario.audience_curve`) the Locust shape follows, scaled."""

from __future__ import annotations

import math

import numpy as np
import pytest

from spacesim.load.shape import scaled_users
from spacesim.scenario import Scenario


def scenario(arrivals: dict[str, object], session: dict[str, object], **extra: object) -> Scenario:
    return Scenario.model_validate(
        {"name": "s", "duration": "1h", "arrivals": arrivals, "session": session, **extra}
    )


def test_exponential_sessions_fill_as_little_and_erlang_say() -> None:
    sc = scenario({"kind": "poisson", "rate": "2/s"}, {"kind": "exponential", "mean": "60s"})
    curve = sc.audience_curve(600, step=1.0)
    for t in (10, 60, 300, 600):  # λ m (1 - e^{-t/m})
        assert curve[t] == pytest.approx(120 * (1 - math.exp(-t / 60)), rel=0.01)
    assert curve[0] == 0


def test_fixed_sessions_plateau_at_rate_times_length() -> None:
    sc = scenario({"kind": "constant", "rate": "1/s"}, {"kind": "fixed", "mean": "30s"})
    curve = sc.audience_curve(100)
    assert curve[10] == pytest.approx(10, abs=0.6)
    assert curve[60] == pytest.approx(30, abs=0.6) and curve[100] == pytest.approx(30, abs=0.6)


def test_lognormal_mean_is_little() -> None:
    sc = scenario(
        {"kind": "poisson", "rate": "1/s"}, {"kind": "lognormal", "mean": "20s", "sigma": 0.8}
    )
    assert sc.audience_curve(2000)[-1] == pytest.approx(20, rel=0.02)


def test_flash_crowd_peaks_then_drains_and_rooms_and_cap_apply() -> None:
    sc = scenario(
        {"kind": "flash_crowd", "base": 0, "bursts": [{"at": "60s", "size": 100, "over": "10s"}]},
        {"kind": "exponential", "mean": "120s"},
        rooms={"count": 3},
    )
    curve = sc.audience_curve(900)
    assert curve[59] == 0
    peak = int(np.argmax(curve))
    assert 60 < peak < 120 and curve[peak] < 300 and curve[900] < curve[peak] / 4
    rooms = sc.rooms.model_copy(update={"listener_cap": 20})
    capped = sc.model_copy(update={"rooms": rooms}).audience_curve(900)
    assert capped.max() == pytest.approx(60)


def test_ramp_and_piecewise_arrivals() -> None:
    ramp = scenario({"kind": "ramp", "start": 0, "end": "10/s", "over": "100s"},
                    {"kind": "fixed", "mean": "1s"})  # fmt: skip
    got = ramp.arrivals.arrived(np.array([-1.0, 50.0, 100.0, 200.0]))
    assert got.tolist() == pytest.approx([0, 125, 500, 1500])
    steps = scenario(
        {"kind": "piecewise", "steps": [{"at": 0, "rate": "1/s"}, {"at": "1m", "rate": "3/s"}]},
        {"kind": "fixed", "mean": "1s"},
    )
    assert steps.arrivals.arrived(np.array([30.0, 60.0, 70.0])).tolist() == [30, 60, 90]


def test_scaled_users_caps_the_peak_and_never_scales_up() -> None:
    curve = np.array([0.0, 5.0, 10.0, 20.0, 10.0])
    assert scaled_users(curve, 10).tolist() == [0, 2, 5, 10, 5]
    assert scaled_users(curve, 100).tolist() == [0, 5, 10, 20, 10]
    assert scaled_users(np.zeros(3), 10).tolist() == [0, 0, 0]


def test_bad_horizon() -> None:
    sc = scenario({"kind": "poisson", "rate": "1/s"}, {"kind": "fixed", "mean": "1s"})
    with pytest.raises(ValueError, match="horizon"):
        sc.audience_curve(math.inf)


def test_listener_targets_start_at_starts_at_and_stop_at_ends_at() -> None:
    from spacesim.load.shape import listener_targets
    from spacesim.scenario import parse_scenario

    sc = parse_scenario(
        {
            "name": "life",
            "duration": 20,
            "rooms": {"starts_at": "5s", "ends_at": "15s"},
            "arrivals": {"kind": "constant", "rate": "1/s"},
            "session": {"kind": "fixed", "mean": "100s"},
        }
    )
    users = listener_targets(sc, 20, 100)
    assert users[:6].tolist() == [0, 0, 0, 0, 0, 0]
    assert users[6:15].tolist() == list(range(1, 10))  # the curve, shifted by 5 s
    assert (users[15:] == 0).all()
