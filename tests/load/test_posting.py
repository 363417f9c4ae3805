"""The swarm's posting plan and its voice files, without Locust or sockets."""

from __future__ import annotations

import math

import pytest

from spacesim.behaviour import PyRng
from spacesim.load.posting import PostingPlan, voice_file
from spacesim.scenario import Posts
from spacesim.server.oggcheck import OggOpusCheck
from spacesim.server.posts import VOICE_MAX_BYTES, VOICE_MAX_S

DAY = 86400.0


@pytest.mark.parametrize("seconds", [1, 30, 140])
def test_voice_files_pass_the_servers_check(seconds: int) -> None:
    data = voice_file(seconds)
    check = OggOpusCheck(VOICE_MAX_BYTES, VOICE_MAX_S)
    check.feed(data)
    assert check.finish() == pytest.approx(seconds)


def test_uploads_follow_the_population_rates_and_lengths() -> None:
    posts = Posts(users=100_000, voice_posts_per_day=0.2 / DAY, voice_dms_per_day=1 / DAY,
                  fleets_per_day=0.5 / DAY, fleet_voice_share=0.2, length_mean=20.0)  # fmt: skip
    plan = PostingPlan(posts, PyRng(4))
    ups = [u for _ in range(2000) for u in plan.uploads(1.0)]
    for role, per_day in (("post", 0.2), ("dm", 1.0), ("fleet", 0.1)):
        want = 100_000 * per_day / DAY * 2000
        got = sum(1 for r, _ in ups if r == role)
        assert got == pytest.approx(want, abs=5 * math.sqrt(want)), role
    assert sum(s for _, s in ups) / len(ups) == pytest.approx(20.0, rel=0.1)


def test_plays_fall_due_for_what_was_uploaded_and_go_with_an_expired_fleet() -> None:
    posts = Posts(users=10, plays_per_post=4.0, followers=10.0, fleet_view_share=0.5,
                  play_delay=10.0)  # fmt: skip
    plan = PostingPlan(posts, PyRng(5))
    assert plan.plays(1.0, {"post": 0}) == []
    for _ in range(500):
        plan.uploaded("post")
    plays = [r for _ in range(200) for r in plan.plays(1.0, {"post": 500})]
    assert len(plays) == pytest.approx(2000, rel=0.1) and set(plays) == {"post"}
    plan.uploaded("fleet")
    assert plan.owed["fleet"] == 5.0
    plan.expire("fleet", 0.0)
    assert plan.owed["fleet"] == 0.0
