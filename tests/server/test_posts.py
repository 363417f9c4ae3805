"""Posts, voice posts, voice DMs, Fleets, timelines, notifications and posts in a space."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import struct
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path
from typing import Any

import aiohttp
import av
import numpy as np
import pytest
from aiohttp.test_utils import TestServer

from spacesim import policy
from spacesim.client.speaker import load_clip, transcripts
from spacesim.server import launch
from spacesim.server.app import STATE, ServerConfig, create_app
from spacesim.server.oggcheck import AudioError, OggOpusCheck
from spacesim.server.posts import FLEET_TTL_S, VOICE_MAX_S
from spacesim.server.recording import SILENCE, OggOpusWriter, _page, ogg_crc
from spacesim.server.store import open_store
from spacesim.server.store_memory import MemoryStore
from spacesim.server.store_postgres import PostgresStore
from spacesim.server.store_posts import PostRecord, SpacePost
from spacesim.server.store_sqlite import SqliteStore
from tests.server.test_app import SECRET, SLOTS, Api
from tests.server.test_captions_live import overlap
from tests.server.test_media import opus_tone
from tests.server.test_recording import decode

pytestmark = pytest.mark.timeout(60)

T0 = 1_800_000_000.0


class Clock:
    """The test's clock: the store (and so the Fleet sweeper) reads it."""

    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def ogg(tmp_path: Path, packets: list[bytes] | tuple[bytes, ...], name: str = "a.opus") -> bytes:
    path = tmp_path / name
    w = OggOpusWriter.create(path)
    w.write(list(packets), eos=True)
    w.close()
    return path.read_bytes()


def check(data: bytes, max_s: float = VOICE_MAX_S, step: int = 997) -> float:
    c = OggOpusCheck(10_000_000, max_s)
    for i in range(0, len(data), step):  # as it streams in, in odd pieces
        c.feed(data[i : i + step])
    return c.finish()


def refused(data: bytes, **kw: Any) -> AudioError:
    with pytest.raises(AudioError) as info:
        check(data, **kw)
    return info.value


# --------------------------------------------------------------------------- the audio check


def test_the_check_counts_the_packets_duration(tmp_path: Path) -> None:
    assert check(ogg(tmp_path, [SILENCE] * 150)) == pytest.approx(3.0)
    tone = opus_tone(440.0, 50)  # real libopus packets
    assert check(ogg(tmp_path, tone)) == pytest.approx(len(tone) * 0.02)


def ffmpeg_ogg(path: Path, seconds: float) -> bytes:
    """An Ogg/Opus file muxed by FFmpeg (through PyAV): another writer than ours, with a
    pre-skip, OpusTags of its own and end trimming on the last page."""
    out = av.open(str(path), "w", format="ogg")
    stream: Any = out.add_stream("libopus", rate=48000)
    t = np.arange(int(48000 * seconds))
    x = (np.sin(2 * np.pi * 440 * t / 48000) * 8000).astype(np.int16)
    for i in range(0, len(x), 960):
        frame = av.AudioFrame.from_ndarray(x[i : i + 960].reshape(1, -1), layout="mono")
        frame.sample_rate, frame.pts, frame.time_base = 48000, i, Fraction(1, 48000)
        for p in stream.encode(frame):
            out.mux(p)
    for p in stream.encode(None):
        out.mux(p)
    out.close()
    return path.read_bytes()


def test_the_check_reads_ffmpeg_files_to_the_sample(tmp_path: Path) -> None:
    data = ffmpeg_ogg(tmp_path / "f.opus", 3.01)
    assert check(data) == pytest.approx(3.01, abs=1e-6)  # pre-skip and end trimming
    assert decode(data)[1] == pytest.approx(3.01, abs=1e-6)  # what FFmpeg plays


