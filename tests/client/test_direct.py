"""The lite listener's socket-level receive path against a real server (127.0.0.1 only).

A host speaks a marked clip through the reference server; a lite listener
(`connect_audio` + `ListenerStats.on_rtp`, i.e. `spacesim.rtc.receive_rtp_direct`)
counts what arrives. Every packet the host sent in the window arrives once, on the
slot the server forwards it on, with no loss; aiortc's own receive path sees none of
it; STUN, DTLS and RTCP still work (the connection stays up; over a minute in the
slow test, well past aioice's consent-freshness failure limit of 6 x 5 s).
"""

from __future__ import annotations

import asyncio
import statistics
import time

import aiohttp
import pytest

from spacesim.client.listener import ListenerStats
from spacesim.client.session import AudioLink, RoomClient, connect_audio
from spacesim.client.speaker import SpeakerTrack, load_clip


def _ignore(slot: int, packet: bytes, arrival_ns: int) -> None:
    return None


async def _listen(
    base: str, seconds: float, read_every: float | None = None, lags: list[int] | None = None
) -> tuple[ListenerStats, AudioLink, set[int], int]:
    """Host speaks, one lite listener listens for `seconds`; (stats, link, slots, sent).

    `lags` gets, per packet, how long after its arrival time `on_rtp` ran (ns)."""
    stats = ListenerStats()
    slots: set[int] = set()

    def on_rtp(slot: int, packet: bytes, arrival_ns: int) -> None:
        if lags is not None:
            lags.append(time.monotonic_ns() - arrival_ns)
        slots.add(slot)
        stats.on_rtp(slot, packet, arrival_ns)

    links: list[AudioLink] = []
    async with aiohttp.ClientSession() as http:
        host = RoomClient(base, "host", http)
        space = await host.create_space("direct")
        try:
            listener = await connect_audio(
                RoomClient(base, "lite", http), space, on_rtp, read_every=read_every
            )
            links.append(listener)
            track = SpeakerTrack(load_clip("welcome"), sender_id=1, loop=True)
            links.append(await connect_audio(host, space, _ignore, publish=track))
            await asyncio.sleep(seconds)
            state = listener.pc.connectionState
            track.stop()  # stop sending, then let the last packets arrive
            await asyncio.sleep(0.3)
            sent = track.sent
            assert state == "connected" and listener.pc.connectionState == "connected"
            # aiortc's receivers saw no RTP (no inbound-rtp statistics); their idle
            # RTCP tasks are gone (spacesim.rtc cancels them)
            for t in listener.pc.getTransceivers():
                report = await t.receiver.getStats()
                assert not [s for s in report.values() if s.type == "inbound-rtp"]
                assert t.receiver._RTCRtpReceiver__rtcp_task.done()  # type: ignore[attr-defined]
        finally:
            for link in links:
                await link.close()
    return stats, links[0], slots, sent


@pytest.mark.timeout(60)
@pytest.mark.parametrize("read_every", [None, 0.01], ids=["callback", "batched"])
async def test_direct_receive_counts_every_packet(base: str, read_every: float | None) -> None:
    lags: list[int] = []
    stats, link, slots, sent = await _listen(base, 4.0, read_every, lags)
    s = stats.senders[1]
    assert s.received > 150 and s.lost == 0 and stats.unmarked == 0
    assert s.first_seq == 0 and s.last_seq == sent - 1 and s.received == sent
    assert slots == {0}  # the host is forwarded on the first listen slot
    assert link.rx is not None
    assert link.rx.rtp == s.received and link.rx.unrouted == 0 and link.rx.srtp_errors == 0
    assert link.rx.sender_reports >= 2  # ~1/s from the server's sender on slot 0
    assert max(s.latencies) < 0.5 and 0 <= s.jitter < 0.05
    assert min(s.latencies) > 0  # arrival times are on the senders' (monotonic) clock
    assert min(lags) >= 0
    if read_every is None:
        assert link.rx.batched == 0
    else:
        # the socket moved to the batch reader once audio flowed; the callback runs up
        # to a tick after the kernel's receive time, which is what latency is taken at
        assert link.rx.batched == 1
        assert 1e6 < statistics.median(lags) < 4 * read_every * 1e9


@pytest.mark.slow
@pytest.mark.timeout(150)
async def test_direct_receive_keeps_the_connection_up(base: str) -> None:
    stats, link, _, sent = await _listen(base, 70.0)
    s = stats.senders[1]
    assert s.received == sent and s.lost == 0 and sent > 3000
    assert link.rx is not None and link.rx.sender_reports > 30
