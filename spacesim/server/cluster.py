"""Several `spacesim serve` nodes as one server, through Redis (`serve --cluster URL`).

What lives where (docs/protocol.md, Cluster):

* **Redis** holds only what may be lost: each live node (``spacesim:node:{id}``, a
  hash with its URL, relay address, listener count and CPU, expiring `ttl` seconds after
  its last heartbeat), each space's origin node (``spacesim:space:{id}``) and one pub/sub
  channel of events per space (``spacesim:events:{id}``).
* **The store** (the SQLite file the nodes share, in WAL mode) holds everything durable,
  as on one node.
* **The origin node** of a space (the node that created it) holds its room: the rulebook's
  state, the stage's media connections, the gate and the slots. Any other node proxies the
  space's HTTP requests to it and serves its event streams from the pub/sub channel.

A listener's join is placed on a live node by `spacesim.behaviour.place_listener` (the
simulator's rule); if that is another node, the origin asks it to set up the listener's
connection and returns its SDP answer, whose ICE candidates are that node's: the client
sends its media there without knowing. The origin relays each heard packet, already
slotted, once to every node with listeners of the room (`Relay`: UDP, an HMAC-SHA256 tag
with a key derived from the server secret the nodes share); the node fans it out with
the same per-listener rewriting (`MediaRoom.relayed`). A listener promoted on another
node publishes there; that node relays the packets up to the origin, which gates them.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
import os
import random
import secrets
import struct
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import aiohttp
import redis.asyncio as aioredis  # here, not at start(): loaded before `serve` freezes the GC
from aiohttp import web
from aiortc.clock import current_ms  # the clock aiortc stamps received packets with

from spacesim import behaviour
from spacesim.client.session import refused
from spacesim.server.room import BUFFER_LIMIT, Subscriber, text_frame

if TYPE_CHECKING:
    from spacesim.server.app import ServerState
    from spacesim.server.media import MediaRoom
    from spacesim.server.room import Room

__all__ = ["Cluster", "NodeGone", "NodeInfo", "Relay", "internal_key"]

log = logging.getLogger("spacesim.server.cluster")
#: Seconds `Cluster.others_spaces` waits for another node's spaces.
LIST_TIMEOUT = 2.0

PREFIX = "spacesim:"
#: Redis script: move a space's origin from a dead node to this one, unless another
#: node already did (compare and set, atomic in Redis).
_TAKE_OVER = (
    "if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('SET', KEYS[1], ARGV[2]) "
    "return 1 end return 0"
)
#: Header that carries `internal_key` on node-to-node requests.
NODE_HEADER = "X-Spacesim-Node"
#: Relay datagram: magic, kind (0 down, 1 up), slot, slot generation, sequence number,
#: timestamp, marker, length of the space id, length of the user id; then those ids, the
#: Opus payload, and the first `TAG` bytes of HMAC-SHA256 over all of it.
_HEAD = struct.Struct("!2sBBIHIBBB")
_MAGIC = b"SR"
TAG = 16
DOWN, UP = 0, 1
_NAMES_CACHED = 4096  # (space, user) pairs whose decoded ids a relay keeps


def internal_key(secret: bytes) -> bytes:
    """The key nodes authenticate each other with: derived from the server secret they
    share (the token key itself never goes on the wire)."""
    return hmac.digest(secret, b"spacesim cluster v1", hashlib.sha256)


@dataclass
class NodeInfo:
    """A live node as its registry entry says."""

    id: str
    url: str
    relay: tuple[str, int]
    listeners: int = 0
    cpu: float = 0.0


# --------------------------------------------------------------------------- relay


class Relay(asyncio.DatagramProtocol):
    """Node-to-node RTP: one UDP socket per node, each datagram tagged (HMAC-SHA256,
    truncated to 16 bytes; `hmac.digest` is the one-shot C path) and checked on arrival."""

    def __init__(self, key: bytes, on_packet: Callable[[int, str, str, int, int, Any], None]):
        self.key = key
        self.on_packet = on_packet
        self.transport: asyncio.DatagramTransport | None = None
        self.sent = 0
        self.received = 0
        self.bytes_sent = 0
        self.refused = 0
        self._names: dict[bytes, tuple[str, str]] = {}  # the ids' bytes -> (space, user)
        self._ids: dict[tuple[str, str], tuple[int, int, bytes]] = {}  # and back

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def encode(self, kind: int, space: str, user: str, k: int, gen: int, p: Any) -> bytes:
        ids = self._ids.get((space, user))
        if ids is None:
            if len(self._ids) >= _NAMES_CACHED:
                self._ids.clear()
            s, u = space.encode(), user.encode()
            ids = self._ids[(space, user)] = (len(s), len(u), s + u)
        head = _HEAD.pack(
            _MAGIC, kind, k, gen & 0xFFFFFFFF, p.sequence_number, p.timestamp, p.marker,
            ids[0], ids[1],
        )  # fmt: skip
        body: bytes = head + ids[2] + p.payload
        return body + hmac.digest(self.key, body, "sha256")[:TAG]

    def send(self, data: bytes, addr: tuple[str, int]) -> None:
        if self.transport is not None:
            self.transport.sendto(data, addr)
            self.sent += 1
            self.bytes_sent += len(data)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        # The receive path runs once per relayed packet, so it is lean (~4 us against
        # ~12 us before, benchmarks/bench_cluster.py): the tag is checked on a memoryview
        # (no copy of the body), the ids are decoded once per (space, user) pair, and the
        # packet is a slotted `RelayedPacket` rather than aiortc's `RtpPacket` (whose
        # constructor sets ten attributes the fan-out never reads).
        n = len(data)
        if n < _HEAD.size + TAG:
            self.refused += 1
            return
        view = memoryview(data)
        body = view[: n - TAG]
        if not hmac.compare_digest(hmac.digest(self.key, body, "sha256")[:TAG], view[n - TAG :]):
            self.refused += 1
            return
        magic, kind, k, gen, seq, ts, marker, ls, lu = _HEAD.unpack_from(data)
        if magic != _MAGIC:
            self.refused += 1
            return
        at = _HEAD.size
        end = at + ls + lu
        ids = data[at:end]
        names = self._names.get(ids)
        if names is None:
            if len(self._names) >= _NAMES_CACHED:
                self._names.clear()
            names = self._names[ids] = (ids[:ls].decode(), ids[ls:].decode())
        self.received += 1
        self.on_packet(
            kind, names[0], names[1], k, gen, RelayedPacket(seq, ts, marker, data[end : n - TAG])
        )


class RelayedPacket:
    """What the fan-out reads of a relayed packet (the fields of `rtc.RtpPacket` it uses)."""

    __slots__ = ("marker", "payload", "sequence_number", "timestamp")
    payload_type = 111  # Opus, as every relayed packet is

    def __init__(self, seq: int, ts: int, marker: int, payload: bytes) -> None:
        self.sequence_number = seq
        self.timestamp = ts
        self.marker = marker
        self.payload = payload


# --------------------------------------------------------------------------- events


class Mirror:
    """A space's event streams on a node that is not its origin: the origin publishes each
    event to the space's channel with who gets it; this writes it to the streams here the
    way `Room._fan_out` does (one frame, written whole to each transport)."""

    def __init__(self, space: str) -> None:
        self.space = space
        self.subs: dict[Subscriber, bool] = {}  # stream -> a platform moderator's
        self.ready = asyncio.Event()  # the channel's subscription is confirmed

    def deliver(self, envelope: dict[str, Any]) -> None:
        msg = envelope["m"]
        to = envelope.get("to")
        mods = envelope.get("mods", False)
        frame = text_frame(json.dumps(msg).encode())
        targets = set(to) if to is not None else None
        for sub, moderator in list(self.subs.items()):
            if targets is not None and sub.user not in targets and not (mods and moderator):
                continue
            self._write(sub, frame)
        kind = msg.get("kind")
        if kind == "removed":
            who = str(msg.get("participant"))
            for sub in [s for s in self.subs if s.user == who]:
                self.end(sub, "removed", f"{who} was removed from the space")
        elif kind == "space_ended":
            for sub in list(self.subs):
                self.end(sub, "space_ended", "the space has ended")

    def _write(self, sub: Subscriber, frame: bytes) -> None:
        transport = sub.transport
        if transport is None:
            sub.pending.append(frame)
        elif transport.is_closing() or (sub.stream is not None and sub.stream.closed):
            self.subs.pop(sub, None)
        else:
            transport.write(frame)
            if transport.get_write_buffer_size() > BUFFER_LIMIT:
                self.end(sub, "too_slow", "dropped: more than 256 KiB of events unsent")

    def end(self, sub: Subscriber, code: str, reason: str) -> None:
        self.subs.pop(sub, None)
        if sub.ended:
            return
        sub.ended = True
        frame = text_frame(json.dumps({"type": "error", "error": code, "reason": reason}).encode())
        if sub.transport is None:
            sub.pending.append(frame)
            return
        if not sub.transport.is_closing():
            sub.transport.write(frame)
        if sub.on_end is not None:
            sub.on_end()


# --------------------------------------------------------------------------- the node


class Cluster:
    """This node's part of the cluster: registry, placement, relays, remote media, events."""

    def __init__(
        self,
        url: str,
        *,
        node_id: str | None,
        public_url: str,
        relay_host: str,
        secret: bytes,
        slots: int,
        ttl: float = 3.0,
        beat: float = 0.5,
    ) -> None:
        self.redis_url = url
        self.id = node_id or "n-" + secrets.token_hex(4)
        self.url = public_url.rstrip("/")
        self.relay_host = relay_host
        self.key = internal_key(secret)
        self.header = {NODE_HEADER: self.key.hex()}
        self.slots = slots
        self.ttl = ttl
        self.beat = beat
        self.rng = behaviour.PyRng(random.Random())
        self.nodes: dict[str, NodeInfo] = {}  # live nodes (this one too), at the last beat
        self.origins: dict[str, str] = {}  # space -> origin node id (cache; origins never move)
        # on the origin: space -> user -> node id of listeners placed on other nodes
        self.placed: dict[str, dict[str, str]] = {}
        self.targets: dict[str, tuple[str, ...]] = {}  # space -> nodes it relays to
        # on other nodes: space -> the MediaRoom of its listeners here, and its origin
        self.remote: dict[str, MediaRoom] = {}
        self.remote_origin: dict[str, str] = {}
        self.mirrors: dict[str, Mirror] = {}
        self.state: ServerState | None = None
        self.relay: Relay | None = None
        self.redis: aioredis.Redis | None = None
        self.pubsub: Any = None
        self.http: aiohttp.ClientSession | None = None
        self._queue: asyncio.Queue[tuple[str, bytes]] = asyncio.Queue()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._cpu = (time.process_time(), time.monotonic())
        self.cpu = 0.0  # share of one core this process used over the last beat
        self.closed_forwarded = 0  # packets forwarded by remote rooms already closed
        self.registered = False  # the first registration is done
        self._members: list[str] = []  # the node set as the last beat read it

    # ------------------------------------------------------------------ lifecycle

    async def start(self, state: ServerState) -> None:
        self.state = state
        self.redis = aioredis.Redis.from_url(self.redis_url)
        self.http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=15))
        loop = asyncio.get_running_loop()
        _, self.relay = await loop.create_datagram_endpoint(
            lambda: Relay(self.key, self._on_relay), local_addr=(self.relay_host, 0)
        )
        self.pubsub = self.redis.pubsub()
        await self.pubsub.subscribe(f"{PREFIX}hello")  # get_message needs a subscription
        await self._beat()
        await self._adopt(state)
        for job in (self._heartbeat(), self._publisher(), self._reader()):
            self._spawn(job)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(BaseException):
                await task
        for media in list(self.remote.values()):
            await media.close_all()
        self.remote.clear()
        if self.redis is not None:
            with contextlib.suppress(Exception):
                await self.redis.delete(self._node_key(self.id))
                await self.redis.srem(f"{PREFIX}nodes", self.id)
            with contextlib.suppress(Exception):
                await self.pubsub.aclose()
            await self.redis.aclose()
        if self.relay is not None and self.relay.transport is not None:
            self.relay.transport.close()
        if self.http is not None:
            await self.http.close()

    def _spawn(self, job: Any) -> None:
        task = asyncio.ensure_future(job)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # ------------------------------------------------------------------ registry

    def _node_key(self, node: str) -> str:
        return f"{PREFIX}node:{node}"

    def local_listeners(self) -> int:
        """Listeners whose media this node carries (its load for placement)."""
        assert self.state is not None
        rooms = [*self.state.media.values(), *self.remote.values()]
        return sum(len(m.participants()) for m in rooms)

    async def _beat(self) -> None:
        """One heartbeat, in one round trip to Redis: this node's entry written (its TTL
        renewed) and the registry read back in the same transaction -- the node set and
        the entry of each node the last beat saw. Only a node new since then costs a
        second round trip. (It was three: the write, SMEMBERS, then the entries; each
        round trip wakes this process and Redis, and an idle node's CPU was mostly its
        beats, benchmarks/bench_cluster.py.)"""
        assert self.redis is not None and self.relay is not None and self.relay.transport
        now, mono = time.process_time(), time.monotonic()
        cpu0, mono0 = self._cpu
        if mono > mono0:
            self.cpu = (now - cpu0) / (mono - mono0)
        self._cpu = (now, mono)
        host, port = self.relay.transport.get_extra_info("sockname")[:2]
        fields = {
            "url": self.url,
            "relay_host": host,
            "relay_port": port,
            "listeners": self.local_listeners(),
            "cpu": f"{self.cpu:.4f}",
            "cpu_s": f"{now:.4f}",
            "relayed": self.relay.sent,
            "relay_bytes": self.relay.bytes_sent,
            "pid": os.getpid(),
        }
        key = self._node_key(self.id)
        known = self._members
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(key, mapping=fields)  # type: ignore[arg-type]
            pipe.pexpire(key, int(self.ttl * 1000))
            pipe.sadd(f"{PREFIX}nodes", self.id)
            pipe.smembers(f"{PREFIX}nodes")
            for node in known:
                pipe.hgetall(self._node_key(node))
            added, _, _, members, *rows = await pipe.execute()
        entries = dict(zip(known, rows, strict=True))
        ids = sorted(_text(m) for m in members)
        new = [node for node in ids if node not in entries]
        if new:  # a node joined since the last beat (or this is the first)
            async with self.redis.pipeline(transaction=False) as pipe:
                for node in new:
                    pipe.hgetall(self._node_key(node))
                entries.update(zip(new, await pipe.execute(), strict=True))
        self._members = ids
        self._read_nodes(ids, entries)
        if added == len(fields) and self.registered and self.state is not None:
            # HSET counted every field as new: our entry had gone (its TTL ran out during
            # a stall, or a peer found our port closed, `unreachable`), so other nodes
            # may have taken our spaces over. Keep only those Redis still says are ours.
            log.warning("cluster: this node's registry entry had expired; re-adopting")
            await self._adopt(self.state)
        self.registered = True

    def _read_nodes(self, ids: list[str], entries: dict[str, Any]) -> None:
        """The live nodes from their registry entries; forget what lived on a node whose
        entry expired."""
        live: dict[str, NodeInfo] = {}
        for node in ids:
            row = entries.get(node)
            if not row:
                continue  # expired: it missed its heartbeats
            r = {_text(k): _text(v) for k, v in row.items()}
            live[node] = NodeInfo(
                node,
                r["url"],
                (r["relay_host"], int(r["relay_port"])),
                int(r.get("listeners", 0)),
                float(r.get("cpu", 0.0)),
            )
        gone = set(self.nodes) - set(live)
        self.nodes = live
        for node in gone:
            self._node_lost(node)

    async def _heartbeat(self) -> None:
        while True:
            await asyncio.sleep(self.beat)
            try:
                await self._beat()
            except Exception:
                log.exception("cluster heartbeat failed")

    def _node_lost(self, node: str) -> None:
        """A node's registry entry expired (or it refused a connection): its listeners'
        media died with it. They are watched for presence as after any lost connection
        (they rejoin, placed again). Listeners here of a space whose origin it was hear
        nothing more (the space's next origin does not know them): their connections
        are closed, so that they rejoin too (through a live node, which takes the space
        over) rather than sit on a live but silent connection."""
        log.warning("cluster: node %s is gone", node)
        from spacesim.server.app import _watch_presence

        assert self.state is not None
        for space, users in self.placed.items():
            for user in [u for u, n in users.items() if n == node]:
                del users[user]
                _watch_presence(self.state, space, user)
            self._retarget(space)
        for space in [s for s, o in self.remote_origin.items() if o == node]:
            self._spawn(self.remote_close(space, None))

    async def _adopt(self, state: ServerState) -> None:
        """After a (re)start: keep the recovered spaces no live node holds (claim them),
        leave the others to their origin."""
        assert self.redis is not None
        for space_id in list(state.rooms):
            owner = await self.redis.get(f"{PREFIX}space:{space_id}")
            owner_id = _text(owner) if owner else None
            if owner_id and owner_id != self.id and owner_id in self.nodes:
                del state.rooms[space_id]
                self.origins[space_id] = owner_id
                media = state.media.pop(space_id, None)
                if media is not None:  # taken over while we stalled: its clients rejoin there
                    await media.close_all()
            else:
                await self.claim(space_id)

    async def claim(self, space_id: str) -> None:
        """This node is the space's origin."""
        assert self.redis is not None
        await self.redis.set(f"{PREFIX}space:{space_id}", self.id)
        self.origins[space_id] = self.id

    async def origin_of(self, space_id: str) -> NodeInfo | None:
        """The live node holding the space, if another one does (None: this node, or an
        unknown space: the caller answers from here). A space whose origin died is taken
        over by the first node asked for it (`_take_over`)."""
        for _ in range(2):
            node = self.origins.get(space_id)
            if node is None:
                assert self.redis is not None
                raw = await self.redis.get(f"{PREFIX}space:{space_id}")
                if raw is None:
                    return None
                node = self.origins[space_id] = _text(raw)
            if node == self.id:
                return None
            live = self.nodes.get(node)
            if live is not None:
                return live
            if await self._take_over(space_id, node):
                return None
            self.origins.pop(space_id, None)  # another node took it: read who
        return None

    async def _take_over(self, space_id: str, dead: str) -> bool:
        """The space's origin is gone: load the space from the store here, as a restarted
        server would (participants join again), if no other node did first."""
        from spacesim.server.store import StoreError

        state = self.state
        assert state is not None and self.redis is not None
        try:
            row = state.store.get_space(space_id)
        except StoreError:
            return False
        if row.status.value not in ("live", "scheduled"):
            return False
        key = f"{PREFIX}space:{space_id}"
        if not await self.redis.eval(_TAKE_OVER, 1, key, dead, self.id):
            return False
        state.rooms[space_id] = state._room_for(
            row.id,
            row.host,
            row.status,
            row.who_may_speak,
            row.listener_cap,
            state.store.captions_enabled(space_id),
        )
        state.recordings.resume(space_id)
        self.origins[space_id] = self.id
        log.warning("cluster: took over %s from %s, which is gone", space_id, dead)
        return True

    # ------------------------------------------------------------------ placement

    def place(self, avoid: frozenset[str] = frozenset()) -> NodeInfo:
        """The node a new listener's media goes to (`behaviour.place_listener`).

        `avoid`: nodes the client just lost its media on (the join's ``avoid``): left out
        of the draw, as a node whose entry expired is, unless no other node is live.
        A client names a node only after its connection there died, and the registry
        notices a dead node only at its TTL (or a refused connect, `unreachable`): in
        between, without this, a rejoin could be sent straight back to the dead node.
        The draw among the nodes left is `place_listener`'s, as in the simulator, which
        models no node failures (`spacesim.sim.world`): `avoid` is the server's alone.
        """
        nodes = [n for n in self.nodes.values() if n.id not in avoid]
        if not nodes:
            nodes = list(self.nodes.values()) or [self._me()]
        i = behaviour.place_listener(
            len(nodes), lambda i: nodes[i].listeners, lambda i: True, self.rng
        )
        chosen = nodes[i or 0]
        chosen.listeners += 1  # until the next beat re-reads it: a burst spreads too
        return chosen

    def _me(self) -> NodeInfo:
        assert self.relay is not None and self.relay.transport is not None
        host, port = self.relay.transport.get_extra_info("sockname")[:2]
        return NodeInfo(self.id, self.url, (host, port), self.local_listeners(), self.cpu)

    async def connect(
        self, room: Room, user: str, offer: str, avoid: frozenset[str] = frozenset()
    ) -> tuple[str | None, str]:
        """Place a participant's media: (SDP answer, node id), or (None, this node's id)
        when it goes here. The stage's connections stay on the origin; a listener is not
        placed on a node in `avoid` (`place`)."""
        role = room.space.role_of(user)
        listener = role is not None and role.value == "listener"
        node = self.place(avoid) if listener else self._me()
        old = self.placed.get(room.id, {}).pop(user, None)
        self._retarget(room.id)
        if old is not None and old != node.id:
            self._spawn(self._post(old, f"/cluster/v1/media/{room.id}/close", {"user": user}))
        if node.id == self.id:
            return None, self.id
        try:
            data = await self._call(
                node,
                f"/cluster/v1/media/{room.id}/connect",
                {"user": user, "sdp": offer, "origin": self.id},
            )
        except ConnectionError as exc:  # it died since its last heartbeat: carry them here
            log.warning("cluster: node %s unreachable; %s connects here", node.id, user)
            if isinstance(exc, NodeGone):
                await self.unreachable(node.id)
            return None, self.id
        except NodeRefused as exc:  # its answer is the client's (bad_sdp) or a fault
            from spacesim.protocol import ProtocolError

            body = exc.body
            extra = {"slots": body["slots"]} if "slots" in body else None
            raise ProtocolError(
                str(body.get("error", "media_setup_failed")), str(body.get("reason", "")), extra
            ) from None
        self.placed.setdefault(room.id, {})[user] = node.id
        self._retarget(room.id)
        self._ensure_relay(room.id)
        return str(data["sdp"]), node.id

    def _retarget(self, space: str) -> None:
        users = self.placed.get(space, {})
        self.targets[space] = tuple(sorted(set(users.values())))

    def _ensure_relay(self, space: str) -> None:
        assert self.state is not None
        media = self.state.media.get(space)
        if media is not None and not media.relays:
            media.relays.append(self.relay_sink(space))

    def relay_sink(self, space: str) -> Callable[[str, int, int, Any], None]:
        """The origin's hook on a room's media: each heard packet, once to each node with
        listeners of the room."""
        relay = self.relay
        assert relay is not None

        def sink(speaker: str, k: int, gen: int, packet: Any) -> None:
            targets = self.targets.get(space)
            if not targets:
                return
            data = relay.encode(DOWN, space, speaker, k, gen, packet)
            nodes = self.nodes
            for n in targets:
                node = nodes.get(n)
                if node is not None:
                    relay.send(data, node.relay)

        return sink

    def placed_at(self, space: str, user: str) -> str | None:
        return self.placed.get(space, {}).get(user)

    def node_of(self, space: str, user: str) -> dict[str, str]:
        """The node carrying `user`'s media: ``{"id", "url"}`` (the join answer's ``node``)."""
        node_id = self.placed_at(space, user) or self.id
        node = self.nodes.get(node_id)
        return {"id": node_id, "url": node.url if node is not None else self.url}

    def placed_users(self, space: str) -> list[str]:
        return list(self.placed.get(space, {}))

    def closed(self, space: str, user: str | None) -> None:
        """The origin closed a participant's media (or the whole room's): on their node too."""
        users = self.placed.get(space, {})
        if user is None:
            nodes = set(users.values())
            self.placed.pop(space, None)
            for node in nodes:
                self._spawn(self._post(node, f"/cluster/v1/media/{space}/close", {}))
        else:
            gone = users.pop(user, None)
            if gone is not None:
                self._spawn(self._post(gone, f"/cluster/v1/media/{space}/close", {"user": user}))
        self._retarget(space)

    # ------------------------------------------------------------------ node to node

    async def _call(
        self, node: NodeInfo, path: str, body: dict[str, Any], timeout: float | None = None
    ) -> dict[str, Any]:
        assert self.http is not None
        # (not None for the session's: aiohttp takes None as "no limit")
        limit = self.http.timeout if timeout is None else aiohttp.ClientTimeout(total=timeout)
        try:
            async with self.http.post(
                node.url + path, json=body, headers=self.header, timeout=limit
            ) as r:
                data = await r.json(content_type=None)
                if r.status >= 400:
                    raise NodeRefused(r.status, data if isinstance(data, dict) else {})
                return dict(data)
        except (aiohttp.ClientConnectionError, TimeoutError) as exc:
            kind = NodeGone if refused(exc) else ConnectionError
            raise kind(f"{node.url}: {exc}") from None

    async def others_spaces(self, status: str | None, limit: int) -> tuple[int, list[Any]]:
        """The other live nodes' spaces (`app.local_spaces` on each, asked at once): how
        many, and each node's newest `limit`. A node that does not answer is left out
        (it is dying: its spaces are being taken over by a node that will list them), and
        so is one that takes over `LIST_TIMEOUT` s (stalled: the listing does not wait
        for it as long as a request for one of its spaces would)."""

        async def ask(node: NodeInfo) -> dict[str, Any]:
            try:
                return await self._call(
                    node, "/cluster/v1/spaces", {"status": status, "limit": limit}, LIST_TIMEOUT
                )
            except Exception as exc:
                log.info("cluster: listing %s's spaces failed: %s", node.id, exc)
                return {}

        answers = await asyncio.gather(
            *(ask(n) for n in list(self.nodes.values()) if n.id != self.id)
        )
        count = sum(int(a.get("count", 0)) for a in answers)
        return count, [row for a in answers for row in a.get("spaces", [])]

    async def _post(self, node_id: str, path: str, body: dict[str, Any]) -> None:
        node = self.nodes.get(node_id)
        if node is None:
            return
        try:
            await self._call(node, path, body)
        except Exception as exc:
            log.info("cluster: %s on %s failed: %s", path, node_id, exc)

    async def unreachable(self, node_id: str) -> None:
        """A connect to `node_id` was refused: nothing listens on its port any more, so
        its process is gone (after a kill -9 the kernel answers a SYN to the closed port
        with a RST; a live but busy node would time out instead, and is left to its TTL).
        Its registry entry is deleted now rather than at its TTL, so no node places
        listeners on it and its spaces can be taken over at once (`origin_of`). Were
        it alive after all, its next beat finds its entry gone and re-adopts (`_beat`).
        """
        if node_id == self.id or node_id not in self.nodes:
            return
        assert self.redis is not None
        log.warning("cluster: node %s refused a connection: taken as gone", node_id)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.delete(self._node_key(node_id))
            pipe.srem(f"{PREFIX}nodes", node_id)
            await pipe.execute()
        if self.nodes.pop(node_id, None) is not None:
            self._node_lost(node_id)

    def trusted(self, request: web.Request) -> bool:
        return hmac.compare_digest(request.headers.get(NODE_HEADER, ""), self.key.hex())

    # ------------------------------------------------------------------ remote media

    async def remote_connect(self, space: str, origin: str, user: str, offer: str) -> str:
        """Set up a listener's connection here for a space whose origin is another node."""
        from spacesim.server.media import MediaRoom

        self.remote_origin[space] = origin  # a new origin after a take-over, too
        media = self.remote.get(space)
        if media is None:
            media = MediaRoom(lambda _user: False, slots=self.slots)
            self.remote[space] = media
            media.upstream = self._upstream(space)
            media.on_lost = lambda user: self._spawn(
                self._post(
                    self.remote_origin.get(space, origin),
                    f"/cluster/v1/spaces/{space}/lost",
                    {"user": user},
                )
            )
        answer: str = await media.connect(user, offer)
        return answer

    async def remote_close(self, space: str, user: str | None) -> None:
        media = self.remote.get(space)
        if media is None:
            return
        if user is not None:
            await media.close(user)
        if user is None or not media.participants():
            self.remote.pop(space, None)
            self.remote_origin.pop(space, None)
            self.closed_forwarded += media.forwarded  # counters never go backwards
            await media.close_all()

    def _upstream(self, space: str) -> Callable[[str, Any], None]:
        relay = self.relay
        assert relay is not None

        def up(user: str, packet: Any) -> None:
            node = self.nodes.get(self.remote_origin.get(space, ""))
            if node is not None:
                relay.send(relay.encode(UP, space, user, 0, 0, packet), node.relay)

        return up

    def _on_relay(self, kind: int, space: str, user: str, k: int, gen: int, packet: Any) -> None:
        now_ms = current_ms()
        if kind == DOWN:
            media = self.remote.get(space)
            if media is not None:
                self._eager(media.relayed(user, k, gen, packet, now_ms))
        elif kind == UP and self.state is not None:
            origin_media = self.state.media.get(space)
            if origin_media is not None:
                self._eager(origin_media.publish(user, packet, now_ms))

    def _eager(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run a relayed packet's fan-out now, as the origin runs its own (a Task per
        packet cost ~6 us, half the receive path). The fan-out only suspends on the slow
        path (a listener behind TURN): then its rest runs as a task (`_resume`), as
        Python 3.12's eager task factory does (3.11 has none)."""
        done, waiting = _step(coro)
        if not done:
            self._spawn(_resume(coro, waiting))

    # ------------------------------------------------------------------ events

    def publisher(self, space: str) -> Callable[[dict[str, Any], list[str] | None, bool], None]:
        """The origin room's hook: every event, with who gets it, onto the space's channel
        (one publishing task for the node: Redis keeps one connection's order)."""
        channel = f"{PREFIX}events:{space}"

        def publish(msg: dict[str, Any], to: list[str] | None, mods: bool) -> None:
            envelope = {"m": msg, "to": to, "mods": mods}
            self._queue.put_nowait((channel, json.dumps(envelope).encode()))

        return publish

    async def _publisher(self) -> None:
        assert self.redis is not None
        while True:
            channel, data = await self._queue.get()
            try:
                await self.redis.publish(channel, data)
            except Exception:
                log.exception("cluster: publishing an event failed")

    async def mirror(self, space: str) -> Mirror:
        """The space's mirror here, subscribed to its channel (confirmed) before it returns."""
        mirror = self.mirrors.get(space)
        if mirror is None:
            mirror = self.mirrors[space] = Mirror(space)
            await self.pubsub.subscribe(f"{PREFIX}events:{space}")
        await asyncio.wait_for(mirror.ready.wait(), 10)
        return mirror

    async def _reader(self) -> None:
        while True:
            try:
                # blocks until a message comes (timeout None: PubSub.parse_response
                # reads with no timeout), rather than waking the node every second
                msg = await self.pubsub.get_message(timeout=None)
            except Exception:
                log.exception("cluster: reading events failed")
                await asyncio.sleep(0.5)
                continue
            if msg is None:
                continue
            channel = msg["channel"].decode()
            space = channel.removeprefix(f"{PREFIX}events:")
            mirror = self.mirrors.get(space)
            if mirror is None:
                continue
            if msg["type"] == "subscribe":
                mirror.ready.set()
            elif msg["type"] == "message":
                try:
                    envelope = json.loads(msg["data"])
                    mirror.deliver(envelope)
                except Exception:
                    log.exception("cluster: delivering an event of %s failed", space)
                    continue
                if envelope["m"].get("kind") == "space_ended":  # nothing more will come
                    del self.mirrors[space]
                    await self.pubsub.unsubscribe(channel)

    def stats(self) -> dict[str, Any]:
        relay = self.relay
        return {
            "node": self.id,
            "nodes": len(self.nodes),
            "urls": {n.id: n.url for n in self.nodes.values()},
            "listeners": self.local_listeners(),
            "mirrored_streams": sum(len(m.subs) for m in self.mirrors.values()),
            "mirrored_spaces": sorted(self.mirrors),
            "relayed": relay.sent if relay else 0,
            "relay_bytes": relay.bytes_sent if relay else 0,
            "relay_received": relay.received if relay else 0,
            "relay_refused": relay.refused if relay else 0,
            "cpu_s": time.process_time(),
        }


