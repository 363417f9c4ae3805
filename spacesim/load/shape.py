"""How many listeners a scenario's arrival profile keeps in its rooms over time.

Listeners arrive at the profile's rate λ(t) (`Arrivals.rate_at`) and stay for a session
drawn from the scenario's law (`Session.survival`), so the expected audience is that
of an M/G/∞ queue started empty:

    E[N(t)] = ∫₀ᵗ λ(s) · P(session > t - s) ds

(Ross, *Introduction to Probability Models*, §5.3.5: the number in an infinite-server
queue with non-homogeneous Poisson arrivals). The Locust shape (`users.ScenarioShape`)
follows this curve, scaled down to the users the run may use, so a flash crowd, a ramp
and a steady room are all replayed with their own timing; `run.default_users` sizes a
run from its peak. This module must not import Locust (it runs in `spacesim load`'s own
process, which gevent must not patch).
"""

from __future__ import annotations

import math

import numpy as np

from spacesim.scenario import Scenario

__all__ = ["DEFAULT_LISTENERS", "audience_curve", "scaled_users"]

DEFAULT_LISTENERS = 50  # listeners a run uses at its peak when the caller gives no -u


def audience_curve(sc: Scenario, horizon: float, step: float = 1.0) -> np.ndarray:
    """Expected listeners over all rooms at t = 0, step, 2·step, … up to `horizon`.

    A midpoint rule over `step`-wide arrival bins; each room's audience is capped at
    ``rooms.listener_cap`` (the server refuses the rest).
    """
    if step <= 0 or not math.isfinite(horizon) or horizon < 0:
        raise ValueError(f"need step > 0 and a finite horizon >= 0, got {step}, {horizon}")
    n = int(horizon // step) + 1
    mids = (np.arange(n) + 0.5) * step  # arrival bins [k·step, (k+1)·step)
    arrivals = np.array([sc.arrivals.rate_at(float(m)) for m in mids]) * step
    ages = np.arange(n) * step + 0.5 * step  # age at t_j of a bin's arrivals, j - k bins on
    survive = np.array([sc.session.survival(float(a)) for a in ages])
    # E[N(t_j)] = Σ_{k<j} arrivals[k] · survive[j-k-1]: a causal convolution
    per_room = np.concatenate(([0.0], np.convolve(arrivals, survive)[: n - 1]))
    if sc.rooms.listener_cap is not None:
        per_room = np.minimum(per_room, sc.rooms.listener_cap)
    out: np.ndarray = per_room * sc.rooms.count
    return out


def scaled_users(curve: np.ndarray, listeners: int) -> np.ndarray:
    """The curve scaled so that its peak is `listeners` (never scaled up), whole users."""
    peak = float(curve.max()) if curve.size else 0.0
    scale = min(1.0, listeners / peak) if peak > 0 else 0.0
    out: np.ndarray = np.rint(curve * scale).astype(int)
    return out
