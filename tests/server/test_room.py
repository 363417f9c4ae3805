"""Room without sockets: bounded snapshots, participant pages, audience coalescing, fan-out."""

from __future__ import annotations

import json
import struct
from collections.abc import Callable
from typing import Any

import pytest

from spacesim import policy
from spacesim.server.room import BUFFER_LIMIT, SNAPSHOT_HANDS, Room, Subscriber, text_frame
from spacesim.server.store_memory import MemoryStore


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


class Later:
    """A fake `schedule`: calls wait here until `run_due` is called with the clock moved."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.calls: list[tuple[float, Callable[[], None]]] = []

    def __call__(self, delay: float, fn: Callable[[], None]) -> None:
        self.calls.append((self.clock() + delay, fn))

    def run_due(self) -> None:
        due = [c for c in self.calls if c[0] <= self.clock()]
        self.calls = [c for c in self.calls if c[0] > self.clock()]
        for _, fn in due:
            fn()


class World:
    def __init__(self, cap: int | None = None) -> None:
        self.store = MemoryStore()
        self.store.add_user("host", "host")
        self.store.create_space("s1", "host", "t", status="live")
        self.store.record_join("s1", "host", "host")
        self.clock = Clock()
        self.later = Later(self.clock)
        self.ns = 0
        space = policy.Space("s1", "host", limits=policy.Limits(listener_cap=cap))
        self.room = Room(
            space,
            persist=self.store,
            mono_clock=self.clock,
            ns_clock=self.ns_clock,
            schedule=self.later,
        )

    def ns_clock(self) -> int:
        self.ns += 1000
        return self.ns

    def join(self, *users: str) -> None:
        for user in users:
            self.store.add_user(user, user)
            self.room.join(user)


def parse_frames(data: bytes) -> list[bytes]:
    """The payloads of whole unmasked text frames in `data` (asserting nothing else is)."""
    out = []
    i = 0
    while i < len(data):
        assert data[i] == 0x81 and not data[i + 1] & 0x80  # FIN + text, unmasked
        n = data[i + 1]
        i += 2
        if n == 126:
            (n,) = struct.unpack_from("!H", data, i)
            i += 2
        elif n == 127:
            (n,) = struct.unpack_from("!Q", data, i)
            i += 8
        out.append(data[i : i + n])
        i += n
    assert i == len(data)
    return out


class FakeTransport:
    """Records what the room writes; `stuck` makes it report an ever-growing buffer."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.writes: list[bytes] = []
        self.closing = False
        self.stuck = False

    def write(self, data: bytes) -> None:
        self.data += data
        self.writes.append(data)

    def is_closing(self) -> bool:
        return self.closing

    def get_write_buffer_size(self) -> int:
        return len(self.data) if self.stuck else 0


class Open:
    """A stream that is open (the `Stream` protocol)."""

    closed = False


class Sock:
    """One attached subscriber: its transport, its stream, and whether it was closed."""

    def __init__(self, room: Room, user: str, *, moderator: bool = False) -> None:
        self.transport = FakeTransport()
        self.closed = False  # the `Stream` protocol
        self.ended = 0
        self.sub: Subscriber = room.subscribe(user, moderator=moderator)
        self.read = 0
        room.attach(self.sub, self.transport, self, text_frame(b'{"type": "hello"}'), self.end)
        assert drain(self) == [{"type": "hello"}]

    def end(self) -> None:
        self.ended += 1

    def frames(self) -> list[bytes]:
        return parse_frames(bytes(self.transport.data))


def drain(sock: Sock) -> list[dict[str, Any]]:
    frames = sock.frames()
    new, sock.read = frames[sock.read :], len(frames)
    return [json.loads(f) for f in new]


def kinds(msgs: list[dict[str, Any]]) -> list[str]:
    return [m.get("kind") or m["type"] for m in msgs]


