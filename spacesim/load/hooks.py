"""Locust's side of a process: command-line options, init / stop hooks, request events,
the loop-lag watch and the clock. Imported by `spacesim.load.users` (after Locust)."""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import time
from pathlib import Path
from typing import Any

from locust import events
from locust.env import Environment
from locust.runners import MasterRunner, WorkerRunner

from spacesim.client.clock import ClockOffset, server_offset
from spacesim.load import bridge
from spacesim.load.api import Context
from spacesim.load.host import ACTION_TIMEOUT, TICK
from spacesim.load.parts import MSG_RECORDS, MSG_SPACE, save_part, write_part
from spacesim.load.shape import posters
from spacesim.load.state import CLOCKS, NETWORKS, SHAPES, scenario, settings, state
from spacesim.load.targets import driver_of
from spacesim.scenario import load_scenario

__all__ = ["REQUEST_TYPE", "ensure", "fire"]

log = logging.getLogger("spacesim.load")

REQUEST_TYPE = "spacesim"
LAG_PROBE = 0.05  # the loop-lag watch's timer (s)


def fire(env: Environment, name: str, seconds: float, exc: BaseException | None = None) -> None:
    """A Locust request event for something measured on the loop."""
    env.events.request.fire(
        request_type=REQUEST_TYPE,
        name=name,
        response_time=seconds * 1000.0,
        response_length=0,
        exception=exc,
        context={},
    )


