"""An in-memory spacesim server for the swarm's behaviour classes (no sockets, no aiortc I/O).

`FakeServer` keeps one `spacesim.policy.Space` per space -- the rulebook the real server
applies -- and plays the protocol's parts the swarm uses: create / start / end, join with
audio, actions (validated against `spacesim.protocol.ACTIONS`), platform moderation,
leave, follows, captions (a perfect recogniser: `FakeSpace.hear`), recording (the
payloads of the packets forwarded while the space is live, back to back: its "file"),
clips, downloads and replays of it, and the event
stream (each event with ``clock_ns``, the "server's"
``time.monotonic_ns()`` at publication; listeners' joins and leaves go only to stage
members' streams, as on the real server). Refusals raise `ClientError` with the
protocol's code and status.

Media: a publishing connection's `SpeakerTrack` is pulled in real time (its own 20 ms
pacing) and every packet it yields is handed, wrapped in a 12-byte RTP header, to every
other connection's ``on_rtp`` while the policy says the publisher may be heard -- so talk
phases, DTX, mutes and the stage gate packets as on a real server.

Use ``server.client`` as a `spacesim.load.api.ClientFactory`::

    server = FakeServer()
    rows = await dry_run(scenario, server.client, seconds=3)
"""

from __future__ import annotations

import asyncio
import itertools
import struct
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterable, Sequence
from typing import Any

from aiortc.mediastreams import MediaStreamError

from spacesim import policy
from spacesim.client.session import ClientError
from spacesim.client.speaker import SpeakerTrack, transcripts
from spacesim.load.api import OnRtp, Unsupported
from spacesim.load.voice import clip_of
from spacesim.protocol import ACTIONS, ERROR_STATUS, REACTIONS, event_message
from spacesim.scenario import NetworkProfile

__all__ = ["FakeClient", "FakeLink", "FakeServer", "FakeSpace"]

_RTP = struct.Struct("!BBHII")
_STAGE = ("host", "cohost", "speaker")
CAPTION_PACKETS = 25  # packets of speech (0.5 s) per final caption


def refuse(code: str, reason: str = "") -> ClientError:
    return ClientError(ERROR_STATUS.get(code, 400), code, reason or code)


def check(outcome: policy.Outcome) -> tuple[policy.Event, ...]:
    if not outcome.ok:
        raise refuse(outcome.code or "bad_request", outcome.reason or "")
    return outcome.events


class FakeLink:
    """One connection: what it receives goes to `on_rtp`; a `publish` track is pumped."""

    def __init__(self, space: FakeSpace, user: str, on_rtp: OnRtp, join: dict[str, Any]) -> None:
        self.fs = space
        self.user = user
        self.on_rtp = on_rtp
        self._join = join
        self.closed = False
        self.track: SpeakerTrack | None = None
        self.pump: asyncio.Task[None] | None = None
        self.sent = 0  # packets this connection's track yielded
        self.forwarded = 0  # of those, packets the server forwarded
        self.received: Counter[int] = Counter()  # ssrc -> packets received
        self.connected = time.monotonic()

    @property
    def join(self) -> dict[str, Any]:
        return self._join

    def alive(self) -> bool:
        return not self.closed

    def datagrams(self) -> int | None:
        """Without nodes (`FakeServer.nodes`), None: listeners watch the audio, as on
        Janus. With nodes, the packets received plus a sender report a second since
        the link connected, until its node is killed, as the cluster's nodes send."""
        server = self.fs.server
        if not server.nodes:
            return None
        node = self._join.get("node", {}).get("id")
        until = server.killed.get(node, time.monotonic())
        return sum(self.received.values()) + int(max(until - self.connected, 0.0))

    def deliver(self, ssrc: int, packet: bytes) -> None:
        if self.fs.server.killed.get(self._join.get("node", {}).get("id")):
            return  # its node is dead
        if not self.closed:
            self.received[ssrc] += 1
            self.on_rtp(0, packet, time.monotonic_ns())

    async def _pump(self, track: SpeakerTrack, ssrc: int) -> None:
        seq = 0
        try:
            while not self.closed:
                pkt = await track.recv()
                self.sent += 1
                if not self.fs.space.may_be_heard(self.user):
                    continue
                self.forwarded += 1
                if self.fs.created.get("recording"):
                    self.fs.recorded.append(bytes(pkt))
                if self.fs.created.get("captions"):
                    self.fs.hear(self.user, track.talking)
                seq = (seq + 1) & 0xFFFF
                ts = int(pkt.pts or 0) & 0xFFFFFFFF
                data = _RTP.pack(0x80, 111, seq, ts, ssrc) + bytes(pkt)
                for other in list(self.fs.links.values()):
                    if other is not self:
                        other.deliver(ssrc, data)
        except MediaStreamError:
            return

    async def close(self) -> None:
        self.closed = True
        if self.track is not None:
            self.track.stop()
        if self.pump is not None:
            self.pump.cancel()
        if self.fs.links.get(self.user) is self:
            del self.fs.links[self.user]


