"""spacesim calibrate: the fits recover known costs, the file is checked, simulate applies it."""

from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from spacesim.cli import main as cli
from spacesim.results import Recorder, RunMeta, load_run, summarise, write_run
from spacesim.scenario import ScenarioError
from spacesim.sim import simulate
from spacesim.sim.calibrate import (
    ASR_WINDOW,
    SWARM_MARK_BYTES,
    apply_calibration,
    asr_samples,
    calibrate,
    cpu_samples,
    gc_samples,
    join_setup,
    load_calibration,
    nnls,
    recording_samples,
    swarm_behind,
    swarm_loop_lag,
    swarm_pace,
)
from tests.sim.builders import fixed_crowd

TRUE = {
    "cpu_fixed": 0.02,
    "cpu_per_packet": 30e-6,
    "cpu_per_join": 6e-3,
    "cpu_per_connection": 400e-6,
}
PPS = 50.0


def _meta(
    run_id: str, source: str, duration: float, t0: float, speakers: int = 1, **extra: object
) -> RunMeta:
    return RunMeta(
        run_id=run_id,
        source=source,
        scenario_name="synthetic",
        scenario_hash="",
        seed=None,
        started_at="2026-01-01T00:00:00",
        duration=duration,
        scenario={"speaking": {"active_speakers": speakers}},
        extra={"t0_unix": t0, **extra},
    )


def server_run(
    directory: Path,
    seconds: int,
    join_rate: float,
    speakers: int,
    seed: int,
    noise: float,
    publisher: float = 0.0,
) -> Path:
    """A server run whose CPU follows `TRUE` exactly (plus Gaussian noise); with
    `publisher`, each packet its speakers send costs that too, and its scenario says how
    many speakers there were (else it says one, whatever `speakers`)."""
    rng = np.random.default_rng(seed)
    rec = Recorder(f"server-{seed}", "server")
    alive = 0
    k = 0
    for s in range(1, seconds + 1):
        joins = int(rng.poisson(join_rate)) if s <= seconds // 2 else 0
        start_alive = alive
        for j in range(joins):
            k += 1
            rec.add("participant_joined", s - 1 + (j + 0.5) / (joins + 1), "r", f"l{k}", "listener")
        alive += joins
        conn = (start_alive + alive) / 2
        # packets from the connections alive through the second: speakers x pps each
        packets = speakers * PPS * conn
        cpu = (
            TRUE["cpu_fixed"]
            + TRUE["cpu_per_packet"] * packets
            + TRUE["cpu_per_join"] * joins
            + TRUE["cpu_per_connection"] * conn
            + (publisher * speakers * PPS if packets > 0 else 0.0)
            + rng.normal(0.0, noise)
        )
        rec.add("node_cpu", float(s), "", "server", "node", cpu)
        rec.add("packets_forwarded", float(s), "", "server", "node", packets)
    said = speakers if publisher else 1
    meta = _meta(rec.run_id, "server", seconds, 1000.0, speakers=said)
    write_run(directory, rec.to_frame(), meta)
    return directory


def load_run_pair(
    directory: Path,
    n: int,
    forward: float,
    fanout: float,
    seed: int,
    pace: float = 1.0,
    lag: float = 0.002,
) -> Path:
    """A load run with n steady listeners (latency = forward + U x n x fanout) + its server."""
    server_run(directory / "server", 20, n / 4, 1, seed, 0.002)
    rng = np.random.default_rng(seed)
    rec = Recorder(f"load-{seed}", "load")
    for i in range(n):
        rec.add("participant_joined", 1.0 + i * 0.01, "r", f"l{i}", "listener", 0.1)
    for t in np.arange(5.0, 20.0, 0.01):
        rec.add(
            "audio_latency", float(t), "r", "l0", "listener", forward + rng.random() * n * fanout
        )
    for t in range(5, 21):
        rec.add("packets_received", float(t), "r", "l0", "listener", PPS * pace)
        rec.add("packets_lost", float(t), "r", "l0", "listener", 0.0)
        rec.add("loop_lag", float(t), "", "swarm-1", "swarm", lag)
    meta = _meta(
        rec.run_id, "load", 20.0, 1000.5, server_run="server", users=n + 1, target="embedded"
    )
    write_run(directory, rec.to_frame(), meta)
    return directory


CPU_PER_EVENT = 12e-6


