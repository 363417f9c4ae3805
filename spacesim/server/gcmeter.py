"""Python's garbage collector pauses the server's event loop: measure the pauses.

A collection stops everything in the process, forwarding included, for as long as it
runs: gen-2 collections of a server holding hundreds of connections take tens of
milliseconds. Packets that arrive during one wait for it, which is the model's
``gc_pause_*`` (young collections) and ``gc_full_*`` (full ones; `spacesim.sim.node`).
`GcMeter` times every collection through `gc.callbacks` (called with ``"start"`` and
``"stop"`` around each one, with the generation collected;
https://docs.python.org/3/library/gc.html#gc.callbacks) and hands out sums per sample,
so `spacesim calibrate` can fit the pause terms from the server's records.
"""

from __future__ import annotations

import gc
import time
from dataclasses import dataclass
from typing import Any

__all__ = ["GcMeter", "Pauses"]


@dataclass(frozen=True)
class Pauses:
    """Collections since the last `GcMeter.take`: count, seconds, sum of squares, longest;
    and of them the full ones (generation 2: the whole heap, rare and long, where young
    ones -- generations 0 and 1 -- are frequent and short), which the model keeps as a
    term of their own (``gc_full_*``)."""

    count: int = 0
    seconds: float = 0.0
    squares: float = 0.0
    longest: float = 0.0
    full_count: int = 0
    full_seconds: float = 0.0
    full_squares: float = 0.0


class GcMeter:
    """Times each garbage collection of this process while installed."""

    def __init__(self) -> None:
        self._started: float | None = None
        self._count = self._full_count = 0
        self._seconds = self._squares = self._longest = 0.0
        self._full_seconds = self._full_squares = 0.0

    def _callback(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        elif self._started is not None:
            took = time.perf_counter() - self._started
            self._started = None
            self._count += 1
            self._seconds += took
            self._squares += took * took
            self._longest = max(self._longest, took)
            if info.get("generation") == 2:  # gc.callbacks' info: the generation collected
                self._full_count += 1
                self._full_seconds += took
                self._full_squares += took * took

    def install(self) -> None:
        if self._callback not in gc.callbacks:
            gc.callbacks.append(self._callback)

    def uninstall(self) -> None:
        if self._callback in gc.callbacks:
            gc.callbacks.remove(self._callback)

    def take(self) -> Pauses:
        """The pauses since the last call (and reset)."""
        out = Pauses(
            self._count, self._seconds, self._squares, self._longest,
            self._full_count, self._full_seconds, self._full_squares,
        )  # fmt: skip
        self._count = self._full_count = 0
        self._seconds = self._squares = self._longest = 0.0
        self._full_seconds = self._full_squares = 0.0
        return out
