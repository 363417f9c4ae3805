"""Scenario builders for simulator tests: quiet rooms where one mechanism is isolated."""

from __future__ import annotations

import copy
from typing import Any

from spacesim.scenario import Scenario, parse_scenario

QUIET_AUDIENCE: dict[str, Any] = {
    "hand_raise_rate": 0,
    "reaction_rate": 0,
    "report_rate": 0,
    "block_rate": 0,
}

#: The server costs these tests reason with: round numbers (30 us a forwarded packet,
#: 20 us a second per connection, 6 ms a join, nothing fixed nor per speaker's packet,
#: no fixed forwarding latency), pinned so that recalibrating `spacesim.scenario.Server`'s
#: defaults does not move the mechanisms under test. A test that sets a cost overrides it.
TEST_COSTS: dict[str, Any] = {
    "cpu_per_packet": "30us",
    "cpu_per_join": "6ms",
    "cpu_per_connection": "20us",
    "cpu_fixed": 0,
    "cpu_per_publisher_packet": 0,
    "forward_delay": 0,
}


def merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def scenario(**fields: Any) -> Scenario:
    base: dict[str, Any] = {
        "name": "test",
        "duration": "10m",
        "arrivals": {"kind": "poisson", "rate": "1/s"},
        "session": {"kind": "exponential", "mean": "1m"},
        "audience": QUIET_AUDIENCE,
        "network": {"rtt": "40ms", "jitter": "5ms", "loss": 0},
        "server": TEST_COSTS,
    }
    if "arrivals" in fields:  # a different kind has different fields: replace, don't merge
        base["arrivals"] = fields.pop("arrivals")
    return parse_scenario(merge(base, fields), "test")


def fixed_crowd(n: int, duration: float, **fields: Any) -> Scenario:
    """`n` listeners who all arrive in the first seconds and stay for the whole run."""
    return scenario(
        duration=duration,
        arrivals={"kind": "flash_crowd", "base": 0, "bursts": [{"at": 0, "size": n, "over": 1}]},
        session={"kind": "fixed", "mean": duration * 10},
        **fields,
    )