def test_the_snapshot_is_bounded_whatever_the_audience() -> None:
    sizes = []
    for n in (50, 500):
        w = World()
        users = [f"u{i}" for i in range(n)]
        w.join(*users)
        for u in users[:30]:
            w.room.space.raise_hand(u)  # straight to the rulebook: no rate limiter
        w.room.apply("host", "invite", {"target": users[40]})
        w.room.apply("host", "approve", {"target": users[0]})
        w.room.apply("host", "mute", {"target": users[0]})
        snap = w.room.snapshot()
        assert "participants" not in snap
        assert snap["counts"] == {
            "participants": n + 1,
            "listeners": n - 1,
            "stage": 2,
            "hands": 29,
            "invites": 1,
        }
        assert snap["stage"] == [
            {"user": "host", "role": "host"},
            {"user": "u0", "role": "speaker"},
        ]
        assert snap["muted"] == ["u0"]
        assert snap["hands"] == users[1 : 1 + SNAPSHOT_HANDS]
        assert snap["invites"] == {"u40": "host"}
        sizes.append(len(json.dumps(snap)))
    assert sizes[0] == sizes[1] - 1 * 2  # "u1".."u20" vs the same: only counts differ


def walk(room: Room, limit: int, role: policy.Role | None = None) -> list[str]:
    out, cursor = [], None
    while True:
        page, cursor = room.participants_page(cursor, limit, role)
        out += [u for u, _ in page]
        if cursor is None:
            return out


def test_participant_pages_follow_join_order_across_joins_and_leaves() -> None:
    w = World()
    w.join(*(f"u{i}" for i in range(10)))
    room = w.room
    assert walk(room, 3) == ["host", *(f"u{i}" for i in range(10))]
    assert walk(room, 500) == walk(room, 1)
    page, cursor = room.participants_page(None, 3)
    assert [u for u, _ in page] == ["host", "u0", "u1"] and cursor is not None
    room.leave("u4")  # not yet listed: it will not be
    room.leave("u0")  # already listed
    w.join("late")  # joins during the walk: listed at the end
    room.leave("u2")
    w.join("u2")  # left and came back: listed once, at its new place
    seen = [u for u, _ in page]
    while cursor is not None:
        page, cursor = room.participants_page(cursor, 3)
        seen += [u for u, _ in page]
    assert seen == ["host", "u0", "u1", "u3", "u5", "u6", "u7", "u8", "u9", "late", "u2"]
    assert len(seen) == len(set(seen))
    assert room.count() == 10 and room.count(policy.Role.LISTENER) == 9
    # roles: promotion keeps the place in the order, the filter follows the role
    room.space.raise_hand("u7")
    room.apply("host", "approve", {"target": "u7"})
    room.apply("host", "add_cohost", {"target": "u9"})
    assert walk(room, 2, policy.Role.SPEAKER) == ["u7"]
    assert walk(room, 1, policy.Role.COHOST) == ["u9"]
    assert walk(room, 1, policy.Role.HOST) == ["host"]
    assert "u7" not in walk(room, 2, policy.Role.LISTENER)
    assert walk(room, 4).index("u7") == walk(room, 4).index("u6") + 1
    assert room.count(policy.Role.SPEAKER) == 1 == room.count(policy.Role.COHOST)
    page, cursor = room.participants_page(None, 1, policy.Role.SPEAKER)
    assert page == [("u7", policy.Role.SPEAKER)] and cursor is None


def test_the_join_order_index_stays_proportional_to_who_is_present() -> None:
    w = World()
    for i in range(2000):
        w.join(f"c{i}")
        w.room.leave(f"c{i}")
    assert len(w.room._order) <= 2 * len(w.room.space.participants) + 65
    assert walk(w.room, 7) == ["host"]
    w.room.lifecycle("host", "end")
    assert walk(w.room, 7) == [] and w.room.count() == 0


