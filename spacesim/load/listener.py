"""One listening session, gevent-free: join, listen, act, maybe speak, leave.

`ListenerSession.run` is a whole session on an asyncio loop over a `SpaceClient`; every
decision is `spacesim.behaviour`'s:

* join with audio (a lite `ListenerStats`, or with ``load.probe_fraction`` a decoding
  `ProbeStats`), through a ``network`` path; stay `behaviour.session_length`
  (``session``); leave.
* ``audience.events_share``: `behaviour.subscribes_to_events` decides whether the
  session opens the space's event stream. A subscriber records ``events_received``
  (events per 1 s window) and ``event_latency`` (arrival on `Context.clock` minus the
  event's ``clock_ns``, the server's monotonic clock at publication; events without one
  are counted only) and reports ``event_latency`` (p50 per window) as a request. In
  a captioned space (``features.captions``) each final ``caption`` gives
  ``caption_latency`` (its speech's start reaching the server -> received here;
  ``attrs.speech``: the utterance's length) and
  ``caption_wer`` (its words against the speaker's clip transcript), at most
  `LATENCY_SAMPLES` of each per window. In a recorded space (the join answer's
  ``recording``) a listener cuts clips of the last 30 s at ``features.clip_rate``
  (``clip_cut`` records; ``rate_limited`` is an expected refusal) and downloads each
  clip it cut once (``egress_bytes`` of role ``clip``: what a share costs to serve).
* Per 1 s tick, `behaviour.events_in` at the ``audience`` rates: raise a hand, react
  (`behaviour.reaction_emoji`), report (the space with ``space_report_share``, else
  another listener of this process in the space), personally block another present
  listener (``block_rate``). A hand is raised only when the join answer's (or a later
  ``speak_setting_changed``) setting allows one to be asked for: never under
  ``invited``; under ``followed`` the listener cannot know whether the host follows it,
  so it asks and a ``speaking_restricted`` refusal is an expected outcome, not a failure.
  A listener without the event stream opens it when it raises a hand (to see the
  answer) and closes it again when the hand is declined or lowered.
* Invitations (``speaker_invited`` for itself) reach only listeners with the stream
  open, who accept with `behaviour.accepts_invite` (``moderation.invite_acceptance``);
  an unsubscribed invitee never sees the invite, as a client without the stream would
  not (with the default events_share of 100 % every listener sees it).
* Granted a seat (``speaker_granted`` or ``cohost_added`` for itself), the listener
  rejoins with a publish section (`spacesim.load.voice`) and talks in spurts until it
  leaves the stage; demoted, it keeps that connection and sends nothing. Muted, it
  unmutes itself after `behaviour.unmute_delay`.
* A dropped connection is rejoined (``reconnected``) at once, not at the next tick:
  dropped = ICE/DTLS closed or failed; or the node carrying the audio is gone, as a
  real client tells from its signalling connection: the event stream (opened on that
  node) breaks without the server saying why and reconnecting it is refused (nothing
  listens there any more: a kill -9 closes the node's sockets); or nothing at all has
  come from the server for `spacesim.load.api.LIVENESS` s -- not a packet, not an
  RTCP sender report, which the server sends each connection every 0.5-1.5 s even
  while every slot is silent, so a quiet room is not a failure. On a link that cannot
  count those (`Link.datagrams` None: Janus) the old rule stays: only without DTX,
  when stage members send every 20 ms even in pauses, and while this listener knows of
  no muted stage member, no audio for `STALL` s after some was heard. An action refused
  ``not_present`` for the listener itself (the server restarted and does not know it
  yet) also counts as dropped. A rejoin after a lost node names it (the join's
  ``avoid``) so the cluster places the audio elsewhere; ``reconnected`` records say
  ``cause``, the node left (``from``), the new ``node``, ``outage`` (the last datagram
  from the old node to connected again, s) and ``detect`` (to the loss noticed, s); the
  event stream is reopened on the new node.
* On a target that lacks an action or the event stream (`spacesim.load.targets`), each
  attempt is recorded as ``action_unsupported`` (attrs.action) and the session goes on.
* The space ending (``space_ended`` event, or a join refused ``space_ended``), or being
  removed or blocked, ends the session quietly; so does a space not yet started
  (``not_started``: the session returns ``"not_started"`` and its caller retries).
"""

