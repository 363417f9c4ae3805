"""Per-node figures of a run over several nodes (the cluster's like-for-like rows)."""

from __future__ import annotations

import math

import pytest

from spacesim.analysis.likeforlike import node_figures
from spacesim.results import Recorder, Run, RunMeta


def _run(nodes: bool) -> Run:
    """A host on node-1, listeners a on node-1 and b on node-2; b hears 2 ms later."""
    rec = Recorder("r", "sim")
    at = (lambda n: {"node": n}) if nodes else (lambda n: None)
    rec.add("participant_joined", 0.0, "s", "host", "host", 0.05, at("node-1"))
    rec.add("participant_joined", 1.0, "s", "a", "listener", 0.05, at("node-1"))
    rec.add("participant_joined", 1.0, "s", "b", "listener", 0.05, at("node-2"))
    for i in range(100):
        t = 4.0 + i * 0.1
        rec.add("audio_latency", t, "s", "a", "listener", 0.001 + i * 1e-5)
        rec.add("audio_latency", t, "s", "b", "listener", 0.003 + i * 1e-5)
    for t in range(4, 15):
        rec.add("node_cpu", float(t), "", "node-1", "node", 0.2)
        rec.add("node_cpu", float(t), "", "node-2", "node", 0.1)
    meta = RunMeta("r", "sim", "x", "", 1, "2026-01-01T00:00:00", 14.0)
    return Run(rec.to_frame(), meta)


def test_node_figures_split_the_origin_from_the_others() -> None:
    f = node_figures(_run(nodes=True))
    assert f["origin.node_cpu.mean"] == pytest.approx(0.2)
    assert f["other.node_cpu.mean"] == pytest.approx(0.1)
    assert f["origin.listeners"] == 1 and f["other.listeners"] == 1
    assert f["origin.audio_latency.p50"] == pytest.approx(0.001 + 49.5e-5, rel=0.01)
    assert f["cascade_latency.p50"] == pytest.approx(0.002)
    late = node_figures(_run(nodes=True), window=(9.0, 14.0))  # a given window
    assert late["origin.audio_latency.p50"] > f["origin.audio_latency.p50"]
    assert not math.isnan(late["other.audio_latency.p95"])


def test_a_run_on_one_node_has_no_node_figures() -> None:
    assert node_figures(_run(nodes=False)) == {}
