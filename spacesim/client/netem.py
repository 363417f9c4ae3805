"""User-space network impairment for WebRTC clients on one machine: a UDP relay.

Why user space
--------------
Load tests run every client and the server on loopback, and the kernel here has no
``netem`` qdisc (and changing qdiscs needs root anyway). So delay, jitter and loss
are added by a small asyncio UDP relay that sits between a client and the server:

    client --(up: impair_up)--> relay --> target (server's ICE host candidate)
    client <--(down: impair_down)-- relay <-- target

Impairment model (:class:`Impairment`, one per direction)
---------------------------------------------------------
* **loss** -- each datagram is dropped independently with probability ``loss``
  (Bernoulli; no bursts).
* **delay** -- a fixed one-way delay in seconds added to every surviving datagram.
* **jitter** -- an extra per-datagram delay drawn from an *exponential*
  distribution with mean ``jitter`` (so its standard deviation is also ``jitter``;
  one-sided, like queueing delay). The mean one-way delay is ``delay + jitter``,
  the minimum ``delay``.
* **order** -- by default order is preserved per flow and direction: a datagram is
  never released before the previous one of the same client in the same direction
  (release time = max(own due time, previous release time)), which lengthens the
  tail a bit and lowers the effective jitter at high packet rates. With
  ``reorder=True`` each datagram leaves at its own due time, so jitter larger than
  the packet spacing reorders packets (WebRTC tolerates that).
* **seed** -- each direction of a relay has its own ``random.Random(seed)``; the
  random draws (one for loss if ``loss > 0``, one for jitter if ``jitter > 0``, in
  arrival order) are therefore reproducible for a given arrival sequence.

Timing: no task per packet. Each flow direction keeps a heap of (due time, seq,
datagram) and one ``loop.call_at`` timer for its head. asyncio's epoll wait has a
1 ms resolution and rounds its timeout *up*, so a timer fires 0..1 ms late. Timers
are therefore armed a *lead* early and every datagram with ``due <= now + lead`` is
released when one fires; the lead is a running mean of the relay's observed timer
lateness (start :data:`TIMER_LEAD` = 0.5 ms, capped at 1 ms), which centres the
release error on zero (within about +-0.7 ms per hop, mean ~0) instead of adding
~0.5 ms on average per hop. A direction with no delay and no jitter forwards inline,
adding no timer at all.

WebRTC (ICE) and SDP
--------------------
ICE candidates travel in SDP, so a client puts the relay in the path by rewriting the
server's host candidate(s) in the SDP answer before ``setRemoteDescription``
(:func:`relay_answer`, built on :func:`rewrite_candidates`). ICE connectivity checks
(STUN) go through the relay too; with loss they need retransmissions, which aioice
does.

Caveat -- the direct path: the server still learns the client's real host candidate
from the offer and checks it directly; aioice then learns the server as a
peer-reflexive candidate and, with aggressive nomination, may nominate that direct
pair (it answers first, having no added delay), so media would bypass the relay. To
force every packet through the relay, also pass the *offer* through
:func:`blackhole_candidates` before sending it: the server's direct checks then go to
a discard address and the only working path is client -> relay -> server, which the
server learns as a peer-reflexive candidate (the relay's per-client upstream socket).

Limits
------
* One relay per target address: :func:`relay_answer` starts one relay per distinct
  UDP host candidate (with BUNDLE that is usually one).
* Per-client upstream sockets: the first datagram from a new client address opens a
  new upstream socket (connected to the target, so only the target's replies are
  accepted) and the server sees each client as that socket's address. Upstream
  sockets live until :meth:`UdpRelay.close`; at most ``max_clients`` per relay (more
  clients' datagrams are dropped and counted).
* Only loss/delay/jitter/reordering: no bandwidth limit, queue limit, duplication,
  corruption or burst loss. Datagrams larger than 65535 bytes are not handled.
* Runs on the event loop it was started on; the loop must support ``add_reader``
  (the default selector loop on Linux/macOS, or uvloop).
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import math
import random
import re
import socket
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Self

__all__ = [
    "DISCARD_ADDRESS",
    "TIMER_LEAD",
    "Counters",
    "Impairment",
    "UdpRelay",
    "blackhole_candidates",
    "candidate_addresses",
    "relay_answer",
    "rewrite_candidates",
]

Address = tuple[str, int]

TIMER_LEAD = 0.0005
"""Initial release-timer lead in seconds (half of epoll's 1 ms timeout resolution)."""

DISCARD_ADDRESS: Address = ("127.0.0.1", 9)
"""UDP discard port on loopback: where :func:`blackhole_candidates` points candidates."""

_MAX_LEAD = 0.001  # lateness beyond epoll's resolution is load, not rounding
_LEAD_GAIN = 0.02
_MAX_DATAGRAM = 65535
_READ_BURST = 256  # datagrams read per readiness callback before yielding to the loop
_SOCKET_BUFFER = 1 << 20  # requested SO_RCVBUF / SO_SNDBUF (best effort)


@dataclass(frozen=True)
class Impairment:
    """Impairment of one direction of a :class:`UdpRelay` (see the module docstring).

    ``delay`` and ``jitter`` are in seconds: a surviving datagram is released after
    ``delay + Exponential(mean=jitter)``, never before the previous datagram of the
    same flow and direction unless ``reorder`` is true. ``loss`` is the independent
    per-datagram drop probability. ``seed`` seeds the direction's ``random.Random``.
    """

    delay: float = 0.0
    jitter: float = 0.0
    loss: float = 0.0
    seed: int | None = None
    reorder: bool = False

    def __post_init__(self) -> None:
        for name in ("delay", "jitter"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a finite number >= 0 s, got {value!r}")
        if not (0.0 <= self.loss <= 1.0):
            raise ValueError(f"loss must be in [0, 1], got {self.loss!r}")

    @property
    def timed(self) -> bool:
        """True if datagrams are held back (any delay or jitter)."""
        return self.delay > 0 or self.jitter > 0


@dataclass
class Counters:
    """Datagram counts of one relay direction (a snapshot when read from the relay).

    ``received`` = ``forwarded`` + ``dropped`` + ``in_flight``. ``dropped`` counts
    impairment loss, send errors, datagrams of clients beyond ``max_clients`` and
    datagrams still queued when the relay closed.
    """

    received: int = 0
    forwarded: int = 0
    dropped: int = 0

    @property
    def in_flight(self) -> int:
        return self.received - self.forwarded - self.dropped


class _Clock:
    """Running mean of how late ``call_at`` timers fire; used as the arming lead."""

    __slots__ = ("lead",)

    def __init__(self) -> None:
        self.lead = TIMER_LEAD

    def observe(self, lateness: float) -> None:
        lateness = min(max(lateness, 0.0), _MAX_LEAD)
        self.lead += (lateness - self.lead) * _LEAD_GAIN


class _Pipe:
    """One direction of one flow: impair, queue and release datagrams in time."""

    __slots__ = (
        "_clock",
        "_counters",
        "_heap",
        "_imp",
        "_last_due",
        "_loop",
        "_rng",
        "_send",
        "_seq",
        "_timer",
        "_timer_when",
    )

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        imp: Impairment,
        rng: random.Random,
        counters: Counters,
        send: Callable[[bytes], None],
        clock: _Clock,
    ) -> None:
        self._clock = clock
        self._loop = loop
        self._imp = imp
        self._rng = rng
        self._counters = counters
        self._send = send
        self._heap: list[tuple[float, int, bytes]] = []
        self._seq = 0
        self._last_due = -math.inf
        self._timer: asyncio.TimerHandle | None = None
        self._timer_when = math.inf

    def push(self, data: bytes, now: float) -> None:
        imp = self._imp
        self._counters.received += 1
        if imp.loss > 0 and self._rng.random() < imp.loss:
            self._counters.dropped += 1
            return
        if not imp.timed:
            self._emit(data)
            return
        due = now + imp.delay
        if imp.jitter > 0:
            due += self._rng.expovariate(1.0 / imp.jitter)
        if not imp.reorder:
            due = max(due, self._last_due)
            self._last_due = due
        self._seq += 1
        heapq.heappush(self._heap, (due, self._seq, data))
        self._arm()

    def _emit(self, data: bytes) -> None:
        try:
            self._send(data)
        except OSError:  # includes BlockingIOError: a full send buffer loses the datagram
            self._counters.dropped += 1
        else:
            self._counters.forwarded += 1

    def _arm(self) -> None:
        if not self._heap:
            return
        when = self._heap[0][0] - self._clock.lead
        if self._timer is not None:
            if when >= self._timer_when:
                return
            self._timer.cancel()
        self._timer_when = when
        self._timer = self._loop.call_at(when, self._release)

    def _release(self) -> None:
        now = self._loop.time()
        clock = self._clock
        clock.observe(now - self._timer_when)
        self._timer = None
        self._timer_when = math.inf
        horizon = now + clock.lead
        heap = self._heap
        while heap and heap[0][0] <= horizon:
            self._emit(heapq.heappop(heap)[2])
        self._arm()

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._counters.dropped += len(self._heap)
        self._heap.clear()


@dataclass
class _Flow:
    client: Address
    sock: socket.socket
    up: _Pipe
    down: _Pipe
    upstream: Address = field(default=("", 0))


class UdpRelay:
    """An impairing UDP relay in front of one ``target`` address (see module docstring).

    Create with ``await UdpRelay.start(target, impair_up, impair_down)``; clients send
    to :attr:`address`. Use as ``async with`` or call :meth:`close`.
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        sock: socket.socket,
        target: Address,
        impair_up: Impairment,
        impair_down: Impairment,
        upstream_host: str,
        max_clients: int,
    ) -> None:
        self._loop = loop
        self._sock = sock
        self._target = target
        self._impair_up = impair_up
        self._impair_down = impair_down
        self._rng_up = random.Random(impair_up.seed)
        self._rng_down = random.Random(impair_down.seed)
        self._upstream_host = upstream_host
        self._max_clients = max_clients
        self._up = Counters()
        self._down = Counters()
        self._flows: dict[Address, _Flow] = {}
        self._clock = _Clock()
        self._closed = False
        host, port = sock.getsockname()[:2]
        self._address: Address = (str(host), int(port))
        loop.add_reader(sock.fileno(), self._read_clients)

    @classmethod
    async def start(
        cls,
        target: Address,
        impair_up: Impairment | None = None,
        impair_down: Impairment | None = None,
        host: str = "127.0.0.1",
        *,
        port: int = 0,
        upstream_host: str | None = None,
        max_clients: int = 1024,
    ) -> UdpRelay:
        """Bind ``(host, port)`` and relay its clients to ``target``.

        ``upstream_host`` is the address the per-client upstream sockets bind to
        (default ``host``); it must be able to reach ``target``. ``host`` and
        ``target`` must be of the same address family (IPv4 or IPv6).
        """
        loop = asyncio.get_running_loop()
        infos = await loop.getaddrinfo(target[0], target[1], type=socket.SOCK_DGRAM)
        family, _, _, _, sockaddr = infos[0]
        resolved: Address = (str(sockaddr[0]), int(sockaddr[1]))
        sock = _udp_socket(family, host, port)
        try:
            return cls(
                loop,
                sock,
                resolved,
                impair_up or Impairment(),
                impair_down or Impairment(),
                upstream_host if upstream_host is not None else host,
                max_clients,
            )
        except BaseException:
            sock.close()
            raise

    @property
    def address(self) -> Address:
        """(host, port) clients send to."""
        return self._address

    @property
    def target(self) -> Address:
        return self._target

    @property
    def up(self) -> Counters:
        """Counts of client -> target datagrams (a snapshot)."""
        return replace(self._up)

    @property
    def down(self) -> Counters:
        """Counts of target -> client datagrams (a snapshot)."""
        return replace(self._down)

    @property
    def clients(self) -> dict[Address, Address]:
        """Client address -> address of its upstream socket (what the target sees)."""
        return {c: f.upstream for c, f in self._flows.items()}

    @property
    def closed(self) -> bool:
        return self._closed

    async def close(self) -> None:
        """Stop relaying, drop queued datagrams (counted as dropped), close sockets."""
        if self._closed:
            return
        self._closed = True
        self._loop.remove_reader(self._sock.fileno())
        self._sock.close()
        for flow in self._flows.values():
            self._loop.remove_reader(flow.sock.fileno())
            flow.up.close()
            flow.down.close()
            flow.sock.close()
        self._flows.clear()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def __repr__(self) -> str:
        return (
            f"UdpRelay({self._address[0]}:{self._address[1]} -> "
            f"{self._target[0]}:{self._target[1]}, up={self._impair_up}, "
            f"down={self._impair_down}, clients={len(self._flows)})"
        )

    # -- internals -------------------------------------------------------------

    def _read_clients(self) -> None:
        sock = self._sock
        for _ in range(_READ_BURST):
            try:
                data, addr = sock.recvfrom(_MAX_DATAGRAM)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                continue  # e.g. a queued ICMP error; keep reading
            now = self._loop.time()
            client: Address = (addr[0], addr[1])
            flow = self._flows.get(client)
            if flow is None:
                flow = self._open_flow(client)
                if flow is None:
                    self._up.received += 1
                    self._up.dropped += 1
                    continue
            flow.up.push(data, now)

    def _open_flow(self, client: Address) -> _Flow | None:
        if len(self._flows) >= self._max_clients or self._closed:
            return None
        upstream = _udp_socket(self._sock.family, self._upstream_host, 0)
        try:
            upstream.connect(self._target)
            listen = self._sock

            def send_up(data: bytes) -> None:
                upstream.send(data)

            def send_down(data: bytes) -> None:
                listen.sendto(data, client)

            loop = self._loop
            flow = _Flow(
                client=client,
                sock=upstream,
                up=_Pipe(loop, self._impair_up, self._rng_up, self._up, send_up, self._clock),
                down=_Pipe(
                    loop, self._impair_down, self._rng_down, self._down, send_down, self._clock
                ),
            )
            host, port = upstream.getsockname()[:2]
            flow.upstream = (str(host), int(port))
            loop.add_reader(upstream.fileno(), self._read_target, flow)
        except BaseException:
            upstream.close()
            raise
        self._flows[client] = flow
        return flow

    def _read_target(self, flow: _Flow) -> None:
        sock = flow.sock
        for _ in range(_READ_BURST):
            try:
                data = sock.recv(_MAX_DATAGRAM)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                continue  # ECONNREFUSED from an earlier send while the target was down
            flow.down.push(data, self._loop.time())


def _udp_socket(family: int, host: str, port: int) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        sock.setblocking(False)
        for opt in (socket.SO_RCVBUF, socket.SO_SNDBUF):
            with contextlib.suppress(OSError):  # capped by the kernel, never fatal
                sock.setsockopt(socket.SOL_SOCKET, opt, _SOCKET_BUFFER)
        sock.bind((host, port))
    except BaseException:
        sock.close()
        raise
    return sock


# -- SDP ---------------------------------------------------------------------------

# a=candidate:<foundation> <component> <transport> <priority> <address> <port> typ <type> ...
_CANDIDATE = re.compile(
    r"^(?P<head>a=candidate:\S+ \d+ (?P<transport>\S+) \d+ )"
    r"(?P<addr>\S+) (?P<port>\d+)(?P<tail> typ (?P<typ>\S+).*)$",
    re.DOTALL,
)
_MEDIA = re.compile(r"^m=(?P<media>\S+) (?P<port>\d+)(?P<rest>.*)$", re.DOTALL)
_CONN = re.compile(r"^c=IN (?P<atype>IP[46]) (?P<addr>[^\s/]+)(?P<rest>.*)$", re.DOTALL)

Mapping = Callable[[str, int], Address | None]
CRLF = "\r\n"


def _split_eol(line: str) -> tuple[str, str]:
    body = line.rstrip("\r\n")
    return body, line[len(body) :]


def _atype(host: str) -> str:
    return "IP6" if ":" in host else "IP4"


def rewrite_candidates(sdp: str, mapping: Mapping, types: tuple[str, ...] = ("host",)) -> str:
    """Replace ICE candidate addresses in ``sdp`` for which ``mapping`` gives a new one.

    ``mapping(address, port)`` returns the replacement ``(address, port)`` or None to
    keep the candidate. Only UDP candidates of the given ``types`` (default host) are
    offered to the mapping. In each media section whose default address -- its ``c=``
    address (media- or session-level) and ``m=`` port -- maps to a replacement, the
    ``m=`` port and the ``c=`` line are rewritten too (a media-level ``c=`` line is
    added if the section used the session-level one). Every other line is returned
    byte for byte, line endings included.
    """
    lines = sdp.splitlines(keepends=True)
    # Section 0 is the session part (possibly empty), then one per m= line.
    bounds = [0, *(i for i, line in enumerate(lines) if line.startswith("m=")), len(lines)]
    starts, ends = bounds[:-1], bounds[1:]
    session_c: str | None = None
    for line in lines[: ends[0]]:
        match = _CONN.match(_split_eol(line)[0])
        if match:
            session_c = match["addr"]

    out: list[str] = []
    for index, (start, end) in enumerate(zip(starts, ends, strict=True)):
        section = list(lines[start:end])
        if index > 0:
            section = _rewrite_media_section(section, session_c, mapping)
        for i, line in enumerate(section):
            body, eol = _split_eol(line)
            match = _CANDIDATE.match(body)
            if not match or match["transport"].lower() != "udp" or match["typ"] not in types:
                continue
            new = mapping(match["addr"], int(match["port"]))
            if new is not None:
                section[i] = f"{match['head']}{new[0]} {new[1]}{match['tail']}{eol}"
        out.extend(section)
    return "".join(out)


def _rewrite_media_section(
    section: list[str], session_c: str | None, mapping: Mapping
) -> list[str]:
    m_body, m_eol = _split_eol(section[0])
    m_match = _MEDIA.match(m_body)
    if m_match is None:
        return section
    port = int(m_match["port"])
    c_index: int | None = None
    c_match: re.Match[str] | None = None
    for i, line in enumerate(section[1:], start=1):
        c_match = _CONN.match(_split_eol(line)[0])
        if c_match:
            c_index = i
            break
    addr = c_match["addr"] if c_match else session_c
    if addr is None or port == 0:  # port 0: rejected or bundle-only section
        return section
    new = mapping(addr, port)
    if new is None:
        return section
    host, new_port = new
    section = list(section)
    section[0] = f"m={m_match['media']} {new_port}{m_match['rest']}{m_eol}"
    if c_index is not None and c_match is not None:
        c_eol = _split_eol(section[c_index])[1]
        section[c_index] = f"c=IN {_atype(host)} {host}{c_match['rest']}{c_eol}"
    else:
        # c= follows m= and an optional i= line (RFC 8866 section 5).
        at = 2 if len(section) > 1 and section[1].startswith("i=") else 1
        section.insert(at, f"c=IN {_atype(host)} {host}{m_eol or CRLF}")
    return section


def candidate_addresses(sdp: str, types: tuple[str, ...] = ("host",)) -> list[Address]:
    """Distinct (address, port) of the UDP candidates of the given types, in SDP order."""
    found: dict[Address, None] = {}
    for line in sdp.splitlines():
        match = _CANDIDATE.match(line)
        if match and match["transport"].lower() == "udp" and match["typ"] in types:
            found[(match["addr"], int(match["port"]))] = None
    return list(found)


async def relay_answer(
    answer_sdp: str,
    impair_up: Impairment | None = None,
    impair_down: Impairment | None = None,
    host: str = "127.0.0.1",
) -> tuple[str, list[UdpRelay]]:
    """Start one :class:`UdpRelay` per distinct UDP host candidate of ``answer_sdp``.

    Returns the answer with those candidates (and matching ``c=``/``m=`` defaults)
    pointing at the relays, to pass to the client's ``setRemoteDescription``, and the
    relays (the caller closes them). See the module docstring for why the offer
    should usually go through :func:`blackhole_candidates` as well.
    """
    relays: dict[Address, UdpRelay] = {}
    try:
        for target in candidate_addresses(answer_sdp):
            relays[target] = await UdpRelay.start(target, impair_up, impair_down, host)
    except BaseException:
        for relay in relays.values():
            await relay.close()
        raise

    def mapping(addr: str, port: int) -> Address | None:
        relay = relays.get((addr, port))
        return relay.address if relay is not None else None

    return rewrite_candidates(answer_sdp, mapping), list(relays.values())


def blackhole_candidates(offer_sdp: str, sink: Address = DISCARD_ADDRESS) -> str:
    """Point every UDP host candidate of ``offer_sdp`` at ``sink`` (a discard address).

    Send this offer to the server (keep the original as the client's local
    description) so the server cannot reach the client directly and ICE can only
    succeed through the relays of :func:`relay_answer`.
    """
    return rewrite_candidates(offer_sdp, lambda addr, port: sink)
