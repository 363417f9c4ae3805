"""bench_fidelity --cluster: two nodes in network namespaces, the swarm through a veth pair,
the simulator replaying each level with two nodes (slow: ~40 s; root for namespaces)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root")
def test_the_cluster_case_spreads_listeners_over_both_nodes_and_compares_them(
    tmp_path: Path,
) -> None:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench_fidelity.py"), "--cluster",
         "--quick", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=280, cwd=ROOT,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    figure = re.search(r"^FIGURE cluster_fidelity_max_error=([\d.]+) %$", proc.stdout, re.M)
    assert figure is not None, proc.stdout
    assert "FIGURE cluster_fidelity_latency_max_error=" in proc.stdout
    table = pd.read_csv(tmp_path / "cluster_errors.csv")
    counts = table[table["metric"].str.endswith("listeners")].set_index(["listeners", "metric"])
    for n in (4, 8):  # both nodes carried listeners, in the swarm and in the replay
        assert counts.loc[(n, "origin.listeners"), "measured"] >= 1
        assert counts.loc[(n, "other.listeners"), "measured"] >= 1
        assert counts.loc[(n, "other.listeners"), "simulated"] >= 1
        both = (
            counts.loc[(n, "origin.listeners"), "measured"]
            + counts.loc[(n, "other.listeners"), "measured"]
        )
        assert both == n
    cpu = table[table["metric"].str.contains("node_cpu")]
    assert len(cpu) == 4
    assert (cpu["measured"] > 0).all() and (cpu["simulated"] > 0).all()
    summary = json.loads((tmp_path / "cluster_fidelity.json").read_text())
    assert summary["calibration"]["edge_delay"] > 0  # the hop is measured, not the default
    assert not any(Path("/run/netns").glob("spacesim-cf*"))  # the namespaces are gone