def event_run(directory: Path, seconds: int, listeners: int, reactions: float, seed: int) -> Path:
    """A load run whose listeners receive Poisson bursts of events, and its server run,
    whose CPU follows `TRUE` plus `CPU_PER_EVENT` per delivery (plus a little noise)."""
    rng = np.random.default_rng(seed)
    srv = Recorder(f"server-ev-{seed}", "server")
    load = Recorder(f"load-ev-{seed}", "load")
    for i in range(listeners):
        srv.add("participant_joined", 0.5, "r", f"l{i}", "listener")
    for s in range(1, seconds + 1):
        k = int(rng.poisson(reactions))  # events every subscriber gets in this second
        for i in range(listeners):  # the load clock runs 0.5 s behind the server's
            load.add("events_received", s - 0.7, "r", f"l{i}", "listener", float(k))
        joins = listeners if s == 1 else 0
        packets = PPS * listeners
        cpu = (
            TRUE["cpu_fixed"]
            + TRUE["cpu_per_packet"] * packets
            + TRUE["cpu_per_join"] * joins
            + TRUE["cpu_per_connection"] * listeners
            + CPU_PER_EVENT * k * listeners
            + rng.normal(0.0, 0.002)
        )
        srv.add("node_cpu", float(s), "", "server", "node", cpu)
        srv.add("packets_forwarded", float(s), "", "server", "node", packets)
    write_run(directory / "server", srv.to_frame(), _meta(srv.run_id, "server", seconds, 1000.0))
    meta = _meta(load.run_id, "load", seconds, 1000.5, server_run="server")
    write_run(directory, load.to_frame(), meta)
    return directory


def test_cpu_fit_recovers_the_cost_of_an_event(tmp_path: Path) -> None:
    runs = [
        server_run(tmp_path / "a", 40, 3.0, 1, 1, 0.003),
        server_run(tmp_path / "b", 40, 8.0, 2, 2, 0.003),
        event_run(tmp_path / "e1", 40, 200, 5.0, 3),
        event_run(tmp_path / "e2", 40, 500, 2.0, 4),
    ]
    cal = calibrate(runs)
    assert cal.server["cpu_per_event"] == pytest.approx(CPU_PER_EVENT, rel=0.05)
    for field in ("cpu_fixed", "cpu_per_packet", "cpu_per_connection"):
        assert cal.server[field] == pytest.approx(TRUE[field], rel=0.15), field
    samples = cpu_samples(runs[2])
    assert samples["events"].sum() == pytest.approx(
        samples["events"].sum() // 200 * 200  # whole bursts, each to all 200 listeners
    )
    # runs without events say nothing about them: the term stays out of the file
    assert "cpu_per_event" not in calibrate(runs[:2]).server


def test_nnls_matches_the_constrained_optimum() -> None:
    rng = np.random.default_rng(1)
    a = rng.random((50, 3))
    b = a @ np.array([2.0, -1.0, 0.5]) + rng.normal(0, 0.01, 50)
    x = nnls(a, b)
    assert x[1] == 0 and (x >= 0).all()
    import scipy.optimize as scipy

    ref, _ = scipy.nnls(a, b)
    assert np.allclose(x, ref, atol=1e-8)


def test_cpu_fit_recovers_known_costs(tmp_path: Path) -> None:
    # different sizes and speaker counts make packets and connections separable
    runs = [
        server_run(tmp_path / "a", 40, 3.0, 1, 1, 0.003),
        server_run(tmp_path / "b", 40, 8.0, 2, 2, 0.003),
        server_run(tmp_path / "c", 40, 5.0, 3, 3, 0.003),
    ]
    cal = calibrate(runs)
    for field, true in TRUE.items():
        assert cal.server[field] == pytest.approx(true, rel=0.15), field
    assert cal.cpu.samples == 120 and cal.cpu.r2 > 0.99
    assert 0.002 < cal.cpu.rms < 0.004  # the noise we put in
    assert set(cal.cpu.per_run) == {"server-1", "server-2", "server-3"}
    assert all(abs(r["bias"]) < 0.002 for r in cal.cpu.per_run.values())
    assert cal.latency is None  # server runs alone say nothing about latency
    samples = cpu_samples(runs[0])
    assert list(samples.columns) == [
        "t",
        "cpu",
        "packets",
        "joins",
        "connections",
        "events",
        "published",
        "run_id",
    ]
    # one number of speakers said: their packets are in cpu_fixed, and the file says 0 so
    # that the scenario's own cost is not counted on top
    assert cal.server["cpu_per_publisher_packet"] == 0.0
    assert any(n.startswith("cpu_per_publisher_packet") for n in cal.notes)


