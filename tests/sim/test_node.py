"""The node's fluid CPU queue, step by step, against hand-computed values."""

from __future__ import annotations

import pytest

from spacesim.scenario import Server
from spacesim.sim.node import Node


def node(**kw: object) -> Node:
    server = Server.model_validate(
        {"cores": 1, "cpu_per_packet": 1e-4, "cpu_per_connection": 0, **kw}
    )
    return Node("n", server, pps=50)


def test_below_capacity_busy_equals_offered_and_no_backlog() -> None:
    n = node()
    n.change(0.0, streams=100)  # 100 x 50 x 1e-4 = 0.5 cores
    busy, offered, fwd, dropped = n.take_tick(10.0)
    assert busy == pytest.approx(5.0) and offered == pytest.approx(5.0)
    assert fwd == pytest.approx(100 * 50 * 10) and dropped == 0
    assert n.backlog == 0


def test_overload_builds_a_backlog_up_to_the_queue_limit_then_drops() -> None:
    n = node(max_queue_delay=0.2)
    n.change(0.0, streams=400)  # 2 cores offered on 1 core
    n.advance(0.1)
    assert n.backlog == pytest.approx(0.1)  # (2 - 1) x 0.1 s
    busy, offered, fwd, dropped = n.take_tick(10.0)
    assert busy == pytest.approx(10.0)  # the core is saturated
    assert offered == pytest.approx(20.0)
    assert fwd + dropped == pytest.approx(400 * 50 * 10)
    assert n.backlog == pytest.approx(0.2)  # capped at cores x max_queue_delay
    assert dropped == pytest.approx((20.0 - 10.0 - 0.2) / 1e-4)
    assert n.drop_probability(400) == pytest.approx(0.5)  # 1 - capacity / offered


def test_backlog_drains_at_spare_capacity_after_overload() -> None:
    n = node()
    n.add_work(0.0, 0.3)  # e.g. fifty joins at 6 ms
    n.change(0.0, streams=100)  # 0.5 cores: the backlog drains at 0.5 core-s per s
    n.advance(0.4)
    assert n.backlog == pytest.approx(0.1)
    busy, *_ = n.take_tick(2.0)
    assert n.backlog == 0
    assert busy == pytest.approx(0.3 + 0.5 * 2.0)  # all work done, none lost


def test_join_waits_behind_the_backlog() -> None:
    n = node(cores=2)
    assert n.add_work(0.0, 0.006) == pytest.approx(0.003)
    assert n.add_work(0.0, 0.006) == pytest.approx(0.006)


def test_packet_delay_grows_with_load_and_position() -> None:
    n = node()
    n.change(0.0, streams=100)
    light = n.packet_delay(100, 0.5)
    n.change(0.0, streams=80)  # rho 0.9
    heavy = n.packet_delay(180, 0.5)
    assert heavy > light
    assert n.packet_delay(180, 1.0) - n.packet_delay(180, 0.0) == pytest.approx(180 * 1e-4)


def test_admission_counts_reserved_streams() -> None:
    n = node(max_streams=10)
    n.reserved_streams = 8
    assert n.admits(2) and not n.admits(3)
    assert node().admits(10**9)  # no limit configured
