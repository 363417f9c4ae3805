"""The swarm's behaviour for a few seconds on any client, with no Locust and no gevent.

`dry_run` runs what a load run's processes run -- a `Room` per ``rooms.count`` and
listener sessions back to back, as many at each second as `listener_targets` says
(the audience curve from ``rooms.starts_at``, scaled to `listeners`), and each ended
recorded space's replay listeners (`spacesim.load.replayer`) -- on the current
asyncio loop, against the `SpaceClient` s `client_factory` makes (tests/load/fakes.py
has an in-memory server). tests/test_parity.py uses it to check which scenario fields
the swarm reads.
"""

from __future__ import annotations

import asyncio
import random
import time
from typing import Any

from spacesim.behaviour import PyRng
from spacesim.load.api import ClientFactory, Context, Report
from spacesim.load.host import Room
from spacesim.load.listener import ListenerSession
from spacesim.load.replayer import ReplayCrowd, crowd_after
from spacesim.load.shape import listener_targets
from spacesim.results import Recorder, Row
from spacesim.scenario import Scenario

__all__ = ["RowRecorder", "dry_run"]


class RowRecorder(Recorder):
    """A `Recorder` whose rows can be read back as they are."""

    @property
    def rows(self) -> list[Row]:
        return list(self._rows)


async def dry_run(
    scenario: Scenario,
    client_factory: ClientFactory,
    seconds: float,
    listeners: int = 3,
    *,
    network: bool = True,
    report: Report | None = None,
) -> list[Row]:
    """Run hosts and up to `listeners` listeners for `seconds` of real time (at most the
    scenario's ``duration``); the records.

    Records are `spacesim.results.Row` tuples (kind, t, room, participant, role, value,
    attrs); t counts from the call. Sessions still running at the end are closed (their
    ``participant_left`` included). `report` gets what Locust would get as request events;
    ``network=False`` gives every client a direct path (no ``network`` draws).
    """
    sc = scenario
    seconds = min(seconds, sc.duration)  # a run never outlasts its scenario
    rec = RowRecorder("dry-run", "load")
    ctx = Context(
        sc,
        client_factory,
        rec,
        t0=time.time(),
        rng=PyRng(random.Random(sc.seed)),
        tag="dry",
        network=network,
    )
    if report is not None:
        ctx.report = report
    rooms = [Room(ctx) for _ in range(sc.rooms.count)]
    for room in rooms:
        await room.start()
        ctx.spaces.append(room.space)
    targets = listener_targets(sc, seconds, listeners)
    sessions: dict[int, ListenerSession] = {}
    stop = False

    async def slot(i: int) -> None:
        while not stop:
            live = [s for s in ctx.spaces if s not in ctx.ended]
            now = int(ctx.now())
            if not live or i >= targets[min(now, len(targets) - 1)]:
                await asyncio.sleep(0.2)
                continue
            sess = ListenerSession(ctx, live[i % len(live)])
            sessions[i] = sess
            outcome = await sess.run()
            sessions.pop(i, None)
            if outcome != "done":
                await asyncio.sleep(0.2)

    crowds: dict[int, ReplayCrowd] = {}

    async def replays() -> None:
        while not stop:
            for room in rooms:
                crowd = None if id(room) in crowds else crowd_after(room)
                if crowd is not None:
                    crowds[id(room)] = crowd
                    tasks.append(asyncio.get_running_loop().create_task(crowd.run()))
            await asyncio.sleep(0.2)

    loop = asyncio.get_running_loop()
    tasks: list[asyncio.Task[Any]] = [
        loop.create_task(slot(i)) for i in range(int(targets.max(initial=0)))
    ]
    tasks.append(loop.create_task(replays()))
    try:
        await asyncio.sleep(seconds)
    finally:
        stop = True
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for sess in list(sessions.values()):
            await sess.close()
        for crowd in crowds.values():
            await crowd.close()
        for room in rooms:
            await room.close()
    return rec.rows
