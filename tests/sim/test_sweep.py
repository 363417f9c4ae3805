"""Sweeps, audience scaling and capacity answers (tiny scenarios: seconds in all)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import yaml

from spacesim.cli import main
from spacesim.scenario import Scenario, ScenarioError
from spacesim.sim.audience import expected_audience, with_audience
from spacesim.sim.capacity import capacity, capacity_table
from spacesim.sim.sweep import FIGURES, GridError, grid_points, parse_grid, sweep
from tests.sim.builders import scenario

ROOT = Path(__file__).resolve().parents[2]
SLO = {"audio_latency_p95": "1s", "delivery_ratio": "50%"}


def admission(**fields: Any) -> Scenario:
    """A crowd that arrives at once and stays; 50 listeners fit a node (100 streams, 2 each).

    Only admission control limits it, so the fewest nodes that refuse nobody is exact.
    """
    return scenario(
        duration="20s",
        arrivals={"kind": "flash_crowd", "base": 0, "bursts": [{"at": 0, "size": 100, "over": 1}]},
        session={"kind": "fixed", "mean": "1h"},
        server={"max_streams": 100, "cores": 4},
        slo=SLO,
        **fields,
    )


# --------------------------------------------------------------------------- grids


@pytest.mark.parametrize(
    ("spec", "needle"),
    [
        ("nodes", "expected NAME=V1,V2"),
        ("=1,2", "expected NAME=V1,V2"),
        ("nodes=1,,2", "axis 'nodes' has an empty value"),
        ("nodes=", "axis 'nodes' has an empty value"),
    ],
)
def test_grid_syntax_errors_name_the_axis(spec: str, needle: str) -> None:
    with pytest.raises(GridError, match=needle):
        parse_grid([spec])


def test_grid_axis_given_twice_under_its_alias() -> None:
    with pytest.raises(GridError, match=r"'server\.nodes' is given twice"):
        parse_grid(["nodes=1,2", "server.nodes=4"])


def test_grid_values_parse_like_the_scenario(tmp_path: Path) -> None:
    grid = parse_grid(["listeners=1e3,10k", "nodes=1,2", "network.0.loss=0,1%", "seed=3"])
    points = grid_points(admission(), grid, tmp_path)
    assert len(points) == 8
    first, last = points[0], points[-1]
    assert first.axes == {"listeners": 1000, "nodes": 1, "network.0.loss": 0.0, "seed": 3}
    assert last.axes == {"listeners": 10_000, "nodes": 2, "network.0.loss": 0.01, "seed": 3}
    assert last.seed == 3 and last.scenario.server.nodes == 2
    assert Path(last.run_dir).parent == tmp_path.resolve() / "runs"
    assert len({p.run_dir for p in points}) == 8


def test_bad_listener_count_names_the_axis_and_value(tmp_path: Path) -> None:
    with pytest.raises(GridError, match=r"--grid listeners: not a count: '1x'"):
        grid_points(admission(), parse_grid(["listeners=10,1x"]), tmp_path)


def test_unknown_field_and_bad_value_are_scenario_errors(tmp_path: Path) -> None:
    with pytest.raises(ScenarioError, match=r"server\.nodez: Extra inputs"):
        grid_points(admission(), parse_grid(["server.nodez=1"]), tmp_path)
    with pytest.raises(
        ScenarioError, match=r"grid point nodes=0\): server\.nodes: .*greater than or equal to 1"
    ):
        grid_points(admission(), parse_grid(["nodes=2,0"]), tmp_path)


# --------------------------------------------------------------------------- audience


@pytest.mark.parametrize(
    "arrivals",
    [
        {"kind": "poisson", "rate": "2/s"},
        {"kind": "constant", "rate": "2/s"},
        {"kind": "ramp", "start": 0, "end": "3/s", "over": "2m"},
        {"kind": "piecewise", "steps": [{"at": 0, "rate": "1/s"}, {"at": "3m", "rate": "4/s"}]},
        {"kind": "flash_crowd", "base": "1/s", "bursts": [{"at": "1m", "size": 500}]},
    ],
)
def test_with_audience_scales_every_arrival_kind(arrivals: dict[str, Any]) -> None:
    sc = scenario(arrivals=arrivals)
    assert with_audience(sc, 5000).arrivals.kind == sc.arrivals.kind
    assert expected_audience(with_audience(sc, 5000)) == pytest.approx(5000, abs=2)


def test_expected_audience_is_littles_law_in_steady_state() -> None:
    sc = scenario(duration="30m", session={"kind": "exponential", "mean": "1m"}, rooms={"count": 3})
    assert expected_audience(sc) == pytest.approx(3 * 1.0 * 60, rel=1e-3)


# --------------------------------------------------------------------------- sweeps


def test_two_by_two_sweep_table(tmp_path: Path) -> None:
    seen: list[int] = []
    table = sweep(
        admission(),
        ["listeners=50,100", "nodes=1,2"],
        tmp_path,
        processes=2,
        progress=lambda done, total, row: seen.append(done),
    )
    assert seen == [1, 2, 3, 4]
    assert list(table[["listeners", "nodes"]].itertuples(index=False, name=None)) == [
        (50, 1),
        (50, 2),
        (100, 1),
        (100, 2),
    ]
    assert set(FIGURES) <= set(table.columns)
    # 50 listeners fit one node; 100 need two (the rest are refused).
    assert list(table["joins_refused.value"]) == [0, 0, 50, 0]
    assert list(table["slo_pass"]) == [True, True, True, True]
    assert table.loc[2, "refused_share"] == pytest.approx(0.5)
    assert all((Path(d) / "records.parquet").is_file() for d in table["run_dir"])
    on_disk = pd.read_parquet(tmp_path / "sweep.parquet")
    pd.testing.assert_frame_equal(on_disk, table)
    assert len(pd.read_csv(tmp_path / "sweep.csv")) == 4
    # Run again: every point is read back, with the same figures.
    again = sweep(admission(), {"listeners": [50, 100], "nodes": [1, 2]}, tmp_path, processes=1)
    assert again["reused"].all()
    pd.testing.assert_frame_equal(again.drop(columns="reused"), table.drop(columns="reused"))
    answers = capacity_table(table)
    assert list(answers["nodes_needed"]) == [1, 2]


def test_capacity_table_takes_no_lucky_pass_below_a_failure() -> None:
    rows = [(1, False), (2, True), (3, False), (4, True), (8, True)]
    table = pd.DataFrame(
        {
            "listeners": 10,
            "nodes": [n for n, _ in rows],
            "slo_pass": [ok for _, ok in rows],
            "refused_share": 0.0,
        }
    )
    (answer,) = capacity_table(table).to_dict("records")
    assert answer["nodes_needed"] == 4
    assert "noise" in answer["note"]
    none = capacity_table(table.assign(slo_pass=False)).iloc[0]
    assert pd.isna(none["nodes_needed"]) and "no tested node count (1..8)" in none["note"]


# --------------------------------------------------------------------------- capacity search


def test_capacity_search_finds_the_known_answer(tmp_path: Path) -> None:
    probed: list[int] = []
    answer = capacity(
        admission(), 400, out_dir=tmp_path, max_nodes=64, progress=lambda n, r: probed.append(n)
    )
    assert answer.nodes == 8  # 400 listeners / 50 per node
    assert list(answer.curve["nodes"]) == sorted(probed)
    assert answer.curve.set_index("nodes")["meets"].to_dict() == {n: n >= 8 for n in probed}
    assert str(answer) == "test: 8 nodes for 400 listeners"
    # Points known from a coarse sweep bracket the answer: only the gap is probed.
    coarse = answer.curve[answer.curve["nodes"].isin([2, 8])]
    probed.clear()
    again = capacity(
        admission(),
        400,
        out_dir=tmp_path,
        known=coarse,
        max_nodes=64,
        progress=lambda n, r: probed.append(n),
    )
    assert again.nodes == 8 and sorted(probed) == [5, 6, 7]


def test_capacity_search_says_when_no_count_meets(tmp_path: Path) -> None:
    answer = capacity(admission(), 400, nodes=[1, 2, 3], out_dir=tmp_path)
    assert answer.nodes is None
    assert "no node count in 1..3 meets the SLOs for 400 listeners" in str(answer)
    assert "refused" in str(answer)


def test_capacity_needs_slos(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no SLOs"):
        capacity(scenario(), 100, out_dir=tmp_path)


# --------------------------------------------------------------------------- command line


def test_cli_sweep_and_capacity(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "crowd.yaml"
    path.write_text(yaml.safe_dump(admission().model_dump(mode="json")), encoding="utf-8")
    out = tmp_path / "sweep"
    args = ["sweep", str(path), "--grid", "listeners=100", "--grid", "nodes=1,2,4"]
    assert main([*args, "--out", str(out), "--processes", "1", "--quiet"]) == 0
    text = capsys.readouterr().out
    assert "capacity: fewest nodes meeting every SLO" in text
    assert len(pd.read_parquet(out / "sweep.parquet")) == 3
    assert main(["sweep", str(path), "--grid", "listeners=ten"]) == 2
    assert "--grid listeners: not a count: 'ten'" in capsys.readouterr().err
    cap = ["capacity", str(path), "--listeners", "200", "--quiet", "--max-nodes"]
    assert main([*cap, "16", "--out", str(tmp_path / "cap")]) == 0
    assert "test: 4 nodes for 200 listeners" in capsys.readouterr().out
    assert main([*cap, "2", "--out", str(tmp_path / "cap2")]) == 1
    assert "no node count in 1..2" in capsys.readouterr().out


# --------------------------------------------------------------------------- dask


# In its own interpreter: the load tests import Locust, whose gevent patches threading,
# and Dask's client refuses to start in a process so patched.
DASK_SWEEP = """
import sys
from distributed import Client, LocalCluster
from spacesim.sim.sweep import sweep
from tests.sim.test_sweep import GRID, admission

if __name__ == "__main__":
    with (
        LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                     dashboard_address=None) as cluster,
        Client(cluster) as client,
    ):
        sweep(admission(), GRID, sys.argv[1], client=client)
"""
GRID = ["listeners=50,100", "nodes=1,2"]


def test_dask_local_cluster_gives_the_local_table(tmp_path: Path) -> None:
    local = sweep(admission(), GRID, tmp_path / "local", processes=1)
    proc = subprocess.run(
        [sys.executable, "-c", DASK_SWEEP, str(tmp_path / "dask")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    remote = pd.read_parquet(tmp_path / "dask" / "sweep.parquet")
    same = [c for c in local.columns if c not in ("run_dir", "wall_seconds")]
    pd.testing.assert_frame_equal(remote[same], local[same])
    assert all(str(tmp_path / "dask") in d for d in remote["run_dir"])
