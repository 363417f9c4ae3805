"""Locust users per role, driven by a scenario: a `Host` per room and `Listener` s.

Import this from a locustfile *after* ``import locust`` (gevent must patch first).

* `Host` (``fixed_count`` = ``rooms.count``): creates a space, publishes a packaged
  speech clip (`SpeakerTrack`), brings ``speaking.active_speakers - 1`` extra
  speakers on stage by invitation (each publishing a clip), watches the space's
  event stream and answers each raised hand after Exp(``audience.host_response_time``)
  with probability ``audience.approval`` of approving; approved speakers are demoted
  after Exp(``audience.speaker_stint``). hand_wait = server time of the grant minus
  server time of the raise (both from the event stream). Its moderation desk of
  ``audience.moderators`` resolves each report after Exp(``audience.review_time``)
  (dismiss / remove / block in ``audience.outcomes``' shares). When the event stream
  comes back after breaking (a server restart), it rejoins its publishers.
* `Listener`: each task run is one listening session under a fresh user id: join with
  audio (`connect_audio`; a lite `ListenerStats`, or with ``load.probe_fraction`` a
  `ProbeStats` that also buffers and decodes), stay a session length drawn from
  ``session``, raise hands, react and report at the ``audience`` rates, leave. A
  connection that fails or goes silent is rejoined (``reconnected``).
* `ScenarioShape`: the number of users follows the scenario's arrival profile
  (`Scenario.audience_curve`), peaking at ``-u``; ``--spacesim-shape steady`` holds ``-u``.
* Every client's path gets the scenario's ``network`` (user-space relays), unless
  ``--spacesim-network none``.

Locust request events (request_type "spacesim"): ``join``, ``first_audio``,
``audio_latency`` and ``mouth_to_ear`` (p50 of each listener's last 1 s window),
``hand_wait``, ``report_resolution``, ``reconnect``, ``loop_lag`` and the actions.
Records (source ``load``) go to a per-process `Recorder`, written at test stop to
``OUT/part-<host>-<pid>.parquet`` (``--spacesim-out`` / ``SPACESIM_LOAD_OUT``);
`spacesim.load.run` merges the parts into one run directory. In distributed mode
(``--processes``, or ``--master`` / ``--worker`` on several machines) workers send
their records to the master as Locust messages and the master writes every part into
its own ``--spacesim-out``: no shared disk. Workers on several machines need
``--spacesim-clock server`` for latencies.
"""

from __future__ import annotations

import asyncio
import io
import itertools
import logging
import math
import os
import random
import socket
import statistics
import time
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gevent
import gevent.event
from locust import LoadTestShape, User, constant, events, task  # gevent patches first
from locust.env import Environment
from locust.exception import StopUser
from locust.runners import MasterRunner, WorkerRunner

# isort: split
import aiohttp

from spacesim.client.clock import ClockOffset, server_offset
from spacesim.client.listener import ListenerStats
from spacesim.client.netem import Impairment
from spacesim.client.probe import ProbeStats
from spacesim.client.session import AudioLink, ClientError, RoomClient, connect_audio
from spacesim.client.speaker import SpeakerTrack, clip_names, load_clip
from spacesim.load import bridge
from spacesim.load.shape import DEFAULT_LISTENERS, scaled_users
from spacesim.results import Recorder, RunMeta
from spacesim.scenario import Scenario, load_scenario

__all__ = ["Host", "Listener", "ScenarioShape", "state"]

log = logging.getLogger("spacesim.load")

REQUEST_TYPE = "spacesim"
TICK = 1.0  # seconds between a listener's measurement windows
JOIN_TIMEOUT = 20.0
ACTION_TIMEOUT = 10.0
FIRST_AUDIO_TIMEOUT = 10.0
LATENCY_SAMPLES = 10  # audio_latency records per listener per window
EMOJIS = ("💯", "👍", "👏", "😂", "❤️", "🔥", "🙏", "🎉")
MSG_SPACE = "spacesim_space"
MSG_RECORDS = "spacesim_records"  # a worker's records, to the master that writes them
GIVE_UP_AFTER = 20  # refused joins, none accepted, before this process stops the run
STALL = 3.0  # seconds without audio after which a listener's connection counts as dropped
LAG_PROBE = 0.05  # the loop-lag watch's timer (s)


# --------------------------------------------------------------------------- per process


