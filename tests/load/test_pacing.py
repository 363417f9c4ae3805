"""Join timing in the swarm: arrivals paced at the spawn rate, connection awaited on its event."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from pyee.asyncio import AsyncIOEventEmitter

from spacesim.load import live
from spacesim.load.state import JoinPacer


def test_pacer_spaces_a_burst_at_the_rate_and_does_not_hold_late_arrivals() -> None:
    p = JoinPacer()
    burst = [p.delay(10.0, 25.0) for _ in range(5)]  # Locust's batch: five at once
    assert burst == pytest.approx([0.0, 0.04, 0.08, 0.12, 0.16])
    assert p.delay(11.0, 25.0) == 0.0  # after a pause: no waiting for old slots
    assert p.delay(11.0, 25.0) == pytest.approx(0.04)
    assert JoinPacer().delay(0.0, None) == 0.0 and JoinPacer().delay(0.0, 0.0) == 0.0


class _Pc(AsyncIOEventEmitter):  # type: ignore[misc]
    connectionState = "connecting"

    def set(self, state: str) -> None:
        self.connectionState = state
        self.emit("connectionstatechange")


class _Link:
    def __init__(self) -> None:
        self.pc = _Pc()


async def _settle(task: asyncio.Task[Any]) -> None:
    for _ in range(5):  # a few loop iterations, far less than any poll period
        await asyncio.sleep(0)


def test_connected_wakes_on_the_state_change_not_a_poll() -> None:
    """The join clock stops when aiortc reports "connected", not at the next 10 ms poll
    (which added 5 ms on average to every join time measured)."""

    async def go() -> None:
        link = _Link()
        task = asyncio.ensure_future(live._connected(link, 5.0))  # type: ignore[arg-type]
        await _settle(task)
        assert not task.done()
        link.pc.set("connected")
        await _settle(task)
        assert task.done() and task.result() is None
        assert not link.pc.listeners("connectionstatechange")  # its handler is gone

        failing = _Link()
        task = asyncio.ensure_future(live._connected(failing, 5.0))  # type: ignore[arg-type]
        await _settle(task)
        failing.pc.set("failed")
        await _settle(task)
        with pytest.raises(ConnectionError, match="failed"):
            task.result()

        with pytest.raises(TimeoutError, match="not connected after"):
            await live._connected(_Link(), 0.05)  # type: ignore[arg-type]

    asyncio.run(go())
