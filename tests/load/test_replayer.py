"""Replay listeners and clip downloads in the swarm, on the in-memory server (fakes.py)."""

from __future__ import annotations

import pytest

from spacesim import behaviour
from spacesim.results import Recorder, summarise

from .test_behaviour import attrs, kinds, run, run_lazy, scenario

pytestmark = pytest.mark.timeout(60)

TALK = {"active_speakers": 1, "talk_spurt": "10s", "pause": "10ms", "dtx": False}


def replayed(share: float) -> dict[str, object]:
    """A recorded space that ends at 1.5 s; replay listeners at 4/s listen 1 s each."""
    return {
        "rooms": {"ends_at": "1.5s"},
        "speaking": TALK,
        "session": {"kind": "fixed", "mean": "1s"},
        "features": {"recording": 1, "replay_rate": "240/min", "replay_http_share": share},
    }


@pytest.mark.parametrize("via", ["webrtc", "http"])
async def test_replay_listeners_play_an_ended_recording(via: str) -> None:
    sc = scenario(**replayed(1.0 if via == "http" else 0.0))
    rows, server, reports = await run(sc, 3.5, listeners=2)
    assert not reports.failures(), reports.failures()
    fs = next(iter(server.spaces.values()))
    ended = min(r[1] for r in rows if r[0] == "space_ended")
    started = [r for r in rows if r[0] == "replay_started"]
    assert len(started) >= 3  # 4/s over the 2 s after the end
    assert all(r[1] > ended and r[4] == "replay" and attrs(r)["via"] == via for r in started)
    assert all(0 < r[5] < 0.5 for r in started)  # request -> first audio
    assert reports.names()["replay_start"] == len(started)
    egress = {r[3]: r for r in rows if r[0] == "egress_bytes"}
    assert {r[3] for r in started} <= set(egress)
    size = len(fs.file())
    assert size > 0
    if via == "webrtc":
        assert not fs.downloads
        sent = sorted(sum(map(len, r.packets[: r.sent])) for r in fs.replays)
        got = sorted(int(r[5]) for r in egress.values())
        assert got == [s for s in sent if s]  # the payloads the server sent each, no more
        assert max(got) < size  # 1 s of a 1.5 s recording
    else:
        assert not fs.replays
        # a 1.5 s recording is within a player's read-ahead: the whole file, in one range
        duration = len(fs.recorded) * 0.02
        assert behaviour.player_bytes(1.0, duration, size) == size
        assert all(r[5] == size for r in egress.values())
        assert fs.downloads and all(d == ("recording", 0, size - 1) for d in fs.downloads)
    rec = Recorder("t", "load")
    for row in rows:
        rec.append(row)
    summary = summarise(rec.to_frame(), 3.5)
    assert summary.loc["replays", "value"] == len(started)
    assert summary.loc["replay_egress_bytes", "value"] == sum(r[5] for r in egress.values())


@pytest.mark.parametrize("via", ["webrtc", "http"])
async def test_a_replay_start_does_not_include_signing_in(via: str) -> None:
    """As a listener's join: ``replay_started`` runs from the request, signed in before."""
    sc = scenario(**replayed(1.0 if via == "http" else 0.0))
    rows, reports = await run_lazy(sc, 3.5, 2)
    started = [r[5] for r in rows if r[0] == "replay_started"]
    assert started and max(started) < 0.25, started
    assert not reports.failures()


async def test_no_replay_listeners_for_unrecorded_spaces() -> None:
    sc = scenario(**{**replayed(0.5), "features": {"replay_rate": "240/min"}})
    rows, server, _ = await run(sc, 2.5, listeners=2)
    fs = next(iter(server.spaces.values()))
    assert any(r[0] == "space_ended" for r in rows)
    assert not kinds(rows)["replay_started"] and not kinds(rows)["egress_bytes"]
    assert not fs.replays and not fs.downloads


async def test_clip_cutters_download_their_clip() -> None:
    sc = scenario(features={"recording": 1, "clip_rate": "120/min"}, speaking=TALK)
    rows, server, reports = await run(sc, 2.5, listeners=4)
    assert not reports.failures()
    fs = next(iter(server.spaces.values()))
    cut = [r for r in rows if r[0] == "clip_cut"]
    fetched = [r for r in rows if r[0] == "egress_bytes"]
    assert len(cut) == len(fetched) == len(fs.clips) > 0
    assert all(r[4] == "clip" for r in fetched)
    by_id = {c["id"]: len(c["data"]) for c in fs.clips}
    assert all(r[5] == by_id[attrs(r)["clip"]] > 0 for r in fetched)
    assert sorted(d[0] for d in fs.downloads) == sorted(f"clips/{c}" for c in by_id)
    assert reports.names()["clip_fetch"] == len(cut)
