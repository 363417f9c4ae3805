"""Captions in the swarm: spaces created with the features' shares, captions measured."""

from __future__ import annotations

import json

import pytest

from spacesim.load.captions import fragment_errors, words
from spacesim.results import Recorder, summarise

from .test_behaviour import kinds, run, scenario

pytestmark = pytest.mark.timeout(60)

WELCOME = "Welcome to the space. Today we are talking about the weather this summer."


def test_words_ignore_case_and_punctuation() -> None:
    assert words("Welcome to the space. Today, we're") == ["welcome", "to", "the", "space",
                                                            "today", "we're"]  # fmt: skip


@pytest.mark.parametrize(
    ("caption", "expected"),
    [
        ("the space today we are", (0, 5)),  # a stretch from the middle
        ("this summer welcome to", (0, 4)),  # across the loop's seam
        ("the spice today we are", (1, 5)),  # one substitution
        ("the today we are", (1, 5)),  # one deletion
        ("the space space today we are", (1, 5)),  # one insertion
        (WELCOME, (0, 13)),
        (f"{WELCOME} {WELCOME}", (0, 26)),  # longer than the clip: it looped
        ("", (0, 0)),  # nothing said: nothing to compare
        ("banana", (1, 1)),
    ],
)
def test_fragment_errors(caption: str, expected: tuple[int, int]) -> None:
    assert fragment_errors(WELCOME, caption) == expected


def test_fragment_errors_counts_a_wrong_caption_as_wrong() -> None:
    errors, n = fragment_errors(WELCOME, "my garden is full of tomatoes")
    assert n > 0 and errors / n >= 0.8


async def test_captioned_spaces_give_caption_latency_and_wer() -> None:
    sc = scenario(
        rooms={"count": 2},
        speaking={"active_speakers": 2, "talk_spurt": "10s", "pause": "10ms"},
        features={"captions": 1, "recording": 0},
    )
    rows, server, reports = await run(sc, 3.0, listeners=4)
    assert not reports.failures()
    created = [fs.created for fs in server.spaces.values()]
    assert [(c["captions"], c["recording"]) for c in created] == [(True, False)] * 2
    n = kinds(rows)
    assert n["caption_latency"] > 0 and n["caption_wer"] > 0
    for r in rows:
        if r[0] == "caption_latency":
            assert 0 <= r[5] < 1.0  # the fake publishes a caption as its speech ends
        if r[0] == "caption_wer":
            a = json.loads(r[6])
            assert r[5] == 0 and a["errors"] == 0 and a["words"] > 0  # a perfect recogniser
            assert a["speaker"].startswith("host-")  # a talker's words, not a listener's
    rec = Recorder("t", "load")
    for row in rows:
        rec.append(row)
    summary = summarise(rec.to_frame(), 3.0)
    assert summary.loc["caption_wer", "value"] == 0
    assert summary.loc["caption_latency", "count"] == n["caption_latency"]


async def test_spaces_without_features_get_no_captions() -> None:
    sc = scenario(speaking={"active_speakers": 1, "talk_spurt": "10s", "pause": "10ms"})
    rows, server, _ = await run(sc, 2.0, listeners=2)
    fs = next(iter(server.spaces.values()))
    assert fs.created["captions"] is False and fs.created["recording"] is False
    assert not fs.captions and not kinds(rows)["caption_latency"]


async def test_listeners_of_recorded_spaces_cut_clips() -> None:
    sc = scenario(
        rooms={"count": 2},
        features={"recording": 1, "clip_rate": "120/min"},
        speaking={"active_speakers": 1, "talk_spurt": "10s", "pause": "10ms"},
    )
    rows, server, reports = await run(sc, 3.0, listeners=4)
    assert not reports.failures()
    cut = [r for r in rows if r[0] == "clip_cut"]
    assert len(cut) == sum(len(fs.clips) for fs in server.spaces.values()) > 0
    assert reports.names()["clip"] == len(cut)


async def test_no_clips_where_nothing_is_recorded() -> None:
    sc = scenario(features={"clip_rate": "120/min"})
    rows, server, reports = await run(sc, 2.5, listeners=3)
    assert not kinds(rows)["clip_cut"] and not reports.names()["clip"]
    assert not next(iter(server.spaces.values())).clips


def test_edits_counts_substitutions_insertions_and_deletions() -> None:
    from spacesim.load.captions import edits, words

    ref = words("the cat sat on the mat")
    assert edits(ref, ref) == 0
    assert edits(ref, words("the cat sat on a mat")) == 1  # a substitution
    assert edits(ref, words("the cat sat on the mat now")) == 1  # an insertion
    assert edits(ref, words("cat sat on the mat")) == 1  # a deletion
    assert edits(ref, []) == len(ref) and edits([], ref) == len(ref)
