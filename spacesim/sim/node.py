"""A server node: forwarding load as a rate, packet waits and losses in closed form.

No event per packet. The node knows, at any instant, how many (sender -> listener)
streams it forwards (`streams`) and from how many senders (`senders`), so:

* offered load ``r = streams x pps x cpu_per_packet + connections x cpu_per_connection
  + cpu_fixed`` (cores), utilisation ``rho = r / cores``;
* each incoming packet is a batch of ``streams / senders`` sends (its fan-out), served in
  ``S = fanout x cpu_per_packet / cores`` (the node's cores share the fan-out);
* packets queue in the kernel, in each publisher's UDP socket at the node, which holds
  ``B = socket_buffer / datagram_truesize`` datagrams (630: aioice's 262,144-byte
  SO_RCVBUF, doubled by Linux, over 832 bytes of skb truesize per small datagram; see
  `spacesim.scenario.Server`); what arrives at a full socket is dropped. The event loop
  reads the ready sockets in turn, one datagram each, so a packet with ``B`` ahead in its
  own socket waits while the node works through ``B`` rounds of every sender's packets,
  with all its other work (connections' timers, events) in between: the queue's limit,
  in time, is ``D = B x rho / pps`` (``queue_limit``; ``B / pps`` at saturation, the time
  the node takes for ``B`` of each sender's packets when it is just keeping up). A fixed
  limit of 0.2 s dropped what waited longer, where the real server at its core's
  capacity lost nothing and delivered 0.3-1.3 s late (docs/fidelity.md).
* **The fluid queue** (`fluid`): a limit of seconds takes long to reach. While the
  offered load is past the cores (``rho > 1``) the sockets fill at ``rho - 1`` seconds
  of wait per second, and below it they drain at ``1 - rho``; a packet waits what is
  queued now, and only once that reaches D are packets lost (``1 - 1 / rho`` of them).
  The measured server at its core's capacity shows exactly this: latency growing
  through the steady window (0.3 -> 3.8 s over 36 s at 880 offered listeners), nothing
  lost; the stationary law alone put every packet of an overloaded node at D at once.
  Below saturation (and the fluid queue empty) the wait of a
  packet is the diffusion (heavy-traffic) approximation of a G/D/1 queue with that
  finite buffer: busy with probability ``min(rho, 1)``, and then exponential with rate
  ``theta = 2 (1 - rho) / (S v)`` truncated to ``[0, D]`` (theta < 0 above saturation,
  so waits pile up near D). ``v = ca2 + cs2`` is the **arrival variability** term
  (Kingman's; Whitt, "Approximations for the GI/G/m queue", 1993): the fan-outs are
  one size (``cs2 = 0``), and the packets come from `senders` speakers who each send
  one every packet interval, so arrivals are the superposition of K periodic streams
  with independent phases, whose gaps are the spacings of K uniform points on a
  circle: ``ca2 = (K - 1) / (K + 1)`` (0 for one speaker, who never queues behind
  their own packets below saturation; 1, Poisson, for many). The loss is the same
  approximation's blocking probability, ``p = (1 - rho) E / (1 - rho E)`` with
  ``E = exp(-theta D)``, the continuous analogue of M/M/1/K's
  ``(1 - rho) rho^K / (1 - rho^(K+1))``: it tends to ``S v / (S v + 2D)`` at
  ``rho = 1`` and to ``1 - 1 / rho`` in overload, so latency and loss grow smoothly
  through saturation (sharply for one speaker). The mean wait below saturation is
  Kingman's ``v rho S / (2 (1 - rho))`` when D is large (Pollaczek-Khinchine's for
  Poisson arrivals, ``v = 1``).
* **Garbage-collection pauses** stop the node's forwarding, in two kinds with terms of
  their own: young collections (generations 0 and 1: frequent, short, after
  allocations, which follow packets) and full ones (generation 2: the whole heap, long;
  CPython runs one once the heap has grown by a quarter, so they follow joins and stop
  in a steady audience). The node is paused a share ``gc_pause_per_packet x packets
  per second / cores`` of the time by young ones and ``gc_full_per_join x joins in the
  last second / cores`` by full ones, in pauses that a packet arriving in one sees last
  ``L = gc_*_length`` (length-biased), and such a packet waits a uniform share of ``L``
  on top of the queue (`gc_wait`); events too. One kind with the length-biased length
  of all pauses, at a rate per packet, put the full collections of the audience's
  arrival into every second of a steady audience.
  The pauses are CPU work the CPU fit already counts in ``cpu_per_packet``; this term
  is only their effect on the tail of the latency (`spacesim.server.gcmeter`).
* **Before the fan-out** (`relay_rate`, cores): a room's origin receives each packet its
  publishers send (``cpu_per_publisher_packet``), and a room whose listeners span nodes is
  relayed by its origin once per packet to each other node with listeners of it
  (``cpu_per_relay_send`` a packet and node), and each such node receives it
  (``cpu_per_relay_receive``) before its own fan-out; the world keeps the rate (part of
  ``r``). The latency the hop adds is the world's ``edge_delay``.
* Joins add impulses of work (`add_work`) to a backlog served with the capacity the
  forwarding leaves spare, but never less than a **turn of the event loop**
  (`join_share`): the loop runs every ready handle once a round, one datagram from each
  sender's socket and the next step of the joins in flight, so at or past saturation
  joins still get ``1 / (senders + 1)`` of the cores (the forwarding falls further
  behind in their place) rather than waiting for spare capacity that never comes.
  Packets wait behind the backlog (one event loop), and while that wait exceeds D
  arriving packets are lost.
* The event stream's deliveries (reactions, policy events, coalesced audience counts,
  listeners' joins and leaves shown to the stage), aggregated per tick by the world,
  are a steady load over the tick (`event_rate`, cores), part of ``r`` like
  forwarding; an event waits in the same queue as packets (`event_wait`) but is never
  dropped (the stream is TCP).

The same functions feed the node's per-tick records (packets forwarded and dropped,
CPU) and the sampled listeners' latency and loss, so the two always agree.
"""

