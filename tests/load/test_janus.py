"""The Janus driver against a real Janus (Debian's 1.1.2) in a network namespace of its own.

The fixture starts Janus the way `spacesim janus up` does (`spacesim.load.janus_server`:
a namespace, a veth pair, Janus on the namespace's address) and removes it all after;
it fails -- never skips -- when that cannot be done (no root, no Janus). Every packet
stays on this machine.
"""

from __future__ import annotations

import asyncio
import os
import statistics
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from spacesim import rtc
from spacesim.client.listener import ListenerStats
from spacesim.client.speaker import SpeakerTrack, tone_packets
from spacesim.load import janus_server
from spacesim.load.janus import JanusFactory
from spacesim.load.janus_server import JanusInstance, JanusMeter
from spacesim.load.run import main
from spacesim.results import load_run, summarise_run

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(autouse=True, scope="module")
def _loopback_candidates_after() -> Iterator[None]:
    """JanusFactory gathers ICE candidates on the veth (process-wide): give the tests
    after this module their default back."""
    yield
    rtc.use_host_addresses()


SMOKE = Path(__file__).resolve().parents[2] / "scenarios" / "smoke.yaml"


@pytest.fixture(scope="module")
def janus() -> Iterator[JanusInstance]:
    name = f"spacesim-test-{os.getpid()}"
    index = 100 + os.getpid() % 100  # its own /30, apart from `spacesim janus up`'s 0
    with janus_server.janus_in_netns(name, index) as inst:
        yield inst
    assert not Path(f"/run/netns/{name}").exists()
    assert not Path(f"/sys/class/net/{inst.host_if}").exists()


async def test_janus_forwards_a_publishers_marked_audio_to_subscribers(
    janus: JanusInstance,
) -> None:
    meter = JanusMeter(janus.pid)
    cpu0, sent0 = meter.cpu_seconds(), meter.packets()
    async with aiohttp.ClientSession() as http:
        factory = JanusFactory(janus.url, http)
        host = factory("host")
        room = await host.create_space("test", "everyone")
        track = SpeakerTrack(tone_packets(440.0, 1.0), sender_id=7)
        pub = await host.connect_audio(room, lambda *a: None, publish=track)
        stats = [ListenerStats() for _ in range(3)]
        links = [
            await factory(f"l{i}").connect_audio(room, s.on_rtp, read_every=0.02)
            for i, s in enumerate(stats)
        ]
        assert all(link.alive() for link in links) and links[0].join["feeds"] == 1
        await asyncio.sleep(2.0)
        for s in stats:
            received, lost = s.totals()
            assert received > 60 and lost <= 2  # ~50 packets/s, nothing lost on a veth
            lat = s.senders[7].latencies
            assert lat and 0 < statistics.median(lat) < 0.05  # marks survive Janus
        # moderation Janus has: muting the publisher stops its audio at every listener
        await host.act(room, "mute", target="host")
        await asyncio.sleep(0.3)
        before = [s.totals()[0] for s in stats]
        await asyncio.sleep(1.0)
        assert [s.totals()[0] for s in stats] == before
        for link in links:
            await link.close()
        await pub.close()
        await host.end_space(room)
        await factory.close()
    forwarded = meter.packets() - sent0
    assert forwarded >= sum(s.totals()[0] for s in stats)
    assert meter.cpu_seconds() > cpu0


def test_spacesim_load_against_janus(
    janus: JanusInstance, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`spacesim load SCENARIO --target janus://…`: one speaker, a few listeners."""
    out = tmp_path / "run"
    one_speaker = ["rooms.speakers=0", "speaking.active_speakers=1"]
    rc = main(SMOKE, janus.url, users=4, duration=10, out=out, shape="steady",
              overrides=one_speaker)  # fmt: skip
    printed = capsys.readouterr().out
    assert rc == 0, printed
    run = load_run(out)
    assert run.meta.extra["driver"] == "janus"
    summary = summarise_run(run)
    assert summary.loc["joins", "value"] >= 3
    assert summary.loc["audio_latency", "count"] > 0
    assert 0 < summary.loc["audio_latency", "p50"] < 0.5  # the scenario's network: ~60 ms rtt
    assert summary.loc["delivery_ratio", "value"] > 0.95
    # Janus's CPU per packet, from its process, as the server's run
    assert (out / "server" / "meta.json").is_file()
    assert summary.loc["node_cpu", "count"] >= 5
    assert summary.loc["packets_forwarded", "value"] >= summary.loc["delivery_ratio", "count"]
    assert 1e-6 < summary.loc["cpu_per_packet", "value"] < 1e-3
    # what the scenario asked for and Janus lacks is listed, not dropped
    assert summary.loc["unsupported_events", "value"] >= 1
    assert "unsupported by the target" in printed and "events x" in printed


async def test_audiobridge_mixes_and_says_its_audio_carries_no_marks(janus: JanusInstance) -> None:
    async with aiohttp.ClientSession() as http:
        factory = JanusFactory(janus.url.replace("videoroom", "audiobridge"), http)
        host = factory("host")
        room = await host.create_space("test", "everyone")
        track = SpeakerTrack(tone_packets(440.0, 1.0), sender_id=7)
        pub = await host.connect_audio(room, lambda *a: None, publish=track)
        stats = ListenerStats()
        link = await factory("l0").connect_audio(room, stats.on_rtp, read_every=0.02)
        assert link.join["marks"] is False  # the listener session records audio_latency unsupported
        await asyncio.sleep(1.5)
        received, _ = stats.totals()
        assert received > 40  # Janus's mix, 50 packets/s
        assert stats.first_packet_ns is not None and stats.first_audio_ns is None
        assert stats.unmarked == received
        await link.close()
        await pub.close()
        await host.end_space(room)
        await factory.close()
