"""Every shipped scenario simulates end to end and yields a usable summary."""

from __future__ import annotations

from pathlib import Path

import pytest

from spacesim.results import KINDS, check_slos, summarise
from spacesim.scenario import load_scenario
from spacesim.sim import simulate

SCENARIOS = sorted((Path(__file__).resolve().parents[2] / "scenarios").glob("*.yaml"))


@pytest.mark.parametrize("path", SCENARIOS, ids=[p.stem for p in SCENARIOS])
def test_shipped_scenario_simulates(path: Path) -> None:
    sc = load_scenario(path)
    calls: list[float] = []
    run = simulate(sc, progress=lambda now, total: calls.append(now / total))
    assert calls[-1] == pytest.approx(1.0) and calls == sorted(calls)
    rec = run.records
    assert set(rec["kind"].unique()) <= set(KINDS)
    assert rec["t"].is_monotonic_increasing
    assert rec["t"].max() <= sc.duration + 1e-9 + 60  # first audio may land just after
    summary = summarise(rec, sc.duration)
    assert summary.loc["joins", "value"] > 0
    assert summary.loc["audio_latency", "count"] > 0
    assert 0 < summary.loc["delivery_ratio", "value"] <= 1
    verdicts = check_slos(summary, sc.slo.targets())
    assert verdicts and all(v.passed is not None for v in verdicts)
    assert run.meta.scenario_hash == sc.content_hash() and run.meta.seed == sc.seed