class _GcWatch:
    """The longest collection of this process's garbage collector since the last read, and
    how many full (generation-2) ones ran: `gc.callbacks` brackets every collection."""

    def __init__(self) -> None:
        self.longest = 0.0
        self.full = 0
        self._start = 0.0
        gc.callbacks.append(self._on_gc)

    def _on_gc(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._start = time.perf_counter()
            return
        self.longest = max(self.longest, time.perf_counter() - self._start)
        self.full += info.get("generation") == 2

    def take(self) -> tuple[float, int]:
        out = (self.longest, self.full)
        self.longest, self.full = 0.0, 0
        return out


async def _watch_lag(env: Environment) -> None:
    """Record how late this process's loop runs a short timer, worst per second.

    A saturated swarm delays every packet it measures (FACTS.md: Locust's own CPU
    warning stays silent when the whole machine is busy), so each run carries the
    swarm's own lag next to the latencies it reports, with what the process did in the
    tick (attrs): ``cpu`` (cores: CPU seconds per second), ``gc_max`` (its collector's
    longest pause, s), ``gc_full`` (full collections) and ``role`` (``stage``,
    ``audience`` or ``all``: `spacesim load --stage-cpus`).

    Each tick also freezes the heap (`gc.freeze`, Python >= 3.7): what lives by now
    (Locust, aiortc, each connected listener's peer connection, thousands of objects
    apiece) moves to the collector's permanent generation, so a full collection
    traverses only what came since. Without it a listeners' process stopped for a full
    collection of its whole heap every few seconds while its audience arrived, 200 ms
    at 300 listeners growing to 690 ms at 623 (bench_fidelity, load-623's loop_lag
    records, one spike every ~3 s: CPython runs a full collection once the long-lived
    objects have grown by a quarter, gcmodule.c ``gc_collect_generations``), and every
    join in flight waited for it, so join times grew with the swarm's audience, not the
    server's (docs/fidelity.md). The server freezes its start-up heap the same way
    (`spacesim serve`). Cost: cyclic garbage older than a tick is kept until the process
    exits, which a load run bounded in time can afford.
    """
    st = state()
    loop = asyncio.get_running_loop()
    watch = _GcWatch()
    worst, window_end = 0.0, loop.time() + TICK
    cpu0, wall0 = time.process_time(), loop.time()
    while True:
        t = loop.time()
        await asyncio.sleep(LAG_PROBE)
        now = loop.time()
        worst = max(worst, now - t - LAG_PROBE)
        if now >= window_end:
            cpu1 = time.process_time()
            longest, full = watch.take()
            attrs = {
                "cpu": (cpu1 - cpu0) / max(now - wall0, 1e-9),
                "gc_max": longest,
                "gc_full": full,
                "role": settings.role,
            }
            st.recorder.add("loop_lag", st.now(), "", f"swarm-{st.pid}", "swarm", worst, attrs)
            fire(env, "loop_lag", worst)
            gc.freeze()
            worst, window_end = 0.0, now + TICK
            cpu0, wall0 = cpu1, now


def ensure(env: Environment, base: str) -> Context:
    """Everything a user needs once per process: the lag watch, the clock (with
    ``--spacesim-clock server`` an offset estimated once), the HTTP session, the context."""
    st = state()
    if st.lag_watch is None:
        st.lag_watch = bridge.spawn(_watch_lag(env))
    if settings.clock == "server" and st.offset is None:

        async def estimate() -> ClockOffset:
            return await server_offset(await st.session(), base)

        st.offset = bridge.run(estimate(), timeout=ACTION_TIMEOUT)
        st.clock = st.offset.clock()
        log.info("clock offset to %s: %+d ns (+-%d ns)", base, st.offset.offset_ns,
                 st.offset.rtt_ns // 2)  # fmt: skip
    bridge.run(st.session(), timeout=ACTION_TIMEOUT)
    return st.context(base, lambda name, s, exc: fire(env, name, s, exc))


def close(obj: Any) -> None:
    """Close a room or session from the gevent side."""
    state().closers.pop(id(obj), None)
    try:
        bridge.run(obj.close(), timeout=ACTION_TIMEOUT + 5)
    except Exception as exc:
        log.warning("close: %r", exc)


@events.init_command_line_parser.add_listener
def _args(parser: Any) -> None:
    parser.add_argument(
        "--scenario",
        type=str,
        env_var="SPACESIM_SCENARIO",
        default="",
        help="spacesim scenario YAML driving the users",
    )
    parser.add_argument(
        "--spacesim-out",
        type=str,
        env_var="SPACESIM_LOAD_OUT",
        default="",
        help="directory for the records (part-<host>-<pid>.parquet; the master's in "
        "distributed mode, where workers send theirs to it)",
    )
    parser.add_argument(
        "--spacesim-shape",
        choices=SHAPES,
        env_var="SPACESIM_SHAPE",
        default="arrivals",
        help="arrivals: users follow the scenario's arrival profile (peak = -u); "
        "steady: -u users from the start",
    )
    parser.add_argument(
        "--spacesim-network",
        choices=NETWORKS,
        env_var="SPACESIM_NETWORK",
        default="scenario",
        help="scenario: each client's path gets the scenario's delay, jitter and loss "
        "(a user-space relay); none: plain loopback",
    )
    parser.add_argument(
        "--spacesim-clock",
        choices=CLOCKS,
        env_var="SPACESIM_CLOCK",
        default="local",
        help="local: latencies on this machine's monotonic clock (all processes on one "
        "machine); server: each process reads the server's clock via an offset estimated "
        "over HTTP (workers on several machines; error <= half the fastest round trip)",
    )


@events.init.add_listener
def _init(environment: Environment, **_: Any) -> None:
    from spacesim.load.users import Host, Poster

    settings.runner = runner = environment.runner
    opts = environment.parsed_options
    settings.shape = getattr(opts, "spacesim_shape", None) or settings.shape
    settings.network = getattr(opts, "spacesim_network", None) or settings.network
    settings.clock = getattr(opts, "spacesim_clock", None) or settings.clock
    path = getattr(opts, "scenario", "") if opts else ""
    if path:
        os.environ["SPACESIM_SCENARIO"] = path
        settings.scenario = load_scenario(path)
    out = getattr(opts, "spacesim_out", "") if opts else ""
    settings.out = Path(out) if out else None
    from spacesim.rtc import native_rx

    native_rx.warm()  # the listeners' receive loop, compiled before any user starts
    Host.fixed_count = scenario().rooms.count
    Poster.fixed_count = posters(scenario())
    if driver_of(environment.host or "http://") != "spacesim":
        Poster.fixed_count = 0  # voice posts are spacesim's HTTP API (run.py notes it)
    if isinstance(runner, MasterRunner):

        def relay(environment: Environment, msg: Any, **_: Any) -> None:
            runner.send_message(MSG_SPACE, msg.data)  # to every worker

        runner.register_message(MSG_SPACE, relay)

        def collect(environment: Environment, msg: Any, **_: Any) -> None:
            if settings.out is None:
                log.warning("records from %s dropped: the master has no --spacesim-out",
                            msg.data.get("name"))  # fmt: skip
                return
            save_part(str(msg.data["name"]), bytes(msg.data["parquet"]))

        runner.register_message(MSG_RECORDS, collect)
    elif isinstance(runner, WorkerRunner):

        def learn(environment: Environment, msg: Any, **_: Any) -> None:
            state().add_space(str(msg.data["space"]))

        runner.register_message(MSG_SPACE, learn)


async def _close_all(objs: list[Any]) -> None:
    await asyncio.gather(*(o.close() for o in objs), return_exceptions=True)
    st = state()
    close_driver = getattr(st.factory, "close", None)  # a third-party target's session
    if close_driver is not None:
        try:
            await close_driver()
        except Exception as exc:
            log.warning("closing the target's driver: %r", exc)
    if st.http is not None:
        await st.http.close()
        st.http = None


@events.test_start.add_listener
def _start(environment: Environment, **_: Any) -> None:
    state().start_clock()


@events.test_stop.add_listener
def _stop(environment: Environment, **_: Any) -> None:
    st = state()
    objs = list(st.closers.values())
    st.closers.clear()
    if bridge.started():
        try:
            bridge.run(_close_all(objs), timeout=ACTION_TIMEOUT + 5)
        except Exception as exc:
            log.warning("closing sessions: %r", exc)
    write_part()


@events.quitting.add_listener
def _quitting(environment: Environment, **_: Any) -> None:
    write_part()
