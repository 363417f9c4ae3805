"""A short real swarm run replayed in the simulator: the same people, when and how they came."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from spacesim.load.run import main
from spacesim.results import load_run
from spacesim.sim import replay

pytestmark = pytest.mark.timeout(60)

# Two paths, so which participant got which is a draw the replay must reproduce.
TINY = """\
name: tiny-replay
duration: 8s
rooms: {count: 1, speakers: 1}
speaking: {active_speakers: 2}
arrivals: {kind: constant, rate: 1/s}
session: {kind: exponential, mean: 6s}
network:
  - {share: 0.5, rtt: 20ms, jitter: 2ms}
  - {share: 0.5, rtt: 80ms, jitter: 5ms}
audience: {reaction_rate: 12/min}
load: {probe_fraction: 0%}
"""


def _joins(rec: pd.DataFrame) -> pd.DataFrame:
    j = rec[rec["kind"].astype(str) == "participant_joined"]
    return j.assign(path=[json.dumps(json.loads(a), sort_keys=True) for a in j["attrs"]])


def _stage(joins: pd.DataFrame) -> list[tuple[str, str]]:
    on = joins[joins["role"] != "listener"].sort_values("t")
    return list(zip(on["role"], on["path"], strict=True))


def _left(rec: pd.DataFrame) -> pd.Series:
    left = rec[(rec["kind"].astype(str) == "participant_left") & (rec["role"] == "listener")]
    return left.set_index("participant")["value"]


def test_a_load_run_replayed_has_its_participants_arrivals_and_paths(tmp_path: Path) -> None:
    spec = tmp_path / "tiny.yaml"
    spec.write_text(TINY)
    out = tmp_path / "run"
    assert main(spec, users=5, duration=8, out=out, shape="steady") == 0
    measured = load_run(out)
    sim = replay(measured)
    assert sim.meta.extra["replay_of"] == measured.meta.run_id
    got, want = _joins(sim.records), _joins(measured.records)
    lw = want[want["role"] == "listener"]
    # In order of arrival (a join's record comes when it completes, so a slow join can
    # be recorded after a later arrival's); the replay covers everything the run recorded.
    lw = lw.assign(arrived=lw["t"] - lw["value"]).sort_values("arrived", kind="stable")
    lg = got[got["role"] == "listener"].sort_values("t", kind="stable").set_index("participant")
    assert len(lw) >= 3 and list(lg.index) == list(lw["participant"])
    assert lg["t"].to_numpy() == pytest.approx(lw["arrived"].to_numpy(), abs=1e-9)
    assert list(lg["path"]) == list(lw["path"])
    assert _stage(got) == _stage(want)  # the same paths, role by role in seating order
    # Session lengths: a listener who left within the run stayed as long as measured.
    sl, ml = _left(sim.records), _left(measured.records)
    both = sl.index.intersection(ml.index)
    assert len(both) >= 1 and sl[both].to_numpy() == pytest.approx(ml[both].to_numpy(), abs=1e-9)
