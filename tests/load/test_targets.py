"""Target drivers without a network: URL -> driver, the Janus driver's decisions on a fake
Janus session, and the swarm's handling of a target that lacks things (in-memory server)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from spacesim.client.session import ClientError
from spacesim.load import targets
from spacesim.load.api import Unsupported
from spacesim.load.dryrun import dry_run
from spacesim.load.janus import LACKS, ROOM_SECRET, JanusClient, JanusTarget
from spacesim.load.live import LiveClient
from spacesim.results import records_frame, summarise, unsupported_actions

from .fakes import FakeServer
from .test_behaviour import scenario

pytestmark = pytest.mark.timeout(60)


# ---------------------------------------------------------------- URLs


def test_the_scheme_picks_the_driver() -> None:
    assert targets.driver_of("http://127.0.0.1:8080") == "spacesim"
    assert targets.driver_of("https://spaces.example") == "spacesim"
    assert targets.driver_of("janus://10.213.0.2:8088/janus?plugin=audiobridge") == "janus"
    for bad in ("ftp://x", "127.0.0.1:8080", "ws://x"):
        with pytest.raises(targets.TargetError, match="janus://"):
            targets.driver_of(bad)


def test_janus_urls() -> None:
    t = JanusTarget.parse("janus://10.213.0.2")
    assert (t.http, t.plugin_name) == ("http://10.213.0.2:8088/janus", "janus.plugin.videoroom")
    t = JanusTarget.parse("janus://h:9000/api?plugin=audiobridge")
    assert (t.http, t.plugin) == ("http://h:9000/api", "audiobridge")
    with pytest.raises(ValueError, match="plugin must be"):
        JanusTarget.parse("janus://h?plugin=echotest")
    with pytest.raises(ValueError, match="unknown parameter"):
        JanusTarget.parse("janus://h?plugn=videoroom")


async def test_http_targets_get_spacesim_clients() -> None:
    import aiohttp

    async with aiohttp.ClientSession() as http:
        client = targets.client_factory("http://127.0.0.1:1", http)("alice", moderator=True)
    assert isinstance(client, LiveClient)
    assert (client.user, client.rc.moderator, client.lacks) == ("alice", True, frozenset())


def test_check_janus_names_what_is_wrong() -> None:
    with pytest.raises(targets.TargetError, match="spacesim janus up"):
        targets.check_janus("janus://127.0.0.1:9/janus", timeout=1.0)


# ---------------------------------------------------------------- the Janus driver's decisions


class FakeJanus:
    """A `JanusSession` stand-in: records plugin requests, answers a room's participants."""

    def __init__(self, publishers: dict[str, int]) -> None:
        self.publishers = publishers
        self.requests: list[dict[str, Any]] = []
        self.handles = 0

    async def attach(self, plugin: str, on_event: Any = None) -> int:
        self.handles += 1
        return self.handles

    async def detach(self, handle: int) -> None:
        return None

    async def message(
        self, handle: int, body: dict[str, Any], jsep: Any = None, timeout: float = 0
    ) -> tuple[dict[str, Any], None]:
        self.requests.append(body)
        if body["request"] == "create":
            return {"videoroom": "created", "room": 1234}, None
        if body["request"] == "listparticipants":
            parts = [{"id": i, "display": d, "publisher": True} for d, i in self.publishers.items()]
            return {"participants": parts}, None
        return {}, None


def janus_client(plugin: str = "videoroom", **publishers: int) -> tuple[JanusClient, FakeJanus]:
    fake = FakeJanus(publishers)
    target = JanusTarget("10.213.0.2", plugin=plugin)
    return JanusClient(target, fake, "host", "10.213.0.1", {}), fake  # type: ignore[arg-type]


async def test_janus_rooms_are_created_with_the_secret_and_without_what_janus_lacks() -> None:
    client, fake = janus_client()
    assert client.lacks == LACKS >= {"schedule", "listener_cap", "captions", "recording"}
    assert await client.create_space("t", "everyone") == "1234"
    assert fake.requests[-1]["secret"] == ROOM_SECRET
    assert fake.requests[-1]["audiocodec"] == "opus"
    with pytest.raises(Unsupported) as exc:
        await client.create_space("t", "everyone", captions=True)
    assert exc.value.action == "captions"
    with pytest.raises(Unsupported):
        await client.start_space("1234")


async def test_janus_moderation_maps_to_the_plugins_requests() -> None:
    client, fake = janus_client(host=11, spk=12)
    await client.act("1234", "mute", target="spk")
    assert fake.requests[-1] == {"request": "moderate", "room": 1234, "id": 12, "mid": "0",
                                 "mute": True, "secret": ROOM_SECRET}  # fmt: skip
    await client.act("1234", "unmute", target="spk")
    assert fake.requests[-1]["mute"] is False
    await client.act("1234", "remove", target="host")
    assert fake.requests[-1] == {"request": "kick", "room": 1234, "id": 11, "secret": ROOM_SECRET}
    fake.requests.clear()
    await client.act("1234", "mute_all")  # everyone but the actor (the host)
    assert sorted(r["id"] for r in fake.requests if r["request"] == "moderate") == [12]
    # AudioBridge has its own mute requests
    bridge, bfake = janus_client("audiobridge", spk=12)
    await bridge.act("1234", "mute", target="spk")
    assert bfake.requests[-1] == {"request": "mute", "room": 1234, "id": 12, "secret": ROOM_SECRET}


