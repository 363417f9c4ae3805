"""How many Locust users a run needs over time: the scenario's audience curve, scaled.

`Scenario.audience_curve` gives the expected listeners of the scenario's arrivals and
sessions over time (an M/G/∞ queue started empty). The Locust shape
(`users.ScenarioShape`) follows it, scaled down to the users the run may use, so a
flash crowd, a ramp and a steady room are all replayed with their own timing;
`run.default_users` sizes a run from its peak. Arrivals count from the space's start
(``rooms.starts_at``), and nobody arrives after it ends (``rooms.ends_at``). This module
must not import Locust (it runs in `spacesim load`'s own process, which gevent must
not patch).
"""

from __future__ import annotations

import numpy as np

from spacesim.scenario import Scenario

__all__ = ["DEFAULT_LISTENERS", "listener_targets", "posters", "scaled_users"]

DEFAULT_LISTENERS = 50  # listeners a run uses at its peak when the caller gives no -u


def scaled_users(curve: np.ndarray, listeners: int) -> np.ndarray:
    """The curve scaled so that its peak is `listeners` (never scaled up), whole users."""
    peak = float(curve.max()) if curve.size else 0.0
    scale = min(1.0, listeners / peak) if peak > 0 else 0.0
    out: np.ndarray = np.rint(curve * scale).astype(int)
    return out


def listener_targets(sc: Scenario, run_time: float, listeners: int) -> np.ndarray:
    """Listener users wanted at each whole second 0..run_time (+1): the audience curve,
    started at ``rooms.starts_at``, zero from ``rooms.ends_at``, scaled to `listeners`."""
    n = int(run_time) + 2
    start = int(np.ceil(sc.rooms.starts_at or 0.0))
    out = np.zeros(n, dtype=int)
    if start < n:
        curve = sc.audience_curve(float(n - 1 - start))
        out[start:] = scaled_users(curve, max(listeners, 1))[: n - start]
    if sc.rooms.ends_at is not None:
        out[int(np.ceil(sc.rooms.ends_at)) :] = 0
    return out


def posters(sc: Scenario) -> int:
    """`Poster` users a run has: one for the whole ``posts`` population, if any."""
    return 1 if sc.posts.users > 0 else 0
