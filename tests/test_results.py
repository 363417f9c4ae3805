"""Tests for spacesim.results: the record schema, run directories, summaries and SLOs."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from spacesim import results
from spacesim.policy import EVENT_KINDS
from spacesim.results import (
    COLUMNS,
    KINDS,
    Recorder,
    RunMeta,
    SloVerdict,
    check_slos,
    load_run,
    metric_table,
    summarise,
    write_run,
)

JOIN_TIMES = [0.10, 0.30, 0.20, 0.90, 0.15]
LATENCIES = [0.050, 0.080, 0.065, 0.120, 0.070, 0.300, 0.055]
HAND_WAITS = [4.0, 12.0, 7.5]


def meta(run_id: str = "run-1", **kw: object) -> RunMeta:
    return RunMeta(
        run_id=run_id,
        source="sim",
        scenario_name="unit",
        scenario_hash="0123456789abcdef",
        seed=1,
        started_at="2024-01-01T00:00:00+00:00",
        **kw,  # type: ignore[arg-type]
    )


def sample_recorder(run_id: str = "run-1") -> Recorder:
    """A hand-built run whose summary is easy to work out."""
    rec = Recorder(run_id, "sim")
    rec.add("space_started", 0.0, "r0", "host", "host")
    rec.add("participant_joined", 0.0, "r0", "host", "host", 5.0)  # not a listener
    for i, jt in enumerate(JOIN_TIMES):
        rec.add("participant_joined", 10.0 - i, "r0", f"p{i}", "listener", jt)
    for i, lat in enumerate(LATENCIES):
        rec.add("audio_latency", 20.0 + i, "r0", f"p{i % 3}", "listener", lat)
    rec.add("packets_received", 30.0, "r0", "p0", "listener", 950)
    rec.add("packets_lost", 30.0, "r0", "p0", "listener", 30)
    rec.add("packets_received", 31.0, "r0", "p1", "listener", 1000)
    rec.add("packets_lost", 31.0, "r0", "p1", "listener", 20)
    for i in range(4):
        rec.add("hand_raised", 40.0 + i, "r0", f"p{i}", "listener")
    for i, wait in enumerate(HAND_WAITS):
        rec.add("speaker_granted", 50.0 + i, "r0", f"p{i}", "speaker", wait)
    rec.add("speaker_granted", 55.0, "r0", "p9", "speaker")  # invited: no wait
    rec.add("hand_declined", 56.0, "r0", "p3", "listener", 9.0)
    rec.add("reaction", 60.0, "r0", "", "", 7)
    rec.add("reaction", 61.0, "r0", "", "", 3)
    rec.add("report_filed", 70.0, "r0", "p4", "listener", attrs={"about": "user"})
    rec.add("removed", 71.0, "r0", "p4", "listener")
    rec.add("concurrency", 1.0, "r0", value=10)
    rec.add("concurrency", 1.0, "r1", value=5)
    rec.add("concurrency", 2.0, "r0", value=12)
    return rec


# --------------------------------------------------------------------------- vocabulary


def test_policy_events_are_record_kinds() -> None:
    missing = set(EVENT_KINDS) - set(results.KINDS)
    assert not missing, f"rulebook events without a record kind: {sorted(missing)}"


def test_kinds_have_unit_and_meaning() -> None:
    for kind, (unit, meaning) in KINDS.items():
        assert isinstance(unit, str), kind
        assert meaning, kind


# --------------------------------------------------------------------------- recorder


def test_recorder_rejects_unknown_kind() -> None:
    rec = Recorder("r", "sim")
    with pytest.raises(ValueError, match="unknown record kind"):
        rec.add("participant_jioned", 0.0)
    assert len(rec) == 0


def test_recorder_rejects_unknown_source() -> None:
    with pytest.raises(ValueError, match="source"):
        Recorder("r", "simulator")  # type: ignore[arg-type]


def test_to_frame_schema() -> None:
    df = sample_recorder().to_frame()
    assert tuple(df.columns) == COLUMNS
    assert isinstance(df["kind"].dtype, pd.CategoricalDtype)
    for col in ("run_id", "source", "room", "role"):
        assert isinstance(df[col].dtype, pd.CategoricalDtype), col
    assert df["t"].dtype == np.float64
    assert df["value"].dtype == np.float64
    assert df["t"].is_monotonic_increasing
    assert list(df.index) == list(range(len(df)))
    assert set(df["run_id"]) == {"run-1"}
    assert set(df["source"]) == {"sim"}
    assert set(df["kind"].cat.categories) <= set(KINDS)


def test_to_frame_sort_is_stable_and_keeps_values() -> None:
    rec = Recorder("r", "load")
    rec.add("participant_joined", 2.0, "r0", "a", "listener", 0.2)
    rec.add("participant_joined", 1.0, "r0", "b", "listener", 0.1, {"k": [1, 2]})
    rec.add("participant_left", 2.0, "r0", "c", "listener", 30.0)
    df = rec.to_frame()
    assert list(df["participant"]) == ["b", "a", "c"]
    assert list(df["value"]) == [0.1, 0.2, 30.0]
    assert json.loads(df["attrs"].iloc[0]) == {"k": [1, 2]}
    assert pd.isna(df["attrs"].iloc[1])


def test_recorder_value_defaults_to_nan() -> None:
    rec = Recorder("r", "server")
    rec.add("hand_raised", 1.0, "r0", "p", "listener")
    df = rec.to_frame()
    assert len(rec) == 1
    assert math.isnan(df["value"].iloc[0])


def test_empty_recorder_frame() -> None:
    df = Recorder("r", "sim").to_frame()
    assert tuple(df.columns) == COLUMNS
    assert len(df) == 0


def test_hot_path_append_is_validated_at_frame_time() -> None:
    rec = Recorder("r", "sim")
    rec.append(("not_a_kind", 0.0, "r0", "p", "listener", 1.0, None))
    with pytest.raises(ValueError, match="not_a_kind"):
        rec.to_frame()


# --------------------------------------------------------------------------- run directories


def _aligned(loaded: pd.DataFrame, original: pd.DataFrame) -> pd.DataFrame:
    """Parquet may read text columns back as a string dtype; compare values, not storage."""
    return loaded.astype({c: original[c].dtype for c in original.columns})


def test_write_then_load_round_trips(tmp_path: Path) -> None:
    df = sample_recorder().to_frame()
    m = meta(duration=120.0, wall_seconds=0.5, scenario={"name": "unit"}, extra={"k": 1})
    out = write_run(tmp_path / "run", df, m)
    assert out == tmp_path / "run"
    assert (out / "meta.json").is_file()
    assert (out / "records.parquet").is_file()
    assert not (out / "records.parquet.tmp").exists()

    run = load_run(out)
    assert run.path == out
    assert run.meta == m
    assert tuple(run.records.columns) == COLUMNS
    pd.testing.assert_frame_equal(_aligned(run.records, df), df)


def test_load_run_ignores_unknown_meta_fields(tmp_path: Path) -> None:
    df = sample_recorder().to_frame()
    out = write_run(tmp_path / "run", df, meta())
    raw = json.loads((out / "meta.json").read_text())
    raw["added_by_a_future_version"] = True
    (out / "meta.json").write_text(json.dumps(raw))
    assert load_run(out).meta == meta()


def test_write_run_same_run_id_overwrites(tmp_path: Path) -> None:
    df = sample_recorder().to_frame()
    write_run(tmp_path, df, meta("same"))
    write_run(tmp_path, df.iloc[:3], meta("same"))
    assert len(load_run(tmp_path).records) == 3


def test_write_run_refuses_other_run(tmp_path: Path) -> None:
    df = sample_recorder().to_frame()
    write_run(tmp_path, df, meta("first"))
    with pytest.raises(FileExistsError, match="first"):
        write_run(tmp_path, df.iloc[:3], meta("second"))
    run = load_run(tmp_path)
    assert run.meta.run_id == "first"
    assert len(run.records) == len(df)


def test_write_run_requires_columns(tmp_path: Path) -> None:
    df = sample_recorder().to_frame().drop(columns=["attrs"])
    with pytest.raises(ValueError, match="attrs"):
        write_run(tmp_path / "run", df, meta())
    assert not (tmp_path / "run").exists()


def test_load_run_on_empty_dir(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError) as info:
        load_run(tmp_path)
    msg = str(info.value)
    assert str(tmp_path) in msg
    assert "meta.json" in msg
    assert "records.parquet" in msg


def test_load_run_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="not a run directory"):
        load_run(tmp_path / "nowhere")


def test_new_run_ids_differ() -> None:
    assert RunMeta.new_run_id() != RunMeta.new_run_id()


# --------------------------------------------------------------------------- summaries


@pytest.fixture
def summary() -> pd.DataFrame:
    return summarise(sample_recorder().to_frame(), duration=100.0)


def test_summary_columns(summary: pd.DataFrame) -> None:
    assert list(summary.columns) == ["count", "mean", "p50", "p95", "p99", "value", "unit"]
    assert summary.index.name == "metric"


@pytest.mark.parametrize(
    ("metric", "values"),
    [("join_time", JOIN_TIMES), ("audio_latency", LATENCIES), ("hand_wait", HAND_WAITS)],
)
def test_percentiles_match_numpy(summary: pd.DataFrame, metric: str, values: list[float]) -> None:
    row = summary.loc[metric]
    expected = np.quantile(np.array(values), [0.5, 0.95, 0.99])
    assert row["count"] == len(values)
    assert row["mean"] == pytest.approx(float(np.mean(values)))
    assert [row["p50"], row["p95"], row["p99"]] == pytest.approx(list(expected))


def test_delivery_ratio(summary: pd.DataFrame) -> None:
    received, lost = 950 + 1000, 30 + 20
    row = summary.loc["delivery_ratio"]
    assert row["value"] == pytest.approx(received / (received + lost))
    assert row["count"] == received + lost


def test_counts(summary: pd.DataFrame) -> None:
    values = summary["value"]
    assert values["joins"] == len(JOIN_TIMES)  # listeners only: the host's join is not one
    assert values["hands_raised"] == 4
    assert values["hands_granted"] == len(HAND_WAITS)  # a grant without a wait answered no hand
    assert values["hands_declined"] == 1
    assert values["reactions"] == 10
    assert values["reaction_rate"] == pytest.approx(0.1)
    assert values["reports_filed"] == 1
    assert values["removed"] == 1
    assert values["blocked"] == 0
    assert values["joins_refused"] == 0


def test_concurrency_sums_rooms_per_tick(summary: pd.DataFrame) -> None:
    row = summary.loc["concurrency"]
    assert row["value"] == 15  # max over t of (10 + 5, 12)
    assert row["count"] == 2


def test_empty_distribution_has_no_percentiles(summary: pd.DataFrame) -> None:
    row = summary.loc["first_audio"]
    assert row["count"] == 0
    assert pd.isna(row["p95"])


def test_summary_without_duration_has_no_rate() -> None:
    s = summarise(sample_recorder().to_frame())
    assert "reaction_rate" not in s.index


def test_summary_of_loaded_run_matches(tmp_path: Path) -> None:
    df = sample_recorder().to_frame()
    write_run(tmp_path, df, meta())
    pd.testing.assert_frame_equal(summarise(load_run(tmp_path).records), summarise(df))


def test_summary_of_empty_records() -> None:
    s = summarise(Recorder("r", "sim").to_frame())
    assert s.loc["joins", "value"] == 0
    assert "delivery_ratio.value" not in metric_table(s)


def test_metric_table_drops_nan(summary: pd.DataFrame) -> None:
    flat = metric_table(summary)
    assert flat["delivery_ratio.value"] == pytest.approx(1950 / 2000)
    assert "first_audio.p95" not in flat
    assert flat["first_audio.count"] == 0
    assert all(isinstance(v, float) and not math.isnan(v) for v in flat.values())


def test_check_slos_verdicts(summary: pd.DataFrame) -> None:
    p95 = float(np.quantile(LATENCIES, 0.95))
    verdicts = check_slos(
        summary,
        [
            ("audio_latency.p95", "<=", 1.0),
            ("audio_latency.p95", "<=", 0.1),
            ("delivery_ratio.value", ">=", 0.9),
            ("delivery_ratio.value", ">=", 0.99),
            ("first_audio.p95", "<=", 3.0),
        ],
    )
    assert [v.passed for v in verdicts] == [True, False, True, False, None]
    assert verdicts[0] == SloVerdict("audio_latency.p95", "<=", 1.0, p95, True)
    assert verdicts[4].actual is None
    assert verdicts[2].actual == pytest.approx(0.975)


def test_check_slos_boundary_passes(summary: pd.DataFrame) -> None:
    exact = metric_table(summary)["delivery_ratio.value"]
    (verdict,) = check_slos(summary, [("delivery_ratio.value", ">=", exact)])
    assert verdict.passed is True


def test_check_slos_rejects_unknown_comparison(summary: pd.DataFrame) -> None:
    with pytest.raises(ValueError, match="comparison"):
        check_slos(summary, [("audio_latency.p95", "<", 1.0)])


def test_check_slos_accepts_scenario_targets(summary: pd.DataFrame) -> None:
    from spacesim.scenario import Slo

    targets = Slo(audio_latency_p95="1s", delivery_ratio="99%", first_audio_p95="3s").targets()
    verdicts = {v.metric: v.passed for v in check_slos(summary, targets)}
    assert verdicts == {
        "first_audio.p95": None,
        "audio_latency.p95": True,
        "delivery_ratio.value": False,
    }


def test_cpu_per_packet_uses_each_nodes_tick() -> None:
    rec = Recorder("r", "sim")
    for i in range(4):  # node a: 0.5 s ticks, 0.2 cores -> 0.1 CPU s per tick
        rec.add("node_cpu", 0.5 * i, participant="a", role="node", value=0.2)
        rec.add("packets_forwarded", 0.5 * i, participant="a", role="node", value=1000)
    for i in range(2):  # node b: 2 s ticks, 0.1 cores -> 0.2 CPU s per tick
        rec.add("node_cpu", 2.0 * i, participant="b", role="node", value=0.1)
        rec.add("packets_forwarded", 2.0 * i, participant="b", role="node", value=1000)
    row = summarise(rec.to_frame()).loc["cpu_per_packet"]
    assert row["value"] == pytest.approx((4 * 0.1 + 2 * 0.2) / 6000)
    assert row["unit"] == "s" and row["count"] == 6000


def test_no_cpu_per_packet_without_forwarding() -> None:
    rec = Recorder("r", "server")
    rec.add("node_cpu", 1.0, participant="server", role="node", value=0.1)
    assert "cpu_per_packet" not in summarise(rec.to_frame()).index


def test_summarise_run_takes_the_servers_figures_from_its_nested_run(tmp_path: Path) -> None:
    from spacesim.results import summarise_run

    server = Recorder("srv", "server")
    for i in range(3):
        server.add("node_cpu", float(i), participant="server", role="node", value=0.5)
        server.add("packets_forwarded", float(i), participant="server", role="node", value=5e3)
        server.add("participant_joined", float(i), "r0", f"p{i}", "listener")  # not counted
    write_run(tmp_path / "server", server.to_frame(), meta("srv"))
    df = sample_recorder().to_frame()
    write_run(tmp_path, df, meta(extra={"server_run": "server"}))
    summary = summarise_run(load_run(tmp_path))
    assert summary.loc["cpu_per_packet", "value"] == pytest.approx(1.5 / 15e3)
    assert summary.loc["packets_forwarded", "value"] == 15e3
    assert summary.loc["joins", "value"] == summarise(df).loc["joins", "value"]
    alone = summarise_run(load_run(tmp_path / "server"))  # a run without a nested one
    assert alone.loc["cpu_per_packet", "value"] == pytest.approx(1e-4)


def test_summarise_run_takes_the_servers_figures_over_the_load_runs_own_time(
    tmp_path: Path,
) -> None:
    """The server's run also holds the seconds it idled while Locust started and after
    the swarm stopped: its mean CPU is over the load run's window (``t0_unix``,
    ``duration``), as a simulation of the same seconds is."""
    from spacesim.results import summarise_run

    server = Recorder("srv", "server")
    for i in range(12):  # idle 0-3 s, busy 4-9 s (the load run's 0-5 s), idle again
        busy = 4 <= i <= 9
        server.add("node_cpu", float(i), participant="server", role="node",
                   value=0.4 if busy else 0.01)  # fmt: skip
        server.add("packets_forwarded", float(i), participant="server", role="node",
                   value=1e3 if busy else 0.0)  # fmt: skip
    write_run(tmp_path / "server", server.to_frame(),
              meta("srv", duration=12.0, extra={"t0_unix": 1000.0}))  # fmt: skip
    write_run(tmp_path, sample_recorder().to_frame(),
              meta(duration=5.0, extra={"server_run": "server", "t0_unix": 1004.0}))  # fmt: skip
    summary = summarise_run(load_run(tmp_path))
    assert summary.loc["node_cpu", "mean"] == pytest.approx(0.4)
    assert summary.loc["packets_forwarded", "value"] == 6e3
    # a load run from before t0_unix was recorded: the server's whole run
    write_run(tmp_path, sample_recorder().to_frame(), meta(extra={"server_run": "server"}))
    assert summarise_run(load_run(tmp_path)).loc["node_cpu", "mean"] < 0.3


def test_summarise_run_takes_the_servers_caption_cores_and_recording_bytes(
    tmp_path: Path,
) -> None:
    from spacesim.results import summarise_run

    server = Recorder("srv", "server")
    for i in range(4):
        server.add("asr_cores", float(i), participant="server", role="node", value=0.25 * i)
        server.add("recording_bytes", float(i), participant="server", role="room", value=3e3)
    write_run(tmp_path / "server", server.to_frame(), meta("srv", duration=4.0))
    write_run(tmp_path, sample_recorder().to_frame(), meta(extra={"server_run": "server"}))
    summary = summarise_run(load_run(tmp_path))
    assert summary.loc["asr_cores", "value"] == pytest.approx(0.75)  # the peak
    assert summary.loc["recording_bytes", "value"] == 12e3
    assert summary.loc["recording_write_rate", "value"] == pytest.approx(3e3)  # server's 4 s


def test_nearest_rank_is_a_value_of_the_sample() -> None:
    import math

    from spacesim.results import nearest_rank

    xs = [5.0, 1.0, 4.0, 2.0, 3.0]
    assert nearest_rank(xs, 0.5) == 3.0
    assert nearest_rank(xs, 0.99) == 5.0 and nearest_rank(xs, 0.0) == 1.0
    assert nearest_rank(range(100), 0.95) == 95
    assert math.isnan(nearest_rank([], 0.5))


def test_egress_and_replays_are_summarised() -> None:
    rec = Recorder("r", "load")
    rec.add("replay_started", 1.0, "s", "r1", "replay", 0.2, {"via": "webrtc"})
    rec.add("replay_started", 2.0, "s", "r2", "replay", 0.4, {"via": "http"})
    rec.add("egress_bytes", 5.0, "s", "r1", "replay", 1000.0, {"via": "webrtc"})
    rec.add("egress_bytes", 6.0, "s", "r2", "replay", 3000.0, {"via": "http"})
    rec.add("egress_bytes", 7.0, "s", "l1", "clip", 500.0)
    s = summarise(rec.to_frame(), duration=10.0)
    assert s.loc["replays", "value"] == 2
    assert s.loc["replay_start", "p50"] == pytest.approx(0.3)
    assert s.loc["egress_bytes", "value"] == 4500 and s.loc["egress_bytes", "unit"] == "bytes"
    assert s.loc["replay_egress_bytes", "value"] == 4000
    assert s.loc["clip_egress_bytes", "value"] == 500
    assert s.loc["egress_rate", "value"] == pytest.approx(450.0)
    assert "egress_bytes" not in summarise(Recorder("r", "sim").to_frame()).index