async def test_janus_lacks_the_protocols_other_actions() -> None:
    client, fake = janus_client(spk=12)
    for action in ("raise_hand", "react", "report", "invite", "add_cohost", "block"):
        with pytest.raises(Unsupported) as exc:
            await client.act("1234", action, target="spk")
        assert exc.value.action == action
    with pytest.raises(Unsupported) as exc:
        await client.act("1234", "remove", target="a-listener")  # subscribers are not members
    assert exc.value.action == "remove"
    for call, name in (
        (lambda: client.follow("x"), "follow"),
        (lambda: client.moderate("1234", "remove", "spk"), "platform_moderation"),
        (lambda: client.cut_clip("1234"), "clip"),
    ):
        with pytest.raises(Unsupported) as exc:
            await call()
        assert exc.value.action == name
    with pytest.raises(Unsupported):
        client.events("1234")
    assert not any(r["request"] in ("moderate", "kick") for r in fake.requests)


async def test_a_janus_listener_waits_for_a_publisher_then_gives_up(monkeypatch: Any) -> None:
    monkeypatch.setattr("spacesim.load.janus.FEED_WAIT", 0.6)
    client, _ = janus_client()
    with pytest.raises(ClientError) as exc:
        await client.connect_audio("1234", lambda *a: None)
    assert exc.value.code == "no_publishers"


# ---------------------------------------------------------------- the swarm on a lacking target

#: What the Janus driver raises, on the in-memory server.
JANUS_LIKE = frozenset(
    {"events", "raise_hand", "react", "report", "block", "invite", "accept_invite",
     "add_cohost", "follow", "moderate", "start", "clip", "mute", "demote"}
)  # fmt: skip


async def test_the_swarm_records_every_unsupported_action_and_keeps_going() -> None:
    server = FakeServer()
    server.lacks = LACKS
    server.unsupported = JANUS_LIKE
    sc = scenario(
        rooms={"count": 1, "cohosts": 1, "speakers": 1, "listener_cap": 50},
        audience={"hand_raise_rate": "5/s", "reaction_rate": "5/s", "report_rate": "5/s",
                  "events_share": 1.0},
        moderation={"mute_rate": "1/s"},
        features={"captions": 1.0},
    )  # fmt: skip
    try:
        rows = await dry_run(sc, server.client, seconds=3.0, listeners=3, network=False)
    finally:
        await server.close()
    kinds = Counter(r[0] for r in rows)
    asked = Counter(json.loads(r[6])["action"] for r in rows if r[0] == "action_unsupported")
    # created without what the target lacks, and said so
    assert {"listener_cap", "captions"} <= set(asked)
    assert not any(fs.created["captions"] or fs.created["listener_cap"]
                   for fs in server.spaces.values())  # fmt: skip
    # the stage is seated without roles; the host and listeners find no event stream
    assert {"add_cohost", "invite", "events"} <= set(asked)
    assert asked["events"] >= 2  # the host's and the subscribing listeners'
    # the listeners' and host's rate-driven actions are recorded, not performed
    assert {"raise_hand", "react", "report", "mute"} <= set(asked)
    assert not kinds["hand_raised"] and not kinds["reaction"] and not kinds["report_filed"]
    assert not kinds["moderation_action"] and not kinds["events_received"]
    # ... and the audio still flowed
    assert kinds["participant_joined"] >= 3 and kinds["audio_latency"] > 0
    summary = summarise(records_frame(rows, "r", "load"))
    assert summary.loc["unsupported_react", "value"] == asked["react"]
    assert unsupported_actions(records_frame(rows, "r", "load")) == dict(
        sorted(asked.items(), key=lambda kv: (-kv[1], kv[0]))
    )


async def test_spacesims_own_server_lacks_nothing() -> None:
    server = FakeServer()
    sc = scenario(audience={"reaction_rate": "5/s"})
    try:
        rows = await dry_run(sc, server.client, seconds=4.0, listeners=3, network=False)
    finally:
        await server.close()
    assert not [r for r in rows if r[0] == "action_unsupported"]
    assert any(r[0] == "reaction" for r in rows)


def test_unsupported_is_an_exception_naming_the_action() -> None:
    exc = Unsupported("raise_hand", "no hands")
    assert exc.action == "raise_hand" and "raise_hand" in str(exc) and "no hands" in str(exc)
    assert not isinstance(exc, ClientError)  # never mistaken for a refusal or a failure


# ---------------------------------------------------------------- commands and the meter


