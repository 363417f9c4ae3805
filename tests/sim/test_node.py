"""The node's load, wait and loss model against hand-computed values and queueing limits."""

from __future__ import annotations

import numpy as np
import pytest

from spacesim.scenario import Server
from spacesim.sim.node import Node, wait_and_loss


def node(**kw: object) -> Node:
    """A node with the hand-computable costs these tests reason with (nothing fixed, no
    fixed forwarding latency), whatever the calibrated defaults."""
    costs = {"cpu_per_packet": 1e-4, "cpu_per_connection": 0, "cpu_fixed": 0, "forward_delay": 0}
    server = Server.model_validate({"cores": 1, **costs, **kw})
    return Node("n", server, pps=50)


def limit(d: float, rho: float) -> dict[str, float]:
    """Server fields whose socket buffer makes the queue limit `d` seconds at `rho`
    (``D = B x rho / pps``, pps 50; one byte a datagram)."""
    return {"socket_buffer": d * 50 / rho, "datagram_truesize": 1}


def loaded(listeners: int, senders: int = 1, **kw: object) -> Node:
    n = node(**kw)
    n.change(0.0, streams=listeners * senders, senders=senders)
    return n


def test_loss_limits_and_smoothness() -> None:
    s, d = 0.01, 0.2
    assert wait_and_loss(0.0, s, d)[1] == 0
    assert wait_and_loss(1.0, s, d)[1] == pytest.approx(s / (s + 2 * d))
    assert wait_and_loss(3.0, s, d)[1] == pytest.approx(1 - 1 / 3, rel=1e-6)
    rhos = np.linspace(0.5, 1.5, 1001)
    losses = np.array([wait_and_loss(r, s, d)[1] for r in rhos])
    assert (np.diff(losses) >= 0).all()  # more load never loses less
    assert np.abs(np.diff(losses)).max() < 0.01  # no jump through saturation
    assert wait_and_loss(0.5, s, 0.0)[1] == 1.0  # no buffer left: everything is lost


def test_below_capacity_busy_equals_offered() -> None:
    n = loaded(100)  # 100 x 50 x 1e-4 = 0.5 cores
    busy, offered, fwd, dropped = n.take_tick(10.0)
    assert busy == pytest.approx(5.0) and offered == pytest.approx(5.0)
    assert fwd + dropped == pytest.approx(100 * 50 * 10)
    assert dropped / (fwd + dropped) < 1e-6


def test_overload_saturates_the_cores_and_drops_the_excess_once_the_queue_is_full() -> None:
    n = loaded(400, **limit(1.0, 2.0))  # 2 cores offered on 1; the sockets hold 1 s
    busy, offered, fwd, dropped = n.take_tick(10.0)
    assert offered == pytest.approx(20.0)
    assert busy == pytest.approx(10.0, rel=0.01)
    # full after 1 s (1 s of wait a second), then 1 - capacity / offered is lost
    assert dropped / (fwd + dropped) == pytest.approx(0.5 * 9 / 10, rel=0.02)
    assert n.loss_now() == pytest.approx(0.5, rel=0.02)
    assert n.fluid == pytest.approx(1.0)


def test_the_fluid_queue_fills_at_rho_minus_one_and_drains_at_one_minus_rho() -> None:
    """Past the core the sockets fill a second of wait per second of 100 % excess; a
    packet waits what they hold, none is lost until they are full; below, they drain."""
    n = loaded(110, senders=2)  # 1.1 cores offered; D = 630 x 1.1 / 50 = 13.9 s
    n.advance(10.0)
    assert n.fluid == pytest.approx(1.0)
    assert n.loss_now() == 0.0
    assert n.packet_wait(0.5, 0.0, 0.0) == pytest.approx(1.0)
    _busy, _offered, _fwd, dropped = n.take_tick(10.0)
    assert dropped == 0.0
    n.change(10.0, streams=-120)  # 0.5 cores: drains at 0.5 s a second
    n.advance(11.0)
    assert n.fluid == pytest.approx(0.5)
    n.advance(20.0)
    assert n.fluid == 0.0