from __future__ import annotations

import math
from collections import deque

from spacesim.scenario import Server

__all__ = ["Node", "arrival_variability", "wait_and_loss"]


def _queued(theta: float, room: float, u: float) -> float:
    """The wait with density proportional to exp(-theta w) on [0, room], drawn by inverse
    transform from the uniform `u` (theta ~ 0: uniform; a large theta * room: exponential)."""
    x = theta * room
    if abs(x) < 1e-9:
        return u * room
    if x < -700.0:  # mass piled against the full queue: mirror of the exponential case
        return room - _queued(-theta, room, u)
    if x > 700.0:
        return -math.log1p(-u) / theta
    return -math.log1p(-u * (1.0 - math.exp(-x))) / theta


#: Floor of the variability term: one speaker's stream alone is perfectly periodic, but
#: the formula needs a finite theta (a floor this small changes no figure).
MIN_VARIABILITY = 1e-6


def arrival_variability(senders: int) -> float:
    """``ca2`` of K periodic streams with independent phases: ``(K - 1) / (K + 1)``."""
    return (senders - 1) / (senders + 1) if senders > 1 else 0.0


def wait_and_loss(
    rho: float, service: float, buffer: float, variability: float = 1.0
) -> tuple[float, float]:
    """(theta, loss) of the finite-buffer queue; see the module docstring."""
    if buffer <= 0.0:
        return 0.0, 1.0 if rho > 0 else 0.0
    if rho <= 0.0 or service <= 0.0:
        return math.inf, 0.0
    spread = service * max(variability, MIN_VARIABILITY)
    theta = 2.0 * (1.0 - rho) / spread
    x = theta * buffer
    if abs(x) < 1e-9:  # rho == 1: the limit of the formula
        return 0.0, spread / (spread + 2.0 * buffer)
    if x > 700.0:  # E underflows: no loss
        return theta, 0.0
    if x < -700.0:  # deep overload
        return theta, 1.0 - 1.0 / rho
    e = math.exp(-x)
    return theta, (1.0 - rho) * e / (1.0 - rho * e)


