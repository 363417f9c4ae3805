"""spacesim.server.captions: the queue and its shedding with in-memory fakes; the worker's
recogniser in process; storage, WebVTT, and the HTTP surface."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import pytest

from spacesim import policy
from spacesim.client.speaker import load_clip, transcripts
from spacesim.server import captions as cap
from spacesim.server.captions import CHUNK_PACKETS, Captioner, to_webvtt
from spacesim.server.room import Room
from spacesim.server.store import CaptionRecord, InvalidArgument, NotFound
from spacesim.server.store import open_store as store_at
from spacesim.server.store_memory import MemoryStore
from tests.server.test_app import Api, api  # noqa: F401  (the fixture)
from tests.server.test_captions_live import overlap

pytestmark = pytest.mark.timeout(30)

# --------------------------------------------------------------------------- fakes


class FakeExecutor:
    """Jobs wait here until the test resolves them (a worker that is as slow as we say)."""

    def __init__(self) -> None:
        self.jobs: list[tuple[Callable[..., Any], tuple[Any, ...], Future[Any]]] = []

    def submit(self, fn: Callable[..., Any], /, *args: Any) -> Future[Any]:
        f: Future[Any] = Future()
        self.jobs.append((fn, args, f))
        return f

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        pass

    def feeds(self) -> list[tuple[Any, ...]]:
        return [args for fn, args, _ in self.jobs if fn is cap.work_feed]

    def ends(self) -> list[tuple[Any, ...]]:
        return [args for fn, args, _ in self.jobs if fn is cap.work_end]

    def pending(self) -> list[Future[Any]]:
        """Futures of recognition jobs (not the warm-up's) in order."""
        return [f for fn, _, f in self.jobs if fn is not cap.work_ready]


class FakeSpace:
    def __init__(self) -> None:
        self.space_id = "s-1"
        self.captions = True


class FakeRoom:
    def __init__(self) -> None:
        self.space = FakeSpace()
        self.t = 100.0
        self.out: list[dict[str, Any]] = []

    def now(self) -> float:
        return self.t

    def caption(
        self, speaker: str, text: str, *, final: bool, start: float, end: float, gap: bool = False
    ) -> None:
        self.out.append(
            {"speaker": speaker, "text": text, "final": final, "start": start, "end": end}
            | {"gap": gap}
        )


class World:
    def __init__(self, workers: int = 1) -> None:
        self.now = 0.0
        self.executors: list[FakeExecutor] = []

        def make() -> FakeExecutor:
            self.executors.append(FakeExecutor())
            return self.executors[-1]

        self.captioner = Captioner(workers, executor=make, clock=lambda: self.now)  # type: ignore[arg-type]
        self.room = FakeRoom()
        self.space = self.captioner.space(self.room)

    def ready(self) -> None:
        """The worker processes have started (their warm-up jobs answer)."""
        for ex in self.executors:
            for fn, _, f in ex.jobs:
                if fn is cap.work_ready and not f.done():
                    f.set_result(os.getpid())  # the answer is its pid

    def backlog_over(self, limit: float, speaker: str = "alice") -> None:
        """Talk (nothing answered) until worker 0's backlog exceeds `limit` seconds."""
        while self.captioner.workers[0].backlog <= limit:
            self.talk(speaker, CHUNK_PACKETS)

    def talk(self, speaker: str, packets: int) -> None:
        for _ in range(packets):
            self.space.tap(speaker, b"\xf8\xff\xfe")
            self.now += 0.02
            self.room.t += 0.02


async def settle() -> None:
    """Let the loop run the result callbacks (call_soon_threadsafe)."""
    for _ in range(3):
        await asyncio.sleep(0)


# --------------------------------------------------------------------------- queue


async def test_a_job_per_chunk_and_nothing_while_captions_are_off() -> None:
    w = World()
    ex = w.executors[0]
    w.talk("alice", CHUNK_PACKETS - 1)
    assert ex.feeds() == []  # the tap only buffers
    w.talk("alice", 1)
    (key, t0, payloads, partials), *_ = ex.feeds()
    assert key.startswith("s-1/alice/") and len(payloads) == CHUNK_PACKETS and partials
    assert t0 == pytest.approx(100.0)
    w.room.space.captions = False
    w.talk("alice", 3 * CHUNK_PACKETS)
    assert len(ex.feeds()) == 1


async def test_results_are_published_partials_and_finals() -> None:
    w = World()
    ex = w.executors[0]
    w.talk("alice", CHUNK_PACKETS)
    ex.pending()[-1].set_result(
        [("hello", False, 100.0, 100.2), ("hello world", True, 100.0, 100.4)]
    )
    await settle()
    assert [(c["text"], c["final"]) for c in w.room.out] == [
        ("hello", False),
        ("hello world", True),
    ]
    assert w.captioner.stats()["finals"] == 1 and w.captioner.stats()["backlog_seconds"] == 0


async def test_a_backlog_sheds_partials_first() -> None:
    w = World()
    ex = w.executors[0]
    w.backlog_over(cap.PARTIALS_SHED_S)  # none answered yet: the backlog grows
    w.talk("alice", CHUNK_PACKETS)
    assert ex.feeds()[0][3] is True
    assert ex.feeds()[-1][3] is False  # this job asks for no partial
    assert w.captioner.stats()["partials_shed"] >= 1
    # a late partial arriving while the worker is still behind is dropped; a final is not
    ex.pending()[0].set_result([("late", False, 100.0, 100.2), ("done", True, 100.0, 100.2)])
    await settle()
    assert [c["text"] for c in w.room.out] == ["done"]
    assert all(not c["gap"] for c in w.room.out)


async def test_a_starting_worker_is_waited_for_not_shed() -> None:
    """A worker process spawning and loading its model is not behind: the first speech
    waits for it (up to STARTING_SHED_S) instead of becoming a gap."""
    w = World()
    ex = w.executors[0]
    w.backlog_over(cap.GAP_SHED_S + 1.0)
    assert ex.ends() == [] and w.captioner.stats()["audio_seconds_shed"] == 0
    w.backlog_over(cap.STARTING_SHED_S)
    w.talk("alice", CHUNK_PACKETS)
    assert w.captioner.stats()["audio_seconds_shed"] > 0  # but not without bound
    w2 = World()
    w2.ready()
    w2.backlog_over(cap.GAP_SHED_S)
    w2.talk("alice", CHUNK_PACKETS)
    assert w2.captioner.stats()["audio_seconds_shed"] > 0  # a started one that is behind


async def test_far_behind_audio_is_dropped_and_the_gap_marked_once_caught_up() -> None:
    w = World()
    ex = w.executors[0]
    w.ready()
    w.backlog_over(cap.GAP_SHED_S)
    sent = len(ex.feeds())
    gap_from = w.room.t
    w.talk("alice", 3 * CHUNK_PACKETS)  # dropped: the worker is too far behind
    gap_to = w.room.t
    assert len(ex.feeds()) == sent
    assert len(ex.ends()) == 1  # what it had becomes final (once, not per chunk)
    stats = w.captioner.stats()
    assert stats["audio_seconds_shed"] == pytest.approx(3 * CHUNK_PACKETS * cap.PACKET_S)
    assert stats["backlog_seconds"] <= cap.GAP_SHED_S + CHUNK_PACKETS * cap.PACKET_S
    for f in ex.pending():  # the worker catches up
        f.set_result([])
    await settle()
    w.talk("alice", CHUNK_PACKETS)
    assert len(ex.feeds()) == sent + 1
    (gap,) = [c for c in w.room.out if c["gap"]]
    assert gap["final"] and gap["text"] == "" and gap["speaker"] == "alice"
    assert gap["start"] == pytest.approx(gap_from) and gap["end"] == pytest.approx(gap_to)
    assert w.captioner.stats()["gaps"] == 1


async def test_a_pause_flushes_and_silence_finishes_the_stream() -> None:
    w = World(workers=2)
    w.talk("alice", 3)
    w.talk("bob", 3)
    assert [w.captioner.workers[i].streams for i in (0, 1)] == [1, 1]  # one stream each
    w.now += cap.FLUSH_AFTER_S
    w.space.tick()
    assert [len(e.feeds()) for e in w.executors] == [1, 1]
    assert [len(e.feeds()[0][2]) for e in w.executors] == [3, 3]
    w.now += cap.END_AFTER_S
    w.space.tick()
    assert [len(e.ends()) for e in w.executors] == [1, 1]
    assert w.space.speakers == {} and w.captioner.stats()["streams"] == 0


async def test_a_dtx_pause_reaches_the_recogniser_as_quiet_frames() -> None:
    """Opus DTX sends nothing in a pause: the recogniser must hear the pause (so the
    utterance detector can end an utterance there), not words spliced together."""
    w = World()
    ex = w.executors[0]
    word = b"\xfc\x01\x02"
    for _ in range(4):
        w.space.tap("alice", word)
        w.now += 0.02
        w.room.t += 0.02
    w.now += 0.3  # 0.32 s since the last packet: 15 slots of DTX
    w.room.t += 0.3
    w.space.tap("alice", word)
    (_, t0, payloads, _), *_ = ex.feeds()
    assert payloads == [word] * 4 + [cap.SILENCE] * 15 + [word]
    assert t0 == pytest.approx(100.0)
    # after a flush the buffer is empty: the quiet frames start it, and its time with them
    w.now += cap.FLUSH_AFTER_S
    w.space.tick()
    w.now += 0.25
    w.room.t += 0.5
    w.space.tap("alice", word)
    w.now += cap.FLUSH_AFTER_S
    w.space.tick()
    _, t0, payloads, _ = ex.feeds()[-1]
    assert payloads == [cap.SILENCE] * 24 + [word]
    assert t0 == pytest.approx(w.room.t - 24 * 0.02)
    # a long silence (no tick came to end the utterance) is filled only up to the cap
    w.now += 3.0
    w.space.tap("alice", word)
    w.now += cap.FLUSH_AFTER_S
    w.space.tick()
    assert ex.feeds()[-1][2] == [cap.SILENCE] * cap.DTX_FILL_MAX + [word]


async def test_a_failed_job_is_counted_and_the_rest_goes_on() -> None:
    w = World()
    ex = w.executors[0]
    w.talk("alice", 2 * CHUNK_PACKETS)
    ex.pending()[0].set_exception(RuntimeError("boom"))
    ex.pending()[1].set_result([("fine", True, 100.0, 100.2)])
    await settle()
    assert w.captioner.stats()["errors"] == 1 and [c["text"] for c in w.room.out] == ["fine"]
    from spacesim.server import metrics

    body, _ = metrics.render([], [], extra=w.captioner.families())
    assert b"spacesim_captions_errors_total 1.0" in body


# --------------------------------------------------------------------------- the recogniser


def test_the_worker_recognises_a_shipped_clip_in_process() -> None:
    key = "test/worker/1"
    packets = list(load_clip("garden")) + [b"\xf8\xff\xfe"] * 50  # then half a second quiet
    results = []
    for i in range(0, len(packets), CHUNK_PACKETS):
        results += cap.work_feed(key, 10.0 + i * 0.02, packets[i : i + CHUNK_PACKETS], True)
    results += cap.work_end(key)
    finals = [r for r in results if r[1]]
    assert any(not r[1] for r in results)  # partials while it spoke
    assert len(finals) == 1, results
    text, _, start, end = finals[0]
    assert overlap(transcripts()["garden"], text) >= 0.7, text
    assert 10.0 <= start < end <= 10.0 + len(packets) * 0.02
    assert cap.work_end(key) == []  # the stream is gone, its decoder kept for the next


# --------------------------------------------------------------------------- storage, export


@pytest.mark.parametrize("kind", ["memory", "sqlite", "postgres"])
def test_stores_keep_captions_and_the_setting(
    kind: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    target = tmp_path / "c.db" if kind != "postgres" else request.getfixturevalue("pg_url")()

    def open_store() -> Any:
        return MemoryStore() if kind == "memory" else store_at(target)

    store = open_store()
    store.add_user("h", "h")
    store.create_space("s-1", host="h", title="", status="live", who_may_speak="everyone", at=1.0)
    assert store.captions_enabled("s-1") is False
    store.set_captions("s-1", True)
    store.add_caption("s-1", "h", 5.0, 6.0, "second")
    store.add_caption("s-1", "h", 1.0, 2.0, "first")
    store.add_caption("s-1", "h", 2.0, 4.0, "", gap=True)
    with pytest.raises(InvalidArgument):
        store.add_caption("s-1", "h", 3.0, 2.0, "backwards")
    with pytest.raises(NotFound):
        store.add_caption("s-nope", "h", 1.0, 2.0, "x")
    if kind != "memory":  # survives a reopen
        store.close()
        store = open_store()
    assert store.captions_enabled("s-1") is True
    got = store.captions("s-1")
    assert [(c.text, c.gap) for c in got] == [("first", False), ("", True), ("second", False)]
    store.set_captions("s-1", False)
    assert store.captions_enabled("s-1") is False
    store.close()


def test_webvtt_escapes_and_marks_gaps() -> None:
    rows = [
        CaptionRecord(1, "s", "a<b", 61.5, 62.25, "x & y --> z", False, 0.0),
        CaptionRecord(2, "s", "a", 3661.0, 3662.0, "", True, 0.0),
    ]
    assert to_webvtt(rows) == (
        "WEBVTT\n\n"
        "1\n00:01:01.500 --> 00:01:02.250\n<v a&lt;b>x &amp; y --&gt; z\n\n"
        "2\n01:01:01.000 --> 01:01:02.000\n<v a>[captions skipped]\n"
    )


def test_a_room_stores_finals_only_and_tells_everyone() -> None:
    store = MemoryStore()
    store.add_user("h", "h")
    store.create_space("s-1", host="h", title="", status="live", who_may_speak="everyone", at=1.0)
    room = Room(policy.Space("s-1", "h", captions=True), persist=store)
    seen: list[dict[str, Any]] = []
    room.sinks.append(seen.append)
    room.caption("h", "hel", final=False, start=1.0, end=1.2)
    room.caption("h", "hello", final=True, start=1.0, end=1.5)
    assert [(m["kind"], m["attrs"]["final"]) for m in seen] == [
        ("caption", False),
        ("caption", True),
    ]
    assert [c.text for c in store.captions("s-1")] == ["hello"]


# --------------------------------------------------------------------------- HTTP


async def test_the_host_turns_captions_on_and_off(api: Api) -> None:  # noqa: F811
    space = await api.space("host")
    _, data = await api.call("GET", f"/v1/spaces/{space}", "host")
    assert data["captions"] is False
    await api.join(space, "bob")
    status, data = await api.act(space, "bob", "captions_on")
    assert status == 403 and data["error"] == "not_allowed"
    status, data = await api.act(space, "host", "captions_on")
    assert status == 200
    assert [(e["kind"], e["attrs"]) for e in data["events"]] == [
        ("captions_changed", {"captions": "on"})
    ]
    status, data = await api.act(space, "host", "captions_on")
    assert status == 200 and data["events"] == []
    _, data = await api.call("GET", f"/v1/spaces/{space}", "bob")
    assert data["captions"] is True
    assert (await api.act(space, "host", "captions_off"))[0] == 200
    _, data = await api.call("GET", f"/v1/spaces/{space}", "bob")
    assert data["captions"] is False


async def test_captions_route_refusals_and_an_ended_space(api: Api) -> None:  # noqa: F811
    status, data = await api.call("POST", "/v1/spaces", "host", {"captions": "yes"})
    assert status == 400 and data["error"] == "bad_request"
    space = await api.space("host", captions=True)
    status, data = await api.call("GET", f"/v1/spaces/{space}/captions?format=srt", "host")
    assert status == 400 and data["error"] == "bad_request"
    status, data = await api.call("GET", "/v1/spaces/s-000000000000/captions", "host")
    assert status == 404
    status, data = await api.call("GET", f"/v1/spaces/{space}/captions", "host")
    assert status == 200 and data == {"space": space, "captions": []}
    assert (await api.call("POST", f"/v1/spaces/{space}/end", "host"))[0] == 200
    status, data = await api.call("GET", f"/v1/spaces/{space}/captions?format=vtt", "host")
    assert status == 200 and data == "WEBVTT\n"
    _, data = await api.call("GET", f"/v1/spaces/{space}", "host")
    assert data["status"] == "ended" and data["captions"] is True


def test_a_final_after_the_end_is_stored_not_sent() -> None:
    """The recogniser finishes the last utterance after the host ended the space."""
    store = MemoryStore()
    store.add_user("h", "h")
    store.create_space("s-1", host="h", title="", status="live", who_may_speak="everyone", at=1.0)
    room = Room(policy.Space("s-1", "h", captions=True), persist=store)
    room.lifecycle("h", "end")
    seen: list[dict[str, Any]] = []
    room.sinks.append(seen.append)
    assert room.caption("h", "goodbye", final=True, start=1.0, end=1.5) is None
    assert room.caption("h", "good", final=False, start=1.0, end=1.2) is None
    assert seen == [] and [c.text for c in store.captions("s-1")] == ["goodbye"]


async def test_a_dead_recogniser_process_is_replaced() -> None:
    """A worker process killed (BrokenProcessPool): captions go on in a new one."""
    from concurrent.futures.process import BrokenProcessPool

    w = World()
    w.talk("alice", CHUNK_PACKETS)
    w.executors[0].pending()[0].set_exception(BrokenProcessPool("killed"))
    await settle()
    w.talk("alice", CHUNK_PACKETS)
    assert len(w.executors) == 2 and len(w.executors[1].feeds()) == 1

    def broken(fn: Any, /, *args: Any) -> Future[Any]:
        raise BrokenProcessPool("killed")

    w.executors[1].submit = broken  # type: ignore[method-assign]
    w.talk("alice", CHUNK_PACKETS)
    assert len(w.executors) == 3 and len(w.executors[2].feeds()) == 1
    assert w.captioner.stats()["errors"] == 1


async def test_the_media_plane_calls_the_tap_only_while_captions_are_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With captions off, forwarding a packet makes no call for captions at all."""
    from spacesim.server.app import ServerConfig, ServerState

    state = ServerState(ServerConfig(db=tmp_path / "s.db", secret=b"0" * 32), MemoryStore())
    monkeypatch.setattr(state.captioner, "warm", lambda: None)  # no recogniser processes

    class Media:
        on_heard: Any = None

    try:
        state.store.add_user("host", "host")
        room = state.create("host", "t", "everyone", None, None)
        media = state.media[room.id] = Media()  # type: ignore[assignment]
        state.tap_captions(room)
        assert media.on_heard is None
        room.apply("host", "captions_on", {})
        assert media.on_heard is not None
        room.apply("host", "captions_off", {})
        assert media.on_heard is None
    finally:
        await state.recordings.close()
        await state.captioner.close()


def _burn(seconds: float) -> None:
    end = time.process_time() + seconds
    while time.process_time() < end:
        pass


def test_process_cpu_reads_a_process_s_cpu_time() -> None:
    before = cap.process_cpu(os.getpid())
    assert before is not None
    _burn(0.3)
    after = cap.process_cpu(os.getpid())
    assert after is not None and after - before == pytest.approx(0.3, abs=0.05)
    assert after == pytest.approx(time.process_time(), abs=0.05)
    assert cap.process_cpu(2**22 + 12345) is None  # above any pid_max: no such process


async def test_workers_cpu_counts_from_ready_and_survives_a_replacement() -> None:
    """The worker's first job answers its pid; its CPU counts from then (not the model's
    loading), and a replaced process's CPU still counts."""
    from concurrent.futures.process import BrokenProcessPool

    w = World()
    assert w.captioner.stats()["cpu_seconds"] == 0.0  # no pid yet: nothing read
    _burn(0.2)  # "loading the model": before the worker is ready
    ready = [f for fn, _, f in w.executors[0].jobs if fn is cap.work_ready]
    ready[0].set_result(os.getpid())  # the fake runs in this process: its CPU is ours
    assert w.captioner.stats()["cpu_seconds"] == pytest.approx(0.0, abs=0.03)
    _burn(0.3)
    assert w.captioner.stats()["cpu_seconds"] == pytest.approx(0.3, abs=0.05)
    w.talk("alice", CHUNK_PACKETS)
    w.executors[0].pending()[0].set_exception(BrokenProcessPool("killed"))
    await settle()
    _burn(0.2)  # no process to read: the dead one's count stands
    assert w.captioner.stats()["cpu_seconds"] == pytest.approx(0.3, abs=0.05)
