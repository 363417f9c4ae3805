"""Captions and recording in the model: the spaces the shares pick, priced per stream."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from spacesim.cli import main as cli
from spacesim.results import load_run, summarise
from spacesim.scenario import Scenario, parse_scenario
from spacesim.sim.capacity import caption_and_disk, feature_overrides
from spacesim.sim.engine import simulate

from .builders import scenario

#: Two talkers, no DTX: both send every 20 ms from the start (the host's stage is live).
STEADY = {
    "duration": "60s",
    "rooms": {"count": 3, "speakers": 1},
    "speaking": {"active_speakers": 2, "dtx": False},
    "arrivals": {"kind": "constant", "rate": "1/s"},
    "sim": {"tick": "1s"},
}


def test_captions_and_recording_are_priced_per_sending_stream() -> None:
    sc = scenario(
        **STEADY,
        features={"captions": 1, "recording": 1},
        server={"nodes": 2, "asr_cost": 0.25, "recorded_packet_bytes": 50},
    )
    run = simulate(sc)
    rec = run.records
    asr = rec[rec["kind"] == "asr_cores"]
    per_t = asr.groupby("t")["value"].sum()
    # 3 rooms x 2 streams x 0.25 core-s per audio-s, every tick
    assert per_t.to_numpy() == pytest.approx(1.5)
    by_node = asr.groupby("participant", observed=True)["value"].mean()
    assert by_node.to_dict() == pytest.approx({"node-0": 1.0, "node-1": 0.5})  # rooms 0, 2 | 1
    written = rec[rec["kind"] == "recording_bytes"]
    assert set(written["room"].astype(str)) == {"room-0", "room-1", "room-2"}
    # one stream (the floor's speaker) x 50 packets/s x 50 B per room and second
    assert written["value"].to_numpy() == pytest.approx(2500.0)
    summary = summarise(rec, sc.duration)
    assert summary.loc["asr_cores", "value"] == pytest.approx(1.5)
    ticks = written["t"].nunique()  # the tick ending at the run's end is not sampled
    assert ticks >= 59
    assert summary.loc["recording_bytes", "value"] == pytest.approx(3 * 2500.0 * ticks)
    assert summary.loc["recording_write_rate", "value"] == pytest.approx(7500.0 * ticks / 60)


def test_caption_events_go_to_every_subscriber_and_cost_the_server() -> None:
    """Captions are events too (partials and finals, server.caption_events per second of
    speech): subscribers receive them and the node pays cpu_per_event for each."""
    base = {**STEADY, "audience": {"reaction_rate": 0}}
    quiet = {"server": {"cpu_per_event": "50us", "caption_events": 0}}
    off = simulate(scenario(**base, features={"captions": 1}, **quiet)).records
    on = simulate(
        scenario(**base, features={"captions": 1}, server={"cpu_per_event": "50us"})
    ).records

    def total(rec: object, kind: str) -> float:
        return float(rec.loc[rec["kind"] == kind, "value"].sum())  # type: ignore[attr-defined]

    # 2 talkers x 4 events per speech second, to each subscriber sampled
    extra = total(on, "events_received") - total(off, "events_received")
    sampled = on.loc[on["kind"] == "events_received", "participant"].nunique()
    assert extra > 0.5 * 8 * 55 * sampled / 3  # rooms' listeners, most of the 60 s
    assert total(on, "node_cpu") > total(off, "node_cpu")


def test_shares_pick_spaces_and_leave_the_rest_of_the_run_alone() -> None:
    plain = simulate(scenario(**STEADY)).records
    # (caption events load the server like any event: a test above; here none, to show
    # the features' own draws leave every other record as it was)
    some = simulate(scenario(**STEADY, features={"captions": 0.5, "recording": 0.5},
                             server={"caption_events": 0})).records  # fmt: skip
    assert not {"asr_cores", "recording_bytes"} & set(plain["kind"].astype(str))
    # The features' draws are their own stream: every other record is as before.
    rest = some[~some["kind"].isin(["asr_cores", "recording_bytes"])].reset_index(drop=True)
    cols = ["kind", "t", "room", "participant", "role", "value", "attrs"]
    assert rest[cols].astype(str).equals(plain[cols].astype(str))
    many = scenario(**{**STEADY, "rooms": {"count": 400, "speakers": 1}, "duration": "2s"},
                    features={"captions": 0.25, "recording": 0.5})  # fmt: skip
    rec = simulate(many).records
    recorded = rec.loc[rec["kind"] == "recording_bytes", "room"].astype(str).nunique()
    assert recorded == pytest.approx(200, abs=40)
    captioned = rec.loc[rec["kind"] == "asr_cores", "value"].groupby(rec["t"]).sum().max()
    assert captioned / (2 * 0.23) == pytest.approx(100, abs=30)  # rooms x streams x cost


def test_clips_are_cut_in_recorded_spaces_and_written_to_disk() -> None:
    sc = scenario(
        **STEADY,
        features={"recording": 1, "clip_rate": "6/min"},
        server={"recorded_packet_bytes": 50},
    )
    rec = simulate(sc).records
    clips = rec[rec["kind"] == "clip_cut"]
    assert len(clips) > 0
    written = rec.loc[rec["kind"] == "recording_bytes", "value"].sum()
    recordings = rec[(rec["kind"] == "recording_bytes") & (rec["role"] == "room")]
    stream = 3 * 2500.0 * recordings["t"].nunique()
    # each clip: 30 s x 50 packets/s x 50 B
    assert written == pytest.approx(stream + clips["value"].sum() * 75_000.0)
    summary = summarise(rec, sc.duration)
    assert summary.loc["clips_cut", "value"] == clips["value"].sum()
    # each cutter downloads its clip once: the clip's bytes again, as egress
    egress = rec[rec["kind"] == "egress_bytes"]
    assert set(egress["role"].astype(str)) == {"clip"}
    assert egress["value"].sum() == pytest.approx(clips["value"].sum() * 75_000.0)
    assert summary.loc["clip_egress_bytes", "value"] == egress["value"].sum()
    unrecorded = simulate(scenario(**STEADY, features={"clip_rate": "6/min"})).records
    assert not (unrecorded["kind"] == "clip_cut").any()


# --------------------------------------------------------------------------- capacity


def _with(sc: Scenario, sets: list[str]) -> Scenario:
    return parse_scenario(sc.model_dump(mode="json"), "test", sets)


def test_caption_workers_and_disk_are_read_off_the_simulation(tmp_path: Path) -> None:
    base = scenario(**STEADY, server={"nodes": 1, "asr_cost": 0.4, "recorded_packet_bytes": 50})
    sets = feature_overrides(base, spaces=1, speakers=5)
    # the stage grows to seat 5 talkers (host + 4); both features turned on
    assert sets == [
        "rooms.count=1",
        "speaking.active_speakers=5",
        "rooms.speakers=4",
        "features.captions=1",
        "features.recording=1",
    ]
    sc = _with(base, [*sets, "features.clip_rate=6/min"])
    answer = caption_and_disk(sc, clip_retention=30 * 86_400, out_dir=tmp_path / "run")
    # 5 streams x 0.4 = 2 cores, but a stream stays on one worker and a worker holds two
    # of them (0.8 of its core): 2 workers would not do, 3 do
    assert answer.asr_peak == pytest.approx(2.0) and answer.streams_peak == 5
    assert answer.workers == 3
    rec = load_run(tmp_path / "run").records
    written = rec[rec["kind"] == "recording_bytes"]
    room, clip = (written.loc[written["role"] == r, "value"].sum() for r in ("room", "clip"))
    assert answer.recording_bytes == room and answer.clip_bytes == clip > 0
    ticks = written.loc[written["role"] == "room", "t"].nunique()
    # one stream (the floor) x 50 packets/s x 50 B, for the ticks the run records
    assert answer.bytes_per_space_hour == pytest.approx(50 * 50 * 3600 * ticks / 60)
    assert answer.clips_retained == pytest.approx(clip / 60 * 30 * 86_400)
    assert answer.write_rate == pytest.approx((room + clip) / 60)
    # cheaper recognition: the cores decide (5 x 0.3 = 1.5 -> 2 workers of 3 streams)
    cheap = _with(base, [*sets, "server.asr_cost=0.3"])
    assert caption_and_disk(cheap, clip_retention=1.0).workers == 2
    # a share the scenario sets is kept; captions off means no workers
    off = _with(base, ["features.captions=0", "features.recording=0.5"])
    assert "features.recording=1" not in feature_overrides(_with(off, ["features.recording=0.5"]))
    none = caption_and_disk(_with(off, ["features.recording=1"]), clip_retention=1.0)
    assert none.workers == 0 and not none.captioned and "no caption workers" in str(none)


def test_capacity_cli_answers_caption_workers_and_disk(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "sc.yaml"
    path.write_text(scenario(**STEADY, server={"nodes": 1}).to_yaml())
    cal = tmp_path / "cal.yaml"
    cal.write_text("server:\n  asr_cost: 0.4\n")  # as `spacesim calibrate` writes it
    args = ["capacity", str(path), "--out", str(tmp_path / "cap"), "--quiet"]
    args += ["--calibration", str(cal)]
    assert cli([*args, "--spaces", "1", "--speakers", "5"]) == 0
    printed = capsys.readouterr().out
    assert "--caption-workers 3 on each of 1 node(s)" in printed
    assert "per recorded space-hour" in printed and "30-day retention" in printed
    assert (tmp_path / "cap" / "spaces=1,speakers=5" / "meta.json").is_file()
    assert cli(["capacity", str(path)]) == 2
    assert "--spaces N / --speakers K" in capsys.readouterr().err


#: Three recorded rooms end at 20 s; replay listeners then arrive at 0.5/s each, listen 10 s.
REPLAYED = {
    **STEADY,
    "rooms": {"count": 3, "speakers": 1, "ends_at": "20s"},
    "session": {"kind": "fixed", "mean": "10s"},
    "server": {"recorded_packet_bytes": 50},
}


def test_replays_arrive_after_a_recorded_space_ends_and_cost_egress_and_forwarding() -> None:
    sc = scenario(**REPLAYED, features={"recording": 1, "replay_rate": "30/min"})
    rec = simulate(sc).records
    started = rec[rec["kind"] == "replay_started"]
    assert (started["t"] >= 20).all() and set(started["role"].astype(str)) == {"replay"}
    assert len(started) == pytest.approx(3 * 40 * 0.5, rel=0.3)  # rooms x seconds x rate
    via = started["attrs"].map(lambda a: json.loads(a)["via"])
    assert 0.25 < (via == "http").mean() < 0.75  # replay_http_share, 0.5 by default
    webrtc = started[via == "webrtc"]
    # a join's handshakes (3 round trips of 40 ms and jitter), then the first packet
    assert webrtc["value"].min() > 0.12 and webrtc["value"].max() < 1.0
    egress = rec[(rec["kind"] == "egress_bytes") & (rec["role"] == "replay")]
    assert set(started["participant"]) <= set(egress["participant"])  # each one's, at the end
    # the recording: 20 s of one stream, 50 packets/s x 50 B = 50 kB
    egress_via = egress["attrs"].map(lambda a: json.loads(a)["via"])
    whole = egress[egress["t"] < sc.duration]  # sessions that ended within the run
    for value, how in zip(whole["value"], egress_via[whole.index], strict=True):
        # WebRTC: 10 s of 20 s; HTTP: a player reads 10 s ahead, so the whole file
        assert value == pytest.approx(25_000 if how == "webrtc" else 50_000, rel=0.02)
    # WebRTC replays are streams the origin forwards: after the end, nothing else is
    ticks = rec.loc[(rec["kind"] == "packets_forwarded") & (rec["t"] > 21), "t"]
    fwd = rec.loc[ticks.index, "value"].sum()
    lo, hi = 21.0, float(ticks.max())  # the ticks (t - 1, t] sampled after the end's
    played = sum(  # each stream: from the request (heard - value) to 10 s after first audio
        max(min(heard + 10, hi) - max(heard - first, lo), 0.0)
        for heard, first in zip(webrtc["t"], webrtc["value"], strict=True)
    )
    assert fwd == pytest.approx(50 * played, rel=0.02)
    summary = summarise(rec, sc.duration)
    assert summary.loc["replays", "value"] == len(started)
    assert summary.loc["replay_egress_bytes", "value"] == pytest.approx(egress["value"].sum())


def test_no_replays_of_unrecorded_spaces_and_the_rest_of_the_run_is_as_before() -> None:
    plain = simulate(scenario(**REPLAYED, features={"recording": 1})).records
    replayed = simulate(scenario(**REPLAYED, features={"recording": 1, "replay_rate": "1/s"}))
    rec = replayed.records
    assert (rec["kind"] == "replay_started").any()
    cols = ["kind", "t", "room", "participant", "role", "value", "attrs"]

    def before(r: pd.DataFrame) -> pd.DataFrame:  # replays draw their own stream
        return r[r["t"] < 20][cols].reset_index(drop=True).astype(str)

    assert before(rec).equals(before(plain))
    unrecorded = simulate(scenario(**REPLAYED, features={"replay_rate": "1/s"})).records
    assert not unrecorded["kind"].isin(["replay_started", "egress_bytes"]).any()
