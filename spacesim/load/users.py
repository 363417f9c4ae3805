"""Locust users per role, driven by a scenario: a `Host` per room and `Listener` s.

Import this from a locustfile *after* ``import locust`` (gevent must patch first).

The users are thin shells: what a host and a listener do is `spacesim.load.host.Room`
and `spacesim.load.listener.ListenerSession` (gevent-free asyncio over a
`spacesim.load.api.SpaceClient`, every decision `spacesim.behaviour`'s), run on the
process's bridge loop (`spacesim.load.bridge`) with `spacesim.load.live.LiveClient`.
Requests made from the gevent side are timed by Locust
(``environment.events.request.measure``); what is measured on the loop comes back
through `Context.report` as request events (`spacesim.load.hooks.fire`).

* `Host` (``fixed_count`` = ``rooms.count``): one `Room` (the space's lifecycle, the
  stage as written, hands, reports, moderation rates and the timeline); once a recorded
  space has ended, its replay listeners (`spacesim.load.replayer.ReplayCrowd`,
  ``features.replay_rate``), sessions on the bridge loop like the listeners'.
* `Listener`: each task run is one `ListenerSession` under a fresh user id, on one of
  the process's live spaces; once every space has ended, it idles quietly.
* `Poster` (``fixed_count`` 1 with ``posts.users``): the voice posts, DMs and Fleets of
  the ``posts`` population over HTTP (`spacesim.load.poster`).
* `ScenarioShape`: the number of users follows the scenario's arrival profile
  (`spacesim.load.shape.listener_targets`: the audience curve from ``rooms.starts_at``
  to ``rooms.ends_at``), peaking at ``-u``; ``--spacesim-shape steady`` holds ``-u``.
* Every client's path gets the scenario's ``network`` (user-space relays), unless
  ``--spacesim-network none``.

Locust request events (request_type "spacesim"): ``host_start``, ``join``,
``first_audio``, ``audio_latency``, ``mouth_to_ear`` and ``event_latency`` (p50 of each
listener's 1 s window), ``hand_wait``, ``report_resolution``, ``reconnect``, ``speak``,
``loop_lag``, ``clip`` and ``clip_fetch``, ``replay_start`` (a replay listener's first
audio; ``replay`` when one fails) and the actions (the host's moderation and timeline
actions by name).
Records (source ``load``) go to a per-process `Recorder`, written at test stop by
`spacesim.load.parts` (distributed mode: through the master); `spacesim.load.run`
merges the parts into one run directory. Workers on several machines need
``--spacesim-clock server`` for latencies.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import gevent
from locust import LoadTestShape, User, constant, task  # gevent patches first
from locust.exception import StopUser
from locust.runners import WorkerRunner

# isort: split
from spacesim.client.session import ClientError
from spacesim.load import bridge
from spacesim.load.hooks import REQUEST_TYPE, close, ensure, fire
from spacesim.load.host import Room
from spacesim.load.listener import ListenerSession
from spacesim.load.parts import MSG_SPACE, write_part
from spacesim.load.poster import Poster
from spacesim.load.replayer import ReplayCrowd, crowd_after
from spacesim.load.shape import DEFAULT_LISTENERS, listener_targets, posters
from spacesim.load.state import scenario, settings, state

__all__ = ["Host", "Listener", "Poster", "ScenarioShape", "state"]

log = logging.getLogger("spacesim.load")

GIVE_UP_AFTER = 20  # refused joins, none accepted, before this process stops the run
SEAT_TIMEOUT = 20.0  # per stage member joining


class Host(User):
    """One per room (``fixed_count`` is set to ``rooms.count`` from the scenario)."""

    fixed_count = 1
    wait_time = constant(1)

    def on_start(self) -> None:
        env = self.environment
        ctx = ensure(env, self.host or "")
        st = state()
        self.room = Room(ctx)
        self.replays: ReplayCrowd | None = None
        st.closers[id(self.room)] = self.room
        sc = ctx.sc
        seats = 1 + sc.rooms.cohosts + sc.rooms.speakers
        with env.events.request.measure(REQUEST_TYPE, "host_start") as meta:
            bridge.run(self.room.start(), timeout=SEAT_TIMEOUT * seats)
        exc = meta["exception"]
        if exc is None:
            st.add_space(self.room.space)
            if isinstance(env.runner, WorkerRunner):
                env.runner.send_message(MSG_SPACE, {"space": self.room.space})
            return
        attrs = (
            {"reason": exc.code, "detail": exc.reason[:200]}
            if isinstance(exc, ClientError)
            else {"reason": type(exc).__name__, "detail": str(exc)[:200]}
        )
        ctx.add("join_refused", self.room.space, self.room.user, "host", attrs=attrs)
        write_part()  # the run's summary says why, even if nothing else happens
        close(self.room)
        if isinstance(exc, ClientError) and 400 <= exc.status < 500:
            # A refusal will not go away by retrying: stop the run, say why once.
            log.error("the host could not open a space, stopping the run: %s", exc)
            if env.runner is not None:
                env.runner.quit()
            raise StopUser()
        raise exc

    @task
    def keep_room(self) -> None:
        """The room runs on the bridge loop; once it has ended, its replay crowd too."""
        if self.replays is None and self.room.ended:
            self.replays = crowd_after(self.room)
            if self.replays is not None:
                state().closers[id(self.replays)] = self.replays
                bridge.spawn(self.replays.run())

    def on_stop(self) -> None:
        close(self.room)
        if self.replays is not None:
            close(self.replays)


class Listener(User):
    """Listener sessions, back to back (one per task run)."""

    weight = 1
    wait_time = constant(0)
    paced = False  # its first session waited for its slot (`JoinPacer`)

    @task
    def listen(self) -> None:
        env = self.environment
        ctx = ensure(env, self.host or "")
        st = state()
        if not st.wait_for_space(30, gevent.sleep):
            fire(env, "join", 0.0, RuntimeError("no space was created (no Host user?)"))
            gevent.sleep(1)
            return
        live = [s for s in ctx.spaces if s not in ctx.ended]
        if not live:  # every space ended: nothing to join, and nothing failed
            gevent.sleep(1)
            return
        if not self.paced:  # this user's arrival: one slot of the spawn rate
            self.paced = True
            gevent.sleep(st.pacer.delay(time.monotonic(), settings.spawn_rate))
        n = next(ctx.ids)
        sess = ListenerSession(ctx, live[n % len(live)], n)
        st.closers[id(sess)] = sess
        outcome = bridge.run(sess.run(), timeout=None)
        st.closers.pop(id(sess), None)
        if outcome == "refused":
            if ctx.refused >= GIVE_UP_AFTER and not ctx.joined and env.runner is not None:
                log.error("%d joins refused and none accepted: stopping", ctx.refused)
                write_part()
                env.runner.quit()
            gevent.sleep(1)
        elif outcome != "done":  # the space has not started, or has ended
            gevent.sleep(1)


class ScenarioShape(LoadTestShape):
    """Users over time from the scenario's arrival profile (`listener_targets`).

    The expected audience curve E[N(t)] is scaled so that its peak within the run is
    ``-u`` minus the hosts (default `DEFAULT_LISTENERS`), and starts at
    ``rooms.starts_at``; each Listener user runs sessions back to back, so the room
    holds the curve's audience while sessions of the scenario's law come and go.
    ``--spacesim-shape steady`` holds ``-u`` users throughout, Locust's usual behaviour.
    The run ends at ``-t`` (default: the scenario's duration).
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
        hosts = sc.rooms.count + posters(sc)  # fixed users: hosts and the poster
        num_users = getattr(opts, "num_users", None)
        cap_rate = getattr(opts, "spawn_rate", None)
        if settings.role == "stage":  # the hosts' own process (spacesim load --stage-cpus)
            return sc.rooms.count, float(sc.rooms.count)
        if settings.role == "audience":
            hosts = posters(sc)
        if settings.shape == "steady":
            return max(num_users or hosts + 1, hosts + 1), self._paced(float(cap_rate or 1.0))
        if self._users is None:
            listeners = num_users - hosts if num_users else DEFAULT_LISTENERS
            self._users = listener_targets(sc, run_time, listeners)
        users = self._users
        i = min(int(t), len(users) - 1)
        nxt = users[min(i + 1, len(users) - 1)]
        rate = max(1.0, float(abs(int(nxt) - int(users[i]))))
        if cap_rate:
            rate = min(rate, float(cap_rate))
        return hosts + int(max(users[i], nxt)), self._paced(rate)

    def _paced(self, rate: float) -> float:
        """Tell this process's `JoinPacer` the rate (not a master's workers: they are
        still given their users in Locust's bursts)."""
        settings.spawn_rate = rate
        return rate
