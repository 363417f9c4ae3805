"""A path's jitter when each flow's packets keep their order.

A path's extra one-way delay is drawn per packet, exponential with mean ``j``
(`spacesim.scenario.NetworkProfile.jitter`), but a packet does not overtake the one
before it on the same flow: the swarm's network relay releases a datagram no earlier
than the previous one of its flow (`spacesim.client.netem`, "order"), as a FIFO queue on
a real path does. With a packet every ``s`` seconds the extra delay of a packet is then
``D = max_k (J_k - k s)`` over it (k = 0) and the packets before it, the ``J`` independent
exponentials, so::

    P(D <= x) = prod_{k >= 0} (1 - exp(-(x + k s) / j))

Far apart packets (s >> j) keep the plain exponential; close ones wait for the late
packets ahead of them: a listener hearing three speakers (150 packets a second) on a
path of j = 20 ms gets a mean of 38.5 ms, not 20 ms, and 5 ms jitter becomes 5.9 ms.

`ordered_delay` maps an exponential draw to the same quantile of ``D``, so a model
that drew ``j x Exp(1)`` keeps its random stream and gets the ordered delay.
"""

from __future__ import annotations

import bisect
import math
from functools import lru_cache

import numpy as np

__all__ = ["ordered_delay"]

_Z_MAX = 40.0  # table reach in units of j; past it the asymptote is exact to ~e^-40
_STEPS = 4000


@lru_cache(maxsize=64)
def _table(r: float) -> tuple[list[float], list[float]]:
    """(g, z) points of z = x / j against g = -log(-log F) for spacing r = s / j, g rising."""
    z = np.linspace(_Z_MAX / _STEPS, _Z_MAX, _STEPS)
    k = np.arange(math.ceil(_Z_MAX / r) + 2)
    log_f = np.log1p(-np.exp(-(z[:, None] + k[None, :] * r))).sum(axis=1)
    g: list[float] = (-np.log(-log_f)).tolist()
    return g, z.tolist()


def ordered_delay(e: float, mean: float, spacing: float) -> float:
    """The extra delay, on a flow with a packet every `spacing` s, whose quantile is that
    of `e` (an Exp(1) draw) under the plain exponential of mean `mean`.

    `spacing` <= 0 (no flow to keep in order) gives the plain ``mean x e``.
    """
    if mean <= 0.0:
        return 0.0
    if spacing <= 0.0:
        return mean * e
    r = round(spacing / mean, 4)  # a few cached tables per run's paths and rates
    if e > 30.0:  # F ~ 1 - e^-z / (1 - e^-r): the tail is the exponential's, shifted
        return mean * (e - math.log1p(-math.exp(-r)))
    if e <= 0.0:
        return 0.0
    g = -math.log(-math.log(-math.expm1(-e)))
    gs, zs = _table(r)
    i = bisect.bisect_left(gs, g)
    if i == 0:  # below the table's first point: F rises linearly from z = 0
        return mean * zs[0] * -math.expm1(-e) / math.exp(-math.exp(-gs[0]))
    if i == len(gs):
        return mean * (e - math.log1p(-math.exp(-r)))
    g0, g1, z0, z1 = gs[i - 1], gs[i], zs[i - 1], zs[i]
    return mean * (z0 + (z1 - z0) * (g - g0) / (g1 - g0))