def test_listener_joins_reach_the_stage_and_everyone_else_gets_a_coalesced_count() -> None:
    w = World()
    room = w.room
    host_q = Sock(room, "host")
    mod_q = Sock(room, "mod", moderator=True)
    w.join("fan")
    fan_q = Sock(room, "fan")
    w.clock.t += 1.0
    w.later.run_due()
    drain(host_q), drain(mod_q), drain(fan_q)
    w.join(*(f"u{i}" for i in range(5)))  # a burst within one interval
    assert kinds(drain(fan_q)) == []  # nothing yet: one count, an interval later
    assert kinds(drain(host_q)) == ["participant_joined"] * 5
    assert kinds(drain(mod_q)) == ["participant_joined"] * 5
    w.clock.t += 0.5
    w.later.run_due()
    assert kinds(drain(fan_q)) == []
    w.clock.t += 0.5
    w.later.run_due()
    audience = drain(fan_q)
    assert kinds(audience) == ["audience"]
    assert audience[0]["attrs"] == {"participants": 7, "listeners": 6}
    assert audience[0]["participant"] == "s1" and audience[0]["clock_ns"] > 0
    assert kinds(drain(host_q)) == ["audience"]
    # a quiet listener leaves: the stage hears of it; one who raised a hand: everyone
    room.leave("u0")
    assert kinds(drain(host_q)) == ["participant_left"]
    assert kinds(drain(fan_q)) == []
    room.apply("u1", "raise_hand", {})
    room.leave("u1")
    assert kinds(drain(fan_q)) == ["hand_raised", "participant_left"]
    w.clock.t += 1
    w.later.run_due()
    assert drain(fan_q)[0]["attrs"] == {"participants": 5, "listeners": 4}
    assert len(w.later.calls) == 0  # nothing changed since: nothing scheduled
    # events that matter to everyone still go to everyone
    room.apply("u2", "react", {"emoji": "🔥"})
    room.space.raise_hand("u3")
    room.apply("host", "approve", {"target": "u3"})
    assert kinds(drain(fan_q)) == ["reaction", "speaker_granted"]
    # on stage now: u3's own stream gets listener joins
    u3_q = Sock(room, "u3")
    w.join("v")
    assert kinds(drain(u3_q)) == ["participant_joined"]
    assert kinds(drain(fan_q)) == []


def test_a_join_and_a_leave_within_one_interval_send_no_count() -> None:
    w = World()
    fan_q = Sock(w.room, "someone")
    w.join("a")
    w.clock.t += 1
    w.later.run_due()
    assert kinds(drain(fan_q)) == ["audience"]
    w.join("b")
    w.room.leave("b")
    w.clock.t += 1
    w.later.run_due()
    assert drain(fan_q) == []


def test_sinks_get_every_event_even_those_the_audience_does_not() -> None:
    w = World()
    seen: list[str] = []
    w.room.sinks.append(lambda msg: seen.append(msg["kind"]))
    w.join("a")
    w.room.leave("a")
    w.join("b")
    w.clock.t += 1
    w.later.run_due()
    assert seen == ["participant_joined", "participant_left", "participant_joined", "audience"]


def test_events_are_framed_once_and_carry_the_server_clock() -> None:
    w = World()
    socks = [Sock(w.room, f"s{i}") for i in range(3)]
    out = w.room.apply("host", "react", {"emoji": "🔥"})
    frames = [s.transport.writes[-1] for s in socks]
    assert all(f is frames[0] for f in frames)  # one frame shared by every subscriber
    msg = json.loads(parse_frames(frames[0])[0])
    assert msg["kind"] == "reaction" and msg["clock_ns"] == w.ns == out[0]["clock_ns"]