def test_the_check_refuses_bad_and_truncated_audio(tmp_path: Path) -> None:
    good = ogg(tmp_path, [SILENCE] * 100)
    assert refused(good[:-10]).reason.startswith("truncated")
    assert refused(good[: len(good) // 2]).code == "bad_audio"
    damaged = bytearray(good)
    damaged[-5] ^= 0x40  # in a packet: the page keeps its length
    assert "CRC" in refused(bytes(damaged)).reason
    assert refused(b"RIFF....WAVEfmt " + bytes(100)).reason.startswith("not an Ogg")
    assert "no audio" in refused(ogg(tmp_path, [])).reason
    # a page whose granule claims more audio than its packets hold (CRC made right)
    page = bytearray(good[good.index(b"OggS", 60) :])
    struct.pack_into("<q", page, 6, 10**9)
    struct.pack_into("<I", page, 22, 0)
    struct.pack_into("<I", page, 22, ogg_crc(bytes(page)))
    lying = good[: good.index(b"OggS", 60)] + bytes(page)
    assert "granule" in refused(lying).reason
    # not Opus: the first packet is not an OpusHead
    vorbis = _page(0x02, 0, 7, 0, [b"\x01vorbis" + bytes(30)])
    assert "OpusHead" in refused(vorbis).reason


def test_the_check_enforces_the_limits_on_the_audio(tmp_path: Path) -> None:
    long = ogg(tmp_path, [SILENCE] * (int(VOICE_MAX_S / 0.02) + 10))
    assert refused(long).code == "audio_too_long"
    assert check(long, max_s=200) > VOICE_MAX_S
    c = OggOpusCheck(1000, 10)
    with pytest.raises(AudioError) as info:
        c.feed(ogg(tmp_path, [SILENCE] * 1000))
    assert info.value.code == "too_large"


# --------------------------------------------------------------------------- rules and stores


def test_the_rulebook_on_posts() -> None:
    assert policy.may_pin(policy.Role.COHOST, 2)
    assert policy.may_pin(policy.Role.HOST, policy.MAX_PINNED_POSTS).code == "pins_full"
    assert policy.may_pin(policy.Role.LISTENER, 0).code == "not_allowed"
    assert policy.may_share(policy.Role.LISTENER) and not policy.may_share(None)
    assert policy.may_message(True, False).code == "blocked"
    assert policy.may_message(False, True).code == "blocked"
    read = policy.may_read_post
    assert read("c", "dm", "a", "b", follows_author=True, blocked_by_author=False) is False
    assert read("b", "dm", "a", "b", follows_author=False, blocked_by_author=False)
    assert read("c", "fleet", "a", None, follows_author=False, blocked_by_author=False) is False
    assert read("c", "fleet", "a", None, follows_author=True, blocked_by_author=False)
    assert read("c", "post", "a", None, follows_author=False, blocked_by_author=True) is False


@pytest.fixture(params=["memory", "sqlite", "postgres"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Any]:
    clock = Clock()
    if request.param == "memory":
        s: Any = MemoryStore(clock=clock)
    elif request.param == "sqlite":
        s = SqliteStore(tmp_path / "p.db", clock=clock)
    else:
        s = PostgresStore(request.getfixturevalue("pg_url")(), clock=clock)
    s.clock_ = clock
    yield s
    s.close()


def test_every_store_keeps_posts_fleets_dms_and_notifications(store: Any) -> None:
    clock = store.clock_
    store.add_post(PostRecord("p-1", "a", "post", "hi", T0))
    store.add_post(PostRecord("p-2", "a", "fleet", "gone soon", T0 + 1, expires_at=T0 + 10))
    store.add_post(PostRecord("p-3", "a", "dm", "psst", T0 + 2, recipient="b"))
    store.add_post(PostRecord("p-4", "b", "dm", "ok", T0 + 3, recipient="a", audio_bytes=9))
    with pytest.raises(ValueError):
        store.add_post(PostRecord("p-5", "a", "dm", "no recipient", T0))
    assert [p.id for p in store.posts_by({"a"})] == ["p-2", "p-1"]
    assert [p.id for p in store.dms_between("b", "a")] == ["p-4", "p-3"]
    assert store.dms_between("a", "c") == []
    store.set_post_captions("p-1", "done", "hello world")
    assert store.get_post("p-1").caption_text == "hello world"
    store.add_user("a", "a")
    store.create_space("s-1", host="a", title="t", status="live", who_may_speak="everyone")
    assert store.add_space_post(SpacePost("s-1", "p-2", "a", "pin", T0))
    assert not store.add_space_post(SpacePost("s-1", "p-2", "a", "pin", T0))
    assert store.audio_post_ids() == {"p-4"}
    clock.now = T0 + 10  # the Fleet's hour: gone from every read at once
    assert store.get_post("p-2") is None and [p.id for p in store.posts_by({"a"})] == ["p-1"]
    assert [p.id for p in store.expire_posts()] == ["p-2"]
    assert store.space_posts("s-1") == []
    clock.now = T0  # even with the clock back, an expired Fleet is gone
    assert store.get_post("p-2") is None
    assert store.add_notifications(["x", "y"], "space_started", {"space": "s-1"}) == 2
    first = store.notifications("x")
    assert [(n.kind, n.attrs) for n in first] == [("space_started", {"space": "s-1"})]
    assert store.notifications("x", after=first[0].id) == []


# --------------------------------------------------------------------------- the server


@pytest.fixture
async def served(tmp_path: Path) -> Any:
    clock = Clock()
    config = ServerConfig(db=tmp_path / "s.db", secret=SECRET, slots=SLOTS)
    app = create_app(config, SqliteStore(config.db, clock=clock))
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    async with aiohttp.ClientSession() as http:
        yield Api(http, str(server.make_url("")).rstrip("/")), app, clock
    await server.close()


async def _get(api: Api, path: str, user: str, **headers: str) -> tuple[int, bytes, Any]:
    auth = {"Authorization": f"Bearer {await api.token(user)}", **headers}
    r = await api.http.get(f"{api.base}{path}", headers=auth)
    return r.status, await r.read(), r.headers


async def _upload(api: Api, path: str, user: str, data: bytes) -> tuple[int, Any]:
    async def pieces() -> Any:  # chunked transfer: no Content-Length, as curl -T - sends
        for i in range(0, len(data), 4096):
            yield data[i : i + 4096]

    return await api.call("POST", path, user, raw=pieces())


async def test_a_voice_post_uploads_streams_and_plays_back_with_ranges(
    served: Any, tmp_path: Path
) -> None:
    api, app, _ = served
    tone = opus_tone(440.0, 100)
    data = ogg(tmp_path, tone)
    status, post = await _upload(api, "/v1/posts/voice?text=hello", "ann", data)
    assert status == 201, post
    assert post["kind"] == "post" and post["text"] == "hello" and post["expires_at"] is None
    assert post["audio"]["bytes"] == len(data)
    assert post["audio"]["duration_s"] == pytest.approx(len(tone) * 0.02)
    url = post["audio"]["url"]
    status, body, headers = await _get(api, url, "bob")
    assert status == 200 and body == data and headers["Content-Type"] == "audio/ogg"
    assert decode(body)[1] == pytest.approx(len(tone) * 0.02)
    status, part, headers = await _get(api, url, "bob", Range="bytes=10-99")
    assert status == 206 and part == data[10:100]
    assert headers["Content-Range"] == f"bytes 10-99/{len(data)}"
    status, meta = await api.call("GET", f"/v1/posts/{post['id']}", "bob")
    assert status == 200 and meta == post
    # bad audio is refused with a reason and leaves nothing behind
    status, err = await _upload(api, "/v1/posts/voice", "ann", data[:-7])
    assert (status, err["error"]) == (400, "bad_audio") and "truncated" in err["reason"]
    long = ogg(tmp_path, [SILENCE] * 7100, "long.opus")  # 142 s
    status, err = await _upload(api, "/v1/posts/voice", "ann", long)
    assert (status, err["error"]) == (413, "audio_too_long")
    status, err = await api.call("POST", "/v1/posts/voice", "ann", raw=b"x" * 10, body=None)
    assert (status, err["error"]) == (400, "bad_audio")
    root = app[STATE].posts.root
    assert sorted(p.name for p in root.iterdir()) == [f"{post['id']}.opus"]


async def test_voice_dms_are_for_their_two_users_and_respect_blocks(
    served: Any, tmp_path: Path
) -> None:
    api, app, _ = served
    data = ogg(tmp_path, [SILENCE] * 50)
    status, dm = await _upload(api, "/v1/dms/bob/voice", "ann", data)
    assert status == 201, dm
    assert dm["kind"] == "dm" and dm["recipient"] == "bob"
    status, text = await api.call("POST", "/v1/dms/ann", "bob", {"text": "got it"})
    assert status == 201
    for user in ("ann", "bob"):
        status, convo = await api.call("GET", f"/v1/dms/{'bob' if user == 'ann' else 'ann'}", user)
        assert [m["id"] for m in convo["messages"]] == [text["id"], dm["id"]]
        assert (await _get(api, dm["audio"]["url"], user))[1] == data
    assert (await _get(api, dm["audio"]["url"], "eve"))[0] == 404
    assert (await api.call("GET", f"/v1/posts/{dm['id']}", "eve"))[0] == 404
    assert (await api.call("GET", "/v1/dms/bob", "eve"))[1]["messages"] == []
    status, err = await api.call("POST", "/v1/dms/ann", "ann", {"text": "me"})
    assert (status, err["error"]) == (409, "self_target")
    app[STATE].store.block("bob", "ann")  # bob blocks ann: she cannot message him
    status, err = await api.call("POST", "/v1/dms/bob", "ann", {"text": "hey"})
    assert (status, err["error"]) == (403, "blocked")
    status, err = await _upload(api, "/v1/dms/ann/voice", "bob", data)
    assert (status, err["error"]) == (403, "blocked")  # nor he her, while he blocks her


async def test_fleets_reach_followers_until_they_expire_and_replies_are_dms(
    served: Any, tmp_path: Path
) -> None:
    api, app, clock = served
    state = app[STATE]
    assert (await api.call("POST", "/v1/follows", "fan", {"user": "ann"}))[0] == 200
    status, fleet = await _upload(api, "/v1/fleets/voice", "ann", ogg(tmp_path, [SILENCE] * 50))
    assert status == 201 and fleet["expires_at"] == pytest.approx(fleet["created_at"] + FLEET_TTL_S)
    clock.now += 1  # newest first
    status, post = await api.call("POST", "/v1/posts", "ann", {"text": "forever"})
    status, timeline = await api.call("GET", "/v1/timeline", "fan")
    assert [p["id"] for p in timeline["posts"]] == [post["id"], fleet["id"]]
    assert (await api.call("GET", f"/v1/posts/{fleet['id']}", "stranger"))[0] == 404
    status, listed = await api.call("GET", "/v1/users/ann/posts", "stranger")
    assert [p["id"] for p in listed["posts"]] == [post["id"]]
    status, reply = await api.call(
        "POST", f"/v1/fleets/{fleet['id']}/reply", "fan", {"text": "nice"}
    )
    assert status == 201 and reply["kind"] == "dm" and reply["recipient"] == "ann"
    assert reply["reply_to"] == fleet["id"]
    status, convo = await api.call("GET", "/v1/dms/fan", "ann")
    assert [m["text"] for m in convo["messages"]] == ["nice"]
    file = state.posts.path(fleet["id"])
    assert file.exists()
    clock.now = T0 + FLEET_TTL_S - 1
    assert state.posts.sweep() == 0 and file.exists()
    clock.now = T0 + FLEET_TTL_S + 1
    # gone from every listing before any sweep, then its row and file are deleted
    assert (await api.call("GET", f"/v1/posts/{fleet['id']}", "fan"))[0] == 404
    assert (await _get(api, fleet["audio"]["url"], "fan"))[0] == 404
    status, timeline = await api.call("GET", "/v1/timeline", "fan")
    assert [p["id"] for p in timeline["posts"]] == [post["id"]]
    assert state.posts.sweep() == 1 and not file.exists()
    assert state.store.audio_post_ids() == set()
    status, text = await api.call("GET", "/metrics")
    assert re.search(r"^spacesim_fleets_expired_total [1-9]", text, re.M), text[-2000:]
    assert re.search(r"^spacesim_voice_uploads_total [1-9]", text, re.M), text[-2000:]


async def test_text_fleets_and_posts_are_throttled_per_user(served: Any) -> None:
    api, _, clock = served
    status, fleet = await api.call("POST", "/v1/fleets", "ann", {"text": "today only"})
    assert status == 201 and fleet["audio"] is None
    assert fleet["expires_at"] == T0 + FLEET_TTL_S
    codes = [(await api.call("POST", "/v1/posts", "ann", {"text": f"{i}"}))[0] for i in range(25)]
    assert codes[:19] == [201] * 19 and codes[-1] == 429  # a burst of 20, then 1 a second
    status, err = await api.call("POST", "/v1/posts", "bob", {"text": ""})
    assert (status, err["error"]) == (400, "bad_request")
    clock.now = T0 + FLEET_TTL_S
    assert (await api.call("GET", f"/v1/posts/{fleet['id']}", "ann"))[0] == 404


async def test_a_restart_never_resurrects_an_expired_fleet(tmp_path: Path) -> None:
    """Expired while the server was down: filtered at once and deleted at startup;
    swept before a restart: gone even with the clock set back."""
    clock = Clock()
    config = ServerConfig(db=tmp_path / "r.db", secret=SECRET, slots=SLOTS)

    async def serve() -> tuple[Api, Any, TestServer, aiohttp.ClientSession]:
        app = create_app(config, SqliteStore(config.db, clock=clock))
        server = TestServer(app, host="127.0.0.1")
        await server.start_server()
        http = aiohttp.ClientSession()
        return Api(http, str(server.make_url("")).rstrip("/")), app, server, http

    api, app, server, http = await serve()
    data = ogg(tmp_path, [SILENCE] * 50)
    _, old = await _upload(api, "/v1/fleets/voice", "ann", data)
    clock.now += 3600
    _, young = await _upload(api, "/v1/fleets/voice", "ann", data)
    posts_dir = app[STATE].posts.root
    await http.close()
    await server.close()
    clock.now = T0 + FLEET_TTL_S + 10  # the first is due while the server is down
    api, app, server, http = await serve()
    try:
        assert not (posts_dir / f"{old['id']}.opus").exists()  # the startup sweep
        assert (await api.call("GET", f"/v1/posts/{old['id']}", "ann"))[0] == 404
        assert (await api.call("GET", f"/v1/posts/{young['id']}", "ann"))[0] == 200
        clock.now = T0 + 3600 + FLEET_TTL_S
        assert app[STATE].posts.sweep() == 1
    finally:
        await http.close()
        await server.close()
    clock.now = T0  # back in time: nothing to filter on any more, nothing comes back
    api, app, server, http = await serve()
    try:
        status, listed = await api.call("GET", "/v1/users/ann/posts", "ann")
        assert status == 200 and listed["posts"] == []
        assert list(posts_dir.glob("*.opus")) == []
    finally:
        await http.close()
        await server.close()


async def test_pinned_and_shared_posts_reach_every_listener(served: Any) -> None:
    api, app, _ = served
    space = await api.space("host")
    assert (await api.join(space, "co"))[0] == 200
    assert (await api.act(space, "host", "add_cohost", target="co"))[0] == 200
    _, post = await api.call("POST", "/v1/posts", "writer", {"text": "read this"})
    streams = []
    for user in ("l1", "l2"):
        assert (await api.join(space, user))[0] == 200
        token = await api.token(user)
        ws = await api.http.ws_connect(f"{api.base}/v1/spaces/{space}/events?token={token}")
        assert (await ws.receive_json(timeout=5))["type"] == "hello"
        streams.append(ws)
    try:
        path = f"/v1/spaces/{space}/posts"
        status, shared = await api.call("POST", path, "l1", {"post": post["id"], "how": "share"})
        assert status == 201 and shared["events"][0]["kind"] == "post_shared"
        for ws in streams:
            while (msg := await ws.receive_json(timeout=5))["kind"] == "audience":
                pass
            assert msg["kind"] == "post_shared" and msg["participant"] == "l1"
            assert msg["attrs"] == {"post": post["id"], "author": "writer", "text": "read this"}
        status, err = await api.call("POST", path, "l1", {"post": post["id"], "how": "pin"})
        assert (status, err["error"]) == (403, "not_allowed")
        status, err = await api.call("POST", path, "outsider", {"post": post["id"]})
        assert (status, err["error"]) == (409, "not_present")
        # a post that is not there: the space is, so 409 (not a 404 for the space)
        status, err = await api.call("POST", path, "l1", {"post": "p-nothing", "how": "share"})
        assert (status, err["error"]) == (409, "bad_target")
        pins = []
        for i in range(policy.MAX_PINNED_POSTS):
            _, p = await api.call("POST", "/v1/posts", "writer", {"text": f"pin {i}"})
            pins.append(p["id"])
            pinner = "co" if i else "host"
            assert (await api.call("POST", path, pinner, {"post": p["id"], "how": "pin"}))[0] == 201
        status, err = await api.call("POST", path, "host", {"post": post["id"], "how": "pin"})
        assert (status, err["error"]) == (409, "pins_full")
        status, listing = await api.call("GET", path, "l2")
        assert [(i["how"], i["post"]["id"]) for i in listing["posts"]] == [
            ("share", post["id"]),
            *(("pin", p) for p in pins),
        ]
        status, gone = await api.call("DELETE", f"{path}/{pins[0]}", "co")
        assert status == 200 and gone["events"][0]["kind"] == "post_unpinned"
        assert (await api.call("DELETE", f"{path}/{pins[0]}", "co"))[0] == 404
    finally:
        for ws in streams:
            await ws.close()
    assert (await api.call("POST", f"/v1/spaces/{space}/end", "host"))[0] == 200
    status, listing = await api.call("GET", path, "l2")  # stored with it: read after its end
    assert status == 200 and [i["post"]["id"] for i in listing["posts"]] == [post["id"], *pins[1:]]
    # and on disk: another connection to the same file lists them
    store = SqliteStore(app[STATE].config.db)
    assert [s.post for s in store.space_posts(space)] == [post["id"], *pins[1:]]
    store.close()


async def test_a_space_starting_notifies_the_hosts_followers(served: Any) -> None:
    api, _, _ = served
    for fan in ("f1", "f2"):
        assert (await api.call("POST", "/v1/follows", fan, {"user": "host"}))[0] == 200
    waiting = asyncio.ensure_future(api.call("GET", "/v1/notifications?wait=10", "f1"))
    await asyncio.sleep(0.2)
    assert not waiting.done()  # a long poll: it answers when something arrives
    space = await api.space("host", title="flash")
    status, got = await asyncio.wait_for(waiting, 5)
    assert status == 200
    [note] = got["notifications"]
    assert note["kind"] == "space_started"
    assert note["attrs"] == {"space": space, "host": "host", "title": "flash"}
    status, again = await api.call("GET", f"/v1/notifications?after={got['next']}", "f1")
    assert again["notifications"] == []
    assert len((await api.call("GET", "/v1/notifications", "f2"))[1]["notifications"]) == 1
    assert (await api.call("GET", "/v1/notifications", "host"))[1]["notifications"] == []
    # a scheduled space notifies when it starts, not when it is scheduled
    _, sched = await api.call("POST", "/v1/spaces", "host", {"scheduled_for": 4e9})
    assert len((await api.call("GET", "/v1/notifications", "f2"))[1]["notifications"]) == 1
    assert (await api.call("POST", f"/v1/spaces/{sched['id']}/start", "host"))[0] == 200
    notes = (await api.call("GET", "/v1/notifications", "f2"))[1]["notifications"]
    assert [n["attrs"]["space"] for n in notes] == [space, sched["id"]]


async def test_voice_post_captions_come_from_the_recogniser_off_the_request_path(
    served: Any, tmp_path: Path
) -> None:
    api, app, _ = served
    posts = app[STATE].posts
    release = asyncio.Event()
    seen: list[int] = []

    async def fake(key: str, packets: list[bytes]) -> str:
        seen.append(len(packets))
        await release.wait()
        return "hello there"

    posts.transcribe = fake
    data = ogg(tmp_path, [SILENCE] * 40)
    status, post = await _upload(api, "/v1/posts/voice?captions=true", "ann", data)
    assert status == 201 and post["captions"] == {"status": "pending", "text": None}
    release.set()
    await posts.settle()
    assert seen == [40]
    status, meta = await api.call("GET", f"/v1/posts/{post['id']}", "bob")
    assert meta["captions"] == {"status": "done", "text": "hello there"}


async def test_a_voice_post_is_captioned_by_the_live_recogniser(
    served: Any, tmp_path: Path
) -> None:
    """The whole path: upload, the recogniser process (pocketsphinx, as live captions),
    the words on the post."""
    api, app, _ = served
    data = ogg(tmp_path, list(load_clip("garden")) + [SILENCE] * 50)
    status, post = await _upload(api, "/v1/posts/voice?captions=true", "ann", data)
    assert status == 201
    await asyncio.wait_for(app[STATE].posts.settle(), 30)
    status, meta = await api.call("GET", f"/v1/posts/{post['id']}", "bob")
    assert meta["captions"]["status"] == "done", meta
    assert overlap(transcripts()["garden"], meta["captions"]["text"]) >= 0.7, meta


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
async def test_acknowledged_posts_survive_kill_9(
    tmp_path: Path, kind: str, request: pytest.FixtureRequest
) -> None:
    """A real server process: a voice post, a voice DM and a Fleet acknowledged before
    kill -9 are all there, audio and all, after the restart."""
    db = tmp_path / "k.db" if kind == "sqlite" else request.getfixturevalue("pg_url")()
    port = launch.free_port()
    args = ["--posts-dir", str(tmp_path / "audio")]
    proc, base = launch.start(db, port, args=args, cwd=tmp_path)
    data = ogg(tmp_path, opus_tone(440.0, 60))
    try:
        await asyncio.to_thread(launch.wait_up, proc, base)
        async with aiohttp.ClientSession() as http:
            api = Api(http, base)
            made = [
                (await _upload(api, path, "ann", data))[1]
                for path in ("/v1/posts/voice", "/v1/dms/bob/voice", "/v1/fleets/voice")
            ]
            assert all("id" in m for m in made), made
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
            assert len(list((tmp_path / "audio").glob("p-*.opus"))) == 3  # --posts-dir
            proc, base = launch.start(db, port, args=args, cwd=tmp_path)
            await asyncio.to_thread(launch.wait_up, proc, base)
            api.tokens.clear()
            for m in made:
                status, body, _ = await _get(api, m["audio"]["url"], "ann")
                assert status == 200 and body == data
            status, convo = await api.call("GET", "/v1/dms/ann", "bob")
            assert [x["id"] for x in convo["messages"]] == [made[1]["id"]]
    finally:
        proc.kill()
        proc.wait(timeout=10)
    store = open_store(db)  # where --store said, not some other file
    try:
        assert all(store.get_post(m["id"]) is not None for m in made)
    finally:
        store.close()


async def test_a_trickled_upload_is_cut_off_whole(served: Any, tmp_path: Path) -> None:
    api, app, _ = served
    app[STATE].posts.upload_s = 0.3
    data = ogg(tmp_path, [SILENCE] * 50)

    async def trickle() -> Any:
        for i in range(0, len(data), 50):  # a piece every 0.1 s: never idle 10 s
            yield data[i : i + 50]
            await asyncio.sleep(0.1)

    status, err = await api.call("POST", "/v1/posts/voice", "ann", raw=trickle())
    assert (status, err["error"]) == (408, "request_timeout")
    assert list(app[STATE].posts.root.iterdir()) == []


def test_recover_deletes_orphaned_files_and_cut_uploads(tmp_path: Path) -> None:
    """What a crash can leave (a file whose row was never written, or whose row was
    deleted; half an upload) is gone at the next start; files with rows stay."""
    from spacesim.server.posts import Posts

    clock = Clock()
    store = MemoryStore(clock=clock)
    posts = Posts(tmp_path / "posts", store, clock)
    store.add_post(PostRecord("p-1", "a", "post", "", T0, audio_bytes=3))
    for name in ("p-1.opus", "p-2.opus", ".p-3.part"):
        (posts.root / name).write_bytes(b"abc")
    assert posts.recover() == 0
    assert sorted(p.name for p in posts.root.iterdir()) == ["p-1.opus"]


async def test_the_sweeper_runs_by_itself(tmp_path: Path) -> None:
    clock = Clock()
    config = ServerConfig(db=tmp_path / "w.db", secret=SECRET, slots=SLOTS, posts_sweep_s=0.05)
    app = create_app(config, SqliteStore(config.db, clock=clock))
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        async with aiohttp.ClientSession() as http:
            api = Api(http, str(server.make_url("")).rstrip("/"))
            _, fleet = await _upload(api, "/v1/fleets/voice", "ann", ogg(tmp_path, [SILENCE] * 5))
            file = app[STATE].posts.path(fleet["id"])
            await asyncio.sleep(0.2)
            assert file.exists()
            clock.now = fleet["expires_at"]
            for _ in range(50):
                await asyncio.sleep(0.05)
                if not file.exists():
                    break
            assert not file.exists() and app[STATE].store.audio_post_ids() == set()
    finally:
        await server.close()
