"""bench_posts runs end to end at a tiny size and prints its figures."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.timeout(120)
def test_bench_posts_prints_its_figures() -> None:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench_posts.py"),
         "--clients", "1", "--duration", "1", "--seconds", "2", "--fleets", "500",
         "--sim-users", "1000", "--sim-runs", "1", "--runs", "1"],
        capture_output=True, text=True, timeout=100, cwd=ROOT,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    up = re.findall(r"^FIGURE voice_uploads_per_core_s=([\d.]+) per_s$", proc.stdout, re.M)
    ex = re.findall(r"^FIGURE fleet_expiry_per_s=(\d+) per_s$", proc.stdout, re.M)
    assert len(up) == len(ex) == 1 and float(up[0]) > 0 and int(ex[0]) > 0, proc.stdout
    assert "expiry: 500 Fleets (50 with audio files)" in proc.stdout
    days = re.findall(r"^FIGURE sim_days_per_minute=(\d+) days$", proc.stdout, re.M)
    assert len(days) == 1 and int(days[0]) > 0, proc.stdout
    assert "simulator: voice-day, 1000 users, 7 days simulated" in proc.stdout
    # each figure has its baseline from the same run
    ratio = re.findall(r"^FIGURE voice_vs_text_posts=([\d.]+) ratio$", proc.stdout, re.M)
    cost = re.findall(r"^FIGURE sim_posts_cost=([\d.]+) ratio$", proc.stdout, re.M)
    assert len(ratio) == len(cost) == 1 and 0 < float(ratio[0]) < 1 and float(cost[0]) > 0
