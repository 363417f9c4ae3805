"""spacesim.analysis.views on a hand-made run whose numbers are known."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from spacesim.analysis import views
from spacesim.results import summarise
from tests.analysis import synthetic


@pytest.fixture
def rec() -> pd.DataFrame:
    return synthetic.records()


def test_distribution_is_what_summarise_computes(rec: pd.DataFrame) -> None:
    lat = rec[rec["kind"] == "audio_latency"]["value"]
    row = summarise(rec).loc["audio_latency"]
    got = views.distribution(lat)
    for stat in views.STATS:
        assert got[stat] == pytest.approx(float(row[stat]))
    assert views.distribution([])["count"] == 0
    assert math.isnan(views.distribution([math.nan])["p95"])


def test_samples_per_metric(rec: pd.DataFrame) -> None:
    joins = views.samples(rec, "join_time")
    assert sorted(joins["role"]) == ["host", "listener", "listener", "listener"]
    hands = views.samples(rec, "hand_wait")
    assert list(hands["value"]) == [3.0]  # the host's own grant answered no hand
    assert list(views.samples(rec, "report_resolution")["value"]) == [20.0]
    with pytest.raises(ValueError, match="unknown metric"):
        views.samples(rec, "nope")


def test_jitter_is_the_delay_change_between_a_listeners_samples(rec: pd.DataFrame) -> None:
    jit = views.samples(rec, "jitter")
    l1 = jit[jit["participant"] == "L1"]["value"]
    assert list(l1) == pytest.approx(list(np.abs(np.diff(synthetic.L1_LATENCY))))
    assert list(jit[jit["participant"] == "L2"]["value"]) == [0.0]


def test_distribution_by_role(rec: pd.DataFrame) -> None:
    table = views.distribution_by(views.samples(rec, "join_time"), "role")
    assert table.loc["host", "count"] == 1
    assert table.loc["listener", "p50"] == pytest.approx(0.4)
    assert list(views.distribution_by(views.samples(rec, "join_time")).index) == ["all"]


def test_over_time_windows(rec: pd.DataFrame) -> None:
    table = views.over_time(views.samples(rec, "audio_latency"), window=10.0)
    assert list(table["t"]) == [10.0, 30.0]
    assert list(table["count"]) == [4, 2]
    assert table.iloc[0]["p50"] == pytest.approx(float(np.quantile(synthetic.L1_LATENCY, 0.5)))
    by_room = views.over_time(views.samples(rec, "audio_latency"), 10.0, by="room")
    assert set(by_room["group"]) == {"room-0"}
    assert views.over_time(views.samples(rec, "audio_latency").iloc[0:0], 5.0).empty
    with pytest.raises(ValueError, match="window"):
        views.over_time(views.samples(rec, "audio_latency"), 0)


def test_loss_overall_and_per_window(rec: pd.DataFrame) -> None:
    total = views.loss(rec)
    assert total.loc[0, "loss"] == pytest.approx(10 / 200)
    windows = views.loss(rec, window=10.0).set_index("t")
    assert windows.loc[10.0, "loss"] == pytest.approx(0.1)
    assert windows.loc[30.0, "loss"] == 0.0
    assert list(views.loss(rec, by="role")["group"]) == ["listener"]


def test_moderation_timings(rec: pd.DataFrame) -> None:
    mod = views.moderation(rec).set_index("timing")
    assert mod.loc["hand_wait", "value"] == 3.0
    assert mod.loc["hand_declined", "value"] == 5.0
    assert mod.loc["report_resolution", "outcome"] == "remove"


def test_nodes_and_totals(rec: pd.DataFrame) -> None:
    table = views.nodes(rec)
    assert set(table["node"]) == {"node-0", "node-1"}
    assert list(table[table["node"] == "node-0"]["forwarded_per_s"]) == [100.0] * 3  # 2 s ticks
    totals = views.node_totals(rec)
    assert list(totals["nodes"]) == [2, 2, 2]
    assert list(totals["cpu_mean"]) == [1.0] * 3
    assert list(totals["cpu_max"]) == [1.5] * 3
    assert list(totals["forwarded_per_s"]) == [400.0] * 3
    assert views.nodes(synthetic.records("load")).empty


def test_concurrency_from_joins_and_leaves_without_samples(rec: pd.DataFrame) -> None:
    listeners = views.concurrency(rec)
    assert list(listeners.index) == [1.0, 2.0, 3.0, 35.0]
    assert list(listeners) == [1, 2, 3, 2]


def test_ecdf() -> None:
    cdf = views.ecdf([3.0, 1.0, math.nan, 2.0])
    assert list(cdf["value"]) == [1.0, 2.0, 3.0]
    assert list(cdf["share"]) == pytest.approx([1 / 3, 2 / 3, 1.0])
    assert views.ecdf([]).empty