from __future__ import annotations

import asyncio
import logging
import statistics
import time
from collections.abc import Coroutine
from typing import Any, Literal

from spacesim import behaviour
from spacesim.client.listener import ListenerStats, NativeListenerStats, lite_stats
from spacesim.client.probe import ProbeStats
from spacesim.client.session import ClientError, refused
from spacesim.client.speaker import transcripts
from spacesim.load.api import WATCH, Context, Link, Silence, SpaceClient, Unsupported, sign_in
from spacesim.load.captions import fragment_errors
from spacesim.load.host import ACTION_TIMEOUT, node_attrs, path_attrs, quiet
from spacesim.load.voice import clip_of, new_track
from spacesim.scenario import NetworkProfile

__all__ = ["LATENCY_SAMPLES", "STALL", "ListenerSession", "Outcome"]

log = logging.getLogger("spacesim.load")

TICK = 1.0  # seconds between a listener's measurement windows and decisions
FIRST_AUDIO_TIMEOUT = 10.0
LATENCY_SAMPLES = 10  # latency records per listener per window
CLIP = 30.0  # seconds a listener's clip holds (the protocol's longest)
STALL = 3.0  # seconds without audio after which a connection counts as dropped (no DTX)
QUIET_END = frozenset({"space_ended", "not_started", "removed", "blocked"})

#: How a session ended: it ran, the join was refused, or the space was not (or no
#: longer) live.
Outcome = Literal["done", "refused", "ended", "not_started"]


