"""Prometheus metrics: counters bumped by the API, gauges read from the rooms at scrape time."""

from __future__ import annotations

import resource
from collections import Counter as Tally
from collections.abc import Iterable, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST

__all__ = ["JOINS", "JOINS_REFUSED", "REFUSALS", "render"]

REGISTRY = CollectorRegistry(auto_describe=True)
JOINS = Counter("spacesim_joins", "Joins accepted", registry=REGISTRY)
JOINS_REFUSED = Counter(
    "spacesim_joins_refused", "Joins refused by admission control", registry=REGISTRY
)
REFUSALS = Counter("spacesim_refusals", "Requests refused, by code", ["code"], registry=REGISTRY)


def render(
    rooms: Iterable[Any],
    media: Iterable[Any],
    closed: Mapping[str, int] | None = None,
    extra: Iterable[Any] = (),
) -> tuple[bytes, str]:
    """The exposition text: fixed counters plus gauges of the rooms' current state, and
    `extra` metric families read at this scrape (e.g. `Captioner.families`)."""
    spaces = Tally[str]()
    roles = Tally[str]()
    for room in rooms:
        spaces[room.space.status.value] += 1
        for role in room.space.participants.values():
            roles[role.value] += 1
    g_spaces = GaugeMetricFamily("spacesim_spaces", "Spaces by status", labels=["status"])
    for status, n in sorted(spaces.items()):
        g_spaces.add_metric([status], n)
    g_roles = GaugeMetricFamily(
        "spacesim_participants", "Participants present, by role", labels=["role"]
    )
    for role, n in sorted(roles.items()):
        g_roles.add_metric([role], n)
    fwd = int((closed or {}).get("forwarded", 0))
    dropped = int((closed or {}).get("dropped", 0))
    for m in media:
        stats = m.stats()
        fwd += int(stats.get("forwarded", 0))
        dropped += int(stats.get("dropped", 0))
    c_fwd = CounterMetricFamily("spacesim_packets_forwarded", "RTP packets sent to listeners")
    c_fwd.add_metric([], fwd)
    c_drop = CounterMetricFamily(
        "spacesim_packets_dropped", "RTP packets not forwarded (sender not allowed to speak)"
    )
    c_drop.add_metric([], dropped)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    c_cpu = CounterMetricFamily("spacesim_server_cpu_seconds", "Server process CPU (user+sys)")
    c_cpu.add_metric([], usage.ru_utime + usage.ru_stime)

    class Snapshot:
        def collect(self) -> Iterable[Any]:
            return [g_spaces, g_roles, c_fwd, c_drop, c_cpu, *extra]

    registry = CollectorRegistry()
    registry.register(Snapshot())
    return generate_latest(REGISTRY) + generate_latest(registry), CONTENT_TYPE_LATEST