def test_join_work_waits_for_spare_capacity_and_drains() -> None:
    n = loaded(100, **limit(1.0, 0.5))  # 0.5 cores spare; joins stay under the queue limit
    assert n.add_work(0.0, 0.006) == pytest.approx(0.012)
    n.add_work(0.0, 0.294)  # 0.3 core-seconds queued
    n.advance(0.4)
    assert n.backlog == pytest.approx(0.1)
    busy, _offered, _fwd, dropped = n.take_tick(2.0)
    assert dropped < 1e-6
    assert n.backlog == 0
    assert busy == pytest.approx(0.3 + 0.5 * 2.0)  # all join work done, no forwarding lost


def test_joins_get_a_turn_of_the_event_loop_past_saturation() -> None:
    """At 1.5 cores offered on one, nothing is spare, but the loop runs the joins' next
    step in every round beside one datagram from each of the 2 senders' sockets: a third
    of the core (before, 5 %: a join of 10 ms waited 0.2 s, and a ramp's backlog grew)."""
    n = loaded(150, senders=2)
    assert n.join_share() == pytest.approx(1 / 3)
    assert n.add_work(0.0, 0.01) == pytest.approx(0.03)
    n.advance(0.03)
    assert n.backlog == pytest.approx(0.0, abs=1e-12)
    assert loaded(20, senders=2).add_work(0.0, 0.01) == pytest.approx(0.01 / 0.8)  # spare


def test_packets_are_lost_while_join_work_exceeds_the_queue_limit() -> None:
    n = loaded(100, **limit(0.2, 0.5))
    n.add_work(0.0, 0.5)  # half a second of joins ahead of every packet
    assert n.loss_now() == 1.0
    assert n.packet_wait(0.5, 0.5, 0.5) is None


@pytest.mark.parametrize("senders", [1, 3, 9])
def test_mean_wait_matches_kingman_when_the_buffer_is_large(senders: int) -> None:
    """Periodic speakers: one never waits behind their own packets below saturation; the
    wait grows with the number of speakers toward Pollaczek-Khinchine's (Poisson)."""
    listeners = 100 // senders  # rho ~ 0.5 whatever the speakers
    n = loaded(listeners, senders, **limit(100.0, 0.5))
    rng = np.random.default_rng(1)
    u = rng.random((200_000, 3))
    waits = np.array([n.packet_wait(a, b, 0.0) for a, b, _ in u], dtype=float)
    s, rho = listeners * 1e-4, listeners * senders * 50 * 1e-4
    v = (senders - 1) / (senders + 1)
    assert waits.mean() == pytest.approx(v * rho * s / (2 * (1 - rho)), rel=0.02, abs=1e-6)
    assert (waits == 0).mean() == pytest.approx(1 - rho, abs=0.01)


def test_one_speaker_goes_from_no_wait_to_the_full_queue_through_saturation() -> None:
    below, above = loaded(190, **limit(0.2, 1.05)), loaded(210, **limit(0.2, 1.05))
    assert below.loss_now() == 0 and below.packet_wait(0.99, 0.99, 0.0) == pytest.approx(0)
    above.advance(10.0)  # the sockets (0.2 s) fill in 4 s at 0.05 s a second
    assert above.loss_now() == pytest.approx(1 - 1 / 1.05, rel=1e-3)
    assert above.packet_wait(0.99, 0.5, 0.0) == pytest.approx(0.2, rel=1e-3)


def test_waits_never_exceed_the_queue_limit_and_grow_with_load() -> None:
    rng = np.random.default_rng(2)
    means = []
    for listeners in (50, 90, 99, 110):
        n = loaded(listeners, senders=2, **limit(0.2, 1.1))
        n.advance(5.0)  # past the core, the sockets have filled by then (fluid queue)
        waits = [n.packet_wait(*rng.random(3)) for _ in range(20_000)]
        got = np.array([w for w in waits if w is not None])
        assert n.queue_limit() <= 0.2 + 1e-9
        assert got.max() <= n.queue_limit() + listeners * 1e-4 + 1e-9  # + its own fan-out
        means.append(got.mean())
    assert means == sorted(means)