def test_load_refuses_a_target_no_driver_takes(capsys: pytest.CaptureFixture[str]) -> None:
    from spacesim.load.run import main

    smoke = Path(__file__).resolve().parents[2] / "scenarios" / "smoke.yaml"
    assert main(smoke, "ftp://127.0.0.1:21", users=3, duration=5) == 2
    assert "janus://" in capsys.readouterr().err
    assert main(smoke, "janus://127.0.0.1:9/janus", users=3, duration=5) == 2
    assert "spacesim janus up" in capsys.readouterr().err


def test_janus_status_without_an_instance(capsys: pytest.CaptureFixture[str]) -> None:
    from spacesim.cli import main

    assert main(["janus", "status", "--name", "no-such-namespace"]) == 1
    assert "no Janus running" in capsys.readouterr().err


def test_the_meter_reads_a_process_cpu_and_udp_datagrams() -> None:
    import os
    import socket

    from spacesim.load.janus_server import JanusMeter

    meter = JanusMeter(os.getpid())
    sent = meter.packets()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for _ in range(5):
            s.sendto(b"x", ("127.0.0.1", 9))
    assert meter.packets() >= sent + 5  # this namespace's Udp OutDatagrams
    t = meter.cpu_seconds()
    sum(i * i for i in range(2_000_000))  # > 1 clock tick of CPU
    assert meter.cpu_seconds() > t


async def test_without_an_event_stream_the_host_learns_its_own_mutes() -> None:
    """On a target with no event stream (Janus), a successful mute is known from the
    request itself: the member's track goes quiet and unmutes after ``unmute_after``."""
    server = FakeServer()
    server.unsupported = frozenset({"events"})
    sc = scenario(moderation={"mute_rate": "2/s", "unmute_after": "0.3s"})
    try:
        rows = await dry_run(sc, server.client, seconds=4.0, listeners=1, network=False)
    finally:
        await server.close()
    kinds = Counter(r[0] for r in rows)
    assert kinds["action_unsupported"] >= 1  # the host's event stream
    assert server.actions["mute"] >= 1 and kinds["muted"] >= 1
    assert server.actions["unmute"] >= 1 and kinds["unmuted"] >= 1


async def test_a_subscription_janus_dropped_is_tried_again_on_a_new_handle() -> None:
    """Janus answering ``start`` with 471 (the offer's PeerConnection is gone) costs a
    retry on a new handle, not the listener's join."""
    from aiortc import RTCPeerConnection

    from spacesim import rtc
    from spacesim.load.janus import SUBSCRIBE_ATTEMPTS

    rtc.use_host_addresses(["127.0.0.1"])  # the client's ice_host below (process-wide)
    janus_pc = RTCPeerConnection()
    janus_pc.addTransceiver("audio", direction="sendonly")
    await janus_pc.setLocalDescription(await janus_pc.createOffer())
    offer = {"type": "offer", "sdp": janus_pc.localDescription.sdp}

    class Flaky(FakeJanus):
        def __init__(self, failures: int) -> None:
            super().__init__({"host": 11})
            self.failures = failures

        async def message(  # type: ignore[override]
            self, handle: int, body: dict[str, Any], jsep: Any = None, timeout: float = 0
        ) -> tuple[dict[str, Any], Any]:
            if body["request"] == "join":
                self.requests.append(body)
                return {"videoroom": "attached"}, offer
            if body["request"] == "start" and self.failures:
                self.failures -= 1
                raise ClientError(502, "janus_471", "Invalid PeerConnection")
            return await super().message(handle, body, jsep, timeout)

    try:
        for failures, ok in ((1, True), (SUBSCRIBE_ATTEMPTS, False)):
            fake = Flaky(failures)
            target = JanusTarget("10.213.0.2")
            client = JanusClient(target, fake, "l0", "127.0.0.1", {})  # type: ignore[arg-type]
            if ok:
                link = await client._subscribe("1234", lambda *a: None, None, None)
                assert link.join["feeds"] == 1 and fake.handles == 1 + 2  # control + 2 tries
                await link.pc.close()
            else:
                with pytest.raises(ClientError, match="janus_471"):
                    await client._subscribe("1234", lambda *a: None, None, None)
                assert fake.handles == 1 + SUBSCRIBE_ATTEMPTS
    finally:
        await janus_pc.close()


def test_a_janus_target_lacks_the_models_admission_limit() -> None:
    """server.max_streams is enforced by the embedded server only: against Janus it is
    listed as lacking, not silently dropped."""
    from spacesim.load.run import target_lacks
    from spacesim.scenario import load_scenario

    sc = load_scenario("scenarios/smoke.yaml", ["server.max_streams=10"])
    assert "server.max_streams" in target_lacks(sc, "janus://10.213.0.2:8088")
    assert target_lacks(sc, None) == []
    plain = load_scenario("scenarios/smoke.yaml")
    assert "server.max_streams" not in target_lacks(plain, "janus://10.213.0.2:8088")