class FakeReplay:
    """A replay connection: the recording's packets to `on_rtp`, paced 20 ms apart, from
    `offset`; it closes itself after the last one, as the server does."""

    def __init__(self, fs: FakeSpace, on_rtp: OnRtp, offset: float) -> None:
        self.packets = fs.recorded[int(offset / 0.02) :]
        self.on_rtp = on_rtp
        self.closed = False
        self.sent = 0
        self._join = {"sdp": None, "offset": offset, "duration_s": len(fs.recorded) * 0.02}
        self.task = asyncio.get_running_loop().create_task(self._play())

    @property
    def join(self) -> dict[str, Any]:
        return self._join

    def alive(self) -> bool:
        return not self.closed

    async def _play(self) -> None:
        start = time.monotonic()
        for i, payload in enumerate(self.packets):
            await asyncio.sleep(max(start + i * 0.02 - time.monotonic(), 0.0))
            if self.closed:
                return
            self.sent += 1
            self.on_rtp(0, _RTP.pack(0x80, 111, i & 0xFFFF, i * 960, 7) + payload,
                        time.monotonic_ns())  # fmt: skip
        await asyncio.sleep(0.1)
        self.closed = True

    async def close(self) -> None:
        self.closed = True
        self.task.cancel()


class FakeSpace:
    """One space: its rulebook, subscribers and connections."""

    def __init__(self, server: FakeServer, space: policy.Space, **created: Any) -> None:
        self.server = server
        self.space = space
        self.created = created  # what create_space was given
        self.subscribers: dict[asyncio.Queue[dict[str, Any] | None], str] = {}
        self.links: dict[str, FakeLink] = {}
        self.reports = itertools.count(1)
        self.published: list[dict[str, Any]] = []
        self.speech: dict[str, tuple[float, int]] = {}  # speaker -> (start, packets)
        self.captions: list[dict[str, Any]] = []  # the final captions sent
        self.clips: list[dict[str, Any]] = []  # clips cut
        self.recorded: list[bytes] = []  # the recording's packets (20 ms each)
        self.replays: list[FakeReplay] = []
        self.downloads: list[tuple[str, int, int | None]] = []  # (resource, first, last)

    def file(self) -> bytes:
        return b"".join(self.recorded)

    def hear(self, speaker: str, talking: bool) -> None:
        """A perfect recogniser: each `CAPTION_PACKETS` of speech, a final caption of the
        speaker's whole clip transcript (start and end on the events' clock)."""
        now = time.monotonic() - self.server.t0
        if not talking:
            return
        start, n = self.speech.get(speaker, (now, 0))
        n += 1
        if n < CAPTION_PACKETS:
            self.speech[speaker] = (start, n)
            return
        self.speech.pop(speaker, None)
        attrs = {"speaker": speaker, "text": transcripts()[clip_of(speaker)], "final": True,
                 "start": start, "end": now, "gap": False}  # fmt: skip
        self.captions.append(attrs)
        self.fan_out(event_message("caption", self.space.space_id, speaker, t=now, attrs=attrs))

    def snapshot(self) -> dict[str, Any]:
        s = self.space
        return {
            "id": s.space_id,
            "host": s.host,
            "status": s.status.value,
            "who_may_speak": s.who_may_speak.value,
            "muted": sorted(u for u in s.stage() if s.is_muted(u)),
            "listeners": s.n_listeners,
            "recording": bool(self.created.get("recording")),
        }

    def publish(self, events: Iterable[policy.Event], extra: dict[str, Any] | None = None) -> None:
        s = self.space
        for ev in events:
            attrs = {**ev.attrs, **(extra or {})}
            msg = event_message(
                ev.kind,
                s.space_id,
                ev.participant,
                t=time.monotonic() - self.server.t0,
                actor=ev.actor,
                role=ev.role.value if ev.role is not None else None,
                attrs=attrs,
            )
            self.fan_out(msg, only_stage=_listener_membership(ev))

    def fan_out(self, msg: dict[str, Any], only_stage: bool = False) -> None:
        msg["clock_ns"] = time.monotonic_ns()
        self.published.append(msg)
        for q, user in list(self.subscribers.items()):
            if only_stage:
                role = self.space.role_of(user)
                if role is None or role.value not in _STAGE:
                    continue
            q.put_nowait(dict(msg))

    async def drop_gone(self) -> None:
        for user, link in list(self.links.items()):
            if self.space.role_of(user) is None:
                await link.close()
        for q, user in list(self.subscribers.items()):
            if user in self.space.blocked or user in self.space.removed:
                q.put_nowait(None)
        if self.space.status is policy.SpaceStatus.ENDED:
            for q in list(self.subscribers):
                q.put_nowait(None)