class _State:
    """What one Locust process holds; rebuilt in a forked child (keyed by pid)."""

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.run_id = os.environ.get("SPACESIM_RUN_ID") or RunMeta.new_run_id()
        self.t0 = float(os.environ.get("SPACESIM_T0") or time.time())
        self.recorder = Recorder(self.run_id, "load")
        self.spaces: list[str] = []
        self.active: dict[str, str] = {}  # listener user -> space, for reports about users
        self.joined = 0
        self.refused = 0
        self.lag_watch: Any = None
        # What speakers' marks and listeners' arrivals are read on: this machine's
        # monotonic clock, or with --spacesim-clock server the server's (an offset).
        self.clock: Callable[[], int] = time.monotonic_ns
        self.offset: ClockOffset | None = None
        self.space_ready = gevent.event.Event()
        self.closers: dict[int, Any] = {}  # id -> object with async close()
        self.ids = itertools.count()
        self.rng = random.Random()
        self.http: aiohttp.ClientSession | None = None
        self.written = -1

    def now(self) -> float:
        return time.time() - self.t0

    def add_space(self, space: str) -> None:
        if space not in self.spaces:
            self.spaces.append(space)
        self.space_ready.set()

    async def session(self) -> aiohttp.ClientSession:
        if self.http is None or self.http.closed:
            self.http = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0),
                timeout=aiohttp.ClientTimeout(total=ACTION_TIMEOUT),
            )
        return self.http


_state: _State | None = None
_scenario: Scenario | None = None
_out: Path | None = None
_shape_mode = os.environ.get("SPACESIM_SHAPE", "arrivals")
_network_mode = os.environ.get("SPACESIM_NETWORK", "scenario")
_clock_mode = os.environ.get("SPACESIM_CLOCK", "local")
_runner: Any = None
_node = socket.gethostname()
CLOCKS = ("local", "server")
SHAPES = ("arrivals", "steady")
NETWORKS = ("scenario", "none")


def state() -> _State:
    """This process's state (new after a fork)."""
    global _state
    if _state is None or _state.pid != os.getpid():
        _state = _State()
    return _state


def scenario() -> Scenario:
    global _scenario
    if _scenario is None:
        path = os.environ.get("SPACESIM_SCENARIO")
        if not path:
            raise RuntimeError("no scenario: pass --scenario FILE or set SPACESIM_SCENARIO")
        _scenario = load_scenario(path)
    return _scenario


def fire(env: Environment, name: str, seconds: float, exc: BaseException | None = None) -> None:
    env.events.request.fire(
        request_type=REQUEST_TYPE,
        name=name,
        response_time=seconds * 1000.0,
        response_length=0,
        exception=exc,
        context={},
    )


def _refusal(exc: BaseException) -> dict[str, str]:
    """attrs of a join_refused record: the protocol's code (or the error's type) and why."""
    if isinstance(exc, ClientError):
        return {"reason": exc.code, "detail": exc.reason[:200]}
    return {"reason": type(exc).__name__, "detail": str(exc)[:200]}


def _exp(rng: random.Random, mean: float) -> float:
    return rng.expovariate(1.0 / mean) if mean > 0 else 0.0


def _path(rng: random.Random) -> tuple[Impairment, Impairment] | None:
    """A client's network path drawn from the scenario's mix (None: plain loopback).

    Both directions get ``rtt / 2`` plus Exp(``jitter``) and ``loss``, as in the
    simulator; `spacesim.client.netem` relays the client's datagrams in user space.
    """
    if _network_mode == "none":
        return None
    profiles = scenario().network
    p = rng.choices(profiles, weights=[n.share for n in profiles])[0]
    if p.rtt <= 0 and p.jitter <= 0 and p.loss <= 0:
        return None
    up, down = (
        Impairment(delay=p.rtt / 2, jitter=p.jitter, loss=p.loss, seed=rng.getrandbits(32))
        for _ in range(2)
    )
    return up, down


def _path_attrs(path: tuple[Impairment, Impairment] | None) -> dict[str, float]:
    if path is None:
        return {"rtt": 0.0, "jitter": 0.0, "loss": 0.0}
    return {"rtt": 2 * path[0].delay, "jitter": path[0].jitter, "loss": path[0].loss}


async def _watch_lag(env: Environment) -> None:
    """Record how late this process's loop runs a short timer, worst per second.

    A saturated swarm delays every packet it measures (FACTS.md: Locust's own CPU
    warning stays silent when the whole machine is busy), so each run carries the
    swarm's own lag next to the latencies it reports.
    """
    st = state()
    loop = asyncio.get_running_loop()
    worst, window_end = 0.0, loop.time() + TICK
    while True:
        t = loop.time()
        await asyncio.sleep(LAG_PROBE)
        now = loop.time()
        worst = max(worst, now - t - LAG_PROBE)
        if now >= window_end:
            st.recorder.add("loop_lag", st.now(), "", f"swarm-{st.pid}", "swarm", worst)
            fire(env, "loop_lag", worst)
            worst, window_end = 0.0, now + TICK


