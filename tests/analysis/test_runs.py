"""spacesim.analysis.runs: opening runs, the server's sub-run, SLOs and comparisons."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from spacesim.analysis import runs
from spacesim.results import summarise, summarise_run, write_run
from tests.analysis import synthetic


def test_open_run_names_the_path_of_bad_input(tmp_path: Path) -> None:
    with pytest.raises(runs.RunError, match=re.escape(str(tmp_path / "nope"))):
        runs.open_run(tmp_path / "nope")
    with pytest.raises(runs.RunError, match=r"meta\.json and records\.parquet"):
        runs.open_run(tmp_path)
    bad = synthetic.write(tmp_path / "bad")
    (bad / "meta.json").write_text("{not json")
    with pytest.raises(runs.RunError, match=re.escape(f"{bad}: not a readable run directory")):
        runs.open_run(bad)


def test_summary_is_summarise_over_the_run_duration(tmp_path: Path) -> None:
    run = runs.open_run(synthetic.write(tmp_path / "r"))
    expected = summarise(run.records, 40.0)
    assert runs.summary(run).equals(expected)


def test_a_run_without_server_dir_is_its_own_records(tmp_path: Path) -> None:
    run = runs.open_run(synthetic.write(tmp_path / "r", "load"))
    assert runs.server_run(run) is None
    assert runs.records(run) is run.records
    synthetic.write_server(tmp_path / "r")  # present, but the meta does not name it
    assert runs.server_run(run) is None


def test_server_node_records_join_a_load_run_on_its_clock(tmp_path: Path) -> None:
    directory = synthetic.write(tmp_path / "r", "load")
    synthetic.write_server(directory)  # started 5 s after the load run
    run = runs.open_run(directory)
    assert runs.server_run(run) is not None
    rec = runs.records(run)
    cpu = rec[rec["kind"] == "node_cpu"]
    assert list(cpu["t"]) == [6.0, 7.0]
    assert set(cpu["source"]) == {"server"}
    # the server's own participant_joined is not counted a second time
    assert runs.summary(run).loc["joins", "value"] == len(synthetic.JOIN)
    assert runs.summary(run).loc["node_cpu", "p50"] == 0.25
    assert runs.summary(run).equals(summarise_run(run))


def test_server_clock_from_epochs_when_both_runs_have_them(tmp_path: Path) -> None:
    records, meta = synthetic.records("load"), synthetic.meta("load", extra={"t0_unix": 1e9})
    directory = write_run(tmp_path / "r", records, meta)
    synthetic.write_server(directory, t0_unix=1e9 - 2.5)  # the server started 2.5 s earlier
    rec = runs.records(runs.open_run(directory))
    assert list(rec[rec["kind"] == "node_cpu"]["t"]) == [-1.5, -0.5]


def test_labels_are_unique(tmp_path: Path) -> None:
    run = runs.open_run(synthetic.write(tmp_path / "r"))
    a, b = runs.labels([run, run])
    assert a == "sim: unit (unit-1)"
    assert b == "sim: unit (unit-1) #2"


def test_slos_come_from_the_stored_scenario(tmp_path: Path) -> None:
    run = runs.open_run(synthetic.write(tmp_path / "r"))
    table = runs.slo_table([run]).set_index("metric")
    assert list(table.index) == ["join_time.p95", "audio_latency.p95", "delivery_ratio.value"]
    assert table.loc["join_time.p95", "passed"]  # p95 of 0.2, 0.4, 0.6 s < 1 s
    assert not table.loc["audio_latency.p95", "passed"]  # 80 ms sample above 50 ms
    assert table.loc["delivery_ratio.value", "actual"] == pytest.approx(190 / 200)


def test_a_run_without_scenario_has_no_slos(tmp_path: Path) -> None:
    directory = synthetic.write_server(tmp_path)
    run = runs.open_run(directory)
    assert runs.scenario_of(run) is None
    assert runs.slo_verdicts(run) == []


def test_compare_summaries_puts_runs_side_by_side(tmp_path: Path) -> None:
    a = runs.open_run(synthetic.write(tmp_path / "a"))
    b = runs.open_run(synthetic.write(tmp_path / "b", "load", "unit-2"))
    table = runs.compare_summaries([a, b])
    la, lb = runs.labels([a, b])
    assert table.loc["audio_latency", (la, "count")] == 6
    assert table.loc["audio_latency", (lb, "count")] == 6
    assert table.loc["node_cpu", (la, "p50")] == 1.0
    assert table.loc["join_time", ("", "unit")] == "s"


def test_public_surface() -> None:
    import spacesim.analysis as analysis

    assert len(set(analysis.__all__)) == len(analysis.__all__)
    assert all(hasattr(analysis, name) for name in analysis.__all__)
