"""A clock shared by load processes on several machines: the server's, via an offset.

Latency is a difference between a speaker's send time (in the packet's mark) and a
listener's arrival time. On one machine both read ``CLOCK_MONOTONIC`` and nothing more
is needed. Across machines each process estimates its offset to the server's clock from
``GET /healthz`` (which carries the server's ``clock_ns``) by Cristian's algorithm: of
several round trips, take the fastest and assume the server read its clock halfway
through, so the error is at most half that round trip (on a LAN, well under 1 ms).
Speakers and listeners then read ``monotonic_ns() + offset``: the server's clock.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import aiohttp

__all__ = ["ClockOffset", "server_offset"]


@dataclass(frozen=True)
class ClockOffset:
    """The server's clock minus this process's monotonic clock, and how sure we are."""

    offset_ns: int
    rtt_ns: int  # the fastest round trip: the offset is within +-rtt/2

    def clock(self) -> Callable[[], int]:
        """This process's reading of the server's clock, in nanoseconds."""
        offset, now = self.offset_ns, time.monotonic_ns
        return lambda: now() + offset


async def server_offset(http: aiohttp.ClientSession, base: str, samples: int = 8) -> ClockOffset:
    """Estimate the offset to the server at `base` from `samples` round trips."""
    best: ClockOffset | None = None
    for _ in range(samples):
        t0 = time.monotonic_ns()
        async with http.get(f"{base.rstrip('/')}/healthz") as r:
            data = await r.json(content_type=None)
        t1 = time.monotonic_ns()
        server = data.get("clock_ns") if isinstance(data, dict) else None
        if not isinstance(server, int):
            raise ValueError(f"{base}/healthz gives no clock_ns: not a spacesim server?")
        sample = ClockOffset(server - (t0 + t1) // 2, t1 - t0)
        if best is None or sample.rtt_ns < best.rtt_ns:
            best = sample
    if best is None:
        raise ValueError("samples must be >= 1")
    return best