def _ensure_clock(base: str) -> None:
    """With ``--spacesim-clock server``, estimate this process's offset once."""
    st = state()
    if _clock_mode != "server" or st.offset is not None:
        return

    async def estimate() -> ClockOffset:
        return await server_offset(await st.session(), base)

    st.offset = bridge.run(estimate(), timeout=ACTION_TIMEOUT)
    st.clock = st.offset.clock()
    log.info("clock offset to %s: %+d ns (+-%d ns)", base, st.offset.offset_ns,
             st.offset.rtt_ns // 2)  # fmt: skip


def _ensure_lag_watch(env: Environment) -> None:
    st = state()
    if st.lag_watch is None:
        st.lag_watch = bridge.spawn(_watch_lag(env))


async def _connected(link: AudioLink, timeout: float) -> None:
    """Wait until ICE + DTLS are up (``connect_audio`` returns after the answer)."""
    deadline = time.monotonic() + timeout
    while link.pc.connectionState != "connected":
        if link.pc.connectionState in ("failed", "closed"):
            raise ConnectionError(f"connection {link.pc.connectionState}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"not connected after {timeout} s")
        await asyncio.sleep(0.01)


# --------------------------------------------------------------------------- host


class _Room:
    """A host's space, its stage speakers and its moderation (runs on the bridge loop)."""

    def __init__(self, env: Environment, base: str, sc: Scenario) -> None:
        st = state()
        self.env = env
        self.base = base
        self.sc = sc
        self.n = next(st.ids)
        self.user = f"host-{st.pid}-{self.n}"
        self.space = ""
        self.links: list[AudioLink] = []
        self.clients: list[RoomClient] = []
        self.raised: dict[str, float] = {}  # participant -> server t of the raise
        self.tasks: set[asyncio.Task[Any]] = set()
        self.rng = random.Random(sc.seed * 1_000_003 + st.pid * 1009 + self.n)
        self.closed = False
        self.joined: dict[str, float] = {}  # user -> run time joined
        # The moderation desk: `audience.moderators` review reports, an M/M/c queue as
        # in the simulator; each report takes Exp(`review_time`).
        self.desk = asyncio.Semaphore(sc.audience.moderators)
        self.moderator: RoomClient | None = None

    def _task(self, coro: Any) -> None:
        t = asyncio.get_running_loop().create_task(coro)
        self.tasks.add(t)
        t.add_done_callback(self.tasks.discard)

    def _track(self, k: int) -> SpeakerTrack:
        names = clip_names()
        sender = zlib.crc32(f"{self.user}/{k}".encode())
        return SpeakerTrack(
            load_clip(names[(self.n + k) % len(names)]), sender, clock=state().clock
        )

    async def start(self) -> None:
        st = state()
        http = await st.session()
        host = RoomClient(self.base, self.user, http)
        self.clients.append(host)
        t = time.monotonic()
        self.space = await host.create_space(f"load {self.sc.name}", self.sc.rooms.who_may_speak)
        self.moderator = RoomClient(self.base, f"mod-{st.pid}-{self.n}", http, moderator=True)
        path = _path(self.rng)
        link = await connect_audio(host, self.space, _ignore, publish=self._track(0), impair=path)
        self.links.append(link)
        await _connected(link, JOIN_TIMEOUT)
        self.joined[self.user] = st.now()
        st.recorder.add(
            "participant_joined",
            st.now(),
            self.space,
            self.user,
            "host",
            time.monotonic() - t,
            _path_attrs(path),
        )
        self._task(self._watch(host))
        for k in range(1, self.sc.speaking.active_speakers):
            await self._add_speaker(host, k)

    async def _add_speaker(self, host: RoomClient, k: int) -> None:
        st = state()
        who = f"{self.user}-spk{k}"
        speaker = RoomClient(self.base, who, host.http)
        self.clients.append(speaker)
        t = time.monotonic()
        path = _path(self.rng)
        link = await connect_audio(
            speaker, self.space, _ignore, publish=self._track(k), impair=path
        )
        self.links.append(link)
        await _connected(link, JOIN_TIMEOUT)
        await host.act(self.space, "invite", target=who)
        await speaker.act(self.space, "accept_invite")
        now = self.joined[who] = st.now()
        took = time.monotonic() - t
        st.recorder.add(
            "participant_joined", now, self.space, who, "speaker", took, _path_attrs(path)
        )
        st.recorder.add("speaker_granted", now, self.space, who, "speaker")

    async def _watch(self, host: RoomClient) -> None:
        """Follow the space's events; after the stream breaks (e.g. the server restarted),
        reopen it and rejoin every publisher, whose media died with the stream."""
        broke = False
        while not self.closed:
            try:
                async for ev in host.events(self.space):
                    if broke:
                        broke = False
                        await self._rejoin_media()
                    if ev.get("type") == "event":
                        self._on_event(ev, host)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the stream broke: reconnect unless closing
                log.warning("event stream of %s: %r", self.space, exc)
            broke = True
            if not self.closed:
                await asyncio.sleep(1.0)

    async def _rejoin_media(self) -> None:
        """Join again with each publisher (the server keeps roles across a rejoin)."""
        st = state()
        for k, (client, link) in enumerate(zip(self.clients, self.links, strict=False)):
            t = time.monotonic()
            await _quiet(link.close())
            try:
                path = _path(self.rng)
                new = await connect_audio(
                    client, self.space, _ignore, publish=self._track(k), impair=path
                )
                self.links[k] = new
                await _connected(new, JOIN_TIMEOUT)
            except Exception as exc:
                fire(self.env, "reconnect", time.monotonic() - t, exc)
                continue
            took = time.monotonic() - t
            fire(self.env, "reconnect", took)
            role = "host" if k == 0 else "speaker"
            st.recorder.add("reconnected", st.now(), self.space, client.user, role, took)

    def _on_event(self, ev: dict[str, Any], host: RoomClient) -> None:
        st = state()
        kind, who, t = ev.get("kind"), str(ev.get("participant") or ""), float(ev.get("t", 0))
        if kind == "hand_raised":
            self.raised[who] = t
            self._task(self._decide(host, who))
        elif kind == "speaker_granted" and who in self.raised:
            wait = t - self.raised.pop(who)
            st.recorder.add("speaker_granted", st.now(), self.space, who, "listener", wait)
            fire(self.env, "hand_wait", wait)
        elif kind == "hand_declined" and who in self.raised:
            wait = t - self.raised.pop(who)
            st.recorder.add("hand_declined", st.now(), self.space, who, "listener", wait)
            fire(self.env, "hand_wait", wait)
        elif kind in ("hand_lowered", "participant_left", "removed"):
            self.raised.pop(who, None)
        elif kind == "report_filed":
            attrs = ev.get("attrs") or {}
            report = attrs.get("report_id")
            target = who if attrs.get("target_type") == "user" else None
            if report is not None:
                self._task(self._review(int(report), target))

    async def _review(self, report: int, target: str | None) -> None:
        """A moderator takes the report when free, reviews it, and applies an outcome."""
        st = state()
        filed = st.now()
        aud = self.sc.audience
        async with self.desk:
            queued = st.now() - filed
            await asyncio.sleep(_exp(self.rng, aud.review_time))
            action = "dismiss"
            if target is not None:
                u = self.rng.random()
                if u < aud.outcomes.remove:
                    action = "remove"
                elif u < aud.outcomes.remove + aud.outcomes.block:
                    action = "block"
            if self.closed or self.moderator is None:
                return
            t = time.monotonic()
            try:
                await self.moderator.moderate(self.space, action, target, report)
            except ClientError as exc:  # e.g. the target left and was already gone
                fire(self.env, "moderate", time.monotonic() - t, exc)
                return
        fire(self.env, "moderate", time.monotonic() - t)
        fire(self.env, "report_resolution", st.now() - filed)
        now = st.now()
        attrs = {"action": action, "queue_wait": queued, "report_id": report}
        st.recorder.add("report_resolved", now, self.space, target or "", "", now - filed, attrs)
        if action in ("remove", "block") and target is not None:
            st.recorder.add("removed" if action == "remove" else "blocked", now, self.space,
                            target, "listener", attrs=attrs)  # fmt: skip

    async def _decide(self, host: RoomClient, who: str) -> None:
        aud = self.sc.audience
        await asyncio.sleep(_exp(self.rng, aud.host_response_time))
        if who not in self.raised or self.closed:
            return
        approve = self.rng.random() < aud.approval
        try:
            await host.act(self.space, "approve" if approve else "decline", target=who)
        except ClientError as exc:
            if approve and exc.code == "stage_full":
                await _quiet(host.act(self.space, "decline", target=who))
            return
        if approve:
            await asyncio.sleep(_exp(self.rng, aud.speaker_stint))
            if not self.closed:
                await _quiet(host.act(self.space, "demote", target=who))

    async def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        st = state()
        for t in list(self.tasks):
            t.cancel()
        for client in reversed(self.clients):
            if self.space:
                await _quiet(client.leave(self.space))
        for link in self.links:
            await _quiet(link.close())
        for user, at in self.joined.items():
            role = "host" if user == self.user else "speaker"
            st.recorder.add("participant_left", st.now(), self.space, user, role, st.now() - at)


def _ignore(slot: int, packet: bytes, arrival_ns: int) -> None:
    return None


async def _quiet(coro: Any) -> None:
    try:
        await asyncio.wait_for(coro, ACTION_TIMEOUT)
    except Exception as exc:
        log.debug("ignored: %r", exc)


class Host(User):
    """One per room (``fixed_count`` is set to ``rooms.count`` from the scenario)."""

    fixed_count = 1
    wait_time = constant(1)

    def on_start(self) -> None:
        _ensure_lag_watch(self.environment)
        _ensure_clock(self.host or "")
        self.room = _Room(self.environment, self.host or "", scenario())
        st = state()
        st.closers[id(self.room)] = self.room
        t = time.monotonic()
        try:
            bridge.run(self.room.start(), timeout=JOIN_TIMEOUT + 10)
        except BaseException as exc:
            fire(self.environment, "host_start", time.monotonic() - t, exc)
            st.recorder.add(
                "join_refused", st.now(), self.room.space, self.room.user, "host",
                attrs=_refusal(exc),
            )  # fmt: skip
            _write_part()  # the run's summary says why, even if nothing else happens
            _close(self.room)
            if isinstance(exc, ClientError) and 400 <= exc.status < 500:
                # A refusal will not go away by retrying: stop the run, say why once.
                log.error("the host could not open a space, stopping the run: %s", exc)
                if self.environment.runner is not None:
                    self.environment.runner.quit()
                raise StopUser() from None
            raise
        fire(self.environment, "host_start", time.monotonic() - t)
        st.add_space(self.room.space)
        runner = self.environment.runner
        if isinstance(runner, WorkerRunner):
            runner.send_message(MSG_SPACE, {"space": self.room.space})

    @task
    def keep_room(self) -> None:
        pass  # the room runs on the bridge loop; nothing to do per tick

    def on_stop(self) -> None:
        _close(self.room)


def _close(obj: Any) -> None:
    st = state()
    st.closers.pop(id(obj), None)
    try:
        bridge.run(obj.close(), timeout=ACTION_TIMEOUT + 5)
    except Exception as exc:
        log.warning("close: %r", exc)


# --------------------------------------------------------------------------- listener


class _ListenerSession:
    """One listening session: join, measure, act, leave (coroutines run on the loop)."""

    def __init__(
        self, base: str, space: str, user: str, path: tuple[Impairment, Impairment] | None
    ) -> None:
        self.base = base
        self.space = space
        self.user = user
        self.path = path
        probe = state().rng.random() < scenario().load.probe_fraction
        st = state()
        kind = ProbeStats if probe else ListenerStats
        offset = st.offset.offset_ns if st.offset is not None else 0
        self.stats: ListenerStats = kind(clock=st.clock, offset_ns=offset)
        self.quality = (0, 0)  # a probe's (frames, audible) at the last window
        self.link: AudioLink | None = None
        self.client: RoomClient | None = None
        self.joined_at: float | None = None
        self.closed = False
        self.received = 0
        self.lost = 0
        self.last_audio: float | None = None  # monotonic time of the last window with audio

    async def join(self) -> None:
        self.client = RoomClient(self.base, self.user, await state().session())
        self.link = await connect_audio(
            self.client,
            self.space,
            self.stats.on_rtp,
            impair=self.path,
            read_every=self.stats.read_every,
        )
        await _connected(self.link, JOIN_TIMEOUT)

    def gone(self) -> bool:
        """The connection closed or failed, or audio stopped (speakers here never pause)."""
        if self.link is None or self.link.pc.connectionState in ("closed", "failed"):
            return True
        return self.last_audio is not None and time.monotonic() - self.last_audio > STALL

    async def reconnect(self) -> None:
        """Join again as the same user: the server keeps the role and reconnects audio."""
        assert self.client is not None
        if self.link is not None:
            await _quiet(self.link.close())
        self.link = None
        self.last_audio = None
        await self.join()

    async def act(self, action: str, **fields: str) -> None:
        assert self.client is not None
        await self.client.act(self.space, action, **fields)

    def window(self) -> tuple[list[float], int, int]:
        """Latencies of packets since the last call, and received / lost in between."""
        lat: list[float] = []
        for s in self.stats.senders.values():
            lat += s.latencies
            s.latencies = []
        received, lost = self.stats.totals()
        d_recv, d_lost = received - self.received, lost - self.lost
        self.received, self.lost = received, lost
        if d_recv:
            self.last_audio = time.monotonic()
        return lat, d_recv, d_lost

    def heard(self) -> tuple[list[tuple[float, float]], int, int]:
        """A probe's (buffer hold, mouth-to-ear) per frame played since the last call,
        and the frames decoded / audible in between (nothing for a lite listener)."""
        if not isinstance(self.stats, ProbeStats):
            return [], 0, 0
        played, self.stats.playout = self.stats.playout, []
        frames, audible, _ = self.stats.quality()
        d_frames, d_audible = frames - self.quality[0], audible - self.quality[1]
        self.quality = (frames, audible)
        return played, d_frames, d_audible

    async def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self.client is not None and self.link is not None:
            await _quiet(self.client.leave(self.space))
        if self.link is not None:
            await _quiet(self.link.close())


class Listener(User):
    """Lite listener sessions, back to back (one per task run)."""

    weight = 1
    wait_time = constant(0)

    @task
    def listen(self) -> None:
        _ensure_lag_watch(self.environment)
        _ensure_clock(self.host or "")
        st = state()
        sc = scenario()
        env = self.environment
        if not st.space_ready.wait(timeout=30):
            fire(env, "join", 0.0, RuntimeError("no space was created (no Host user?)"))
            gevent.sleep(1)
            return
        n = next(st.ids)
        space = st.spaces[n % len(st.spaces)]
        sess = _ListenerSession(self.host or "", space, f"l-{st.pid}-{n}", _path(st.rng))
        st.closers[id(sess)] = sess
        start_ns = st.clock()  # the clock first_audio_ns is read on
        try:
            bridge.run(sess.join(), timeout=JOIN_TIMEOUT + 5)
        except Exception as exc:
            took = (st.clock() - start_ns) / 1e9
            fire(env, "join", took, exc)
            st.recorder.add(
                "join_refused", st.now(), space, sess.user, "listener", attrs=_refusal(exc)
            )
            _close(sess)
            st.refused += 1
            if st.refused >= GIVE_UP_AFTER and not st.joined and env.runner is not None:
                log.error("%d joins refused and none accepted (%s): stopping", st.refused, exc)
                _write_part()
                env.runner.quit()
            gevent.sleep(1)
            return
        join_s = (st.clock() - start_ns) / 1e9
        sess.joined_at = st.now()
        st.joined += 1
        fire(env, "join", join_s)
        st.recorder.add(
            "participant_joined",
            sess.joined_at,
            space,
            sess.user,
            "listener",
            join_s,
            _path_attrs(sess.path),
        )
        st.active[sess.user] = space
        try:
            self._stay(
                sess,
                start_ns,
                sc.session.draw(lambda: st.rng.expovariate(1.0), lambda: st.rng.gauss(0.0, 1.0)),
            )
        finally:
            st.active.pop(sess.user, None)
            self._flush(sess)
            _close(sess)
            st.recorder.add(
                "participant_left",
                st.now(),
                space,
                sess.user,
                "listener",
                st.now() - (sess.joined_at or 0.0),
            )

    def _stay(self, sess: _ListenerSession, start_ns: int, length: float) -> None:
        st = state()
        aud = scenario().audience
        env = self.environment
        end = time.monotonic() + length
        first_reported = False
        raised = False
        while not first_reported or time.monotonic() < end:
            gevent.sleep(min(TICK, max(end - time.monotonic(), 0.05)))
            if not first_reported:
                if sess.stats.first_audio_ns is not None:
                    v = (sess.stats.first_audio_ns - start_ns) / 1e9
                    fire(env, "first_audio", v)
                    st.recorder.add("first_audio", st.now(), sess.space, sess.user, "listener", v)
                    first_reported = True
                elif state().clock() - start_ns > FIRST_AUDIO_TIMEOUT * 1e9:
                    fire(env, "first_audio", FIRST_AUDIO_TIMEOUT, TimeoutError("no audio heard"))
                    first_reported = True
            self._flush(sess)
            if time.monotonic() >= end:
                break
            if sess.gone() and not self._reconnect(sess):
                break  # removed, blocked or the space ended: the session is over
            if not raised and _happens(st.rng, aud.hand_raise_rate, TICK):
                raised = self._act(sess, "raise_hand")
                if raised:
                    st.recorder.add("hand_raised", st.now(), sess.space, sess.user, "listener")
            if _happens(st.rng, aud.reaction_rate, TICK) and self._act(
                sess, "react", emoji=st.rng.choice(EMOJIS)
            ):
                st.recorder.add("reaction", st.now(), sess.space, sess.user, "listener", 1.0)
            if _happens(st.rng, aud.report_rate, TICK):
                self._report(sess)

    def _reconnect(self, sess: _ListenerSession) -> bool:
        """Rejoin after a dropped connection; False when the server will not have us back."""
        st = state()
        t = time.monotonic()
        try:
            bridge.run(sess.reconnect(), timeout=JOIN_TIMEOUT + 5)
        except ClientError as exc:
            fire(self.environment, "reconnect", time.monotonic() - t, exc)
            return exc.status not in (403, 404, 409)  # removed, blocked, gone, ended
        except Exception as exc:  # the server may still be coming back: retry next tick
            fire(self.environment, "reconnect", time.monotonic() - t, exc)
            return True
        took = time.monotonic() - t
        fire(self.environment, "reconnect", took)
        st.recorder.add("reconnected", st.now(), sess.space, sess.user, "listener", took)
        return True

    def _report(self, sess: _ListenerSession) -> None:
        """Report the space, or another listener in it (as the simulator's audience does)."""
        st = state()
        about_space = st.rng.random() < scenario().audience.space_report_share
        others = [u for u, sp in st.active.items() if sp == sess.space and u != sess.user]
        target = None if about_space or not others else st.rng.choice(others)
        fields = {"reason": "load test"} | ({"target": target} if target else {})
        if self._act(sess, "report", **fields):
            attrs = {"target_type": "user" if target else "space"}
            st.recorder.add(
                "report_filed", st.now(), sess.space, target or "", "listener", attrs=attrs
            )

    def _act(self, sess: _ListenerSession, action: str, **fields: str) -> bool:
        t = time.monotonic()
        try:
            bridge.run(sess.act(action, **fields), timeout=ACTION_TIMEOUT)
        except Exception as exc:
            fire(self.environment, action, time.monotonic() - t, exc)
            return False
        fire(self.environment, action, time.monotonic() - t)
        return True

    def _flush(self, sess: _ListenerSession) -> None:
        """One measurement window: audio_latency samples, packets received / lost."""
        st = state()
        lat, received, lost = sess.window()
        now = st.now()
        add = st.recorder.add
        if lat:
            fire(self.environment, "audio_latency", statistics.median(lat))
            step = max(1, len(lat) // LATENCY_SAMPLES)
            for v in lat[::step][:LATENCY_SAMPLES]:
                add("audio_latency", now, sess.space, sess.user, "listener", v)
        if received or lost:
            add("packets_received", now, sess.space, sess.user, "listener", received)
            add("packets_lost", now, sess.space, sess.user, "listener", lost)
        played, frames, audible = sess.heard()
        if played:
            fire(self.environment, "mouth_to_ear", statistics.median(m for _, m in played))
            step = max(1, len(played) // LATENCY_SAMPLES)
            for hold, m2e in played[::step][:LATENCY_SAMPLES]:
                add("client_buffer", now, sess.space, sess.user, "listener", hold)
                add("mouth_to_ear", now, sess.space, sess.user, "listener", m2e)
        if frames:
            add("audible_fraction", now, sess.space, sess.user, "listener", audible / frames)


def _happens(rng: random.Random, rate: float, dt: float) -> bool:
    """A Poisson event of `rate` per second within `dt` seconds."""
    return rate > 0 and rng.random() < -math.expm1(-rate * dt)


# --------------------------------------------------------------------------- locust hooks


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
    global _scenario, _out, _shape_mode, _network_mode, _clock_mode, _runner
    _runner = environment.runner
    opts = environment.parsed_options
    _shape_mode = getattr(opts, "spacesim_shape", None) or _shape_mode
    _network_mode = getattr(opts, "spacesim_network", None) or _network_mode
    _clock_mode = getattr(opts, "spacesim_clock", None) or _clock_mode
    path = getattr(opts, "scenario", "") if opts else ""
    if path:
        os.environ["SPACESIM_SCENARIO"] = path
        _scenario = load_scenario(path)
    out = getattr(opts, "spacesim_out", "") if opts else ""
    _out = Path(out) if out else None
    sc = scenario()
    Host.fixed_count = sc.rooms.count
    runner = environment.runner
    if isinstance(runner, MasterRunner):

        def relay(environment: Environment, msg: Any, **_: Any) -> None:
            runner.send_message(MSG_SPACE, msg.data)  # to every worker

        runner.register_message(MSG_SPACE, relay)

        def collect(environment: Environment, msg: Any, **_: Any) -> None:
            if _out is None:
                log.warning("records from %s dropped: the master has no --spacesim-out",
                            msg.data.get("name"))  # fmt: skip
                return
            _save_part(str(msg.data["name"]), bytes(msg.data["parquet"]))

        runner.register_message(MSG_RECORDS, collect)
    elif isinstance(runner, WorkerRunner):

        def learn(environment: Environment, msg: Any, **_: Any) -> None:
            state().add_space(str(msg.data["space"]))

        runner.register_message(MSG_SPACE, learn)


class ScenarioShape(LoadTestShape):
    """Users over time from the scenario's arrival profile (`Scenario.audience_curve`).

    The expected audience curve E[N(t)] is scaled so that its peak within the run is
    ``-u`` minus the hosts (default `DEFAULT_LISTENERS`); each Listener user runs
    sessions back to back, so the room holds the curve's audience while sessions of
    the scenario's law come and go. ``--spacesim-shape steady`` holds ``-u`` users
    throughout, Locust's usual behaviour. The run ends at ``-t`` (default: the
    scenario's duration).
    """

    use_common_options = True  # -u caps the peak, -r caps the spawn rate, -t ends it

    def __init__(self) -> None:
        super().__init__()
        self._users: Any = None

    def tick(self) -> tuple[int, float] | None:
        sc = scenario()
        opts = self.runner.environment.parsed_options if self.runner else None
        run_time = float(getattr(opts, "run_time", None) or sc.duration)
        t = self.get_run_time()
        if t >= run_time:
            return None
        hosts = sc.rooms.count
        num_users = getattr(opts, "num_users", None)
        cap_rate = getattr(opts, "spawn_rate", None)
        if _shape_mode == "steady":
            return max(num_users or hosts + 1, hosts + 1), float(cap_rate or 1.0)
        if self._users is None:
            listeners = num_users - hosts if num_users else DEFAULT_LISTENERS
            self._users = scaled_users(sc.audience_curve(run_time + 1.0), max(listeners, 1))
        users = self._users
        i = min(int(t), len(users) - 1)
        nxt = users[min(i + 1, len(users) - 1)]
        rate = max(1.0, float(abs(int(nxt) - int(users[i]))))
        if cap_rate:
            rate = min(rate, float(cap_rate))
        return hosts + int(max(users[i], nxt)), rate


async def _close_all(objs: list[Any]) -> None:
    await asyncio.gather(*(o.close() for o in objs), return_exceptions=True)
    st = state()
    if st.http is not None:
        await st.http.close()
        st.http = None


def _write_part() -> None:
    """This process's records so far: to the master when a worker (it writes them to its
    own ``--spacesim-out``, so workers on other machines need no shared disk), else here.
    """
    st = state()
    if len(st.recorder) == st.written or not len(st.recorder):
        return
    runner = _runner
    if isinstance(runner, WorkerRunner):
        buf = io.BytesIO()
        st.recorder.to_frame().to_parquet(buf, index=False)
        runner.send_message(MSG_RECORDS, {"name": f"{_node}-{st.pid}", "parquet": buf.getvalue()})
    elif _out is not None:
        _save_part(f"{_node}-{st.pid}", st.recorder.to_frame())
    else:
        return
    st.written = len(st.recorder)


def _save_part(name: str, frame: Any) -> None:
    assert _out is not None
    _out.mkdir(parents=True, exist_ok=True)
    tmp = _out / f".part-{name}.parquet.tmp"
    if isinstance(frame, bytes):
        tmp.write_bytes(frame)
    else:
        frame.to_parquet(tmp, index=False)
    tmp.replace(_out / f"part-{name}.parquet")


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
    _write_part()


@events.quitting.add_listener
def _quitting(environment: Environment, **_: Any) -> None:
    _write_part()
