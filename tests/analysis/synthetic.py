"""Small hand-made runs for the analysis tests: every number is known in advance."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd

from spacesim.results import Recorder, RunMeta, write_run
from spacesim.scenario import parse_scenario

SCENARIO = parse_scenario(
    {
        "name": "unit",
        "duration": "40s",
        "arrivals": {"kind": "poisson", "rate": "1/s"},
        "session": {"kind": "exponential", "mean": "1m"},
        "slo": {"join_p95": "1s", "audio_latency_p95": "50ms", "delivery_ratio": "99%"},
    }
)
#: Latency samples of listener L1 at t = 10, 11, 12, 13 s, and of L2 at t = 30, 31 s.
L1_LATENCY = [0.040, 0.060, 0.050, 0.080]
L2_LATENCY = [0.030, 0.030]
JOIN = {"L1": 0.2, "L2": 0.4, "L3": 0.6}


def recorder(source: str = "sim", run_id: str = "unit-1") -> Recorder:
    rec = Recorder(run_id, source)  # type: ignore[arg-type]
    add = rec.add
    add("participant_joined", 0.0, "room-0", "host", "host", 1.5)
    for i, (who, join) in enumerate(JOIN.items()):
        add("participant_joined", 1.0 + i, "room-0", who, "listener", join)
        add("first_audio", 1.5 + i, "room-0", who, "listener", join + 0.3)
    for i, v in enumerate(L1_LATENCY):
        add("audio_latency", 10.0 + i, "room-0", "L1", "listener", v)
    for i, v in enumerate(L2_LATENCY):
        add("audio_latency", 30.0 + i, "room-0", "L2", "listener", v)
    add("packets_received", 10.0, "room-0", "L1", "listener", 90)
    add("packets_lost", 10.0, "room-0", "L1", "listener", 10)
    add("packets_received", 30.0, "room-0", "L2", "listener", 100)
    add("packets_lost", 30.0, "room-0", "L2", "listener", 0)
    add("hand_raised", 5.0, "room-0", "L1", "listener")
    add("speaker_granted", 8.0, "room-0", "L1", "speaker", 3.0)
    add("speaker_granted", 0.0, "room-0", "host", "host")  # not an answered hand
    add("hand_declined", 9.0, "room-0", "L2", "listener", 5.0)
    add("report_filed", 12.0, "room-0", "L3", "listener")
    add("report_resolved", 32.0, "room-0", "L3", "listener", 20.0, attrs={"action": "remove"})
    add("participant_left", 35.0, "room-0", "L3", "listener", 32.0)
    if source == "sim":
        for t in (2.0, 4.0, 6.0):
            add("node_cpu", t, "", "node-0", "node", 0.5)
            add("packets_forwarded", t, "", "node-0", "node", 200)
            add("node_cpu", t, "", "node-1", "node", 1.5)
            add("packets_forwarded", t, "", "node-1", "node", 600)
    return rec


def records(source: str = "sim") -> pd.DataFrame:
    return recorder(source).to_frame()


def meta(source: str = "sim", run_id: str = "unit-1", **kw: Any) -> RunMeta:
    fields: dict[str, Any] = {
        "run_id": run_id,
        "source": source,
        "scenario_name": SCENARIO.name,
        "scenario_hash": SCENARIO.content_hash(),
        "seed": 1,
        "started_at": "2026-01-01T12:00:00+00:00",
        "duration": 40.0,
        "scenario": SCENARIO.model_dump(mode="json"),
    }
    fields.update(kw)
    return RunMeta(**fields)


def write(directory: Path, source: str = "sim", run_id: str = "unit-1") -> Path:
    return write_run(directory, records(source), meta(source, run_id))


def write_server(
    load_dir: Path, started_at: str = "2026-01-01T12:00:05+00:00", **extra: Any
) -> Path:
    """A server run in ``load_dir/server``: node records plus an event the load run has.

    The load run's meta.json gains ``extra.server_run``, as `spacesim load` writes it.
    """
    meta_file = load_dir / "meta.json"
    if meta_file.is_file():
        data = json.loads(meta_file.read_text())
        data["extra"]["server_run"] = "server"
        meta_file.write_text(json.dumps(data))
    rec = Recorder("srv-1", "server")
    rec.add("participant_joined", 1.0, "room-0", "L1", "listener")
    for t in (1.0, 2.0):
        rec.add("node_cpu", t, "", "server", "node", 0.25)
        rec.add("packets_forwarded", t, "", "server", "node", 50)
    m = RunMeta(
        run_id="srv-1",
        source="server",
        scenario_name="serve",
        scenario_hash="",
        seed=None,
        started_at=started_at,
        duration=3.0,
        extra=extra,
    )
    return write_run(load_dir / "server", rec.to_frame(), m)
