"""What one Locust process holds: its settings, records, clock and behaviour context.

Rebuilt in a forked child (keyed by pid). No Locust or gevent import: the `threading`
event below is gevent's once Locust has monkey-patched the process.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import random
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from spacesim.behaviour import PyRng
from spacesim.client.clock import ClockOffset
from spacesim.load.api import ClientFactory, Context, Report, SpaceClient
from spacesim.load.host import ACTION_TIMEOUT
from spacesim.load.targets import client_factory
from spacesim.results import Recorder, RunMeta
from spacesim.scenario import Scenario, load_scenario

__all__ = [
    "CLOCKS",
    "NETWORKS",
    "SHAPES",
    "JoinPacer",
    "Settings",
    "State",
    "scenario",
    "settings",
    "state",
]

CLOCKS = ("local", "server")
SHAPES = ("arrivals", "steady")
NETWORKS = ("scenario", "none")


@dataclass
class Settings:
    """The run's options (command line or environment), the same in every process."""

    shape: str = os.environ.get("SPACESIM_SHAPE", "arrivals")
    network: str = os.environ.get("SPACESIM_NETWORK", "scenario")
    clock: str = os.environ.get("SPACESIM_CLOCK", "local")
    out: Path | None = None
    runner: Any = None
    node: str = socket.gethostname()
    scenario: Scenario | None = None
    # users per second this process is given new users at: the shape's rate (a local
    # runner); None (no pacing) in a master's workers, which the shape does not run in
    spawn_rate: float | None = None
    # "all"; or, with `spacesim load --stage-cpus`, "stage" (the hosts' process) or
    # "audience" (everyone else's), which learn the spaces through `spaces_file`
    role: str = os.environ.get("SPACESIM_ROLE", "all")
    spaces_file: str | None = os.environ.get("SPACESIM_SPACES_FILE") or None


settings = Settings()


class JoinPacer:
    """Spaces new users' first joins evenly at the spawn rate.

    Locust dispatches floor(rate) users at once every floor(rate) / rate seconds
    (locust/dispatch.py, ``UsersDispatcher._user_count_per_dispatch_iteration``), and
    the users spawned before the host's space is ready all start when it is: without
    pacing, ``-r 25`` is a burst of 25 simultaneous joins each second, each queueing
    behind the others' connection setup, where the simulator has one every 40 ms.
    """

    def __init__(self) -> None:
        self._next = float("-inf")

    def delay(self, now: float, rate: float | None) -> float:
        """Seconds a user arriving at `now` waits for its slot (0 without a rate)."""
        if not rate or rate <= 0:
            return 0.0
        slot = max(now, self._next)
        self._next = slot + 1.0 / rate
        return slot - now


def scenario() -> Scenario:
    if settings.scenario is None:
        path = os.environ.get("SPACESIM_SCENARIO")
        if not path:
            raise RuntimeError("no scenario: pass --scenario FILE or set SPACESIM_SCENARIO")
        settings.scenario = load_scenario(path)
    return settings.scenario