@pytest.mark.parametrize("size", [0, 1, 125, 126, 127, 65535, 65536, 65537, 200_000])
def test_text_frames_encode_every_length(size: int) -> None:
    payload = bytes(range(256)) * (size // 256) + b"x" * (size % 256)
    frame = text_frame(payload)
    assert parse_frames(frame) == [payload]
    assert len(frame) - size == (2 if size < 126 else 4 if size < 65536 else 10)


def test_a_slow_subscriber_is_cut_off_and_the_others_keep_receiving() -> None:
    w = World()
    slow = Sock(w.room, "slow")
    fast = Sock(w.room, "fast")
    slow.transport.stuck = True  # its buffer only grows
    users = [f"r{i}" for i in range(2000)]
    w.join(*users)
    w.clock.t += 10  # reactions: one per user, under the rate limit
    for user in users:
        w.room.apply(user, "react", {"emoji": "👏"})
        if slow.ended:
            break
    assert slow.ended == 1 and w.room.n_subscribers == 1
    got = drain(slow)
    assert got[-1]["error"] == "too_slow" and all(m["type"] == "event" for m in got[:-1])
    assert len(slow.transport.data) - len(slow.transport.writes[-1]) > BUFFER_LIMIT
    before = len(slow.transport.data)
    w.room.apply("host", "react", {"emoji": "🔥"})
    assert len(slow.transport.data) == before  # nothing after the error
    fast_got = drain(fast)
    assert [m["kind"] for m in fast_got] == ["reaction"] * (len(got))
    assert fast.ended == 0


def test_closed_streams_are_dropped_and_nothing_follows_a_close() -> None:
    w = World()
    a, b, c = Sock(w.room, "a"), Sock(w.room, "b"), Sock(w.room, "c")
    a.transport.closing = True
    b.closed = True  # e.g. aiohttp began its close handshake
    w.room.apply("host", "react", {"emoji": "🔥"})
    assert drain(a) == drain(b) == [] and len(drain(c)) == 1
    assert w.room.n_subscribers == 1


def test_events_before_the_hello_are_held_and_follow_it_in_order() -> None:
    w = World()
    w.join("a")
    w.clock.t += 10
    sub = w.room.subscribe("a")
    for emoji in ("🔥", "👏", "💯"):
        w.room.apply("a", "react", {"emoji": emoji})
    t = FakeTransport()
    w.room.attach(sub, t, Open(), text_frame(b'{"type": "hello"}'), lambda: None)
    got = [json.loads(f) for f in parse_frames(bytes(t.data))]
    assert got[0] == {"type": "hello"}
    assert [m["attrs"]["emoji"] for m in got[1:]] == ["🔥", "👏", "💯"]


def test_a_user_removed_before_the_hello_gets_the_hello_then_the_error_and_is_closed() -> None:
    w = World()
    w.join("eve")
    sub = w.room.subscribe("eve")
    w.room.apply("host", "remove", {"target": "eve"})
    t = FakeTransport()
    ended = []
    w.room.attach(sub, t, Open(), text_frame(b'{"type": "hello"}'), lambda: ended.append(1))
    got = [json.loads(f) for f in parse_frames(bytes(t.data))]
    assert got[0] == {"type": "hello"} and got[-1]["error"] == "removed"
    assert ended == [1] and w.room.n_subscribers == 0


def test_a_listener_cap_refuses_with_room_full() -> None:
    w = World(cap=1)
    w.join("a")
    with pytest.raises(Exception, match="listener cap") as info:
        w.join("b")
    assert getattr(info.value, "code", None) == "room_full"


def test_reports_reach_the_stage_and_a_personal_block_only_the_blocker() -> None:
    """`policy.delivery`: the audience never learns who reported or blocked whom."""
    w = World()
    room = w.room
    host_q = Sock(room, "host")
    w.join("a", "b", "c")
    a_q, b_q, c_q = Sock(room, "a"), Sock(room, "b"), Sock(room, "c")
    drain(host_q)
    room.apply("a", "report", {"target": "b", "reason": "spam"})
    assert kinds(drain(host_q)) == ["report_filed"]
    assert kinds(drain(a_q)) == kinds(drain(b_q)) == kinds(drain(c_q)) == []
    room.apply("a", "block", {"target": "b"})  # a listener's block is personal
    assert kinds(drain(a_q)) == ["blocked"]
    assert kinds(drain(b_q)) == kinds(drain(c_q)) == kinds(drain(host_q)) == []
    room.apply("host", "block", {"target": "c"})  # the host's bars c from the space
    assert "blocked" in kinds(drain(a_q)) and "blocked" in kinds(drain(b_q))
