"""The posts model: voice posts, DMs and Fleets priced per tick over days."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd
import pytest

from spacesim import behaviour
from spacesim.behaviour import PyRng
from spacesim.results import Recorder, summarise
from spacesim.scenario import Posts, parse_scenario
from spacesim.server.posts import FLEET_TTL_S, VOICE_MAX_S
from spacesim.sim import simulate
from spacesim.sim.draws import Draws
from spacesim.sim.posts import simulate_posts

DAY = 86400.0


def run_posts(duration: float, seed: int = 3, **fields: Any) -> pd.DataFrame:
    rec = Recorder("posts", "sim")
    simulate_posts(Posts(**fields), duration, Draws(np.random.default_rng(seed)), rec)
    return rec.to_frame()


def of(frame: pd.DataFrame, kind: str, role: str | None = None) -> pd.DataFrame:
    mine = frame[frame["kind"] == kind]
    return mine if role is None else mine[mine["role"] == role]


def test_the_server_limits_are_the_models() -> None:
    assert behaviour.FLEET_TTL == FLEET_TTL_S
    assert behaviour.VOICE_MAX_S == VOICE_MAX_S


def test_voice_bytes_are_the_bitrate_and_the_ogg_framing() -> None:
    posts = Posts(bitrate=32000)
    assert behaviour.voice_bytes(posts, 0.0) == behaviour.OGG_HEAD_BYTES
    per_s = 4000 + behaviour.OGG_BYTES_PER_S
    assert behaviour.voice_bytes(posts, 10.0) == behaviour.OGG_HEAD_BYTES + 10 * per_s


def test_voice_length_has_its_mean_and_the_server_cap() -> None:
    posts = Posts(length_mean=20.0, length_sigma=0.5)
    rng = PyRng(5)
    lengths = [behaviour.voice_length(posts, rng) for _ in range(20000)]
    assert np.mean(lengths) == pytest.approx(20.0, rel=0.03)
    long = Posts(length_mean=500.0, length_sigma=0.5)
    assert max(behaviour.voice_length(long, rng) for _ in range(100)) == VOICE_MAX_S


def test_voice_plays_fall_due_as_the_delay_says() -> None:
    posts = Posts(play_delay=3600.0)
    assert behaviour.voice_plays(0.0, 60.0, posts, PyRng(1)) == 0
    rng = PyRng(2)
    draws = [behaviour.voice_plays(1000.0, 3600.0, posts, rng) for _ in range(2000)]
    assert np.mean(draws) == pytest.approx(1000 * (1 - math.exp(-1)), rel=0.02)


def test_no_users_no_records() -> None:
    assert run_posts(DAY, users=0).empty


def test_uploads_follow_the_daily_rates() -> None:
    frame = run_posts(
        4 * DAY,
        users=10000,
        voice_posts_per_day=0.2 / DAY,
        voice_dms_per_day=1 / DAY,
        fleets_per_day=0.5 / DAY,
        fleet_voice_share=0.4,
    )
    for role, per_day in (("post", 0.2), ("dm", 1.0), ("fleet", 0.5 * 0.4)):
        want = 10000 * per_day * 4
        got = of(frame, "posts_uploaded", role)["value"].sum()
        assert got == pytest.approx(want, abs=5 * math.sqrt(want)), role


def test_fleets_expire_after_a_day_and_storage_levels_off() -> None:
    frame = run_posts(
        4 * DAY,
        users=20000,
        voice_posts_per_day=0.0,
        voice_dms_per_day=0.0,
        fleets_per_day=1 / DAY,
        fleet_voice_share=1.0,
        tick=600.0,
    )
    up = of(frame, "posts_uploaded", "fleet")
    gone = of(frame, "fleets_expired")
    # every Fleet uploaded at t is deleted at t + 24 h, none earlier, none kept
    assert gone["value"].sum() == up[up["t"] <= 3 * DAY + 1e-6]["value"].sum()
    assert gone[gone["t"] < DAY]["value"].sum() == 0
    held = of(frame, "storage_bytes").set_index("t")["value"]
    uploaded = of(frame, "upload_bytes", "fleet").set_index("t")["value"]
    # what is held is exactly the last 24 h of uploads
    for t in (2 * DAY, 3.5 * DAY, 4 * DAY):
        assert held[t] == uploaded[(uploaded.index > t - DAY) & (uploaded.index <= t)].sum()
    assert held[4 * DAY] == pytest.approx(held[2 * DAY], rel=0.05)


def test_posts_and_dms_are_kept_and_played() -> None:
    frame = run_posts(
        6 * DAY,
        users=5000,
        voice_posts_per_day=1 / DAY,
        voice_dms_per_day=1 / DAY,
        fleets_per_day=0.0,
        plays_per_post=10.0,
        play_delay=3600.0,
    )
    held = of(frame, "storage_bytes")["value"]
    assert held.is_monotonic_increasing
    assert held.iloc[-1] == of(frame, "upload_bytes")["value"].sum()
    for role, each in (("post", 10.0), ("dm", 1.0)):
        uploads = of(frame, "posts_uploaded", role)
        # each play comes an exponential delay (1 h) after its upload's tick
        due = -np.expm1(-(6 * DAY - uploads["t"]) / 3600.0)
        owed = float((uploads["value"] * each * due).sum())
        plays = of(frame, "posts_played", role)["value"].sum()
        assert plays == pytest.approx(owed, rel=0.05), role
        # a play downloads a whole item: egress per play is the mean upload size
        size = of(frame, "upload_bytes", role)["value"].sum() / uploads["value"].sum()
        sent = of(frame, "egress_bytes", role)["value"].sum()
        assert sent / plays == pytest.approx(size, rel=0.03), role


def test_fleet_plays_stop_at_expiry() -> None:
    """Plays owed to a Fleet past its 24 h are lost: a play delay far beyond a day
    leaves most of the views unplayed."""
    common: dict[str, Any] = {
        "users": 5000,
        "voice_posts_per_day": 0.0,
        "voice_dms_per_day": 0.0,
        "fleets_per_day": 1 / DAY,
        "fleet_voice_share": 1.0,
        "followers": 10.0,
        "fleet_view_share": 1.0,
    }
    quick = of(run_posts(3 * DAY, play_delay=600.0, **common), "posts_played", "fleet")
    slow = of(run_posts(3 * DAY, play_delay=10 * DAY, **common), "posts_played", "fleet")
    assert slow["value"].sum() < 0.2 * quick["value"].sum()


def test_summary_prices_the_posts() -> None:
    frame = run_posts(2 * DAY, users=1000, fleet_voice_share=1.0, fleets_per_day=2 / DAY)
    table = summarise(frame, 2 * DAY)
    assert table.loc["voice_uploads", "value"] == of(frame, "posts_uploaded")["value"].sum()
    assert table.loc["upload_bytes", "value"] == of(frame, "upload_bytes")["value"].sum()
    assert table.loc["storage_bytes", "value"] == of(frame, "storage_bytes")["value"].iloc[-1]
    assert table.loc["fleets_expired", "value"] > 0
    for role in ("post", "dm", "fleet"):
        want = of(frame, "egress_bytes", role)["value"].sum()
        assert table.loc[f"{role}_egress_bytes", "value"] == want > 0


BASE: dict[str, Any] = {
    "name": "rooms-and-posts",
    "duration": "2m",
    "arrivals": {"kind": "poisson", "rate": "1/s"},
    "session": {"kind": "exponential", "mean": "30s"},
}


def test_posts_run_beside_the_rooms_without_changing_them() -> None:
    alone = simulate(parse_scenario(BASE, "t")).records
    both = simulate(parse_scenario({**BASE, "posts": {"users": 1000, "tick": "10s"}}, "t")).records
    posts = both["kind"].isin(["posts_uploaded", "upload_bytes", "storage_bytes"])
    assert posts.any()
    rooms = both[
        ~both["kind"].isin(
            [
                "posts_uploaded",
                "upload_bytes",
                "posts_played",
                "egress_bytes",
                "storage_bytes",
                "fleets_expired",
            ]
        )
    ]
    pd.testing.assert_frame_equal(
        rooms.drop(columns="run_id").reset_index(drop=True),
        alone.drop(columns="run_id").reset_index(drop=True),
        check_categorical=False,
    )
