"""Audience size: what "N listeners" means for a scenario, and how to get it.

Capacity questions are asked in listeners ("how many nodes for a 1M-listener space?"),
but a scenario describes arrivals and session lengths. Here the *audience* is the
**expected peak number of concurrent listeners, summed over rooms**: the maximum over
the run of ``E[N(t)] = integral of lambda(s) P(session > t - s) ds`` (the
time-dependent form of Little's law), from the scenario's own arrival profile and
session law, ignoring caps and refusals. `with_audience` scales every arrival rate and
burst size by one factor, so the shape of the crowd (a steady stream, a ramp, a
notification burst) is kept and only its size changes. The simulated peak
(``concurrency.value``) scatters around this figure by the Poisson noise of arrivals.
"""

from __future__ import annotations

from spacesim.scenario import Scenario, ScenarioError

__all__ = ["expected_audience", "forwarding_cores", "with_audience"]


def expected_audience(scenario: Scenario) -> float:
    """Expected peak concurrent listeners over all rooms (`Scenario.expected_audience`)."""
    return scenario.expected_audience()


def with_audience(scenario: Scenario, listeners: float) -> Scenario:
    """The scenario with arrivals scaled so that `expected_audience` is `listeners`.

    Burst sizes are whole numbers, so the result is within a listener per burst.
    """
    now = expected_audience(scenario)
    if now <= 0:
        raise ScenarioError(
            scenario.name, [("arrivals", "no listeners arrive, so there is no audience to scale")]
        )
    return scenario.with_audience(listeners / now)


def forwarding_cores(scenario: Scenario, listeners: float) -> float:
    """Cores the listeners' forwarding needs at 100 % utilisation: a floor for node counts.

    Each listener reserves a stream per active speaker (as admission control counts them).
    """
    streams = max(scenario.speaking.active_speakers, 1)
    return (
        listeners
        * streams
        * scenario.speaking.packets_per_second
        * (scenario.server.cpu_per_packet)
        + listeners * scenario.server.cpu_per_connection
    )