class NodeGone(ConnectionError):
    """Another node refused the connection: its port is closed (`Cluster.unreachable`)."""


class NodeRefused(Exception):
    """Another node answered a node-to-node request with an error."""

    def __init__(self, status: int, body: dict[str, Any]) -> None:
        super().__init__(f"{status} {body.get('error')}: {body.get('reason')}")
        self.status = status
        self.body = body


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


async def _resume(coro: Coroutine[Any, Any, None], waiting: Any) -> None:
    """Drive a coroutine that `Cluster._eager` started and that suspended on `waiting` (a
    future, as ``Future.__await__`` yields it): await it, send the coroutine on, repeat."""
    while True:
        if waiting is not None:
            try:
                await waiting  # the coroutine reads the future's own result when sent on
            except BaseException:
                if not waiting.done():  # this task was cancelled: so is the fan-out
                    coro.close()
                    raise
        done, waiting = _step(coro)
        if done:
            return


def _step(coro: Coroutine[Any, Any, None]) -> tuple[bool, Any]:
    """One step of a relayed packet's fan-out: (finished, what it now waits on). A
    failure is logged and ends it: one packet's fan-out never takes the relay down."""
    try:
        return False, coro.send(None)
    except StopIteration:
        return True, None
    except Exception:
        log.exception("cluster: a relayed packet's fan-out failed")
        return True, None
