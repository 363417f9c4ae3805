"""bench_recording runs end to end at a tiny size and prints its figure."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.timeout(120)
def test_bench_recording_prints_its_figure() -> None:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench_recording.py"),
         "--spaces", "2", "--seconds", "2", "--runs", "1"],
        capture_output=True, text=True, timeout=100, cwd=ROOT,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    figures = re.findall(r"^FIGURE recording_us_per_packet=(-?[\d.]+) us$", proc.stdout, re.M)
    assert len(figures) == 1, proc.stdout
    assert "recording off (baseline)" in proc.stdout
