"""Locust users per role, driven by a scenario: a `Host` per room and lite `Listener` s.

Import this from a locustfile *after* ``import locust`` (gevent must patch first).

* `Host` (``fixed_count`` = ``rooms.count``): creates a space, publishes a packaged
  speech clip (`SpeakerTrack`), brings ``speaking.active_speakers - 1`` extra
  speakers on stage by invitation (each publishing a clip), watches the space's
  event stream and answers each raised hand after Exp(``audience.host_response_time``)
  with probability ``audience.approval`` of approving; approved speakers are demoted
  after Exp(``audience.speaker_stint``). hand_wait = server time of the grant minus
  server time of the raise (both from the event stream).
* `Listener`: each task run is one listening session under a fresh user id: join with
  audio (`connect_audio`, no decoding, `ListenerStats`), stay a session length drawn
  from ``session``, raise hands and react at the ``audience`` rates, leave. Locust
  keeps ``-u`` users busy, so concurrency is fixed (a closed model), not the
  scenario's arrival process; run.py derives ``-u`` from Little's law.

Locust request events (request_type "spacesim"): ``join``, ``first_audio``,
``audio_latency`` (p50 of each listener's last 1 s window), ``hand_wait`` and the
actions. Records (source ``load``) go to a per-process `Recorder`, written at test
stop to ``OUT/part-<pid>.parquet`` (``--spacesim-out`` / ``SPACESIM_LOAD_OUT``);
`spacesim.load.run` merges the parts into one run directory.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
import os
import random
import statistics
import time
import zlib
from pathlib import Path
from typing import Any

import gevent
import gevent.event
from locust import User, constant, events, task  # gevent patches here, before aiohttp
from locust.env import Environment
from locust.runners import MasterRunner, WorkerRunner

# isort: split
import aiohttp

from spacesim.client.listener import ListenerStats
from spacesim.client.session import AudioLink, ClientError, RoomClient, connect_audio
from spacesim.client.speaker import SpeakerTrack, clip_names, load_clip
from spacesim.load import bridge
from spacesim.results import Recorder, RunMeta
from spacesim.scenario import Scenario, load_scenario

__all__ = ["Host", "Listener", "state"]

log = logging.getLogger("spacesim.load")

REQUEST_TYPE = "spacesim"
TICK = 1.0  # seconds between a listener's measurement windows
JOIN_TIMEOUT = 20.0
ACTION_TIMEOUT = 10.0
FIRST_AUDIO_TIMEOUT = 10.0
LATENCY_SAMPLES = 10  # audio_latency records per listener per window
EMOJIS = ("💯", "👍", "👏", "😂", "❤️", "🔥", "🙏", "🎉")
MSG_SPACE = "spacesim_space"


# --------------------------------------------------------------------------- per process


class _State:
    """What one Locust process holds; rebuilt in a forked child (keyed by pid)."""

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.run_id = os.environ.get("SPACESIM_RUN_ID") or RunMeta.new_run_id()
        self.t0 = float(os.environ.get("SPACESIM_T0") or time.time())
        self.recorder = Recorder(self.run_id, "load")
        self.spaces: list[str] = []
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


def _exp(rng: random.Random, mean: float) -> float:
    return rng.expovariate(1.0 / mean) if mean > 0 else 0.0


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

    def _task(self, coro: Any) -> None:
        t = asyncio.get_running_loop().create_task(coro)
        self.tasks.add(t)
        t.add_done_callback(self.tasks.discard)

    def _track(self, k: int) -> SpeakerTrack:
        names = clip_names()
        sender = zlib.crc32(f"{self.user}/{k}".encode())
        return SpeakerTrack(load_clip(names[(self.n + k) % len(names)]), sender)

    async def start(self) -> None:
        st = state()
        http = await st.session()
        host = RoomClient(self.base, self.user, http)
        self.clients.append(host)
        t = time.monotonic()
        self.space = await host.create_space(f"load {self.sc.name}", self.sc.rooms.who_may_speak)
        link = await connect_audio(host, self.space, _ignore, publish=self._track(0))
        self.links.append(link)
        await _connected(link, JOIN_TIMEOUT)
        self.joined[self.user] = st.now()
        st.recorder.add(
            "participant_joined", st.now(), self.space, self.user, "host", time.monotonic() - t
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
        link = await connect_audio(speaker, self.space, _ignore, publish=self._track(k))
        self.links.append(link)
        await _connected(link, JOIN_TIMEOUT)
        await host.act(self.space, "invite", target=who)
        await speaker.act(self.space, "accept_invite")
        now = self.joined[who] = st.now()
        st.recorder.add("participant_joined", now, self.space, who, "speaker", time.monotonic() - t)
        st.recorder.add("speaker_granted", now, self.space, who, "speaker")

    async def _watch(self, host: RoomClient) -> None:
        st = state()
        while not self.closed:
            try:
                async for ev in host.events(self.space):
                    if ev.get("type") == "event":
                        self._on_event(ev, host)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the stream broke: reconnect unless closing
                log.warning("event stream of %s: %r", self.space, exc)
            if not self.closed:
                await asyncio.sleep(1.0)
        del st

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


def _ignore(slot: int, packet: bytes) -> None:
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
        self.room = _Room(self.environment, self.host or "", scenario())
        st = state()
        st.closers[id(self.room)] = self.room
        t = time.monotonic()
        try:
            bridge.run(self.room.start(), timeout=JOIN_TIMEOUT + 10)
        except BaseException as exc:
            fire(self.environment, "host_start", time.monotonic() - t, exc)
            _close(self.room)
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

    def __init__(self, base: str, space: str, user: str) -> None:
        self.base = base
        self.space = space
        self.user = user
        self.stats = ListenerStats()
        self.link: AudioLink | None = None
        self.client: RoomClient | None = None
        self.joined_at: float | None = None
        self.closed = False
        self.received = 0
        self.lost = 0

    async def join(self) -> None:
        self.client = RoomClient(self.base, self.user, await state().session())
        self.link = await connect_audio(self.client, self.space, self.stats.on_rtp)
        await _connected(self.link, JOIN_TIMEOUT)

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
        return lat, d_recv, d_lost

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
        st = state()
        sc = scenario()
        env = self.environment
        if not st.space_ready.wait(timeout=30):
            fire(env, "join", 0.0, RuntimeError("no space was created (no Host user?)"))
            gevent.sleep(1)
            return
        n = next(st.ids)
        space = st.spaces[n % len(st.spaces)]
        sess = _ListenerSession(self.host or "", space, f"l-{st.pid}-{n}")
        st.closers[id(sess)] = sess
        start_ns = time.monotonic_ns()
        try:
            bridge.run(sess.join(), timeout=JOIN_TIMEOUT + 5)
        except Exception as exc:
            took = (time.monotonic_ns() - start_ns) / 1e9
            fire(env, "join", took, exc)
            reason = exc.code if isinstance(exc, ClientError) else type(exc).__name__
            st.recorder.add(
                "join_refused", st.now(), space, sess.user, "listener", attrs={"reason": reason}
            )
            _close(sess)
            gevent.sleep(1)
            return
        join_s = (time.monotonic_ns() - start_ns) / 1e9
        sess.joined_at = st.now()
        fire(env, "join", join_s)
        st.recorder.add("participant_joined", sess.joined_at, space, sess.user, "listener", join_s)
        try:
            self._stay(
                sess,
                start_ns,
                sc.session.draw(lambda: st.rng.expovariate(1.0), lambda: st.rng.gauss(0.0, 1.0)),
            )
        finally:
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
                elif time.monotonic_ns() - start_ns > FIRST_AUDIO_TIMEOUT * 1e9:
                    fire(env, "first_audio", FIRST_AUDIO_TIMEOUT, TimeoutError("no audio heard"))
                    first_reported = True
            self._flush(sess)
            if time.monotonic() >= end:
                break
            if not raised and _happens(st.rng, aud.hand_raise_rate, TICK):
                raised = self._act(sess, "raise_hand")
                if raised:
                    st.recorder.add("hand_raised", st.now(), sess.space, sess.user, "listener")
            if _happens(st.rng, aud.reaction_rate, TICK) and self._act(
                sess, "react", emoji=st.rng.choice(EMOJIS)
            ):
                st.recorder.add("reaction", st.now(), sess.space, sess.user, "listener", 1.0)

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
        help="directory for this process's records (part-<pid>.parquet)",
    )


@events.init.add_listener
def _init(environment: Environment, **_: Any) -> None:
    global _scenario, _out
    opts = environment.parsed_options
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
    elif isinstance(runner, WorkerRunner):

        def learn(environment: Environment, msg: Any, **_: Any) -> None:
            state().add_space(str(msg.data["space"]))

        runner.register_message(MSG_SPACE, learn)


async def _close_all(objs: list[Any]) -> None:
    await asyncio.gather(*(o.close() for o in objs), return_exceptions=True)
    st = state()
    if st.http is not None:
        await st.http.close()
        st.http = None


def _write_part() -> None:
    st = state()
    if _out is None or len(st.recorder) == st.written or not len(st.recorder):
        return
    _out.mkdir(parents=True, exist_ok=True)
    tmp = _out / f".part-{st.pid}.parquet.tmp"
    st.recorder.to_frame().to_parquet(tmp, index=False)
    tmp.replace(_out / f"part-{st.pid}.parquet")
    st.written = len(st.recorder)


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
