"""A server node as a fluid CPU queue: no event per packet, yet saturation shows.

The forwarding work is a rate: ``streams x packets/s x cpu_per_packet`` plus a fixed
cost per connection, in cores. Joins add impulses of work. The node drains work at
`cores`; when the offered rate exceeds it a backlog builds, packets wait behind it,
and work older than `max_queue_delay` is dropped (the packets are lost). Below
saturation, each packet also waits in the M/D/1-like queue that random arrivals of
packets form: ``Wq = rho * S / (2 c (1 - rho))`` with ``S`` the fan-out time of one
packet (exact for one core; an approximation for several). Within a fan-out, the
k-th of n listeners is served after k of the n sends, as the forwarding loop is
sequential (FACTS.md: the last of N listeners gets a packet about N x 30 us late).
"""

from __future__ import annotations

import math

from spacesim.scenario import Server

__all__ = ["Node"]


class Node:
    """One server node; all times are simulated seconds, CPU in core-seconds."""

    __slots__ = (
        "backlog",
        "busy",
        "connections",
        "cores",
        "cpu_per_connection",
        "cpu_per_packet",
        "dropped_cpu",
        "last",
        "listeners",
        "max_queue_delay",
        "max_streams",
        "name",
        "offered",
        "offered_packets",
        "pps",
        "reserved_streams",
        "streams",
    )

    def __init__(self, name: str, server: Server, pps: float) -> None:
        self.name = name
        self.cores = server.cores
        self.cpu_per_packet = server.cpu_per_packet
        self.cpu_per_connection = server.cpu_per_connection
        self.max_streams = server.max_streams
        self.max_queue_delay = server.max_queue_delay
        self.pps = pps
        self.listeners = 0  # listener connections on this node
        self.connections = 0  # all connections (stage members and listeners)
        self.streams = 0  # (talking speaker -> listener) streams forwarded now
        self.reserved_streams = 0  # streams admitted: what admission control counts
        self.backlog = 0.0  # core-seconds of work waiting
        self.last = 0.0
        # per-tick accumulators, reset by `take_tick`
        self.busy = 0.0
        self.offered = 0.0
        self.offered_packets = 0.0
        self.dropped_cpu = 0.0

    # ------------------------------------------------------------------ state

    def rate(self) -> float:
        """Offered load now, in cores busy."""
        return (
            self.streams * self.pps * self.cpu_per_packet
            + self.connections * self.cpu_per_connection
        )

    def advance(self, now: float) -> None:
        """Integrate work, drain and drops from the last change to `now`."""
        dt = now - self.last
        if dt <= 0.0:
            return
        self.last = now
        r = self.rate()
        c = self.cores
        self.offered += r * dt
        self.offered_packets += self.streams * self.pps * dt
        if r < c:
            if self.backlog > 0.0:
                clear = self.backlog / (c - r)
                if clear >= dt:
                    self.busy += c * dt
                    self.backlog -= (c - r) * dt
                else:
                    self.busy += c * clear + r * (dt - clear)
                    self.backlog = 0.0
            else:
                self.busy += r * dt
        else:
            self.busy += c * dt
            self.backlog += (r - c) * dt
            cap = c * self.max_queue_delay
            if self.backlog > cap:
                self.dropped_cpu += self.backlog - cap
                self.backlog = cap

    def change(self, now: float, streams: int = 0, connections: int = 0) -> None:
        """Apply a change in forwarded streams or connections at `now`."""
        self.advance(now)
        self.streams += streams
        self.connections += connections

    def add_work(self, now: float, cpu: float) -> float:
        """Queue an impulse of work (a join); returns when it completes, from `now`."""
        self.advance(now)
        self.backlog += cpu
        return self.backlog / self.cores

    def admits(self, streams: int) -> bool:
        """Admission control: room for `streams` more forwarded streams?"""
        return self.max_streams is None or self.reserved_streams + streams <= self.max_streams

    # ------------------------------------------------------------------ latency

    def utilisation_now(self) -> float:
        return self.rate() / self.cores

    def packet_delay(self, fanout: int, position: float) -> float:
        """Server delay of one packet to the listener at `position` (0..1) of a fan-out."""
        c = self.cores
        service = fanout * self.cpu_per_packet
        rho = self.rate() / c
        queue = self.backlog / c
        if rho < 1.0:
            queue += rho * service / (2.0 * c * (1.0 - rho))
        return queue + position * service

    def drop_probability(self, fanout: int) -> float:
        """Chance a packet arriving now (fanned out to `fanout` listeners) is dropped."""
        r = self.rate()
        c = self.cores
        if self.backlog >= c * self.max_queue_delay * 0.999:
            return 1.0 - c / r if r > c else 0.0
        rho = r / c
        if rho >= 1.0 or rho <= 0.0:
            return 0.0
        # Heavy-traffic tail of the waiting time: P(W > t) ~ rho * exp(-rho t / Wq).
        service = fanout * self.cpu_per_packet
        wq = rho * service / (2.0 * c * (1.0 - rho))
        slack = self.max_queue_delay - self.backlog / c
        return rho * math.exp(-rho * slack / wq) if wq > 0 else 0.0

    # ------------------------------------------------------------------ ticks

    def take_tick(self, now: float) -> tuple[float, float, float, float]:
        """(cpu core-seconds, offered core-seconds, packets forwarded, packets dropped)."""
        self.advance(now)
        dropped = self.dropped_cpu / self.cpu_per_packet if self.cpu_per_packet else 0.0
        forwarded = max(self.offered_packets - dropped, 0.0)
        out = (self.busy, self.offered, forwarded, dropped)
        self.busy = self.offered = self.offered_packets = self.dropped_cpu = 0.0
        return out
