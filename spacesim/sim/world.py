"""The simulated world: rooms, their participants and the nodes they load.

Processes (`spacesim.sim.processes`) change the world only through these methods, so
every membership or stage change passes through `spacesim.policy` (the same rulebook
the server applies) and every node sees the load change at the moment it happens.

The event stream (what the server sends its WebSocket subscribers) is charged here,
``cpu_per_event`` per event per subscriber, by the server's own rule
(`policy.delivery`): most policy events, a reaction and the coalesced ``audience``
count (one a second while the count changes) go to every subscriber; listeners' joins
and leaves and reports go to the stage, a personal block to the blocker. Subscribers
are the stage plus each listener who opened the stream (`behaviour.subscribes_to_events`,
decided per listener at join). To keep a large run
fast the work is aggregated per tick: each room's deliveries are drawn (reactions) or
counted (policy events, joins, leaves) per tick and charged to each node as a steady
load over the next tick (`Node.event_rate`), in the same queue as the packets; so
policy events are charged up to a tick late and spread over it, not as a spike.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from dataclasses import dataclass, field

import simpy

from spacesim import behaviour, policy
from spacesim.results import Recorder
from spacesim.scenario import NetworkProfile, Scenario
from spacesim.sim.decisions import Decisions
from spacesim.sim.draws import Draws
from spacesim.sim.node import Node

__all__ = ["Listener", "ReplayListener", "Room", "World"]

# Handshakes before media flows (signalling, ICE check, DTLS); each is one round trip
# and, when its packet is lost, waits for a 1 s retransmission timer (RFC 6347 4.2.4.1).
# A join's round trips: signalling (the join request and its answer) and DTLS (one
# flight each way from the client's side: aiortc sends no cookie exchange); ICE is
# max(ICE_CHECK_PACING, RTT): aioice's Connection.connect() starts a check, then sleeps
# 20 ms before looking at the result (aioice/ice.py), so a check on loopback takes 20 ms.
_JOIN_ROUND_TRIPS = 2
ICE_CHECK_PACING = 0.020
# What a lost packet costs each step (its retransmission timer): signalling over TCP,
# Linux's minimum RTO; an ICE check, aioice's RETRY_RTO (aioice/stun.py); a DTLS flight,
# OpenSSL's initial DTLS timer (DTLSv1_get_timeout() gives ~1 s).
_RETRANSMIT = (0.2, 0.5, 1.0)
CLIP_SECONDS = 30.0  # a listener's clip: the protocol's longest, as the swarm cuts them


@dataclass(slots=True)
class Listener:
    """A connected participant's simulation-only facts (the policy holds their role)."""

    node: Node
    net: NetworkProfile
    requested_at: float  # when the listener asked to join
    joined_at: float  # when media could flow (the join completed)
    sampled: bool = False
    subscribed: bool = True  # opened the space's event stream


@dataclass(slots=True)
class ReplayListener:
    """Someone playing an ended space's recording (`World.replay_join`)."""

    via: str  # "webrtc" or "http"
    heard_at: float  # when its first audio arrived
    node: Node | None  # the node replaying it over WebRTC (None: HTTP)


