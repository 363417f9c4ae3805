"""bench_abuse runs end to end at a tiny size and prints its figures."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.timeout(120)
def test_bench_abuse_prints_its_figures() -> None:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench_abuse.py"), "--quick"],
        capture_output=True, text=True, timeout=100, cwd=ROOT,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    figures = dict(re.findall(r"^FIGURE (\w+)=(-?[\d.]+) ", proc.stdout, re.M))
    assert set(figures) == {
        "healthz_p99_baseline",
        "healthz_p99_under_flood",
        "rss_per_1000_spaces",
    }
    assert float(figures["healthz_p99_baseline"]) > 0
    assert float(figures["healthz_p99_under_flood"]) > 0
    assert "closed with 4429" in proc.stdout  # the flood did run, and was cut off