def agree_t0(path: Path) -> float:
    """The run's time zero, the same in every process of a run (the stage's, the
    audience's, each worker's): the first to ask writes its clock to `path`, the others
    read it."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        return read_t0(path, wait=5.0) or time.time()
    t0 = time.time()
    with os.fdopen(fd, "w") as f:
        f.write(repr(t0))
    return t0


def read_t0(path: Path, wait: float = 0.0) -> float | None:
    """The time zero `agree_t0` wrote at `path` (waiting up to `wait` s for its writer to
    finish); None if there is none."""
    until = time.monotonic() + wait
    while True:
        with contextlib.suppress(OSError, ValueError):
            return float(path.read_text(encoding="utf-8"))
        if time.monotonic() >= until:
            return None
        time.sleep(0.005)


class State:
    """One Locust process: records, clock, HTTP session, the behaviour's `Context`."""

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.run_id = os.environ.get("SPACESIM_RUN_ID") or RunMeta.new_run_id()
        self.t0 = float(os.environ.get("SPACESIM_T0") or time.time())
        self.recorder = Recorder(self.run_id, "load")
        self.lag_watch: Any = None
        # What speakers' marks and listeners' arrivals are read on: this machine's
        # monotonic clock, or with --spacesim-clock server the server's (an offset).
        self.clock: Callable[[], int] = time.monotonic_ns
        self.offset: ClockOffset | None = None
        self.space_ready = threading.Event()
        self.pacer = JoinPacer()
        self.closers: dict[int, Any] = {}  # id -> object with async close()
        self.http: aiohttp.ClientSession | None = None
        self.base = ""
        self.spaces: list[str] = []  # shared with the context (workers learn them early)
        self.written = -1
        self._ctx: Context | None = None
        self.factory: ClientFactory | None = None  # the target's driver (made with the context)

    def now(self) -> float:
        return time.time() - self.t0

    def start_clock(self) -> None:
        """Time zero is when the swarm starts, as in the simulator, not when ``spacesim
        load`` started Locust: its processes take seconds to import and start (~11 s on
        a slow 2-vCPU VM with two pinned processes, 2026-12-07), which put every record
        that much later than the scenario's ``duration`` and a timeline's times (a
        space's ``ends_at``) before the first user. Called at Locust's ``test_start``
        (fired in each process before its users spawn)."""
        path = os.environ.get("SPACESIM_T0_FILE")
        if path:
            self.t0 = agree_t0(Path(path))

    def context(self, base: str, report: Report) -> Context:
        """The behaviour's context (made once, after the clock is settled)."""
        if self._ctx is None:
            self.base = base
            sc = scenario()
            self._ctx = Context(
                sc,
                self._client,
                self.recorder,
                report,
                t0=self.t0,
                clock=self.clock,
                offset_ns=self.offset.offset_ns if self.offset is not None else 0,
                network=settings.network != "none",
                tag=str(self.pid),
                ids=itertools.count(),
                rng=PyRng(random.Random()),
                spaces=self.spaces,
            )
        return self._ctx

    def _client(self, user: str, *, moderator: bool = False) -> SpaceClient:
        """A client of the target's driver (`spacesim.load.targets`: the URL's scheme)."""
        if self.factory is None:
            assert self.http is not None, "call State.session() on the loop first"
            self.factory = client_factory(self.base, self.http)
        return self.factory(user, moderator=moderator)

    def add_space(self, space: str) -> None:
        if space not in self.spaces:
            self.spaces.append(space)
            if settings.spaces_file and settings.role == "stage":
                with open(settings.spaces_file, "a", encoding="utf-8") as f:
                    f.write(space + "\n")  # one short write: whole lines for the reader
        self.space_ready.set()

    def wait_for_space(self, timeout: float, sleep: Callable[[float], Any]) -> bool:
        """True once a space is known: opened here, told by the master, or (the
        audience of a split run) written to `settings.spaces_file` by the hosts' process."""
        deadline = time.monotonic() + timeout
        while settings.role == "audience" and settings.spaces_file:
            if self.space_ready.is_set():
                return True
            with contextlib.suppress(FileNotFoundError):
                text = Path(settings.spaces_file).read_text(encoding="utf-8")
                for line in text.splitlines():
                    if line.strip():
                        self.add_space(line.strip())
            if self.space_ready.is_set() or time.monotonic() > deadline:
                return self.space_ready.is_set()
            sleep(0.2)
        return self.space_ready.wait(timeout=max(deadline - time.monotonic(), 0.0))

    async def session(self) -> aiohttp.ClientSession:
        if self.http is None or self.http.closed:
            self.http = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0),
                timeout=aiohttp.ClientTimeout(total=ACTION_TIMEOUT),
            )
        return self.http


_state: State | None = None


def state() -> State:
    """This process's state (new after a fork)."""
    global _state
    if _state is None or _state.pid != os.getpid():
        _state = State()
    return _state
