"""Run a scenario through the SimPy model and collect its records."""

from __future__ import annotations

import gc
import time
from collections.abc import Callable
from datetime import UTC, datetime

import numpy as np
import simpy

from spacesim.behaviour import MODERATION_ACTIONS
from spacesim.results import Recorder, Run, RunMeta
from spacesim.scenario import Scenario
from spacesim.sim.decisions import Replay
from spacesim.sim.draws import Draws
from spacesim.sim.posts import simulate_posts
from spacesim.sim.processes import (
    arrivals,
    audience,
    host_moderation,
    lifecycle,
    monitor,
    replays,
    timeline,
)
from spacesim.sim.trace import Trace, trace_of
from spacesim.sim.world import World

__all__ = ["replay", "simulate"]

_PROGRESS_STEPS = 200


def simulate(
    scenario: Scenario,
    *,
    seed: int | None = None,
    run_id: str | None = None,
    progress: Callable[[float, float], None] | None = None,
    replay: Trace | None = None,
) -> Run:
    """Simulate `scenario`; the same scenario and seed give identical records.

    With `replay`, the decisions come from a measured run's trace (`decisions.Replay`)
    instead of independent draws, and the meta's ``extra["replay_of"]`` names that run.
    `progress(now, duration)` is called as simulated time advances.
    """
    seed = scenario.seed if seed is None else seed
    if run_id is None:
        run_id = f"sim-{scenario.name}-{scenario.content_hash()[:8]}-s{seed}"
        if replay is not None:
            run_id = f"replay-{replay.replay_of}-s{seed}"
    started = datetime.now(UTC).isoformat(timespec="seconds")
    wall0 = time.perf_counter()

    env = simpy.Environment()
    recorder = Recorder(run_id, "sim")
    draws = Draws(np.random.default_rng(seed))
    names = [f"room-{i}" for i in range(scenario.rooms.count)]
    decisions = None if replay is None else Replay(scenario, draws, replay, names)
    world = World(env, scenario, draws, recorder, decisions)
    desk = simpy.Resource(env, capacity=scenario.audience.moderators)
    moderating = any(getattr(scenario.moderation, f) > 0 for _, f in MODERATION_ACTIONS)
    for room in world.rooms:
        env.process(lifecycle(env, world, room))
        env.process(arrivals(env, world, room))
        env.process(audience(env, world, room, desk))
        if moderating:
            env.process(host_moderation(env, world, room))
        if scenario.timeline:
            env.process(timeline(env, world, room))
        if scenario.features.replay_rate > 0:
            env.process(replays(env, world, room))
    env.process(monitor(env, world))

    duration = scenario.duration
    step = duration / _PROGRESS_STEPS
    # A large run keeps millions of objects alive (listeners, records); the cyclic
    # collector would rescan all of them on every full pass, which cost about a third
    # of the run time at 1M listeners. Reference counting still frees what the model
    # drops; any cycles are collected once the collector is back on.
    collecting = gc.isenabled()
    gc.disable()
    try:
        for k in range(1, _PROGRESS_STEPS + 1):
            env.run(until=min(k * step, duration))
            if progress is not None:
                progress(env.now, duration)
    finally:
        if collecting:
            gc.enable()
    world.close()
    # Beside the rooms, on its own stream: turning posts on leaves the rooms' draws alone.
    posts_draws = Draws(np.random.default_rng([seed, 17]))
    simulate_posts(scenario.posts, duration, posts_draws, recorder)

    meta = RunMeta(
        run_id=run_id,
        source="sim",
        scenario_name=scenario.name,
        scenario_hash=scenario.content_hash(),
        seed=seed,
        started_at=started,
        duration=duration,
        wall_seconds=time.perf_counter() - wall0,
        scenario=scenario.model_dump(mode="json"),
        extra={"simpy_events": next(env._eid)},  # events scheduled: the engine's work
    )
    if replay is not None:
        meta.extra["replay_of"] = replay.replay_of
        meta.extra["draws"] = "replay"
    else:
        meta.extra["draws"] = "independent"
    return Run(recorder.to_frame(), meta)


def replay(
    run: Run,
    scenario: Scenario | None = None,
    *,
    seed: int | None = None,
    progress: Callable[[float, float], None] | None = None,
) -> Run:
    """Simulate a measured run like for like: its scenario (or `scenario`, e.g. with a
    calibrated server) driven by what the run actually had (`trace.trace_of`), over the
    run's whole timeline (its duration, or its last record if later).

    Raises ValueError for a run without a stored scenario or with nobody in it.
    """
    if scenario is None:
        if not run.meta.scenario:
            raise ValueError(f"run {run.meta.run_id} stores no scenario to replay")
        scenario = Scenario.model_validate(run.meta.scenario)
    trace = trace_of(run)
    if scenario.duration != trace.duration:  # a load run's -t, and its users' last leaves
        scenario = Scenario.model_validate(
            {**scenario.model_dump(mode="json"), "duration": trace.duration}
        )
    return simulate(scenario, seed=seed, progress=progress, replay=trace)
