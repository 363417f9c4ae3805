"""bench_store runs end to end at a tiny size and prints its figures."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.timeout(120)
def test_bench_store_prints_its_figures() -> None:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench_store.py"), "--runs", "1",
         "--writes", "100"],
        capture_output=True, text=True, timeout=100, cwd=ROOT,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    figures = {
        k: float(v) for k, v in re.findall(r"^FIGURE (\w+)=([\d.]+) \w+$", proc.stdout, re.M)
    }
    for key in ("acked_writes", "joins"):
        sqlite, total = figures[f"sqlite_{key}_per_cpu_s"], figures[f"postgres_{key}_per_cpu_s"]
        assert 0 < total < figures[f"postgres_node_{key}_per_cpu_s"]  # the cluster's CPU counts
        ratio = figures[f"postgres_vs_sqlite_{key}"]  # the baseline, from the same run
        assert ratio == pytest.approx(total / sqlite, abs=0.006), figures