def test_cpu_fit_parts_the_speakers_packets_from_the_fixed_cost(tmp_path: Path) -> None:
    # one node, runs with 1, 2 and 3 speakers: each packet a speaker sends costs the server
    # its receive path, whatever the audience; the runs' speaker counts part it from
    # cpu_fixed (one count alone cannot: see the test above)
    publisher = 500e-6
    runs = [
        server_run(tmp_path / f"k{k}", 40, 3.0 + k, k, k, 0.003, publisher=publisher)
        for k in (1, 2, 3)
    ]
    cal = calibrate(runs)
    assert cal.server["cpu_per_publisher_packet"] == pytest.approx(publisher, rel=0.15)
    for field, true in TRUE.items():
        assert cal.server[field] == pytest.approx(true, rel=0.2), field
    samples = cpu_samples(runs[2])
    assert samples["published"].max() == 3 * PPS
    assert (samples.loc[samples["packets"] == 0, "published"] == 0).all()


def test_latency_fit_and_file_round_trip(tmp_path: Path) -> None:
    runs = [load_run_pair(tmp_path / f"n{n}", n, 0.001, 60e-6, n) for n in (10, 50, 120)]
    cal = calibrate(runs)
    assert cal.latency is not None
    assert cal.server["forward_delay"] == pytest.approx(0.001, abs=2e-4)
    assert cal.server["fanout_delay"] == pytest.approx(60e-6, rel=0.05)
    assert cal.latency.r2 > 0.99 and len(cal.latency.per_run) == 3
    path = cal.write(tmp_path / "cal.yaml")
    data = yaml.safe_load(path.read_text())
    assert data["provenance"]["runs"][0]["listeners"] == 10
    assert data["provenance"]["fit"]["cpu"]["unit"] == "cores"
    assert load_calibration(path) == cal.server


def test_runs_where_the_swarm_fell_behind_stay_out_of_the_latency_fit(tmp_path: Path) -> None:
    good = [load_run_pair(tmp_path / f"n{n}", n, 0.001, 60e-6, n) for n in (10, 50)]
    slow = load_run_pair(tmp_path / "slow", 80, 0.001, 60e-6, 80, pace=0.6)
    backlog = load_run_pair(tmp_path / "backlog", 90, 0.4, 60e-6, 90)  # 400 ms on loopback
    cal = calibrate([*good, slow, backlog])
    assert swarm_behind(load_run(slow)) == "pace 0.60 < 0.95"
    assert "backlog" in (swarm_behind(load_run(backlog)) or "")
    assert swarm_behind(load_run(good[0])) is None and swarm_pace(load_run(good[0])) == 1.0
    assert cal.latency is not None and set(cal.latency.per_run) == {"load-10", "load-50"}
    assert cal.server["fanout_delay"] == pytest.approx(60e-6, rel=0.1)
    assert len(cal.cpu.per_run) == 4  # their CPU samples still count
    flags = {r["dir"]: r["in_latency_fit"] for r in cal.runs}
    assert flags == {str(d): d in good for d in [*good, slow, backlog]}
    # the swarm's own loop lag is reported with each run (not a reason to leave it out)
    assert swarm_loop_lag(load_run(good[0])) == pytest.approx(0.002)
    assert cal.runs[0]["swarm_loop_lag"] == pytest.approx(0.002)


def test_runs_near_saturation_stay_out_of_the_latency_fit(tmp_path: Path) -> None:
    """The fan-out fit reads quantiles as q x N steps with no queue in front: a run whose
    server was busier than LATENCY_FIT_MAX_LOAD (here its CPU records scaled to 0.95 of
    its core) would read its queue as fan-out; its CPU samples still count."""
    good = [load_run_pair(tmp_path / f"n{n}", n, 0.001, 60e-6, n) for n in (10, 50)]
    busy = load_run_pair(tmp_path / "busy", 90, 0.05, 60e-6, 90)  # a queue of 50 ms
    run = load_run(busy / "server")
    rec = run.records.copy()
    rec.loc[rec["kind"] == "node_cpu", "value"] = 0.95
    write_run(busy / "server", rec, run.meta)
    cal = calibrate([*good, busy])
    assert cal.latency is not None and set(cal.latency.per_run) == {"load-10", "load-50"}
    assert cal.server["forward_delay"] == pytest.approx(0.001, abs=2e-4)
    flags = {r["dir"]: r["in_latency_fit"] for r in cal.runs}
    assert flags == {str(d): d in good for d in [*good, busy]}
    assert len(cal.cpu.per_run) == 3


