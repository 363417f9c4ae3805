"""SpeakerTrack's talk spurts: pauses send nothing with DTX, silence frames without."""

from __future__ import annotations

import itertools
from typing import Any

import pytest

from spacesim.client.opus import frames, read_mark
from spacesim.client.speaker import SILENCE, SpeakerTrack, tone_packets


class FakeTime:
    """A clock that a patched asyncio.sleep advances (no real waiting)."""

    def __init__(self) -> None:
        self.ns = 0

    def clock(self) -> int:
        return self.ns

    async def sleep(self, seconds: float) -> None:
        self.ns += round(seconds * 1e9)


@pytest.fixture
def fake_time(monkeypatch: pytest.MonkeyPatch) -> FakeTime:
    ft = FakeTime()
    monkeypatch.setattr("spacesim.client.speaker.asyncio.sleep", ft.sleep)
    return ft


async def _collect(track: SpeakerTrack, ft: FakeTime, until_s: float) -> list[tuple[int, Any]]:
    out = []
    while ft.ns < until_s * 1e9:
        p = await track.recv()
        out.append((ft.ns, p))
    return out


@pytest.mark.parametrize("dtx", [True, False])
async def test_pauses_gate_packets(fake_time: FakeTime, dtx: bool) -> None:
    clip = tone_packets(300, 0.2)
    phases = itertools.cycle([(True, 0.2), (False, 0.3)])
    seen: list[tuple[bool, float]] = []
    track = SpeakerTrack(
        clip, 7, clock=fake_time.clock, phases=phases, dtx=dtx,
        on_phase=lambda talking, s: seen.append((talking, s)),
    )  # fmt: skip
    got = [(t, p) for t, p in await _collect(track, fake_time, 1.0) if t < 1e9]
    marks = [read_mark(bytes(p)) for _, p in got]
    assert all(m is not None for m in marks)
    assert [m.seq for m in marks if m is not None] == list(range(len(got)))  # no false loss
    talk = [(t, p) for t, p in got if (t / 1e9) % 0.5 < 0.2 - 1e-9]
    pause = [(t, p) for t, p in got if (t / 1e9) % 0.5 >= 0.2 - 1e-9]
    assert len(talk) == 20  # two 200 ms spurts of 20 ms packets
    assert all(frames(bytes(p))[1] != frames(SILENCE)[1] for _, p in talk)
    if dtx:
        assert pause == [] and track.quiet >= 30 and track.silent == 0
    else:
        assert len(pause) == 30 and track.silent == 30
        assert all(frames(bytes(p)) == frames(SILENCE) for _, p in pause)
    # pts follow the slots, so a DTX gap jumps the RTP timestamp
    assert got[-1][1].pts == 960 * round(got[-1][0] / 20e6)
    assert seen[:3] == [(True, 0.2), (False, 0.3), (True, 0.2)]


async def test_closed_gate_sends_nothing(fake_time: FakeTime) -> None:
    muted = {"on": True}
    track = SpeakerTrack(tone_packets(300, 0.2), 8, clock=fake_time.clock,
                         gate=lambda: muted["on"])  # fmt: skip
    first = await track.recv()
    assert fake_time.ns == 0 and track.sent == 1
    muted["on"] = False
    muted_until = 0.5e9
    track.gate = lambda: fake_time.ns >= muted_until
    p = await track.recv()
    assert fake_time.ns >= muted_until and track.quiet >= 24
    assert read_mark(bytes(p)) is not None and read_mark(bytes(first)) is not None


async def test_spurts_end_at_the_gap_between_words_nearest_their_drawn_end(
    fake_time: FakeTime,
) -> None:
    """A person stops between words: each spurt ends where the clip has a gap, within a
    few packets of its drawn length (nearest gap, so the mean length is kept)."""
    clip = tone_packets(300, 1.0)  # 50 packets; gaps every 7th one
    gaps = [k % 7 == 0 for k in range(len(clip))]
    drawn = [0.05, 0.31, 0.5, 0.01, 0.9]
    phases = iter([x for d in drawn for x in ((True, d), (False, 0.1))] + [(True, 9.0)] * 2)
    seen: list[tuple[bool, float]] = []
    track = SpeakerTrack(
        clip, 9, clock=fake_time.clock, phases=phases, dtx=True, pauses=gaps,
        on_phase=lambda talking, s: seen.append((talking, s)),
    )  # fmt: skip
    sent_at_pause: list[int] = []
    while len(seen) < 2 * len(drawn):
        before = track.talking
        await track.recv()
        if before and not track.talking:
            sent_at_pause.append(track._clip)
    spurts = [s for talking, s in seen if talking][: len(drawn)]
    # packets sent so far at each spurt's end (first spurt from the clip's start, at 0)
    ends = [round(sum(spurts[: i + 1]) / 0.02) for i in range(len(drawn))]
    assert all(gaps[e % len(clip)] for e in ends), (spurts, ends)
    start, expected = 0, []
    for d in drawn:  # the nearest gap after the spurt's start; ties go to the shorter
        want = start + max(round(d / 0.02), 1)
        end = min((g for g in range(start + 1, start + 60) if gaps[g % len(clip)]),
                  key=lambda g: (abs(g - want), g))  # fmt: skip
        expected.append(round((end - start) * 0.02, 2))
        start = end
    assert [round(s, 2) for s in spurts] == expected
    assert expected[:3] == [0.14, 0.28, 0.56]
    with pytest.raises(ValueError, match="one flag per packet"):
        SpeakerTrack(clip, 9, pauses=[True])
    with pytest.raises(ValueError, match="some of them True"):
        SpeakerTrack(clip, 9, pauses=[False] * len(clip))


def test_clip_pauses_are_the_quiet_packets_between_words() -> None:
    from spacesim.client.speaker import clip_names, clip_pauses, load_clip

    for name in clip_names():
        gaps = clip_pauses(name)
        assert len(gaps) == len(load_clip(name))
        inside = gaps[15:-25]  # the sentence itself, past the lead-in, before the tail
        assert 0 < sum(inside) < len(inside) / 2  # gaps between words, mostly speech
        assert gaps[0] and gaps[-1]  # the clips start and end in silence