def _listener_membership(ev: policy.Event) -> bool:
    return ev.kind in ("participant_joined", "participant_left") and (
        ev.role is None or ev.role is policy.Role.LISTENER
    )


class FakeServer:
    """Spaces by id, users' follows, and every action name clients sent."""

    def __init__(self) -> None:
        self.t0 = time.monotonic()
        self.spaces: dict[str, FakeSpace] = {}
        self.follows: dict[str, set[str]] = {}
        self.actions: Counter[str] = Counter()
        self.ids = itertools.count(1)
        #: A target that lacks features: created-with features (`SpaceClient.lacks`)
        #: and actions / requests that raise `Unsupported` (action names, ``events``,
        #: ``follow``, ``moderate``, ``start``, ``clip``).
        self.lacks: frozenset[str] = frozenset()
        self.unsupported: frozenset[str] = frozenset()
        #: A cluster: listeners' links are placed round robin on these node ids (not one
        #: the join avoids, nor a killed one), the stage's on the first; the join answer
        #: names the node.
        self.nodes: list[str] = []
        self.killed: dict[str, float] = {}  # node -> monotonic time it was killed
        self.avoided: list[tuple[str, tuple[str, ...]]] = []  # (user, avoid) of joins
        self._placed = itertools.count()

    def lacking(self, name: str) -> None:
        if name in self.unsupported:
            raise Unsupported(name)

    def client(self, user: str, *, moderator: bool = False) -> FakeClient:
        """The `ClientFactory`."""
        return FakeClient(self, user, moderator)

    def get(self, space: str) -> FakeSpace:
        fs = self.spaces.get(space)
        if fs is None:
            raise refuse("not_found", f"no space {space}")
        return fs

    async def close(self) -> None:
        for fs in self.spaces.values():
            for link in list(fs.links.values()):
                await link.close()
            for replay in fs.replays:
                await replay.close()


