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

import math

import numpy as np

from spacesim.scenario import (
    ConstantArrivals,
    FlashCrowdArrivals,
    PiecewiseArrivals,
    PoissonArrivals,
    RampArrivals,
    Scenario,
    ScenarioError,
)

__all__ = ["expected_audience", "forwarding_cores", "with_audience"]

_BINS = 4000


def _arrived(sc: Scenario, t: np.ndarray) -> np.ndarray:
    """Expected arrivals to one room by each time in `t` (the integral of the rate)."""
    a = sc.arrivals
    if isinstance(a, ConstantArrivals | PoissonArrivals):
        return a.rate * t
    if isinstance(a, RampArrivals):
        inside = np.minimum(t, a.over)
        ramp = a.start * inside + (a.end - a.start) * inside**2 / (2 * a.over)
        return np.asarray(ramp + a.end * np.maximum(t - a.over, 0.0))
    if isinstance(a, PiecewiseArrivals):
        total = np.zeros_like(t)
        ends = [s.at for s in a.steps[1:]] + [math.inf]
        for step, end in zip(a.steps, ends, strict=True):
            total += step.rate * np.clip(t - step.at, 0.0, end - step.at)
        return total
    if isinstance(a, FlashCrowdArrivals):
        total = a.base * t
        for b in a.bursts:
            total = total + b.size * -np.expm1(-np.maximum(t - b.at, 0.0) / b.over)
        return total
    raise TypeError(f"unknown arrival profile {type(a).__name__}")


def _survival(sc: Scenario, x: np.ndarray) -> np.ndarray:
    """P(session > x) under the scenario's session law (`Session.draw`)."""
    s = sc.session
    if s.kind == "fixed":
        return (x < s.mean).astype("float64")
    if s.kind == "exponential":
        return np.exp(-x / s.mean)
    mu = math.log(s.mean) - s.sigma * s.sigma / 2
    z = (np.log(np.maximum(x, 1e-300)) - mu) / (s.sigma * math.sqrt(2))
    erfc = np.asarray(np.frompyfunc(math.erfc, 1, 1)(z), dtype="float64")
    return 0.5 * erfc


def expected_audience(scenario: Scenario) -> float:
    """Expected peak concurrent listeners over all rooms (see the module docstring)."""
    edges = np.linspace(0.0, scenario.duration, _BINS + 1)
    arrivals = np.diff(_arrived(scenario, edges))  # expected arrivals per bin
    dt = edges[1]
    # Arrivals in bin i are taken at its middle; N is read at the end of each bin j.
    survive = _survival(scenario, (np.arange(_BINS) + 0.5) * dt)
    present = np.convolve(arrivals, survive)[:_BINS]
    return float(present.max(initial=0.0)) * scenario.rooms.count


def with_audience(scenario: Scenario, listeners: float) -> Scenario:
    """The scenario with arrivals scaled so that `expected_audience` is `listeners`.

    Burst sizes are whole numbers, so the result is within a listener per burst.
    """
    now = expected_audience(scenario)
    if now <= 0:
        raise ScenarioError(
            scenario.name, [("arrivals", "no listeners arrive, so there is no audience to scale")]
        )
    k = listeners / now
    a = scenario.arrivals
    scaled: object
    if isinstance(a, ConstantArrivals | PoissonArrivals):
        scaled = a.model_copy(update={"rate": a.rate * k})
    elif isinstance(a, RampArrivals):
        scaled = a.model_copy(update={"start": a.start * k, "end": a.end * k})
    elif isinstance(a, PiecewiseArrivals):
        steps = [s.model_copy(update={"rate": s.rate * k}) for s in a.steps]
        scaled = a.model_copy(update={"steps": steps})
    else:
        bursts = [b.model_copy(update={"size": round(b.size * k)}) for b in a.bursts]
        scaled = a.model_copy(update={"base": a.base * k, "bursts": bursts})
    return scenario.model_copy(update={"arrivals": scaled})


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