@dataclass
class Room:
    """One space: its policy state plus what the simulator tracks around it."""

    name: str
    space: policy.Space
    origin: Node
    present: dict[str, Listener] = field(default_factory=dict)
    ids: list[str] = field(default_factory=list)  # listeners, for O(1) random choice
    index: dict[str, int] = field(default_factory=dict)
    node_listeners: dict[Node, int] = field(default_factory=dict)
    talking: int = 0  # senders now (talking with DTX, unmuted on stage without)
    senders: dict[str, NetworkProfile] = field(default_factory=dict)  # who sends, their path
    stage_nets: dict[str, NetworkProfile] = field(default_factory=dict)
    talk_seconds: float = 0.0  # speaker-seconds of talk in the current tick
    talk_changed: float = 0.0
    floor_seconds: float = 0.0  # seconds of the current tick with anyone sending
    waiting_audio: list[str] = field(default_factory=list)  # joined, not yet heard audio
    sampled: dict[str, Listener] = field(default_factory=dict)  # whose audio is measured
    hands: dict[str, float] = field(default_factory=dict)  # listener -> time raised
    talkers: dict[str, simpy.Process] = field(default_factory=dict)  # pid -> talker process
    node_subs: dict[Node, int] = field(default_factory=dict)  # subscribed listeners per node
    event_load: dict[Node, float] = field(default_factory=dict)  # this tick's event cores
    relay_load: dict[Node, float] = field(default_factory=dict)  # cores of its cascade
    events_tick: int = 0  # events delivered to every subscriber since the last sample
    count_changes: int = 0  # joins and leaves since the last audience tick
    stage_deliveries: int = 0  # join/leave events delivered to the stage since then
    broadcasts: int = 0  # policy events delivered to every subscriber since then
    caption_carry: float = 0.0  # caption events not yet whole (captions.py: per speech s)
    stage_streams: int = 0  # senders' streams the origin forwards to the stage members
    started: simpy.Event | None = None  # triggers when the space goes live
    number: int = 0  # its place among the run's rooms (what `Decisions` are asked about)
    captions: bool = False  # live captions on (`features.captions`)
    recording: bool = False  # the host records it (`features.recording`)
    recorded_from: float | None = None  # the recording's first packet
    recorded_bytes: float = 0.0  # what the recording wrote, up to the last tick
    recording_size: float = 0.0  # its bytes once the space ended
    recording_seconds: float = 0.0  # its length once the space ended
    ended: simpy.Event | None = None  # triggers when the space ends
    replays: dict[str, ReplayListener] = field(default_factory=dict)  # playing it now

    def add_id(self, pid: str) -> None:
        self.index[pid] = len(self.ids)
        self.ids.append(pid)

    def drop_id(self, pid: str) -> None:
        i = self.index.pop(pid, None)
        if i is None:
            return
        last = self.ids.pop()
        if last != pid:
            self.ids[i] = last
            self.index[last] = i


