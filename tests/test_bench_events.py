"""bench_events runs end to end at a tiny size and prints its figures (slow: two servers)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_bench_events_prints_its_figures() -> None:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench_events.py"),
         "--listeners", "10", "30", "--join-at", "10", "30", "--repeats", "1",
         "--storm", "0.5", "--idle", "0.3", "--audio-windows", "0"],
        capture_output=True, text=True, timeout=150, cwd=ROOT,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    figures = dict(re.findall(r"^FIGURE (\w+)=([\d.]+) ", proc.stdout, re.M))
    assert float(figures["event_us_per_delivery"]) > 0
    assert float(figures["event_latency_p95"]) > 0
    assert float(figures["join_cpu_ratio_30_vs_10"]) > 0
    assert "delivery 100.00 %" in proc.stdout