class ListenerSession:
    """One listening session (all of it runs on the context's asyncio loop)."""

    def __init__(self, ctx: Context, space: str, n: int | None = None) -> None:
        self.ctx = ctx
        self.sc = sc = ctx.sc
        self.space = space
        self.n = next(ctx.ids) if n is None else n
        self.user = f"l-{ctx.tag}-{self.n}"
        self.rng = ctx.rng
        probe = self.rng.uniform() < sc.load.probe_fraction
        self.stats: ListenerStats | NativeListenerStats = (
            ProbeStats(clock=ctx.clock, offset_ns=ctx.offset_ns)
            if probe
            else lite_stats(clock=ctx.clock, offset_ns=ctx.offset_ns)
        )
        self.subscribes = behaviour.subscribes_to_events(sc.audience, self.rng)
        self.path: NetworkProfile | None = (
            behaviour.network_path(sc.network, self.rng) if ctx.network else None
        )
        self.client: SpaceClient = ctx.clients(self.user)
        self.link: Link | None = None
        self.joined_at: float | None = None
        self.role = "listener"
        self.setting: str = sc.rooms.who_may_speak  # until the join answer says
        self.raised = False
        self.recorded = False  # the space is being recorded (the join answer says)
        self.muted = False
        self.speaking = False  # connected with a publish section
        self.want_speak = False  # granted a seat: rejoin to publish at the next tick
        self.over = False  # removed, blocked, or the space ended
        self.dropped = False  # an action was refused ``not_present`` for us
        self.others_muted: set[str] = set()
        self.quality = (0, 0)  # a probe's (frames, audible) at the last window
        self.received = 0
        self.lost = 0
        self.last_audio: float | None = None  # monotonic time of the last window with audio
        self.node_lost: str | None = None  # why the audio's node counts as gone (None: it is not)
        self.lost_at = 0.0  # monotonic time it was noticed
        self.avoid: tuple[str, ...] = ()  # the node lost, until a rejoin lands elsewhere
        self.silence = Silence()  # since when nothing came on the link
        self.wake = asyncio.Event()  # set when the node is lost: rejoin before the tick
        self.stream: asyncio.Task[None] | None = None
        self.no_stream = False  # the target has no event stream (`Unsupported`)
        self.stream_ready = asyncio.Event()
        self.temporary_stream = False
        self.events = 0
        self.event_lat: list[float] = []
        self.caption_lat: list[tuple[float, float]] = []  # (latency, speech s) per final caption
        self.caption_errs: list[tuple[str, int, int]] = []  # (speaker, errors, words)
        self.tasks: set[asyncio.Task[Any]] = set()
        self._closing: asyncio.Task[None] | None = None

    # ------------------------------------------------------------------ helpers

    def _task(self, coro: Coroutine[Any, Any, Any]) -> None:
        t = asyncio.get_running_loop().create_task(coro)
        self.tasks.add(t)
        t.add_done_callback(self.tasks.discard)

    def _seed(self) -> int:
        return int(self.rng.uniform() * 2**32)

    async def _connect(self) -> Link:
        """A new audio link (away from `avoid`); the watchdog's clock restarts with it."""
        track = None
        if self.speaking:
            track = new_track(
                self.ctx,
                self.space,
                self.user,
                lambda: self.role,
                talks=True,
                rng=self.rng,
                gate=lambda: self.role != "listener" and not self.muted,
            )
        link = await self.client.connect_audio(
            self.space,
            self.stats.on_rtp,
            publish=track,
            path=self.path,
            read_every=self.stats.read_every,
            seed=self._seed(),
            avoid=self.avoid,
        )
        self.silence.reset()
        return link

    async def act(
        self, action: str, expected: frozenset[str] = frozenset(), **fields: str | None
    ) -> bool:
        """Post an action, report it; False when refused (quietly if `expected`)."""
        t = time.monotonic()
        try:
            given = {k: v for k, v in fields.items() if v is not None}
            await asyncio.wait_for(self.client.act(self.space, action, **given), ACTION_TIMEOUT)
        except Unsupported as exc:
            self.ctx.unsupported(exc.action, self.space, self.user, self.role)
            return False
        except ClientError as exc:
            took = time.monotonic() - t
            if exc.code in expected or exc.code in QUIET_END or exc.code == "not_present":
                self.ctx.report(action, took, None)
                if exc.code in QUIET_END:
                    self.over = True
                elif exc.code == "not_present" and fields.get("target") in (None, self.user):
                    # The server does not know us (it restarted, or dropped our
                    # connection before we noticed): rejoin rather than end the session.
                    self.dropped = True
                return False
            self.ctx.report(action, took, exc)
            return False
        except Exception as exc:
            self.ctx.report(action, time.monotonic() - t, exc)
            return False
        self.ctx.report(action, time.monotonic() - t, None)
        return True

    # ------------------------------------------------------------------ the session

    async def run(self, length: float | None = None) -> Outcome:
        """Join, stay `length` s (default: drawn from ``session``), leave."""
        ctx = self.ctx
        if length is None:
            length = behaviour.session_length(self.sc.session, self.rng)
        start_ns = ctx.clock()  # the clock first_audio_ns is read on
        try:
            await sign_in(self.client)
            start_ns = ctx.clock()  # signed in before it joins, as a real client is
            self.link = await self._connect()
        except ClientError as exc:
            took = (ctx.clock() - start_ns) / 1e9
            if exc.code in ("space_ended", "not_started"):
                if exc.code == "space_ended":
                    ctx.ended.add(self.space)
                await self.close()
                return "ended" if exc.code == "space_ended" else "not_started"
            return await self._refused(exc, took)
        except Exception as exc:
            return await self._refused(exc, (ctx.clock() - start_ns) / 1e9)
        join_s = (ctx.clock() - start_ns) / 1e9
        self.joined_at = ctx.now()
        ctx.joined += 1
        ctx.report("join", join_s, None)
        attrs = path_attrs(self.path) | node_attrs(self.link.join)
        ctx.add("participant_joined", self.space, self.user, "listener", join_s, attrs)
        if self.link.join.get("marks") is False:
            # A mixing server (Janus AudioBridge) re-encodes: no marks, no latency.
            ctx.unsupported("audio_latency", self.space, self.user, "listener")
        space = self.link.join.get("space") or {}
        self.setting = str(space.get("who_may_speak") or self.setting)
        self.recorded = bool(space.get("recording"))
        ctx.active[self.user] = self.space
        self._task(self._watch())
        try:
            if self.subscribes:
                await self._open_stream()
            await self._stay(start_ns, length)
        finally:
            ctx.active.pop(self.user, None)
            self._flush()
            await self.close()
            ctx.add("participant_left", self.space, self.user, self.role,
                    ctx.now() - self.joined_at)  # fmt: skip
        return "done"

    async def _refused(self, exc: BaseException, took: float) -> Outcome:
        """A refused join: a failure, except ``room_full`` (``rooms.listener_cap`` at work,
        which the run measures as ``join_refused`` records)."""
        ctx = self.ctx
        full = isinstance(exc, ClientError) and exc.code == "room_full"
        ctx.report("join", took, None if full else exc)
        if isinstance(exc, ClientError):
            attrs = {"reason": exc.code, "detail": exc.reason[:200]}
        else:
            attrs = {"reason": type(exc).__name__, "detail": str(exc)[:200]}
        ctx.add("join_refused", self.space, self.user, "listener", attrs=attrs)
        ctx.refused += 1
        await self.close()
        return "refused"

    async def _stay(self, start_ns: int, length: float) -> None:
        ctx = self.ctx
        loop = asyncio.get_running_loop()
        end = loop.time() + length
        first_reported = False
        while not first_reported or loop.time() < end:
            if not await self._pause(min(TICK, max(end - loop.time(), 0.05))):
                break  # lost the node, and the server will not have us back
            if not first_reported:
                first = self.stats.first_audio_ns
                if first is None and self.link is not None and self.link.join.get("marks") is False:
                    first = self.stats.first_packet_ns
                if first is not None:
                    v = (first - start_ns) / 1e9
                    ctx.report("first_audio", v, None)
                    ctx.add("first_audio", self.space, self.user, "listener", v)
                    first_reported = True
                elif ctx.clock() - start_ns > FIRST_AUDIO_TIMEOUT * 1e9:
                    ctx.report("first_audio", FIRST_AUDIO_TIMEOUT, TimeoutError("no audio heard"))
                    first_reported = True
            self._flush()
            if self.space in ctx.ended:  # the host (in this process) ended it
                self.over = True
            if self.over or loop.time() >= end:
                break
            if self.want_speak and not self.speaking and self.role != "listener":
                await self._speak()
            if self.gone() and not await self._reconnect():
                break  # removed, blocked or the space ended: the session is over
            await self._behave()

    async def _behave(self) -> None:
        ctx, aud, rng = self.ctx, self.sc.audience, self.rng
        if (
            behaviour.events_in(aud.hand_raise_rate, TICK, rng)
            and not self.raised
            and self.role == "listener"
            and self.setting != "invited"
        ):
            if self.stream is None:
                self.temporary_stream = True
                await self._open_stream()
            self.raised = True  # before the answer can arrive
            if await self.act("raise_hand", frozenset({"speaking_restricted"})):
                ctx.add("hand_raised", self.space, self.user, "listener")
            else:
                self.raised = False
                self._close_temporary_stream()
        for _ in range(behaviour.events_in(aud.reaction_rate, TICK, rng)):
            emoji = behaviour.reaction_emoji(rng)
            if await self.act("react", frozenset({"rate_limited"}), emoji=emoji):
                ctx.add("reaction", self.space, self.user, "listener", 1.0)
        for _ in range(behaviour.events_in(aud.report_rate, TICK, rng)):
            await self._report()
        for _ in range(behaviour.events_in(self.sc.features.clip_rate, TICK, rng)):
            if self.recorded:
                await self._clip()
        for _ in range(behaviour.events_in(aud.block_rate, TICK, rng)):
            target = behaviour.pick(self._others(), rng)
            if target is not None and await self.act("block", target=target):
                ctx.add("blocked", self.space, target, "listener", attrs={"scope": "personal"})

    async def _clip(self) -> None:
        """Cut the last 30 s into a clip (``clip_cut``; a rate refusal is expected)."""
        ctx = self.ctx
        t = time.monotonic()
        try:
            clip = await asyncio.wait_for(self.client.cut_clip(self.space, CLIP), ACTION_TIMEOUT)
        except Unsupported as exc:
            self.ctx.unsupported(exc.action, self.space, self.user, self.role)
            return
        except ClientError as exc:
            expected = exc.code in ("rate_limited", "no_recording", "clip_out_of_range")
            ctx.report("clip", time.monotonic() - t, None if expected else exc)
            return
        except Exception as exc:
            ctx.report("clip", time.monotonic() - t, exc)
            return
        took = time.monotonic() - t
        ctx.report("clip", took, None)
        attrs = {"clip": clip.get("id"), "bytes": clip.get("bytes")}
        ctx.add("clip_cut", self.space, self.user, "listener", 1.0, attrs)
        await self._fetch_clip(str(clip.get("id")))

    async def _fetch_clip(self, clip: str) -> None:
        """Download a clip (``clip_fetch``): the bytes the server sends for it."""
        t = time.monotonic()
        try:
            data = await asyncio.wait_for(
                self.client.download(self.space, f"clips/{clip}"), ACTION_TIMEOUT
            )
        except Exception as exc:
            self.ctx.report("clip_fetch", time.monotonic() - t, exc)
            return
        self.ctx.report("clip_fetch", time.monotonic() - t, None)
        attrs = {"clip": clip}
        self.ctx.add("egress_bytes", self.space, self.user, "clip", len(data), attrs)

    def _others(self) -> list[str]:
        return [u for u, sp in self.ctx.active.items() if sp == self.space and u != self.user]

    async def _report(self) -> None:
        """Report the space, or another listener in it (as the simulator's audience does)."""
        about_space = behaviour.report_targets_space(self.sc.audience, self.rng)
        target = None if about_space else behaviour.pick(self._others(), self.rng)
        if await self.act("report", reason="load test", target=target):
            attrs = {"target_type": "user" if target else "space"}
            self.ctx.add("report_filed", self.space, target or "", "listener", attrs=attrs)

    # ------------------------------------------------------------------ connection

    def gone(self) -> bool:
        """The connection closed or failed, or its node is gone (`_watch`, the event
        stream), or (a link without counters, no DTX, nobody known muted) audio stopped."""
        if self.dropped or self.node_lost or self.link is None or not self.link.alive():
            return True
        if self.link.datagrams() is not None:
            return False  # the watchdog tells, from the server's RTP and RTCP
        sp = self.sc.speaking
        if sp.dtx or sp.active_speakers == 0 or self.others_muted:
            return False
        return self.last_audio is not None and time.monotonic() - self.last_audio > STALL

    def _lose(self, cause: str) -> None:
        """The node carrying the audio is gone: rejoin now (`_pause`), elsewhere."""
        if self.node_lost is None and not self.over:
            self.node_lost, self.lost_at = cause, time.monotonic()
            self.wake.set()

    async def _watch(self) -> None:
        """The watchdog: nothing from the server for `LIVENESS` s means its node is gone
        (a link that cannot count its datagrams is left to `gone`'s audio rule)."""
        while not self.over:
            await asyncio.sleep(WATCH)
            link = self.link
            if link is None or self.node_lost:
                continue
            lost = self.silence.lost(link)
            if lost is None:
                return
            if lost:
                self._lose("silence")

    async def _pause(self, delay: float) -> bool:
        """Wait `delay` s, rejoining at once if the node is lost on the way; False when
        the server will not have us back (the session is over)."""
        loop = asyncio.get_running_loop()
        until = loop.time() + delay
        while (left := until - loop.time()) > 0:
            try:
                await asyncio.wait_for(self.wake.wait(), left)
            except TimeoutError:
                return True
            self.wake.clear()
            if self.node_lost and not self.over and not await self._reconnect():
                return False
        return True

    async def _reconnect(self) -> bool:
        """Rejoin after a dropped connection; False when the server will not have us back."""
        ctx = self.ctx
        t = time.monotonic()
        cause = self.node_lost or ("not_present" if self.dropped else "dropped")
        old_node = node_attrs(self.link.join).get("node") if self.link is not None else None
        if self.node_lost and old_node:
            self.avoid = (old_node,)
        last_heard, lost_at = self.silence.at, self.lost_at if self.node_lost else t
        if self.link is not None:
            await quiet(self.link.close())
        self.link = None
        self.last_audio = None
        self.dropped = False
        self.node_lost = None
        try:
            self.link = await self._connect()
        except ClientError as exc:
            if exc.code in QUIET_END:
                ctx.report("reconnect", time.monotonic() - t, None)
                self.over = True
                return False
            ctx.report("reconnect", time.monotonic() - t, exc)
            return exc.status not in (403, 404, 409)
        except Exception as exc:  # the server may still be coming back: retry next tick
            ctx.report("reconnect", time.monotonic() - t, exc)
            return True
        now = time.monotonic()
        took = now - t
        ctx.report("reconnect", took, None)
        attrs: dict[str, Any] = node_attrs(self.link.join) | {"cause": cause}
        if self.avoid:
            attrs["from"] = self.avoid[0]
        if last_heard:
            attrs["outage"] = round(now - last_heard, 4)
            attrs["detect"] = round(max(lost_at - last_heard, 0.0), 4)
        ctx.add("reconnected", self.space, self.user, self.role, took, attrs)
        self.avoid = ()
        if self.stream is not None:  # it followed the old node: open it on the new one
            self.stream.cancel()
            self.stream = None
            self._task(self._open_stream())
        return True

    async def _speak(self) -> None:
        """Granted a seat: rejoin with a publish section (the server keeps the role)."""
        if self.speaking or self.over:
            return
        self.speaking = True
        t = time.monotonic()
        old, self.link = self.link, None
        if old is not None:
            await quiet(old.close())
        try:
            self.link = await self._connect()
        except Exception as exc:
            self.ctx.report("speak", time.monotonic() - t, exc)
            self.speaking = False
            return
        self.ctx.report("speak", time.monotonic() - t, None)

    # ------------------------------------------------------------------ events

    async def _open_stream(self) -> None:
        if self.stream is not None:
            return
        self.stream_ready.clear()
        self.stream = asyncio.get_running_loop().create_task(self._read_stream())
        try:
            await asyncio.wait_for(self.stream_ready.wait(), ACTION_TIMEOUT)
        except TimeoutError:
            log.debug("%s: no hello on the event stream", self.user)

    def _close_temporary_stream(self) -> None:
        if self.temporary_stream and self.stream is not None and self.role == "listener":
            self.stream.cancel()
            self.stream = None
            self.temporary_stream = False

    async def _read_stream(self) -> None:
        """Read the event stream; when it breaks without the server saying why, reopen
        it at once (at most once a second): a refused reopen means its node is gone."""
        reopened = 0.0
        while not self.over:
            said, got = await self._read_events()
            if said is None or said or self.over:
                return  # cancelled, unsupported, or closed by the server on purpose
            if got is False:  # the (re)connect itself failed
                return
            if time.monotonic() - reopened < 1.0:
                await asyncio.sleep(1.0)
            reopened = time.monotonic()

    async def _read_events(self) -> tuple[bool | None, bool]:
        """One connection of the event stream: (the server ended it with an error frame,
        any message came); (None, ...) when there is nothing more to try."""
        clock = self.ctx.clock
        said, got = False, False
        try:
            async for msg in self.client.events(self.space):
                got = True
                if msg.get("type") == "error":
                    said = True
                if msg.get("type") != "event":
                    snap = msg.get("space") or {}
                    if isinstance(snap, dict) and snap.get("who_may_speak"):
                        self.setting = str(snap["who_may_speak"])
                    if isinstance(snap, dict):
                        self.others_muted |= set(snap.get("muted") or ())
                    self.stream_ready.set()
                    continue
                self.events += 1
                sent = msg.get("clock_ns")
                if isinstance(sent, int) and not isinstance(sent, bool):
                    self.event_lat.append((clock() - sent) / 1e9)
                    if msg.get("kind") == "caption":
                        self._caption(msg, (clock() - sent) / 1e9)
                self._on_event(msg)
        except asyncio.CancelledError:
            raise
        except Unsupported as exc:  # the target has none: no events_received records either
            self.ctx.unsupported(exc.action, self.space, self.user, self.role)
            self.no_stream = True
            return None, got
        except Exception as exc:  # the stream broke
            log.debug("%s: event stream: %r", self.user, exc)
            if not got:
                if refused(exc):  # nothing listens where the stream (and audio) was
                    self._lose("stream")
                return False, False
        finally:
            self.stream_ready.set()
        return said, got

    def _caption(self, msg: dict[str, Any], delivery: float) -> None:
        """A final caption: its latency (the speech's start reaching the server, to here:
        the event's ``t`` minus its ``start``, both on the server's event clock, plus the
        delivery measured like ``event_latency``; so it includes the utterance's length,
        the wait a reader of final captions has) and its words against the transcript of
        the clip its speaker plays (`spacesim.load.captions.fragment_errors`)."""
        attrs = msg.get("attrs") or {}
        text, start, end, t = attrs.get("text"), attrs.get("start"), attrs.get("end"), msg.get("t")
        if not attrs.get("final") or attrs.get("gap") or not isinstance(text, str):
            return
        speaker = str(attrs.get("speaker") or msg.get("participant") or "")
        times = (start, end, t)
        if all(isinstance(x, int | float) for x in times):
            t0, t1, at = (float(x) for x in times)  # type: ignore[arg-type]
            self.caption_lat.append((max(at - t0, 0.0) + delivery, max(t1 - t0, 0.0)))
        reference = transcripts().get(clip_of(speaker))
        if reference is not None and len(self.caption_errs) < LATENCY_SAMPLES:
            errors, n = fragment_errors(reference, text)
            if n:
                self.caption_errs.append((speaker, errors, n))

    def _on_event(self, ev: dict[str, Any]) -> None:
        kind, who = ev.get("kind"), str(ev.get("participant") or "")
        attrs = ev.get("attrs") or {}
        if kind == "space_ended":
            self.over = True
            self.ctx.ended.add(self.space)
        elif kind == "speak_setting_changed":
            self.setting = str(attrs.get("setting") or self.setting)
        elif who != self.user:
            if kind == "muted":
                self.others_muted.add(who)
            elif kind in ("unmuted", "speaker_revoked", "participant_left", "removed"):
                self.others_muted.discard(who)
        elif kind in ("speaker_granted", "cohost_added"):
            self.role = "speaker" if kind == "speaker_granted" else "cohost"
            self.raised = False
            self.temporary_stream = False  # on stage, it keeps the stream
            self.want_speak = True  # the session's loop rejoins (one connection at a time)
        elif kind == "speaker_revoked" or (
            kind == "cohost_removed" and ev.get("role") == "listener"
        ):
            self.role = "listener"
            self.muted = False
        elif kind == "cohost_removed":
            self.role = str(ev.get("role") or "speaker")
        elif kind in ("hand_declined", "hand_lowered"):
            self.raised = False
            self._close_temporary_stream()
        elif kind == "speaker_invited":
            self._task(self._answer_invite())
        elif kind == "muted":
            self.muted = True
            delay = behaviour.unmute_delay(self.sc.moderation, self.rng)
            if delay is not None:
                self._task(self._unmute(delay))
        elif kind == "unmuted":
            self.muted = False
        elif kind == "removed" or (kind == "blocked" and attrs.get("scope") == "space"):
            self.over = True

    async def _answer_invite(self) -> None:
        if behaviour.accepts_invite(self.sc.moderation, self.rng):
            await self.act("accept_invite", frozenset({"stage_full", "no_invite"}))
        else:
            await self.act("decline_invite", frozenset({"no_invite"}))

    async def _unmute(self, delay: float) -> None:
        await asyncio.sleep(delay)
        if self.muted and not self.over:
            await self.act("unmute", frozenset({"not_on_stage"}), target=self.user)

    # ------------------------------------------------------------------ measurement

    def window(self) -> tuple[list[float], int, int, list[int]]:
        """Latencies of packets since the last call, received / lost in between, and the
        senders heard in the window."""
        lat, heard = self.stats.drain()
        received, lost = self.stats.totals()
        d_recv, d_lost = received - self.received, lost - self.lost
        self.received, self.lost = received, lost
        if d_recv:
            self.last_audio = time.monotonic()
        return lat, d_recv, d_lost, heard

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

    def _flush(self) -> None:
        """One measurement window: latencies, packets received / lost, events."""
        ctx = self.ctx
        add = ctx.add
        space, user = self.space, self.user
        lat, received, lost, senders = self.window()
        if lat:
            ctx.report("audio_latency", statistics.median(lat), None)
            step = max(1, len(lat) // LATENCY_SAMPLES)
            for v in lat[::step][:LATENCY_SAMPLES]:
                add("audio_latency", space, user, "listener", v)
        if received or lost:
            add("packets_received", space, user, "listener", received, {"senders": senders})
            add("packets_lost", space, user, "listener", lost)
        played, frames, audible = self.heard()
        if played:
            ctx.report("mouth_to_ear", statistics.median(m for _, m in played), None)
            step = max(1, len(played) // LATENCY_SAMPLES)
            for hold, m2e in played[::step][:LATENCY_SAMPLES]:
                add("client_buffer", space, user, "listener", hold)
                add("mouth_to_ear", space, user, "listener", m2e)
        if frames:
            add("audible_fraction", space, user, "listener", audible / frames)
        if self.stream is not None and not self.no_stream:
            add("events_received", space, user, "listener", self.events)
            if self.event_lat:
                ctx.report("event_latency", statistics.median(self.event_lat), None)
                step = max(1, len(self.event_lat) // LATENCY_SAMPLES)
                for v in self.event_lat[::step][:LATENCY_SAMPLES]:
                    add("event_latency", space, user, "listener", v)
            self.events, self.event_lat = 0, []
            if self.caption_lat:
                ctx.report(
                    "caption_latency", statistics.median(v for v, _ in self.caption_lat), None
                )
                step = max(1, len(self.caption_lat) // LATENCY_SAMPLES)
                for v, speech in self.caption_lat[::step][:LATENCY_SAMPLES]:
                    add("caption_latency", space, user, "listener", v, {"speech": round(speech, 3)})
            for speaker, errors, n in self.caption_errs:
                attrs = {"speaker": speaker, "errors": errors, "words": n}
                add("caption_wer", space, user, "listener", errors / n, attrs)
            self.caption_lat, self.caption_errs = [], []

    # ------------------------------------------------------------------ close

    async def close(self) -> None:
        if self._closing is None:
            self._closing = asyncio.get_running_loop().create_task(self._close())
        await asyncio.shield(self._closing)

    async def _close(self) -> None:
        for t in list(self.tasks):
            t.cancel()
        if self.stream is not None:
            self.stream.cancel()
        if self.link is not None:
            if not self.over:
                await quiet(self.client.leave(self.space))
            await quiet(self.link.close())