class World:
    """Shared state of one simulation run."""

    def __init__(
        self,
        env: simpy.Environment,
        scenario: Scenario,
        draws: Draws,
        recorder: Recorder,
        decisions: Decisions | None = None,
    ) -> None:
        self.env = env
        self.sc = scenario
        self.draws = draws
        self.decide = decisions or Decisions(scenario, draws)
        self.rec = recorder
        self.add = recorder.append
        self.pps = scenario.speaking.packets_per_second
        self.nodes = [
            Node(f"node-{i}", scenario.server, self.pps) for i in range(scenario.server.nodes)
        ]
        # A listener reserves one stream per speaker that may talk at once, up to the slots.
        self.streams_per_listener = policy.streams_reserved(
            scenario.speaking.active_speakers, scenario.server.slots
        )
        self.cpu_per_event = scenario.server.cpu_per_event
        self.edge_delay = scenario.server.edge_delay
        self.slots = scenario.server.slots
        self.publisher_packet = scenario.server.cpu_per_publisher_packet
        self.relay_send = scenario.server.cpu_per_relay_send
        self.relay_receive = scenario.server.cpu_per_relay_receive
        self.asr_cost = scenario.server.asr_cost
        self.caption_events = scenario.server.caption_events
        self.recorded_packet_bytes = scenario.server.recorded_packet_bytes
        self.clip_rate = scenario.features.clip_rate
        self.clip_bytes = CLIP_SECONDS * self.pps * self.recorded_packet_bytes
        scheduled = scenario.rooms.starts_at is not None
        self.rooms: list[Room] = []
        for i in range(scenario.rooms.count):
            name = f"room-{i}"
            space = policy.Space(
                name,
                f"{name}/host",
                limits=policy.Limits(listener_cap=scenario.rooms.listener_cap),
                who_may_speak=policy.WhoMaySpeak(scenario.rooms.who_may_speak),
                status=policy.SpaceStatus.SCHEDULED if scheduled else policy.SpaceStatus.LIVE,
            )
            room = Room(name, space, self.nodes[i % len(self.nodes)], number=i)
            room.captions, room.recording = self.decide.features(i)
            room.started = env.event()
            room.ended = env.event()
            self.rooms.append(room)
        self.captioned = any(r.captions for r in self.rooms)

    # ------------------------------------------------------------------ records

    def emit(self, room: Room, outcome: policy.Outcome, value: float = math.nan) -> None:
        """Record a policy outcome's events (the same names as the record vocabulary),
        then let the world follow them (`settle`)."""
        t = self.env.now
        for ev in outcome.events:
            attrs = dict(ev.attrs)
            if ev.actor is not None:
                attrs["actor"] = ev.actor
            role = ev.role.value if ev.role is not None else ""
            text = json.dumps(attrs, sort_keys=True) if attrs else None
            self.add((ev.kind, t, room.name, ev.participant, role, value, text))
        self.settle(room, outcome)

    def settle(self, room: Room, outcome: policy.Outcome) -> None:
        """What a policy outcome's events do beyond the records.

        Each event on the stream is delivered (and charged); the removed are
        disconnected; a talker whose stage state changed re-reads it; an ended space
        empties.
        """
        ended = False
        for ev in outcome.events:
            kind = ev.kind
            # Who hears of it is the server's rule (policy.delivery); a leave is noticed
            # when it is someone on stage's (the server also counts listeners who had
            # raised a hand or been invited: rarer, priced as the stage's here).
            to = policy.delivery(ev, noticed=ev.participant in room.stage_nets)
            if to is policy.Delivery.EVERYONE:
                self.broadcast(room)
            elif to is policy.Delivery.STAGE:
                room.stage_deliveries += len(room.stage_nets)
            else:
                room.stage_deliveries += 1  # the actor's own stream
            pid = ev.participant
            if kind == "removed":
                self.detach(room, pid, reason="removed")
                self._disconnect_stage(room, pid, "removed")
            elif kind == "participant_left":  # the host leaving (listeners leave via `leave`)
                self._disconnect_stage(room, pid, None, record=False)
            elif kind == "space_ended":
                ended = True
            talker = room.talkers.get(pid)
            if talker is not None:
                self.nudge(talker)
        if ended:
            self._empty(room)

    def broadcast(self, room: Room, n: int = 1) -> None:
        """`n` events to every subscriber now (charged with the tick's, `event_tick`)."""
        room.events_tick += n
        room.broadcasts += n

    def nudge(self, talker: simpy.Process) -> None:
        """Wake a talker so that it re-reads the policy (muted, off stage, ended)."""
        if talker.is_alive and talker is not self.env.active_process:
            talker.interrupt()

    def _disconnect_stage(
        self, room: Room, pid: str, reason: str | None, *, record: bool = True
    ) -> None:
        if room.stage_nets.pop(pid, None) is None:
            return
        now = self.env.now
        room.origin.change(now, connections=-1)
        self._stage_hears(room)
        if record:
            attrs = json.dumps({"reason": reason}) if reason else None
            self.add(("participant_left", now, room.name, pid, "", math.nan, attrs))

    def _empty(self, room: Room) -> None:
        """The space ended: everyone still connected leaves, talkers stop."""
        for pid in list(room.present):
            self.detach(room, pid, reason="space_ended")
        for pid in list(room.stage_nets):
            self._disconnect_stage(room, pid, "space_ended")
        for talker in list(room.talkers.values()):
            self.nudge(talker)
        room.hands.clear()
        room.waiting_audio.clear()
        room.count_changes = room.stage_deliveries = room.broadcasts = 0
        now = self.env.now
        if room.recording and room.recorded_from is not None:
            self._account_talk(room)
            pending = room.floor_seconds * self.pps * self.recorded_packet_bytes
            room.recording_size = room.recorded_bytes + pending
            room.recording_seconds = now - room.recorded_from
        if room.ended is not None and not room.ended.triggered:
            room.ended.succeed()
        for node, load in room.event_load.items():
            node.set_event_rate(now, node.event_rate - load)
        room.event_load = {}

    # ------------------------------------------------------------------ events per tick

    def event_tick(self, room: Room, reactions: int, tick: float) -> None:
        """Charge the room's event deliveries as a steady load over the coming tick.

        `reactions` (drawn for the coming tick) go to every subscriber, as do the policy
        events of the last tick and the coalesced ``audience`` count, one a second while
        the count changes (at most one per whole second of the tick, and no more than the
        joins and leaves there were); the listeners' joins and leaves since the last tick
        go to the stage.
        """
        now = self.env.now
        counts = 0
        if room.count_changes:
            counts = min(room.count_changes, max(1, int(tick)))
            self.add(("audience", now, room.name, "", "", float(len(room.present)), None))
        room.count_changes = 0
        room.events_tick += reactions + counts
        everyone = reactions + counts + room.broadcasts
        room.broadcasts = 0
        stage = room.stage_deliveries
        room.stage_deliveries = 0
        per = self.cpu_per_event / tick
        load: dict[Node, float] = {}
        if everyone:
            for node, subs in room.node_subs.items():
                if subs:
                    load[node] = everyone * subs * per
        on_origin = everyone * len(room.stage_nets) + stage
        if on_origin:
            load[room.origin] = load.get(room.origin, 0.0) + on_origin * per
        if not load and not room.event_load:
            return
        for node in set(load) | set(room.event_load):
            delta = load.get(node, 0.0) - room.event_load.get(node, 0.0)
            if delta:
                node.set_event_rate(now, node.event_rate + delta)
        room.event_load = load

    def event_latency(self, room: Room, who: Listener) -> float:
        """Publication at the server -> arrival at a subscribed listener, for one event.

        The node's queue (as a packet would wait), the listener's place in the event's
        fan-out over that node's subscribers, then the listener's one-way path.
        """
        d = self.draws
        node = who.node
        subs = room.node_subs.get(node, 0)
        if node is room.origin:
            subs += len(room.stage_nets)
        wait = node.event_wait(d.uniform(), d.uniform())
        wait += d.uniform() * subs * self.cpu_per_event / node.cores
        if node.gc_paused:
            wait += node.gc_wait(d.uniform(), self.env.now)
        delay = wait + self.one_way(who.net)
        if node is not room.origin:
            delay += self.edge_delay
        return delay

    # ------------------------------------------------------------------ network

    def pick_network(self, room: Room, pid: str) -> NetworkProfile:
        """A participant's path (`Decisions.network`)."""
        return self.decide.network(room.number, pid)

    def _path_attrs(self, net: NetworkProfile, node: Node | None = None) -> str | None:
        """A replay records each participant's path as the swarm does (`load.host.path_attrs`),
        and with several nodes the node carrying them (``node``, as a cluster's records say),
        so the two runs' records compare participant by participant; an independent draw
        leaves it out (a million joins' JSON)."""
        if not self.decide.replayed:
            return None
        attrs: dict[str, object] = {"jitter": net.jitter, "loss": net.loss, "rtt": net.rtt}
        if node is not None and len(self.nodes) > 1:
            attrs["node"] = node.name
        return json.dumps(attrs)

    def one_way(self, net: NetworkProfile) -> float:
        """One-way network delay: half the RTT plus an exponential jitter term."""
        j = self.draws.exp(net.jitter) if net.jitter > 0 else 0.0
        return net.rtt / 2 + j

    def audio_latency(self, room: Room, who: Listener, *, delivered: bool = False) -> float | None:
        """Publisher -> listener delay of one packet, None if the server loses it.

        Network + server only: the receiver's jitter buffer and playout are not included.
        The publisher is one of the room's current senders, on their own network path.
        With `delivered`, a packet that the node does not lose (drawn from the waits of
        those, rather than by drawing packets until one gets through).
        """
        d = self.draws
        u_busy = d.uniform()
        if delivered:
            loss = who.node.loss_now()
            u_busy = loss + u_busy * (1.0 - loss)
        server = who.node.packet_wait(u_busy, d.uniform(), d.uniform())
        if server is None:
            return None
        if who.node.gc_paused:  # (no draw without the term: seeds keep their runs)
            server += who.node.gc_wait(d.uniform(), self.env.now)
        # a speaker the listener hears: the slots go to the first to start
        senders = list(room.senders.values())[: self.slots]
        uplink = senders[d.index(len(senders))] if senders else self.sc.network[0]
        delay = self.one_way(uplink) + server + self.one_way(who.net)
        if who.node is not room.origin:
            delay += self.edge_delay
        return delay

    def delivered_latency(self, room: Room, who: Listener, *, first: bool = False) -> float:
        """Latency of a packet that gets through.

        With `first`, what precedes it counts too: the time until join work ahead of
        the packets falls within the queue limit, and a frame per packet lost after.
        """
        node = who.node
        clear = node.clear_time()
        if clear > 0.0:  # every packet is lost until then; the first through waits ~D
            wait = node.forward_delay + node.queue_limit()
            wait += self.draws.uniform() * node.fanout_spread()
            uplink = self.one_way(self.sc.network[0])
            return (clear if first else 0.0) + uplink + wait + self.one_way(who.net)
        delay = self.audio_latency(room, who, delivered=True)
        if delay is None:  # the queue is exactly full: only near-total overload gets here
            return 1000 / self.pps
        if first:  # a frame per packet lost before it: geometric in the node's loss
            loss = node.loss_now()
            if loss > 0.0:
                lost = math.log1p(-self.draws.uniform()) / math.log(loss) if loss < 1.0 else 1e3
                delay += min(math.floor(lost), 1000) / self.pps
        return delay

    # ------------------------------------------------------------------ membership

    def _place(self, room: Room, pid: str) -> Node | None:
        need = self.streams_per_listener
        nodes = self.nodes
        i = self.decide.place(
            room.number,
            pid,
            len(nodes),
            lambda i: nodes[i].listeners,
            lambda i: nodes[i].admits(need),
        )
        return None if i is None else nodes[i]

    def join_stage(self, room: Room, pid: str, role: str) -> None:
        """Connect a stage member (host, co-host, speaker) to the room's origin node."""
        room.origin.change(self.env.now, connections=1)
        net = room.stage_nets[pid] = self.pick_network(room, pid)
        self._stage_hears(room)
        room.stage_deliveries += len(room.stage_nets) - 1
        attrs = self._path_attrs(net, room.origin)
        self.add(("participant_joined", self.env.now, room.name, pid, role, math.nan, attrs))

    def _refuse_join(self, room: Room, pid: str, reason: str) -> None:
        attrs = json.dumps({"reason": reason})
        self.add(("join_refused", self.env.now, room.name, pid, "listener", math.nan, attrs))

    def _handshake(self, net: NetworkProfile) -> float:
        """Signalling, ICE and DTLS before media flows (see `_JOIN_ROUND_TRIPS`), each with
        a jitter term each way and its retransmission timer when its packet is lost, plus
        the client's own work (``server.client_setup``)."""
        d = self.draws
        took = _JOIN_ROUND_TRIPS * net.rtt + max(ICE_CHECK_PACING, net.rtt)
        took += self.sc.server.client_setup
        if net.jitter > 0:
            took += d.gamma(2 * (_JOIN_ROUND_TRIPS + 1), net.jitter)
        if net.loss > 0:
            for timer in _RETRANSMIT:
                if d.uniform() < net.loss:
                    took += timer
        return took

    def join_listener(self, room: Room, pid: str) -> Listener | None:
        """Admit a listener: policy first, then admission control, then the node."""
        now = self.env.now
        outcome = room.space.join(pid)
        if not outcome.ok:
            self._refuse_join(room, pid, outcome.code or "refused")
            return None
        node = self._place(room, pid)
        if node is None:
            room.space.leave(pid)
            self._refuse_join(room, pid, "server_full")
            return None
        net = self.pick_network(room, pid)
        d = self.draws
        here = room.node_listeners.get(node, 0)
        # The node fans this room's senders out once it has a listener of the room.
        heard = self.heard(room.talking)
        senders = 0 if here else heard
        join_time = node.connect(now, heard, senders, self.sc.server.cpu_per_join)
        room.stage_deliveries += len(room.stage_nets)  # the stage sees who comes
        room.count_changes += 1
        join_time += self._handshake(net)
        node.listeners += 1
        node.reserved_streams += self.streams_per_listener
        room.node_listeners[node] = here + 1
        if not here and node is not room.origin:
            self._relays(room)
        who = Listener(node, net, now, now + join_time)
        if len(room.sampled) < self.sc.sim.latency_sample:
            who.sampled = True
            room.sampled[pid] = who
        if self.decide.subscribes(room.number, pid):
            room.node_subs[node] = room.node_subs.get(node, 0) + 1
        else:
            who.subscribed = False
        room.present[pid] = who
        room.add_id(pid)
        if room.space.who_may_speak is policy.WhoMaySpeak.FOLLOWED and (
            d.uniform() < self.sc.rooms.host_follows
        ):
            room.space.follow(pid)
        attrs = self._path_attrs(net, node)
        self.add(("participant_joined", now, room.name, pid, "listener", join_time, attrs))
        return who

    def detach(
        self, room: Room, pid: str, reason: str | None = None, role: str = "listener"
    ) -> None:
        """Undo a listener's node load and bookkeeping (after the policy let them go)."""
        who = room.present.pop(pid, None)
        if who is None:
            return
        now = self.env.now
        node = who.node
        left = room.node_listeners[node] - 1
        heard = self.heard(room.talking)
        node.change(now, streams=-heard, connections=-1, senders=0 if left else -heard)
        node.listeners -= 1
        node.reserved_streams -= self.streams_per_listener
        if left:
            room.node_listeners[node] = left
        else:
            del room.node_listeners[node]
            if node is not room.origin:
                self._relays(room)
        room.drop_id(pid)
        room.hands.pop(pid, None)
        if who.subscribed:
            room.node_subs[node] -= 1
        room.stage_deliveries += len(room.stage_nets)
        room.count_changes += 1
        if who.sampled:
            del room.sampled[pid]
        attrs = json.dumps({"reason": reason}) if reason else None
        self.add(("participant_left", now, room.name, pid, role, now - who.joined_at, attrs))

    def leave(self, room: Room, pid: str) -> None:
        """A listener ends their session (if still there: they may have been removed)."""
        if pid in room.present:
            role = room.space.role_of(pid)
            room.space.leave(pid)
            self.detach(room, pid, role=role.value if role else "listener")

    # ------------------------------------------------------------------ talking

    def _account_talk(self, room: Room) -> None:
        now = self.env.now
        room.talk_seconds += room.talking * (now - room.talk_changed)
        if room.talking > 0:
            room.floor_seconds += now - room.talk_changed
        room.talk_changed = now

    def heard(self, talking: int) -> int:
        """Streams a listener receives while `talking` speakers send: one each, up to the
        server's slots (``server.slots``; a further speaker's packets are dropped)."""
        return min(talking, self.slots)

    def talk(self, room: Room, pid: str, delta: int) -> None:
        """`pid` starts (+1) or stops (-1) sending: every node's fan-out changes now (past
        the slots a speaker more or less changes what the room receives, not its fan-out)."""
        self._account_talk(room)
        before = self.heard(room.talking)
        room.talking += delta
        heard = self.heard(room.talking) - before
        if delta > 0:
            who = room.present.get(pid)
            room.senders[pid] = who.net if who else room.stage_nets.get(pid, self.sc.network[0])
        else:
            room.senders.pop(pid, None)
        now = self.env.now
        if delta > 0 and room.recording and room.recorded_from is None:
            room.recorded_from = now  # its timeline starts at the first packet
        if heard:
            for node, n in room.node_listeners.items():
                node.change(now, streams=heard * n, senders=heard)
        self._relays(room)
        self._stage_hears(room)
        if delta > 0 and room.waiting_audio:
            self._first_audio(room)

    def _relays(self, room: Room) -> None:
        """The room's packets before any fan-out, now: its origin receives each packet its
        senders send (``cpu_per_publisher_packet``) and relays it once to every other node
        with listeners of the room, which receives it (`Node.relay_rate`)."""
        if len(self.nodes) < 2 and not self.publisher_packet:
            return
        now = self.env.now
        rate = room.talking * self.pps
        load: dict[Node, float] = {}
        others = [n for n in room.node_listeners if n is not room.origin]
        if rate > 0:
            load[room.origin] = rate * (self.publisher_packet + self.relay_send * len(others))
            for node in others:
                load[node] = load.get(node, 0.0) + rate * self.relay_receive
        for node in set(load) | set(room.relay_load):
            delta = load.get(node, 0.0) - room.relay_load.get(node, 0.0)
            if delta:
                node.set_relay_rate(now, node.relay_rate + delta)
        room.relay_load = load

    def _stage_hears(self, room: Room) -> None:
        """The stage hears every sender but itself (up to the slots): the origin forwards
        those streams too.

        The reference server sends each speaker's audio to every other connected member,
        stage included (one swarm run: 7 on stage, 3 talking, a quarter of its packets).
        Recounted on each change (a stage is a few members).
        """
        stage = room.stage_nets
        talking = len(room.senders)
        n = sum(self.heard(talking - (p in room.senders)) for p in stage)
        if n != room.stage_streams:
            room.origin.change(self.env.now, streams=n - room.stage_streams)
            room.stage_streams = n

    def heard_at_join(self, room: Room, who: Listener, pid: str) -> bool:
        """With continuous senders the first packet follows the join: record it now.

        Saves an event per listener; with DTX (or nobody sending) the listener must wait
        for a talk spurt, so `heard_soon` runs when the join completes instead.
        """
        if self.sc.speaking.dtx or room.talking == 0:
            return False
        value = who.joined_at - who.requested_at + self._first_packet_wait(room, who)
        if who.joined_at <= self.sc.duration:
            self.add(("first_audio", who.joined_at, room.name, pid, "listener", value, None))
        return True

    def heard_soon(self, room: Room, pid: str) -> None:
        """Record first audio (from the join request) for a listener whose join completed."""
        if pid not in room.present:
            return
        if room.talking > 0:
            who = room.present[pid]
            value = self.env.now - who.requested_at + self._first_packet_wait(room, who)
            self.add(("first_audio", self.env.now, room.name, pid, "listener", value, None))
        else:
            room.waiting_audio.append(pid)

    def _first_packet_wait(self, room: Room, who: Listener) -> float:
        return self.delivered_latency(room, who, first=True) + self.draws.uniform() / self.pps

    def _first_audio(self, room: Room) -> None:
        now = self.env.now
        for pid in room.waiting_audio:
            who = room.present.get(pid)
            if who is None:
                continue
            value = now - who.requested_at + self._first_packet_wait(room, who)
            self.add(("first_audio", now, room.name, pid, "listener", value, None))
        room.waiting_audio.clear()

    # ------------------------------------------------------------------ sampling

    def sample_tick(self, tick: float, record: bool) -> None:
        """Per-tick records: node CPU and packets, concurrency, the sampled listeners' audio
        and event stream (events received in the tick, one event's latency).

        A sampled listener's server-side loss in a tick is its node's dropped share over
        that tick, so listener and node records agree by construction.
        """
        now = self.env.now
        d = self.draws
        add = self.add
        server_loss: dict[Node, float] = {}
        for node in self.nodes:
            busy, _offered, fwd, dropped = node.take_tick(now)
            total = fwd + dropped
            server_loss[node] = dropped / total if total > 0 else node.loss_now()
            if record:
                util = busy / (tick * node.cores)
                add(("node_cpu", now, "", node.name, "node", busy / tick, None))
                add(("node_utilisation", now, "", node.name, "node", util, None))
                add(("packets_forwarded", now, "", node.name, "node", fwd, None))
                add(("packets_dropped", now, "", node.name, "node", dropped, None))
        asr: dict[Node, float] = {}
        for room in self.rooms:
            self._account_talk(room)
            talk, floor = room.talk_seconds, room.floor_seconds
            room.talk_seconds = room.floor_seconds = 0.0
            if room.recording:
                room.recorded_bytes += floor * self.pps * self.recorded_packet_bytes
            events = room.events_tick
            room.events_tick = 0
            if not record:
                continue
            self._feature_costs(room, talk, floor, tick, asr)
            add(("concurrency", now, room.name, "", "listener", float(len(room.present)), None))
            for pid, who in room.sampled.items():
                if who.joined_at > now or not who.subscribed:
                    continue
                add(("events_received", now, room.name, pid, "listener", float(events), None))
                if events:
                    latency = self.event_latency(room, who)
                    add(("event_latency", now, room.name, pid, "listener", latency, None))
            expected = int(talk * self.pps + d.uniform())  # unbiased rounding
            if expected <= 0:
                continue
            for pid, who in room.sampled.items():
                if who.joined_at > now:
                    continue
                p = (1.0 - who.net.loss) * (1.0 - server_loss[who.node])
                got = d.binomial(expected, p)
                add(("packets_received", now, room.name, pid, "listener", float(got), None))
                add(("packets_lost", now, room.name, pid, "listener", float(expected - got), None))
                if got:
                    latency = self.delivered_latency(room, who)
                    add(("audio_latency", now, room.name, pid, "listener", latency, None))
        if record and self.captioned:
            for node in self.nodes:
                add(("asr_cores", now, "", node.name, "node", asr.get(node, 0.0), None))

    def cut_clips(self, room: Room, tick: float, n: int) -> None:
        """Listeners of a recorded room cut clips (``features.clip_rate`` each, the
        last `CLIP_SECONDS` of its recording: one stream's bytes, written to disk as a
        ``recording_bytes`` record of role ``clip``, and sent once to the cutter, an
        ``egress_bytes`` record of role ``clip``)."""
        if not room.recording:
            return
        k = behaviour.events_in(self.clip_rate, tick, self.draws, n)
        if k:
            self.add(("clip_cut", self.env.now, room.name, "", "listener", float(k), None))
            written = k * self.clip_bytes
            self.add(("recording_bytes", self.env.now, room.name, "", "clip", written, None))
            # each cutter downloads its clip once (the swarm's GET .../clips/{id})
            self.add(("egress_bytes", self.env.now, room.name, "", "clip", written, None))

    def _feature_costs(
        self, room: Room, talk: float, floor: float, tick: float, asr: dict[Node, float]
    ) -> None:
        """Captions and recording of one room over a tick.

        The server transcribes every stream it forwards (on stage, unmuted, live;
        docs/protocol.md), so speech recognition follows `talk`, the room's sending
        stream-seconds, at ``server.asr_cost`` core-seconds per audio second, in the
        caption workers of the room's origin node (an ``asr_cores`` record per node and
        tick, beside ``node_cpu``: the workers are other cores), and its captions go to
        every subscriber as events (``server.caption_events`` per second of speech,
        charged with the next tick's events). A recording is one
        stream, whoever holds its floor, so it follows `floor`, the seconds anyone was
        sending: ``server.recorded_packet_bytes`` a packet (``recording_bytes``); the
        silence frames that fill a recording's gaps are left out (3 bytes each).
        """
        now = self.env.now
        if room.captions:
            asr[room.origin] = asr.get(room.origin, 0.0) + self.asr_cost * talk / tick
            # whole events, the fraction carried over (no draw: the run's other draws stay put)
            room.caption_carry += self.caption_events * talk
            whole = int(room.caption_carry)
            room.caption_carry -= whole
            self.broadcast(room, whole)
        if room.recording:
            written = floor * self.pps * self.recorded_packet_bytes
            self.add(("recording_bytes", now, room.name, "", "room", written, None))

    # ------------------------------------------------------------------ replays

    def replay_join(self, room: Room, pid: str) -> float | None:
        """A replay listener of an ended recorded room starts playing it from its start;
        how long it stays (None: nothing was recorded, nothing to hear).

        Over WebRTC the room's origin node (which wrote the file) sets up a connection
        (``cpu_per_join``, the join's handshakes) and then sends the file's packets in
        real time: one more forwarded stream (``cpu_per_packet`` a packet, as the server's
        replay writes them the way it forwards) and connection. Over HTTP it answers range
        requests (first audio: a TCP handshake and a request, two round trips); their CPU
        is not modelled (the server sends the file from its thread pool). The listener
        stays its `behaviour.session_length`, at most the recording, after first audio.
        """
        if room.recording_seconds <= 0 or room.recording_size <= 0:
            return None
        now = self.env.now
        http, length, net = self.decide.replay_listener(room.number, pid)
        node = None
        if http:
            first = sum(self.one_way(net) for _ in range(4))
        else:
            node = room.origin
            first = node.connect(now, 1, 1, self.sc.server.cpu_per_join) + self._handshake(net)
            first += self.one_way(net) + self.draws.uniform() / self.pps
        via = "http" if http else "webrtc"
        room.replays[pid] = ReplayListener(via, now + first, node)
        if now + first <= self.sc.duration:
            attrs = json.dumps({"via": via})
            self.add(("replay_started", now + first, room.name, pid, "replay", first, attrs))
        return first + min(length, room.recording_seconds)

    def replay_leave(self, room: Room, pid: str) -> None:
        """A replay listener stops (or the run ends): the egress it cost.

        WebRTC: the recording's bytes pro rata of the time played (the file's Opus
        packets, as the server sends them); HTTP: what the player fetched to play that
        long (`behaviour.player_bytes`, read-ahead included).
        """
        who = room.replays.pop(pid, None)
        if who is None:
            return
        now = self.env.now
        if who.node is not None:
            who.node.change(now, streams=-1, connections=-1, senders=-1)
        played = min(max(now - who.heard_at, 0.0), room.recording_seconds)
        size, seconds = room.recording_size, room.recording_seconds
        if who.via == "http":
            sent = float(behaviour.player_bytes(played, seconds, math.ceil(size)))
        else:
            sent = size * played / seconds
        attrs = json.dumps({"via": who.via})
        self.add(("egress_bytes", now, room.name, pid, "replay", sent, attrs))

    def close(self, rooms: Iterable[Room] | None = None) -> None:
        """The run ended: replays still playing count what they got so far."""
        for room in self.rooms if rooms is None else rooms:
            for pid in list(room.replays):
                self.replay_leave(room, pid)
        for node in self.nodes:
            node.advance(self.env.now)
