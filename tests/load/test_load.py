"""spacesim.load: Locust runs only in subprocesses (never gevent-patch the pytest process)."""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from spacesim.load.run import embedded_server, main, server_capacity, server_slots
from spacesim.results import load_run, summarise
from spacesim.scenario import parse_scenario
from spacesim.server import launch

pytestmark = pytest.mark.timeout(60)

TINY = """\
name: tiny-load
duration: 8s
rooms: {count: 1, speakers: 1}
speaking: {active_speakers: 2}
arrivals: {kind: constant, rate: 1/s}
session: {kind: fixed, mean: 30s}
audience: {hand_raise_rate: 360/h, host_response_time: 1s, approval: 1, reaction_rate: 6/min}
load: {probe_fraction: 100%}
"""


@pytest.fixture
def tiny(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(TINY)
    return path


def test_tiny_run_with_embedded_server(tiny: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    t0 = time.time()
    assert main(tiny, users=4, duration=8, out=out, shape="steady", network="none") == 0
    run = load_run(out)
    rec = run.records
    assert set(rec["source"].astype(str)) == {"load"}
    kinds = set(rec["kind"].astype(str))
    assert {"participant_joined", "first_audio", "audio_latency", "packets_received"} <= kinds
    listeners = rec[(rec["kind"] == "participant_joined") & (rec["role"] == "listener")]
    assert len(listeners) == 3
    assert (listeners["value"] > 0).all() and (listeners["value"] < 5).all()
    latency = rec.loc[rec["kind"] == "audio_latency", "value"]
    assert 0 < latency.median() < 0.2
    assert len(rec[rec["kind"] == "first_audio"]) == 3
    assert run.meta.source == "load" and run.meta.scenario_name == "tiny-load"
    # time zero is when the swarm started its users (as in the simulator), not when
    # Locust started to import: the first joins come within the spawn's first seconds,
    # and the records end with the run's duration (and the users' stop)
    joined = rec.loc[rec["kind"] == "participant_joined", "t"]
    assert 0 <= joined.min() < 2.0 and rec["t"].max() < 8 + 5
    # Probes (all listeners here): the jitter buffer holds ~4 frames, mouth-to-ear adds up.
    summary = summarise(rec).loc
    hold, m2e = summary["client_buffer", "p50"], summary["mouth_to_ear", "p50"]
    assert 0.06 < hold < 0.12
    assert m2e == pytest.approx(summary["audio_latency", "p50"] + hold, abs=0.015)
    # Speech with its own pauses, in talk spurts (activity ~39 % on average, but two
    # talkers' exponential spurts over 8 s spread widely: 0.09 was seen; without DTX the
    # pauses are Opus silence frames, decoded as inaudible frames).
    assert 0.02 < summary["audible_fraction", "mean"] < 0.6
    lag = rec.loc[rec["kind"] == "loop_lag", "value"]  # the swarm watches its own loop
    assert len(lag) >= 4 and (lag >= 0).all()
    stats = (out / "locust" / "locust_stats.csv").read_text()
    for name in ("join", "first_audio", "audio_latency"):
        assert f",{name}," in stats
    assert (out / "locust" / "report.html").is_file()
    server = load_run(out / run.meta.extra["server_run"])  # the embedded server's own run
    assert server.meta.source == "server" and abs(server.meta.extra["t0_unix"] - t0) < 30
    figures = summarise(server.records).loc
    assert figures["packets_forwarded", "value"] > 100
    assert 0 < figures["cpu_per_packet", "value"] < 0.01


def test_the_embedded_server_gets_the_models_slots_and_admission_limit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``server.slots`` and ``server.max_streams`` mean the same to both engines: the
    simulator's node applies them, and a load run starts its server with them."""
    seen: list[list[str]] = []

    @contextlib.contextmanager
    def fake(workdir: Path, timeout: float, **kw: Any) -> Iterator[str]:
        seen.append(list(kw["args"]))
        yield "http://127.0.0.1:1"

    monkeypatch.setattr(launch, "embedded_server", fake)
    sc = parse_scenario(
        {
            "name": "x",
            "duration": "5s",
            "arrivals": {"kind": "constant", "rate": "1/s"},
            "session": {"kind": "fixed", "mean": "2s"},
            "server": {"slots": 2, "max_streams": 40},
        }
    )
    with embedded_server(tmp_path, None, None, server_capacity(sc), server_slots(sc)) as url:
        assert url == "http://127.0.0.1:1"
    assert seen == [["--capacity", "40", "--slots", "2"]]


ADMITTED = """\
name: admitted
duration: 6s
rooms: {count: 1, speakers: 0}
speaking: {active_speakers: 1}
arrivals: {kind: constant, rate: 2/s}
session: {kind: fixed, mean: 1h}
audience: {hand_raise_rate: 0/h, reaction_rate: 0/h, report_rate: 0/h, block_rate: 0/h}
server: {max_streams: 3}
"""


# slow: 20 s on the CI VM (2026-12-07); tests/server/test_limits.py checks the cap itself
@pytest.mark.slow
def test_pinned_run_enforces_the_models_admission_limit(tmp_path: Path) -> None:
    """server.max_streams reaches the embedded server (--capacity): the host and two
    listeners fill 3 streams, the others are refused server_full; the pins are recorded.
    The host runs in a Locust process of its own (--stage-cpus), and the listeners of
    the other process find its space and hear it."""
    path = tmp_path / "admitted.yaml"
    path.write_text(ADMITTED)
    cpus = sorted(os.sched_getaffinity(0))
    server_cpus, swarm_cpus = {cpus[0]}, {cpus[-1]}
    out = tmp_path / "run"
    rc = main(path, users=5, duration=6, out=out, shape="steady", network="none",
              server_cpus=server_cpus, swarm_cpus=swarm_cpus, stage_cpus=server_cpus)  # fmt: skip
    assert rc == 0
    run = load_run(out)
    rec = run.records
    joined = rec[(rec["kind"] == "participant_joined") & (rec["role"] == "listener")]
    assert joined["participant"].nunique() == 2
    refused = rec[rec["kind"] == "join_refused"]
    assert len(refused) >= 2
    assert {json.loads(a)["reason"] for a in refused["attrs"]} == {"server_full"}
    assert run.meta.extra["server_cpus"] == sorted(server_cpus)
    assert run.meta.extra["swarm_cpus"] == sorted(swarm_cpus)
    assert run.meta.extra["stage_cpus"] == sorted(server_cpus)
    assert len(list((out / "parts").glob("part-*.parquet"))) == 2  # two Locust processes
    heard = rec[(rec["kind"] == "packets_received") & (rec["value"] > 0)]
    assert set(heard["participant"]) == set(joined["participant"])


# slow: 15 s on the CI VM (2026-12-07); tests/load/test_pacing.py checks the pacing
@pytest.mark.slow
def test_listeners_arrive_at_the_spawn_rate_not_in_locusts_bursts(tmp_path: Path) -> None:
    """-r 6 means one join every 1/6 s, as the simulator's constant arrivals have it.
    Locust dispatches floor(r) users at once each second, and the users spawned before
    the host's space is ready start together when it is: unpaced, the listeners' joins
    started within a few ms of each other and queued behind each other's connection
    setup (0.3-0.7 s for bursts of 25)."""
    path = tmp_path / "steady.yaml"
    path.write_text(ADMITTED.replace("server: {max_streams: 3}\n", ""))
    out = tmp_path / "run"
    assert main(path, users=7, duration=6, out=out, spawn_rate=6, shape="steady",
                network="none") == 0  # fmt: skip
    rec = load_run(out).records
    joined = rec[(rec["kind"] == "participant_joined") & (rec["role"] == "listener")]
    assert len(joined) == 6
    started = sorted(joined["t"] - joined["value"])  # when each join request began
    gaps = [b - a for a, b in itertools.pairwise(started)]
    assert started[-1] - started[0] > 0.5, gaps  # 5/6 s when paced
    assert sorted(gaps)[1] > 1 / 12, gaps  # 1/6 s apart (unpaced: ~1 ms for most pairs)


def test_pin_sets_a_processes_cpus() -> None:
    cpu = sorted(os.sched_getaffinity(0))[-1]
    proc = subprocess.Popen(["sleep", "5"])
    try:
        launch.pin(proc, {cpu})
        assert os.sched_getaffinity(proc.pid) == {cpu}
        launch.pin(proc, None)  # None leaves it alone
        assert os.sched_getaffinity(proc.pid) == {cpu}
    finally:
        proc.kill()
        proc.wait()


MODERATED = """\
name: moderated-load
duration: 12s
rooms: {count: 2, speakers: 1}
speaking: {active_speakers: 1}
arrivals: {kind: constant, rate: 2/s}
session: {kind: fixed, mean: 60s}
network: {rtt: 40ms, jitter: 0ms, loss: 0}
audience:
  hand_raise_rate: 0/h
  reaction_rate: 0/h
  report_rate: 720/h
  space_report_share: 0
  moderators: 1
  review_time: 0.5s
  outcomes: {dismiss: 0, remove: 100%, block: 0}
"""


def test_arrivals_shape_network_rooms_and_moderation(tmp_path: Path) -> None:
    """Users follow the arrival curve in two rooms; the path's 40 ms RTT shows; reports
    get resolved."""
    path = tmp_path / "moderated.yaml"
    path.write_text(MODERATED)
    out = tmp_path / "run"
    assert main(path, users=10, duration=12, out=out, clock="server") == 0
    run = load_run(out)
    rec = run.records
    assert run.meta.extra["shape"] == "arrivals" and run.meta.extra["network"] == "scenario"
    assert run.meta.extra["clock"].startswith("server's monotonic clock")
    joins = rec[(rec["kind"] == "participant_joined") & (rec["role"] == "listener")]
    # The curve climbs 2/s per room for 12 s, scaled to a peak of 8: joins spread out.
    assert 4 <= len(joins) <= 16
    assert joins["room"].nunique() == 2
    heard = rec[rec["kind"] == "audio_latency"]
    assert heard["room"].nunique() == 2
    assert joins["t"].max() - joins["t"].min() > 4
    assert all('"rtt": 0.04' in a for a in joins["attrs"])
    # Speaker's path (20 ms one way) + listener's (20 ms) + loopback and server.
    latency = rec.loc[rec["kind"] == "audio_latency", "value"]
    assert 0.039 < latency.median() < 0.06
    filed = rec[rec["kind"] == "report_filed"]
    resolved = rec[rec["kind"] == "report_resolved"]
    assert len(filed) >= 1 and len(resolved) >= 1
    assert (resolved["value"] >= 0).all() and (resolved["value"] < 8).all()
    assert set(rec.loc[rec["kind"] == "removed", "participant"]) <= set(joins["participant"])


def test_set_turns_on_captions_and_recording(tiny: Path, tmp_path: Path) -> None:
    """`--set features.*=1` reaches the Locust processes: the real server captions and
    records the space, and listeners measure the captions (the swarm's own words)."""
    out = tmp_path / "run"
    on = ["features.captions=1", "features.recording=1", "features.clip_rate=30/min",
          "audience.hand_raise_rate=0"]  # fmt: skip
    # 14 s: Locust's start took most of 10 s on a slow machine (2026-12-07), leaving
    # too little recorded speech for clips and captions
    assert main(tiny, users=4, duration=14, out=out, shape="steady", network="none",
                overrides=on) == 0  # fmt: skip
    run = load_run(out)
    assert run.meta.scenario is not None
    features = {"captions": 1.0, "recording": 1.0, "clip_rate": 0.5, "replay_rate": 0.0,
                "replay_http_share": 0.5}  # fmt: skip
    assert run.meta.scenario["features"] == features
    server = load_run(out / run.meta.extra["server_run"]).records
    assert {"recording_started", "caption"} <= set(server["kind"].astype(str))
    summary = summarise(run.records).loc
    assert summary["caption_latency", "count"] > 0
    # from speech start, so it holds the utterance (spurts of ~1 s) and 0.8 s of quiet,
    # then recognition: 2-3 s here; 8.3 s was seen with the machine at a load average of
    # 10, so the bound is generous (a broken pipeline gives no captions, hence no p50)
    assert 0 < summary["caption_latency", "p50"] < 12.0
    # pocketsphinx on spurts of speech: 4-29 % in ten runs of this (a few dozen words
    # each); captions that did not read like the speech would score 80-100 %
    assert summary["caption_wer", "value"] <= 0.45
    assert summary["clips_cut", "value"] > 0  # listeners cut clips of the recording


REPLAYED = """\
name: replayed
duration: 15s
rooms: {count: 1, speakers: 1, ends_at: 10s}
speaking: {active_speakers: 2}
arrivals: {kind: constant, rate: 1/s}
session: {kind: fixed, mean: 2s}
audience: {hand_raise_rate: 0, reaction_rate: 0, report_rate: 0, block_rate: 0}
features: {recording: 1, clip_rate: 60/min, replay_rate: 240/min, replay_http_share: 0.5}
load: {probe_fraction: 0%}
"""


def test_replay_listeners_hear_an_ended_recording_over_webrtc_and_http(tmp_path: Path) -> None:
    """A recorded space ends at 10 s (Locust takes seconds to start: at 6 s, on a slow
    machine the host had not started the space yet when it ended, 2026-12-07); replay
    listeners (4/s) then play its recording from the real server, half over WebRTC (they
    receive its packets), half over HTTP (range reads of the file); clip cutters
    download clips."""
    path = tmp_path / "replayed.yaml"
    path.write_text(REPLAYED)
    out = tmp_path / "run"
    assert main(path, users=3, duration=15, out=out, shape="steady", network="none") == 0
    rec = load_run(out).records
    ended = rec.loc[rec["kind"] == "space_ended", "t"].min()
    started = rec[rec["kind"] == "replay_started"]
    # ~20 arrive at 4/s over the ~5 s left; a loaded machine starts Locust late (seen once
    # failing here, under three other test runs), so the bounds leave room
    assert len(started) >= 4 and (started["t"] > ended).all()
    via = started["attrs"].map(lambda a: json.loads(a)["via"])
    assert set(via) == {"webrtc", "http"}
    assert (started["value"] > 0).all() and (started.loc[via == "webrtc", "value"] < 5).all()
    egress = rec[rec["kind"] == "egress_bytes"]
    replays = egress[egress["role"] == "replay"]
    how = replays["attrs"].map(lambda a: json.loads(a)["via"])
    heard = set(started["participant"])
    webrtc = replays[(how == "webrtc") & replays["participant"].isin(heard)]
    http = replays[(how == "http") & replays["participant"].isin(heard)]
    # WebRTC: the recording's Opus packets for up to 2 s (~25 kbit/s: a few kB); a replay
    # the run's stop cut short heard less (975 bytes in CI, 2026-12-07), so the floor holds
    # for the replays that lasted their whole 2-s session
    assert len(webrtc) and (webrtc["value"] > 0).all() and (webrtc["value"] < 20_000).all()
    began = started.set_index("participant")["t"]
    lasted = webrtc["t"] - webrtc["participant"].map(began)
    whole = webrtc[lasted >= 1.9]
    assert len(whole) and (whole["value"] > 1000).all()
    # HTTP: a short recording is within a player's read-ahead: the whole file, every time
    assert len(http) and http["value"].nunique() == 1 and http["value"].iloc[0] > 1000
    clips = egress[egress["role"] == "clip"]
    assert len(clips) == (rec["kind"] == "clip_cut").sum() and (clips["value"] > 0).all()
    summary = summarise(rec).loc
    assert summary["replays", "value"] == len(started)
    assert summary["replay_egress_bytes", "value"] == replays["value"].sum()


def test_unreachable_target_fails_fast(
    tiny: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    t = time.monotonic()
    assert main(tiny, target="http://127.0.0.1:9", out=tmp_path / "run") == 2
    assert time.monotonic() - t < 10
    assert "cannot reach http://127.0.0.1:9" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_refused_host_stops_the_run_with_the_servers_reason(
    tiny: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A server that refuses (no dev tokens here) ends the run at once, exit 1, saying why."""
    proc, url = launch.start(tmp_path / "db", args=["--no-dev"])
    try:
        launch.wait_up(proc, url)
        t = time.monotonic()
        rc = main(tiny, target=url, users=4, duration=30, out=tmp_path / "run", network="none")
        took = time.monotonic() - t
    finally:
        launch.stop(proc)
    assert rc == 1 and took < 20
    err = capsys.readouterr().err
    assert "no participant could join" in err and "dev tokens are disabled" in err


# slow: 39 s on the CI VM (2026-12-07); tests/load/test_behaviour.py checks the rejoin
# logic, tests/server the kill -9 durability
@pytest.mark.slow
@pytest.mark.timeout(120)
def test_clients_reconnect_after_the_server_crashes(tiny: Path, tmp_path: Path) -> None:
    """kill -9 the server mid-run and start it again: the host and listeners rejoin and
    audio flows again (the space survives the restart, see tests/server)."""
    port = launch.free_port()
    db = tmp_path / "db"
    proc, url = launch.start(db, port)
    launch.wait_up(proc, url)
    out = tmp_path / "run"
    result: list[int] = []
    runner = threading.Thread(
        target=lambda: result.append(
            main(tiny, target=url, users=3, duration=30, out=out, shape="steady", network="none")
        )
    )
    runner.start()
    try:
        time.sleep(12)
        crash = time.time()
        proc.kill()
        proc.wait(5)
        proc, _ = launch.start(db, port)
        launch.wait_up(proc, url)
        runner.join(90)
    finally:
        launch.stop(proc)
    assert result == [0]
    rec = load_run(out).records
    t_crash = crash - load_run(out).meta.extra["t0_unix"]
    back = rec[rec["kind"] == "reconnected"]
    assert "host" in set(back["role"].astype(str))
    # Listeners' sessions come back too, whatever their role now (tiny's hands are
    # granted at once, so a listener may be on stage when the server dies).
    joined = rec[(rec["kind"] == "participant_joined") & (rec["role"] == "listener")]
    assert set(back["participant"].astype(str)) & set(joined["participant"].astype(str))
    heard = rec[(rec["kind"] == "packets_received") & (rec["t"] > t_crash + 8)]
    assert heard["value"].sum() > 100  # audio flows again after the restart
    # Once everyone is back, delivery is whole again (the outage itself was silence:
    # the publishers were down too, so nothing was sent then).
    lost = rec[(rec["kind"] == "packets_lost") & (rec["t"] > t_crash + 8)]
    assert lost["value"].sum() < 0.02 * heard["value"].sum()


# slow: 12 s on the CI VM (2026-12-07); the metrics' records are checked by every other run here
@pytest.mark.slow
def test_web_ui_shows_the_custom_metrics(tiny: Path, tmp_path: Path) -> None:
    """`locust -f loadtests/locustfile.py` with its web UI: the stats page lists our events."""
    import json
    import urllib.request

    from spacesim.load.run import _child_env

    proc, url = launch.start(tmp_path / "db")
    web_port = launch.free_port()
    locust = None
    try:
        launch.wait_up(proc, url)
        repo = Path(__file__).resolve().parents[2]
        cmd = [sys.executable, "-m", "locust", "-f", str(repo / "loadtests" / "locustfile.py"),
               "--scenario", str(tiny), "--host", url, "--web-host", "127.0.0.1",
               "--web-port", str(web_port), "--autostart", "-u", "3", "--spacesim-shape",
               "steady", "--spacesim-network", "none"]  # fmt: skip
        locust = subprocess.Popen(
            cmd, env=_child_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        names: set[str] = set()
        deadline = time.monotonic() + 40
        while time.monotonic() < deadline and not {"join", "audio_latency"} <= names:
            time.sleep(1)
            try:
                with urllib.request.urlopen(
                    f"http://127.0.0.1:{web_port}/stats/requests", timeout=2
                ) as r:
                    names = {s["name"] for s in json.load(r)["stats"]}
            except OSError:
                continue
        with urllib.request.urlopen(f"http://127.0.0.1:{web_port}/", timeout=2) as r:
            assert r.status == 200
    finally:
        if locust is not None:
            locust.terminate()
            locust.wait(15)
        launch.stop(proc)
    assert {"join", "first_audio", "audio_latency", "host_start"} <= names


def test_bridge_guards_and_runs_under_gevent() -> None:
    code = """
import locust, asyncio, gevent
from spacesim.load import bridge

async def add(a, b):
    await asyncio.sleep(0.01)
    return a + b

async def nested():
    try:
        bridge.run(add(1, 2))
    except bridge.BridgeError:
        return "guarded"

assert bridge.run(add(1, 2), timeout=5) == 3
assert gevent.joinall([gevent.spawn(bridge.run, add(i, 1), 5) for i in range(20)], timeout=5)
assert bridge.run(nested(), timeout=5) == "guarded"
try:
    bridge.run(asyncio.sleep(5), timeout=0.1)
except TimeoutError:
    print("ok")
"""
    r = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=30, check=False
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "ok"


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_master_and_two_workers_run_the_town_hall(tmp_path: Path) -> None:
    """`spacesim load --workers 2` (Locust master + 2 worker processes), town-hall cut down:
    the host's space reaches both workers and every process's records are merged."""
    scenario = Path(__file__).resolve().parents[2] / "scenarios" / "town-hall.yaml"
    out = tmp_path / "run"
    assert (
        main(scenario, users=24, duration=40, workers=2, out=out, network="none", clock="server")
        == 0
    )  # every worker estimates its own offset to the server's clock
    rec = load_run(out).records
    joins = rec[(rec["kind"] == "participant_joined") & (rec["role"] == "listener")]
    assert len(joins) >= 15
    pids = {p.split("-")[1] for p in joins["participant"]}  # listener ids are l-<pid>-<n>
    assert len(pids) == 2
    heard = rec[rec["kind"] == "first_audio"]
    assert {p.split("-")[1] for p in heard["participant"]} == pids
    assert summarise(rec).loc["delivery_ratio", "value"] > 0.95
    latency = rec.loc[rec["kind"] == "audio_latency", "value"]
    assert latency.min() > -0.002 and latency.median() < 0.5  # offsets agree within ~1 ms


# slow: 20 s on the CI VM (2026-12-07); tests/load/test_posting.py and
# tests/server/test_posts.py cover posting
@pytest.mark.slow
def test_voice_day_posts_and_plays_voice_over_http(tmp_path: Path) -> None:
    """`spacesim load scenarios/voice-day.yaml -t 10s -u 4`: the Poster user uploads
    voice posts, DMs and Fleets to the embedded server and plays them back (a short
    play delay so plays fall within the run), recording upload and playback-start times
    and the bytes either way."""
    scenario = Path(__file__).resolve().parents[2] / "scenarios" / "voice-day.yaml"
    out = tmp_path / "run"
    quick = ["posts.play_delay=2s"]
    assert main(scenario, users=4, duration=10, out=out, network="none", overrides=quick) == 0
    rec = load_run(out).records
    kinds = set(rec["kind"].astype(str))
    assert {"voice_upload", "posts_uploaded", "upload_bytes", "voice_playback_start",
            "posts_played", "egress_bytes", "storage_bytes", "fleets_expired"} <= kinds  # fmt: skip
    up = rec[rec["kind"] == "voice_upload"]
    # ~1.4 uploads a second (1 DM, 0.2 posts, 0.15 voice Fleets a user a day, 100k users)
    assert len(up) >= 3 and "dm" in set(up["role"].astype(str))
    assert 0 < up["value"].median() < 1.0
    start = rec[rec["kind"] == "voice_playback_start"]
    assert len(start) > 0 and 0 < start["value"].median() < 1.0
    sent = rec[rec["kind"] == "upload_bytes"]["value"]
    assert (sent > 3000).all()  # whole Ogg/Opus files of >= 1 s of the clips
    held = rec[rec["kind"] == "storage_bytes"]["value"]
    assert held.iloc[-1] == sent.sum()  # nothing expires within 10 s
    summary = summarise(rec).loc
    assert summary["voice_uploads", "value"] == len(up)
    assert summary["voice_plays", "value"] == len(start)


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_tiny_run_against_a_two_node_cluster(tiny: Path, tmp_path: Path) -> None:
    """`--target` a cluster: listeners spread over both nodes, each record says which
    node carried it, and the nodes' own CPU and packets are kept as the server's run."""
    with launch.cluster(tmp_path / "cluster", nodes=2) as (_, procs):
        out = tmp_path / "run"
        assert main(tiny, target=procs[1][1], users=9, duration=10, out=out,
                    shape="steady", network="none") == 0  # fmt: skip
    run = load_run(out)
    rec = run.records
    joined = rec[(rec["kind"] == "participant_joined") & (rec["role"] == "listener")]
    nodes = {json.loads(a)["node"] for a in joined["attrs"]}
    assert nodes == {"node-1", "node-2"}
    assert len(rec[rec["kind"] == "first_audio"]) == len(joined)
    server = load_run(out / run.meta.extra["server_run"])
    assert server.meta.source == "server"
    cpu = server.records[server.records["kind"] == "node_cpu"]
    assert set(cpu["participant"]) == {"node-1", "node-2"}
    figures = summarise(server.records).loc
    assert figures["packets_forwarded", "value"] > 100
    assert server.records.loc[server.records["kind"] == "packets_relayed", "value"].sum() > 10
