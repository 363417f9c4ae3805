"""How many Locust users a run needs over time: the scenario's audience curve, scaled.

`Scenario.audience_curve` gives the expected listeners of the scenario's arrivals and
sessions over time (an M/G/∞ queue started empty). The Locust shape
(`users.ScenarioShape`) follows it, scaled down to the users the run may use, so a
flash crowd, a ramp and a steady room are all replayed with their own timing;
`run.default_users` sizes a run from its peak. This module must not import Locust (it
runs in `spacesim load`'s own process, which gevent must not patch).
"""

from __future__ import annotations

import numpy as np

__all__ = ["DEFAULT_LISTENERS", "scaled_users"]

DEFAULT_LISTENERS = 50  # listeners a run uses at its peak when the caller gives no -u


def scaled_users(curve: np.ndarray, listeners: int) -> np.ndarray:
    """The curve scaled so that its peak is `listeners` (never scaled up), whole users."""
    peak = float(curve.max()) if curve.size else 0.0
    scale = min(1.0, listeners / peak) if peak > 0 else 0.0
    out: np.ndarray = np.rint(curve * scale).astype(int)
    return out