def test_the_queue_limit_is_the_senders_socket_buffer_at_the_nodes_pace() -> None:
    """B datagrams a socket (524,288 / 832 = 630 by default), worked through B rounds of
    the senders' packets at the node's pace: B x rho / pps, 12.6 s at a full core."""
    n = loaded(200)  # 200 x 50 x 1e-4 = 1.0 core
    assert n.queue_datagrams == pytest.approx(524_288 / 832)
    assert n.queue_limit() == pytest.approx(524_288 / 832 / 50)
    assert loaded(100).queue_limit() == pytest.approx(n.queue_limit() / 2)
    assert loaded(100, socket_buffer=262_144).queue_limit() == pytest.approx(n.queue_limit() / 4)


def test_a_full_core_delays_packets_by_the_socket_queue_and_loses_none() -> None:
    """At 0.995 of the core three speakers' packets wait a good part of a second in the
    sockets (the measured server: 0.3-1.3 s late, nothing lost), where a 0.2 s limit
    dropped 0.6 % and never waited longer than 0.2 s; past the core the queue fills and
    the excess is lost."""
    n = loaded(66, senders=3, cpu_per_packet=0.995 / (66 * 3 * 50))
    assert n.loss_now() < 1e-6
    rng = np.random.default_rng(3)
    waits = np.array([n.packet_wait(*rng.random(3)) for _ in range(20_000)], dtype=float)
    assert 0.2 < waits.mean() < 1.0 and np.quantile(waits, 0.99) > 0.5
    over = loaded(66, senders=3, cpu_per_packet=1.1 / (66 * 3 * 50))
    over.advance(200.0)  # 13.9 s of sockets, filled at 0.1 s a second
    assert over.loss_now() == pytest.approx(1 - 1 / 1.1, rel=1e-3)
    late = [over.packet_wait(0.99, u, 0.0) for u in (0.5, 0.9)]
    assert all(w is not None and w > 0.9 * over.queue_limit() for w in late)


def test_cores_share_a_fan_out() -> None:
    assert loaded(100, cores=4).fanout_service() == pytest.approx(100 * 1e-4 / 4)


def test_admission_counts_reserved_streams() -> None:
    n = node(max_streams=10)
    n.reserved_streams = 8
    assert n.admits(2) and not n.admits(3)
    assert node().admits(10**9)  # no limit configured


def test_gc_wait_is_a_uniform_share_of_the_pause_with_the_pauses_share_of_time() -> None:
    n = loaded(100, gc_pause_per_packet=2e-6, gc_pause_length=0.05)  # 5000 pps: 1 %
    assert n.gc_share() == pytest.approx(0.01)
    u = np.random.default_rng(4).random(200_000)
    waits = np.array([n.gc_wait(x) for x in u])
    assert (waits > 0).mean() == pytest.approx(0.01, abs=0.001)
    assert waits[waits > 0].mean() == pytest.approx(0.025, rel=0.05)
    assert loaded(100).gc_wait(0.0) == 0.0  # no term, no wait


def test_gc_wait_keeps_young_and_full_collections_apart() -> None:
    """Young pauses (1 ms) take 1 % of the time, with the packets; full ones (80 ms)
    follow joins: 10 ms of them per join, so 2 joins in the last second stop the node
    2 % of the time, and a steady audience (no join for a second) has none."""
    n = loaded(
        100, gc_pause_per_packet=2e-6, gc_pause_length=0.001,
        gc_full_per_join=0.01, gc_full_length=0.08,
    )  # fmt: skip
    n.connect(0.5, 1, 1, 0.0)
    n.connect(0.6, 1, 1, 0.0)
    assert n.gc_shares(1.0) == pytest.approx((0.02, 0.0102))
    u = np.random.default_rng(5).random(300_000)
    waits = np.array([n.gc_wait(x, 1.0) for x in u])
    assert (waits > 0.001).mean() == pytest.approx(0.02 * 79 / 80, abs=0.002)
    assert n.gc_shares(2.0)[0] == 0.0  # no join in the last second: no full collection
    steady = np.array([n.gc_wait(x, 2.0) for x in u[:100_000]])
    assert (steady > 0).mean() == pytest.approx(0.0102, abs=0.001)
    assert steady.max() <= 0.001  # only young pauses