@pytest.mark.parametrize(
    ("text", "field", "reason"),
    [
        ("server:\n  cpu_per_packet: fast\n", "server.cpu_per_packet", "not a duration"),
        ("server:\n  cpu_per_pakcet: 1e-5\n", "server.cpu_per_pakcet", "Extra inputs"),
        ("server:\n  cpu_fixed: -1\n", "server.cpu_fixed", "greater than or equal"),
        ("cpu_per_packet: 1e-5\n", "server", "needs a `server:` mapping"),
        ("server: {}\nserevr: {}\n", "serevr", "unknown section"),
        ("server: [\n", "", "invalid YAML"),
    ],
)
def test_malformed_calibration_names_file_and_field(
    tmp_path: Path, text: str, field: str, reason: str
) -> None:
    path = tmp_path / "bad-cal.yaml"
    path.write_text(text)
    with pytest.raises(ScenarioError) as exc:
        load_calibration(path)
    msg = str(exc.value)
    assert msg.startswith(f"{path}: {field or '<top>'}: ") and reason in msg


def test_cli_refuses_a_malformed_calibration(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "bad-cal.yaml"
    path.write_text("server:\n  cores: many\n")
    rc = cli(["simulate", "scenarios/smoke.yaml", "--calibration", str(path), "--quiet"])
    assert rc == 2
    assert f"{path}: server.cores:" in capsys.readouterr().err


def test_simulate_with_calibration_uses_the_fitted_costs(tmp_path: Path) -> None:
    cal = tmp_path / "cal.yaml"
    costs = {
        "cpu_fixed": 0.25,
        "cpu_per_packet": 0,
        "cpu_per_join": 0,
        "cpu_per_connection": 0,
        "cpu_per_event": 0,
        "cpu_per_publisher_packet": 0,
    }
    cal.write_text(yaml.safe_dump({"server": costs, "provenance": {"note": "test"}}))
    scenario = tmp_path / "sc.yaml"
    scenario.write_text(fixed_crowd(20, 30).to_yaml())
    out = tmp_path / "run"
    rc = cli(["simulate", str(scenario), "--calibration", str(cal), "--out", str(out), "--quiet"])
    assert rc == 0
    rec = load_run(out).records
    cpu = rec.loc[rec["kind"] == "node_cpu", "value"]
    assert np.allclose(cpu, 0.25)  # only the fixed cost is left
    assert load_run(out).meta.scenario["server"]["cpu_fixed"] == 0.25


def test_fanout_and_forward_delay_shape_simulated_latency(tmp_path: Path) -> None:
    n, forward, fanout = 100, 0.001, 50e-6
    cal = tmp_path / "cal.yaml"
    cal.write_text(yaml.safe_dump({"server": {"forward_delay": forward, "fanout_delay": fanout}}))
    sc = fixed_crowd(
        n,
        20,
        network={"rtt": 0, "jitter": 0, "loss": 0},
        rooms={"speakers": 0},  # the host alone on stage: a fan-out of exactly n
        speaking={"active_speakers": 1, "dtx": False},
        sim={"latency_sample": n},
    )
    sc = apply_calibration(sc, cal)
    assert sc.server.fanout_delay == fanout and sc.server.forward_delay == forward
    summary = summarise(simulate(sc, seed=2).records)
    # positions are uniform over the fan-out: p50 ~ forward + n/2 x fanout (+ a small queue)
    p50 = summary.loc["audio_latency", "p50"]
    assert p50 == pytest.approx(forward + 0.5 * n * fanout, rel=0.1)
    assert math.isfinite(summary.loc["audio_latency", "p95"])


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_calibrate_from_two_real_load_runs(tmp_path: Path) -> None:
    from spacesim.load.run import main as load

    scenario = Path(__file__).resolve().parents[2] / "scenarios" / "fidelity.yaml"
    runs = []
    for n in (3, 8):
        out = tmp_path / f"load-{n}"
        rc = load(scenario, users=n + 1, duration=8, out=out, spawn_rate=10, shape="steady")
        assert rc == 0
        runs.append(out)
    t = time.monotonic()
    cal = calibrate(runs)
    assert time.monotonic() - t < 10
    assert cal.cpu.samples >= 10 and all(math.isfinite(v) for v in cal.server.values())
    assert cal.latency is not None and 0 < cal.latency.rms < 0.05
    path = cal.write(tmp_path / "cal.yaml")
    assert cli(["calibrate", *map(str, runs), "-o", str(tmp_path / "cli.yaml")]) == 0
    assert set(load_calibration(tmp_path / "cli.yaml")) == set(load_calibration(path))


# --------------------------------------------------------------------------- captions, recording

ASR_COST = 0.31  # core-seconds per speech second (the default is 0.23: a fit must move it)
PACKET_BYTES = 61.0  # bytes per recorded packet (default 57)
SILENCE_BYTES = 4.0


def feature_run(directory: Path, seconds: int, seed: int) -> Path:
    """A server run with captions and recording: the workers' CPU follows `ASR_COST` per
    speech second, a share of each second's work landing in the next (jobs in flight),
    after a model-loading spike before any speech; recordings write `PACKET_BYTES` a
    packet and `SILENCE_BYTES` a silence frame, plus a 27-byte page header a flush."""
    directory = server_run(directory, seconds, 2.0, 1, seed, 0.002)
    run = load_run(directory)
    rng = np.random.default_rng(seed)
    rec = Recorder(run.meta.run_id, "server")
    carry = 0.0
    for s in range(1, seconds + 1):
        speech = 0.0 if s <= 3 else float(rng.uniform(0.0, 3.0))  # 0..3 streams talking
        work = ASR_COST * speech
        late = float(rng.uniform(0.0, 0.3)) * work
        cores = carry + work - late + (0.9 if s == 2 else 0.0)  # s 2: the model loads
        carry = late
        rec.add("asr_cores", float(s), "", "server", "node", cores)
        rec.add("asr_audio_seconds", float(s), "", "server", "node", speech)
        packets = float(rng.integers(0, 60))
        silence = float(50 - min(packets, 50))
        size = PACKET_BYTES * packets + SILENCE_BYTES * silence + 27
        rec.add("recording_bytes", float(s), "", "server", "room", size)
        rec.add("packets_recorded", float(s), "", "server", "room", packets)
        rec.add("silence_recorded", float(s), "", "server", "room", silence)
        if s % 10 == 0:  # clips: not recordings of the room, not in the fit
            rec.add("recording_bytes", float(s), "", "server", "clip", 100_000.0)
    frame = pd.concat([run.records, rec.to_frame()], ignore_index=True).sort_values("t")
    (directory / "meta.json").unlink()
    write_run(directory, frame, run.meta)
    return directory


def test_caption_and_recording_costs_are_fitted_and_written(tmp_path: Path) -> None:
    runs = [feature_run(tmp_path / "a", 60, 1), feature_run(tmp_path / "b", 60, 2)]
    cal = calibrate(runs)
    assert cal.asr is not None and cal.recording is not None
    assert [n for n in cal.notes if not n.startswith(("gc_pause", "cpu_per_publisher"))] == []
    # the lag between speech and its CPU averages out over windows; the load spike is
    # before the first speech, so it stays out
    assert cal.server["asr_cost"] == pytest.approx(ASR_COST, rel=0.02)
    assert cal.asr.samples == 2 * ((60 - 3) // ASR_WINDOW) and cal.asr.r2 > 0.9
    assert asr_samples(runs[0])["t"].min() >= 4 + ASR_WINDOW - 1
    assert cal.server["recorded_packet_bytes"] == pytest.approx(PACKET_BYTES, rel=0.02)
    assert cal.recording.coef["silence_frame_bytes"] == pytest.approx(SILENCE_BYTES, abs=1.0)
    assert len(recording_samples(runs[0])) == 60  # clips are not the room's recording
    path = cal.write(tmp_path / "cal.yaml")
    data = yaml.safe_load(path.read_text())
    assert data["provenance"]["fit"]["asr"]["unit"] == "cores"
    assert data["provenance"]["fit"]["recording"]["samples"] == 120
    sc = apply_calibration(fixed_crowd(5, 10, features={"captions": 1}), path)
    assert sc.server.asr_cost == cal.server["asr_cost"]
    assert sc.server.recorded_packet_bytes == cal.server["recorded_packet_bytes"]
    # recorded from the swarm: its packets' measurement marks are in the bytes, and said
    pair = load_run_pair(tmp_path / "load", 10, 0.001, 60e-6, 5)
    feature_run(pair / "server", 20, 5)
    (note,) = [n for n in calibrate([pair]).notes if n.startswith("recorded_packet_bytes")]
    assert note.startswith("recorded_packet_bytes: the swarm's packets carry a 22-byte")


def test_runs_without_captions_leave_their_costs_at_the_defaults(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    runs = [server_run(tmp_path / "a", 30, 3.0, 1, 1, 0.003)]
    cal = calibrate(runs)
    assert cal.asr is None and cal.recording is None
    assert not {"asr_cost", "recorded_packet_bytes"} & set(cal.server)
    assert [n.split(":")[0] for n in cal.notes] == [
        "cpu_per_publisher_packet",
        "gc_pause_*",
        "asr_cost",
        "recorded_packet_bytes",
    ]
    assert cli(["calibrate", str(runs[0]), "-o", str(tmp_path / "cal.yaml")]) == 0
    printed = capsys.readouterr().out
    assert "note: asr_cost: no run sent speech to caption workers" in printed
    assert "asr_cost" not in load_calibration(tmp_path / "cal.yaml")
    # with them, the CLI prints the fits and the table holds the terms
    feature_run(tmp_path / "f", 40, 3)
    assert cli(["calibrate", str(tmp_path / "f"), "-o", str(tmp_path / "f.yaml")]) == 0
    printed = capsys.readouterr().out
    assert "asr fit:" in printed and "recording fit:" in printed
    assert "note: asr" not in printed and "note: recorded" not in printed


def test_simulate_prices_captions_with_the_calibrated_asr_cost(tmp_path: Path) -> None:
    cal = tmp_path / "cal.yaml"
    cal.write_text(yaml.safe_dump({"server": {"asr_cost": 0.5, "recorded_packet_bytes": 100}}))
    sc = fixed_crowd(5, 20, features={"captions": 1, "recording": 1})
    base = summarise(simulate(sc, seed=1).records, 20)
    calibrated = summarise(simulate(apply_calibration(sc, cal), seed=1).records, 20)
    ratio = calibrated.loc["asr_cores", "mean"] / base.loc["asr_cores", "mean"]
    assert ratio == pytest.approx(0.5 / sc.server.asr_cost)
    written = calibrated.loc["recording_bytes", "value"] / base.loc["recording_bytes", "value"]
    assert written == pytest.approx(100 / sc.server.recorded_packet_bytes)


def test_the_swarm_mark_size_the_note_names_is_the_client_s() -> None:
    from spacesim.client.opus import mark
    from spacesim.client.speaker import load_clip

    sizes = {len(mark(p, 1, 2, 3)) - len(p) for p in load_clip("welcome") if len(p) > 12}
    assert sizes == {SWARM_MARK_BYTES}


GC_PER_PACKET = 4e-7  # s of collector pause per forwarded packet
GC_PAUSES = (0.002, 0.030)  # a young-generation pause and a full one


def test_collector_pauses_are_fitted_per_packet_with_their_length_biased_mean(
    tmp_path: Path,
) -> None:
    d = server_run(tmp_path / "srv", 30, 5, 1, 3, 0.002)
    run = load_run(d)
    rec = Recorder(run.meta.run_id, "server")
    packets = run.records[run.records["kind"] == "packets_forwarded"]
    joined = run.records.loc[run.records["kind"] == "participant_joined", "t"].to_numpy()
    assert len(joined)
    total_l = total_sq = 0.0
    last = 0.0
    for t, p in zip(packets["t"], packets["value"], strict=True):
        short, full = GC_PAUSES
        young = GC_PER_PACKET * p  # young collections' pause time follows the packets
        k_short = young / short
        # and a full collection in each second listeners joined (the heap grew)
        k_full = 1 if ((joined > last) & (joined <= t)).any() else 0
        last = t
        pause = young + k_full * full
        squares = k_full * full**2 + k_short * short**2
        total_l += young
        total_sq += k_short * short**2
        attrs = {
            "count": k_full + k_short, "squares": squares, "max": full,
            "full_count": k_full, "full": k_full * full, "full_squares": k_full * full**2,
        }  # fmt: skip
        rec.add("gc_pause", float(t), "", "server", "node", pause, attrs)
    write_run(d, pd.concat([run.records, rec.to_frame()], ignore_index=True), run.meta)
    assert len(gc_samples(d)) == 30
    cal = calibrate([d])
    assert cal.gc is not None and not any(n.startswith("gc_pause") for n in cal.notes)
    # young and full collections apart, each with its own length-biased length (the
    # young ones' is the short pause itself, not a mean the rare long ones dominate)
    assert cal.server["gc_pause_per_packet"] == pytest.approx(GC_PER_PACKET, rel=1e-3)
    assert cal.server["gc_pause_length"] == pytest.approx(total_sq / total_l, rel=1e-3)
    assert cal.server["gc_pause_length"] == pytest.approx(GC_PAUSES[0], rel=1e-3)
    assert cal.server["gc_full_per_join"] > 0
    assert cal.server["gc_full_length"] == pytest.approx(GC_PAUSES[1], rel=1e-3)
    path = cal.write(tmp_path / "cal.yaml")
    sc = apply_calibration(fixed_crowd(5, 10), path)
    assert sc.server.gc_pause_per_packet == cal.server["gc_pause_per_packet"]


def test_collector_pauses_lengthen_the_tail_not_the_body(tmp_path: Path) -> None:
    """A node stopped 2 % of the time in 40 ms pauses: p99 grows by about a pause's
    share, p50 does not move."""
    n = 100
    base = fixed_crowd(
        n,
        20,
        network={"rtt": 0, "jitter": 0, "loss": 0},
        rooms={"speakers": 0},
        speaking={"active_speakers": 1, "dtx": False},
        sim={"latency_sample": n},
    )
    share = 0.02
    per_packet = share / (n * PPS)
    paused = base.model_copy(
        update={
            "server": base.server.model_copy(
                update={"gc_pause_per_packet": per_packet, "gc_pause_length": 0.040}
            )
        }
    )
    a = summarise(simulate(base, seed=3).records).loc["audio_latency"]
    b = summarise(simulate(paused, seed=3).records).loc["audio_latency"]
    assert b["p50"] == pytest.approx(a["p50"], abs=0.0002)  # (other draws: not equal)
    # 2 % of packets wait U x 40 ms: the top 1 % wait 20-40 ms more
    assert b["p99"] - a["p99"] > 0.015


def test_client_setup_is_the_median_join_less_the_handshake_and_join_work(
    tmp_path: Path,
) -> None:
    """load_run_pair's listeners joined in 0.1 s on loopback (network none): 20 ms of ICE
    pacing and the fitted cpu_per_join around the client's own share."""
    pair = load_run_pair(tmp_path / "l", 20, 0.001, 60e-6, 7)
    run = load_run(pair)
    meta = dataclasses.replace(run.meta, extra={**run.meta.extra, "network": "none"})
    write_run(pair, run.records, meta)
    cal = calibrate([pair])
    assert cal.server["client_setup"] == pytest.approx(
        0.1 - 0.020 - cal.server["cpu_per_join"], abs=1e-4
    )
    assert join_setup(pair, 0.0) == pytest.approx(0.08)


def test_join_time_is_two_round_trips_ice_pacing_and_the_clients_setup() -> None:
    for rtt, setup in ((0.0, 0.010), (0.1, 0.0)):
        sc = fixed_crowd(
            10,
            20,
            network={"rtt": rtt, "jitter": 0, "loss": 0},
            server={"cpu_per_join": 1e-4, "client_setup": setup},
        )
        joins = summarise(simulate(sc, seed=1).records).loc["join_time"]
        expect = 2 * rtt + max(0.020, rtt) + setup + 1e-4
        assert joins["p50"] == pytest.approx(expect, rel=0.05), rtt


RELAY = {"cpu_per_relay_send": 2e-6, "cpu_per_relay_receive": 5e-6}
PUBLISHER = 150e-6


def cluster_run(
    directory: Path,
    n: int,
    forward: float,
    fanout: float,
    edge: float,
    seed: int,
    answering: float = 0.0,
) -> Path:
    """A load run against two nodes: the host on node-1, listeners alternating between the
    nodes (``attrs.node``), each node's CPU following `TRUE` for its own listeners plus the
    relay's cost, and latency on node-2 `edge` later. `answering`: CPU per join on node-1,
    the node that answers every join's requests (the load's target), wherever placed."""
    rng = np.random.default_rng(seed)
    load = Recorder(f"cload-{seed}", "load")
    srv = Recorder(f"cserver-{seed}", "server")
    load.add("participant_joined", 0.5, "r", "host", "host", 0.05, {"node": "node-1"})
    per = {"node-1": 0, "node-2": 0}
    for i in range(n):
        node = f"node-{1 + i % 2}"
        per[node] += 1
        t = 1.0 + i * 0.01
        load.add("participant_joined", t, "r", f"l{i}", "listener", 0.1, {"node": node})
    for t in np.arange(5.0, 20.0, 0.01):
        for node, who in (("node-1", "l0"), ("node-2", "l1")):
            late = edge if node == "node-2" else 0.0
            value = forward + late + rng.random() * per[node] * fanout
            load.add("audio_latency", float(t), "r", who, "listener", value)
    for t in range(5, 21):
        load.add("packets_received", float(t), "r", "l0", "listener", PPS)
        load.add("packets_lost", float(t), "r", "l0", "listener", 0.0)
    for s in range(2, 21):  # server clock = load clock + 0.5 (t0 0.5 s earlier)
        for node, mine in per.items():
            joins = mine if s == 2 else 0  # they all joined in the second before
            answered = n * answering if s == 2 and node == "node-1" else 0.0
            packets = PPS * mine
            relayed = PPS if node == "node-1" else 0.0
            cpu = (
                TRUE["cpu_fixed"]
                + TRUE["cpu_per_packet"] * packets
                + TRUE["cpu_per_join"] * joins
                + RELAY["cpu_per_relay_send"] * relayed
                + RELAY["cpu_per_relay_receive"] * (PPS - relayed)
                + PUBLISHER * (PPS if node == "node-1" else 0.0)  # the host's packets in
                + answered
                + rng.normal(0.0, 0.0005)
            )
            srv.add("node_cpu", float(s), "", node, "node", cpu)
            srv.add("packets_forwarded", float(s), "", node, "node", packets)
            srv.add("packets_relayed", float(s), "", node, "node", relayed)
    server_meta = _meta(srv.run_id, "server", 20, 1000.0, nodes={"node-1": "", "node-2": ""})
    write_run(directory / "server", srv.to_frame(), server_meta)
    meta = _meta(load.run_id, "load", 20.0, 1000.5, server_run="server", users=n + 1)
    meta = dataclasses.replace(meta, scenario={"speaking": {"active_speakers": 1}, "server": RELAY})
    write_run(directory, load.to_frame(), meta)
    return directory


def test_a_cluster_run_is_fitted_per_node_with_the_cascade_as_edge_delay(tmp_path: Path) -> None:
    """Each node's CPU samples fit the same per-node terms once the relay's known cost is
    taken off; the other node's listeners carry one more latency term, edge_delay."""
    runs = [cluster_run(tmp_path / f"c{n}", n, 0.0008, 50e-6, 0.0003, n) for n in (20, 60, 100)]
    cal = calibrate(runs)
    assert cal.server["cpu_per_packet"] + cal.server["cpu_per_connection"] / PPS == (
        pytest.approx(TRUE["cpu_per_packet"], rel=0.1)
    )  # one speaker: packets and connections trade off
    assert cal.server["cpu_fixed"] == pytest.approx(TRUE["cpu_fixed"], rel=0.15)
    assert cal.server["cpu_per_publisher_packet"] == pytest.approx(PUBLISHER, rel=0.1)
    assert cal.server["edge_delay"] == pytest.approx(0.0003, rel=0.1)
    assert cal.server["forward_delay"] == pytest.approx(0.0008, rel=0.1)
    assert cal.server["fanout_delay"] == pytest.approx(50e-6, rel=0.1)
    samples = cpu_samples(runs[0])
    assert set(samples["node"]) == {"node-1", "node-2"}
    last = samples.groupby("node")["connections"].last()
    assert last.to_dict() == {"node-1": 11, "node-2": 10}  # the host's is on node-1


def test_join_work_on_the_answering_node_does_not_leak_into_the_steady_terms(
    tmp_path: Path,
) -> None:
    """Every join's HTTP work lands on the node that answers it (node-1 here) while the
    samples count joins per media node: the steady terms come from the steady seconds, so
    that misplaced work cannot bend them."""
    runs = [
        cluster_run(tmp_path / f"c{n}", n, 0.0008, 50e-6, 0.0003, n, answering=0.02)
        for n in (20, 60, 100)
    ]
    cal = calibrate(runs)
    assert cal.server["cpu_fixed"] == pytest.approx(TRUE["cpu_fixed"], rel=0.15)
    assert cal.server["cpu_per_publisher_packet"] == pytest.approx(PUBLISHER, rel=0.1)
    assert cal.server["cpu_per_packet"] + cal.server["cpu_per_connection"] / PPS == (
        pytest.approx(TRUE["cpu_per_packet"], rel=0.1)
    )
    assert cal.server["cpu_per_join"] > TRUE["cpu_per_join"]  # the HTTP work, averaged