class Node:
    """One server node; all times are simulated seconds, CPU in core-seconds."""

    __slots__ = (
        "_qs_key",
        "_qs_val",
        "backlog",
        "busy",
        "connections",
        "cores",
        "cpu_fixed",
        "cpu_per_connection",
        "cpu_per_packet",
        "dropped_packets",
        "event_rate",
        "fanout_delay",
        "fluid",
        "forward_delay",
        "gc_full_length",
        "gc_full_per_join",
        "gc_pause_length",
        "gc_pause_per_packet",
        "joins",
        "last",
        "listeners",
        "max_streams",
        "name",
        "offered",
        "offered_packets",
        "pps",
        "queue_datagrams",
        "relay_rate",
        "reserved_streams",
        "senders",
        "streams",
    )

    def __init__(self, name: str, server: Server, pps: float) -> None:
        self.name = name
        self.cores = server.cores
        self.cpu_per_packet = server.cpu_per_packet
        self.cpu_per_connection = server.cpu_per_connection
        self.cpu_fixed = server.cpu_fixed
        # Per listener in a fan-out: measured, or the CPU cost shared by the cores.
        self.fanout_delay = (
            server.fanout_delay
            if server.fanout_delay is not None
            else server.cpu_per_packet / server.cores
        )
        self.forward_delay = server.forward_delay
        self.gc_pause_per_packet = server.gc_pause_per_packet
        self.gc_pause_length = server.gc_pause_length
        self.gc_full_per_join = server.gc_full_per_join
        self.gc_full_length = server.gc_full_length
        self.joins: deque[float] = deque()  # join times in the last second (full collections)
        self.max_streams = server.max_streams
        self.queue_datagrams = server.socket_buffer / server.datagram_truesize
        self.pps = pps
        self.listeners = 0  # listener connections on this node
        self.connections = 0  # all connections (stage members and listeners)
        self.streams = 0  # (sending speaker -> listener) streams forwarded now
        self.senders = 0  # senders whose packets this node fans out now
        self.reserved_streams = 0  # streams admitted: what admission control counts
        self.backlog = 0.0  # core-seconds of join work waiting
        self.fluid = 0.0  # seconds of wait the sockets hold for a saturated node
        self.event_rate = 0.0  # cores of event delivery drawn per tick (see World)
        self.relay_rate = 0.0  # cores of cascade relaying, sent and received (see World)
        self.last = 0.0
        # per-tick accumulators, reset by `take_tick`
        self.busy = 0.0
        self.offered = 0.0
        self.offered_packets = 0.0
        self.dropped_packets = 0.0
        self._qs_key: tuple[int, int, int, float, float, float] | None = None
        self._qs_val = (0.0, math.inf, 0.0, 0.0)

    # ------------------------------------------------------------------ load

    def forwarding_rate(self) -> float:
        """Forwarding work offered now, in cores."""
        return self.streams * self.pps * self.cpu_per_packet

    def rate(self) -> float:
        """All steady work offered now (forwarding + connections + events + fixed), in cores."""
        return (
            self.forwarding_rate()
            + self.connections * self.cpu_per_connection
            + self.event_rate
            + self.relay_rate
            + self.cpu_fixed
        )

    def fanout_service(self) -> float:
        """Time the node's cores take to fan one incoming packet out (S)."""
        if self.senders <= 0:
            return 0.0
        return self.streams / self.senders * self.cpu_per_packet / self.cores

    def fanout_spread(self) -> float:
        """Time from the first to the last listener's copy of one packet.

        `fanout_delay` per listener: the CPU cost (S) unless a calibration measured more,
        e.g. the receivers' own path on loopback; that extra delays, but does not occupy,
        the node, so it is not part of S.
        """
        if self.senders <= 0:
            return 0.0
        return self.streams / self.senders * self.fanout_delay

    def queue_limit(self, rho: float | None = None) -> float:
        """D: the longest a packet waits before its sender's socket is full (s).

        ``B`` rounds of the senders' packets, each round with the node's other work in
        between: ``B x rho / pps`` (module docstring). Below saturation the queue seldom
        comes near it; at and past it, this is where waits pile up and losses begin.
        """
        if self.pps <= 0.0:
            return 0.0
        rho = self.rate() / self.cores if rho is None else rho
        return self.queue_datagrams * rho / self.pps

    def queue_state(self) -> tuple[float, float, float, float]:
        """(rho, theta, loss, room) for a packet arriving now; room = buffer left."""
        key = (
            self.streams, self.senders, self.connections, self.backlog,
            self.event_rate + self.relay_rate, self.fluid,
        )  # fmt: skip
        if key == self._qs_key:  # many calls between changes: the law is the same
            return self._qs_val
        rho = self.rate() / self.cores
        room = self.queue_limit(rho) - self.backlog / self.cores
        theta, loss = wait_and_loss(
            rho, self.fanout_service(), room, arrival_variability(self.senders)
        )
        if rho >= 1.0 and self.fluid < room:
            loss = 0.0  # the sockets are still filling: late, not lost
        self._qs_key = key
        self._qs_val = (rho, theta, loss, room)
        return self._qs_val

    def advance(self, now: float) -> None:
        """Integrate work, losses and the join backlog from the last change to `now`."""
        dt = now - self.last
        if dt <= 0.0:
            return
        self.last = now
        c = self.cores
        fwd = self.forwarding_rate()
        r = fwd + self.connections * self.cpu_per_connection + self.event_rate + self.relay_rate
        r += self.cpu_fixed
        rho, _theta, loss, room = self.queue_state()
        if rho >= 1.0 and room > 0.0:
            # lossless until the sockets are full: at rho - 1 s of wait per second
            filling = max(room - self.fluid, 0.0) / (rho - 1.0) if rho > 1.0 else math.inf
            if filling < dt:
                _theta, full = wait_and_loss(
                    rho, self.fanout_service(), room, arrival_variability(self.senders)
                )
                loss = full * (dt - filling) / dt
        self.fluid = min(max(self.fluid + (rho - 1.0) * dt, 0.0), max(room, 0.0))
        packets = self.streams * self.pps * dt
        self.offered += r * dt
        self.offered_packets += packets
        self.dropped_packets += packets * loss
        served = min(r - fwd * loss, c)  # work actually done on packets and connections
        spare = max(c - served, self.join_share())  # what the join backlog drains with
        if self.backlog > 0.0:
            drained = min(self.backlog, spare * dt)
            self.backlog -= drained
            served_total = min(served * dt + drained, c * dt)
        else:
            served_total = served * dt
        self.busy += served_total

    def change(self, now: float, streams: int = 0, connections: int = 0, senders: int = 0) -> None:
        """Apply a change in forwarded streams, senders or connections at `now`."""
        self.advance(now)
        self.streams += streams
        self.connections += connections
        self.senders += senders

    def set_event_rate(self, now: float, rate: float) -> None:
        """Event delivery work drawn for the coming tick, in cores, from `now` on."""
        self.advance(now)
        self.event_rate = max(rate, 0.0)

    def set_relay_rate(self, now: float, rate: float) -> None:
        """Cascade relaying (a room's packets sent to, or received from, other nodes), in
        cores, from `now` on."""
        self.advance(now)
        self.relay_rate = max(rate, 0.0)

    def spare(self) -> float:
        """Cores left for join work once packets (those not lost) and connections are served."""
        fwd = self.forwarding_rate()
        served = min(self.rate() - fwd * self.loss_now(), self.cores)
        return max(self.cores - served, self.join_share())

    def join_share(self) -> float:
        """Cores join work gets at least: a turn in each round of the event loop, beside
        one datagram from each sender's socket (module docstring)."""
        return self.cores / (self.senders + 1)

    def connect(self, now: float, streams: int, senders: int, cpu: float) -> float:
        """A listener joins: its join work queues, then its streams start; returns join wait."""
        self.advance(now)
        self.backlog += cpu
        wait = self.backlog / self.spare()
        self.streams += streams
        self.connections += 1
        self.senders += senders
        if self.gc_full_length > 0.0:
            self.joins.append(now)
        return wait

    def add_work(self, now: float, cpu: float) -> float:
        """Queue an impulse of work (a join); returns the time until it completes."""
        self.advance(now)
        self.backlog += cpu
        return self.backlog / self.spare()

    def clear_time(self) -> float:
        """How long until join work ahead of packets falls back within the queue limit."""
        excess = self.backlog - self.cores * self.queue_limit()
        return excess / self.spare() if excess > 0 else 0.0

    def admits(self, streams: int) -> bool:
        """Admission control: room for `streams` more forwarded streams?"""
        return self.max_streams is None or self.reserved_streams + streams <= self.max_streams

    # ------------------------------------------------------------------ packets

    def packet_wait(self, u_busy: float, u_wait: float, u_position: float) -> float | None:
        """Server delay of one packet (None if it is lost), from three uniforms in [0, 1).

        A fixed forwarding delay, the wait behind join work, then the queue of fan-outs,
        then the listener's place in its own packet's fan-out (`fanout_spread`).
        """
        rho, theta, loss, room = self.queue_state()
        if room <= 0.0:
            return None  # behind more join work than the queue holds: see clear_time
        # A lost packet is judged first, so delivered waits come from the truncated law.
        if u_busy < loss:
            return None
        wait = self.backlog / self.cores + self.fluid
        if rho >= 1.0:  # behind what the sockets hold, at a place in the senders' round
            wait += u_wait * self.fanout_service() * max(self.senders, 1)
        elif (u_busy - loss) / (1.0 - loss) < rho:
            wait += _queued(theta, max(room - self.fluid, 0.0), u_wait)
        return (
            self.forward_delay
            + min(wait, self.backlog / self.cores + room)
            + (u_position * self.fanout_spread())
        )

    def event_wait(self, u_busy: float, u_wait: float) -> float:
        """Time an event arriving now waits before its fan-out starts.

        The same queue as packets (behind join work, then the busy period's law), but
        never dropped: an event stream is TCP, so it waits out even an overflowing queue.
        """
        rho, theta, _loss, room = self.queue_state()
        wait = self.backlog / self.cores
        if rho >= 1.0:  # not in the sockets: a turn of the loop beside the senders' round
            wait += u_wait * self.fanout_service() * max(self.senders, 1)
        elif room > 0.0 and u_busy < rho:
            wait += _queued(theta, room, u_wait)
        return wait

    def join_rate(self, now: float) -> float:
        """Listener joins in the last second (per second), as the calibration counts them."""
        joins = self.joins
        while joins and joins[0] <= now - 1.0:
            joins.popleft()
        return float(len(joins))

    def gc_shares(self, now: float) -> tuple[float, float]:
        """Shares of time the collector has the node stopped now: (full, young)."""
        full = self.gc_full_per_join * self.join_rate(now) / self.cores if self.joins else 0.0
        young = self.gc_pause_per_packet * self.streams * self.pps / self.cores
        full = min(full, 0.5)
        return full, min(young, 0.5 - full)

    def gc_share(self, now: float | None = None) -> float:
        """Share of time the collector has the node stopped now (at most a half)."""
        return sum(self.gc_shares(self.last if now is None else now))

    @property
    def gc_paused(self) -> bool:
        """True when the model has collector pauses (else no draw is made for them)."""
        return self.gc_pause_length > 0.0 or self.gc_full_length > 0.0

    def gc_wait(self, u: float, now: float | None = None) -> float:
        """Wait of a packet for a collector's pause, from one uniform in [0, 1): it arrives
        in a full collection's pause with probability their share of time now (joins in
        the last second), in a young one's with the young ones' share (packets), and waits
        a uniform share of that kind's length (u / share is uniform given u < share)."""
        full, young = self.gc_shares(self.last if now is None else now)
        if u < full:
            return (u / full) * self.gc_full_length
        if u < full + young:
            return ((u - full) / young) * self.gc_pause_length
        return 0.0

    def loss_now(self) -> float:
        """Probability that a packet arriving now is lost for want of CPU or buffer."""
        return self.queue_state()[2]

    # ------------------------------------------------------------------ ticks

    def take_tick(self, now: float) -> tuple[float, float, float, float]:
        """(cpu core-seconds, offered core-seconds, packets forwarded, packets dropped)."""
        self.advance(now)
        dropped = self.dropped_packets
        out = (self.busy, self.offered, self.offered_packets - dropped, dropped)
        self.busy = self.offered = self.offered_packets = self.dropped_packets = 0.0
        return out