class FakeClient:
    """A `SpaceClient` on a `FakeServer`."""

    def __init__(self, server: FakeServer, user: str, moderator: bool = False) -> None:
        self.server = server
        self._user = user
        self.moderator = moderator

    @property
    def user(self) -> str:
        return self._user

    @property
    def lacks(self) -> frozenset[str]:
        return self.server.lacks

    async def create_space(
        self,
        title: str,
        who_may_speak: str,
        listener_cap: int | None = None,
        scheduled_for: float | None = None,
        *,
        captions: bool = False,
        recording: bool = False,
    ) -> str:
        sid = f"sp{next(self.server.ids)}"
        space = policy.Space(
            sid,
            self.user,
            limits=policy.Limits(listener_cap=listener_cap),
            who_may_speak=policy.WhoMaySpeak(who_may_speak),
            status=policy.SpaceStatus.SCHEDULED if scheduled_for else policy.SpaceStatus.LIVE,
            host_follows=self.server.follows.get(self.user, ()),
        )
        self.server.spaces[sid] = FakeSpace(
            self.server, space, title=title, who_may_speak=who_may_speak,
            listener_cap=listener_cap, scheduled_for=scheduled_for, captions=captions,
            recording=recording,
        )  # fmt: skip
        return sid

    async def start_space(self, space: str) -> None:
        self.server.lacking("start")
        fs = self.server.get(space)
        fs.publish(check(fs.space.start(self.user)))

    async def end_space(self, space: str) -> None:
        fs = self.server.get(space)
        fs.publish(check(fs.space.end(self.user)))
        await fs.drop_gone()

    async def connect_audio(
        self,
        space: str,
        on_rtp: OnRtp,
        *,
        publish: SpeakerTrack | None = None,
        path: NetworkProfile | None = None,
        read_every: float | None = None,
        seed: int = 0,
        avoid: Sequence[str] = (),
    ) -> FakeLink:
        fs = self.server.get(space)
        await asyncio.sleep(0)
        events: tuple[policy.Event, ...] = ()
        if fs.space.role_of(self.user) is None:
            events = check(fs.space.join(self.user))
        elif fs.space.status is policy.SpaceStatus.ENDED:
            raise refuse("space_ended")
        fs.publish(events)
        old = fs.links.get(self.user)
        if old is not None:
            await old.close()
        role = fs.space.role_of(self.user)
        join: dict[str, Any] = {
            "participant": self.user,
            "role": role.value if role is not None else None,
            "sdp": None,
            "space": fs.snapshot(),
        }
        if self.server.nodes:
            self.server.avoided.append((self.user, tuple(avoid)))
            live = [n for n in self.server.nodes if n not in avoid and n not in self.server.killed]
            i = next(self.server._placed) if join["role"] == "listener" else 0  # stage: origin
            join["node"] = {"id": live[i % len(live)]}
        link = fs.links[self.user] = FakeLink(fs, self.user, on_rtp, join)
        if publish is not None:
            link.track = publish
            ssrc = hash(self.user) & 0xFFFFFFFF
            link.pump = asyncio.get_running_loop().create_task(link._pump(publish, ssrc))
        return link

    async def act(self, space: str, action: str, **fields: str) -> dict[str, Any]:
        self.server.actions[action] += 1
        self.server.lacking(action)
        if action not in ACTIONS:
            raise refuse("unknown_action", action)
        for name in ACTIONS[action]:
            if name not in fields:
                raise refuse("missing_field", f"{action} needs {name}")
        fs = self.server.get(space)
        s, me, target = fs.space, self.user, fields.get("target")
        extra: dict[str, Any] = {}
        if action == "react":
            if fields["emoji"] not in REACTIONS:
                raise refuse("bad_request", "unknown emoji")
            if s.role_of(me) is None:
                raise refuse("not_present")
            fs.fan_out(event_message("reaction", s.space_id, me, t=0.0,
                                     attrs={"emoji": fields["emoji"]}))  # fmt: skip
            return {"ok": True}
        if action in ("raise_hand", "lower_hand", "accept_invite", "decline_invite"):
            outcome = getattr(s, action)(me)
        elif action == "mute_all":
            outcome = s.mute_all(me)
        elif action == "report":
            outcome = s.report(me, target, fields.get("reason", ""))
            extra = {"report_id": next(fs.reports)}
        elif action == "set_who_may_speak":
            outcome = s.set_who_may_speak(me, policy.WhoMaySpeak(fields["setting"]))
        else:
            assert target is not None
            outcome = getattr(s, action)(me, target)
        fs.publish(check(outcome), extra)
        await fs.drop_gone()
        return {"ok": True}

    async def moderate(
        self, space: str, action: str, target: str | None = None, report: int | None = None
    ) -> dict[str, Any]:
        self.server.lacking("moderate")
        if not self.moderator:
            raise refuse("forbidden", "not a moderator")
        fs = self.server.get(space)
        fs.publish(check(fs.space.moderate(policy.ModerationAction(action), target)))
        await fs.drop_gone()
        return {"ok": True}

    async def leave(self, space: str) -> None:
        fs = self.server.get(space)
        if fs.space.role_of(self.user) is not None:
            fs.publish(check(fs.space.leave(self.user)))
        link = fs.links.get(self.user)
        if link is not None:
            await link.close()
        await fs.drop_gone()

    async def events(self, space: str) -> AsyncIterator[dict[str, Any]]:
        self.server.lacking("events")
        fs = self.server.get(space)
        if self.user in fs.space.blocked or self.user in fs.space.removed:
            raise refuse("forbidden")
        q: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
        fs.subscribers[q] = self.user
        try:
            yield {"type": "hello", "protocol": "1", "space": fs.snapshot()}
            while True:
                msg = await q.get()
                if msg is None:
                    return
                yield msg
        finally:
            fs.subscribers.pop(q, None)

    async def cut_clip(self, space: str, duration: float = 30.0) -> dict[str, Any]:
        self.server.lacking("clip")
        fs = self.server.get(space)
        if fs.space.role_of(self.user) is None:
            raise refuse("not_present")
        if not fs.created.get("recording"):
            raise refuse("no_recording")
        data = b"".join(fs.recorded[-max(1, int(duration / 0.02)) :])
        clip = {"id": f"c-{len(fs.clips)}", "space": space, "user": self.user,
                "duration_s": duration, "bytes": len(data), "data": data}  # fmt: skip
        fs.clips.append(clip)
        return {k: v for k, v in clip.items() if k != "data"}

    def _recorded(self, space: str) -> FakeSpace:
        fs = self.server.get(space)
        if not fs.created.get("recording"):
            raise refuse("no_recording")
        return fs

    async def recording_info(self, space: str) -> dict[str, Any]:
        fs = self._recorded(space)
        status = "stopped" if fs.space.status is policy.SpaceStatus.ENDED else "recording"
        return {"space": space, "status": status, "duration_s": len(fs.recorded) * 0.02,
                "bytes": len(fs.file())}  # fmt: skip

    async def download(
        self, space: str, resource: str, first: int = 0, last: int | None = None
    ) -> bytes:
        fs = self._recorded(space)
        await asyncio.sleep(0)
        fs.downloads.append((resource, first, last))
        if resource == "recording":
            data = fs.file()
        else:
            clip = next((c for c in fs.clips if f"clips/{c['id']}" == resource), None)
            if clip is None:
                raise refuse("not_found")
            data = clip["data"]
        return data[first : None if last is None else last + 1]

    async def connect_replay(
        self,
        space: str,
        on_rtp: OnRtp,
        *,
        offset: float = 0.0,
        path: NetworkProfile | None = None,
        seed: int = 0,
    ) -> FakeReplay:
        fs = self._recorded(space)
        await asyncio.sleep(0)
        replay = FakeReplay(fs, on_rtp, offset)
        fs.replays.append(replay)
        return replay

    async def follow(self, user: str) -> None:
        self.server.lacking("follow")
        self.server.follows.setdefault(self.user, set()).add(user)
        for fs in self.server.spaces.values():
            if fs.space.host == self.user:
                fs.space.follow(user)
