"""The server's web page in a real headless Chromium: a host and two listeners, each in
their own browser context, against `spacesim serve` on 127.0.0.1.

The host speaks a 440 Hz tone through Chromium's fake capture (a WAV file); the
listeners' pages must hear it (getStats: bytes and decoded audio energy; WebAudio: the
loudest frequency), see the host on stage and speaking; a hand is raised and approved
from the host's page, a reaction reaches the others, a listener is removed and sees it.
"""

from __future__ import annotations

import asyncio
import math
import struct
import time
import wave
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from playwright.async_api import Browser, Page, async_playwright, expect

from spacesim.server import launch

pytestmark = pytest.mark.timeout(120)

TONE_HZ = 440.0
RATE = 48_000
#: Flags for headless Chromium on a machine without audio hardware or a display, and no
#: more: no --allow-loopback-in-peer-connection and no autoplay override, so the page
#: connects and plays as a user's browser does (a click on Join is the user's gesture).
FLAGS = (
    "--use-fake-ui-for-media-stream",  # grant getUserMedia without a prompt
    "--use-fake-device-for-media-stream",
    "--no-sandbox",  # root in a container: Chromium's sandbox needs user namespaces
    "--disable-gpu",
)
#: Default wait for something to show in a page (ms).
WAIT_MS = 10_000


def write_tone(path: Path, seconds: float = 4.0, hz: float = TONE_HZ) -> None:
    """A mono 16-bit WAV tone; Chromium's fake capture loops the file."""
    n = int(seconds * RATE)
    samples = (int(12000 * math.sin(2 * math.pi * hz * i / RATE)) for i in range(n))
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(RATE)
        w.writeframes(b"".join(struct.pack("<h", s) for s in samples))


@pytest.fixture
async def browser(chromium: str, tmp_path: Path) -> AsyncIterator[Browser]:
    wav = tmp_path / "tone.wav"
    write_tone(wav)
    async with async_playwright() as p:
        b = await p.chromium.launch(
            executable_path=chromium,
            args=[*FLAGS, f"--use-file-for-fake-audio-capture={wav}"],
        )
        try:
            yield b
        finally:
            await b.close()


async def open_as(browser: Browser, url: str, user: str, moderator: bool = False) -> Page:
    """A fresh browser context (its own storage) with the page, signed in as `user`."""
    context = await browser.new_context()
    page = await context.new_page()
    page.set_default_timeout(WAIT_MS)
    errors: list[str] = []  # uncaught exceptions in the page's scripts
    refusals: list[str] = []  # requests the server refused
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on(
        "response",
        lambda r: refusals.append(f"{r.status} {r.url}") if r.status >= 400 else None,
    )
    await page.goto(url)
    await page.fill("#login-user", user)
    if moderator:
        await page.check("#login-moderator")
    await page.click("#login-form button[type=submit]")
    await expect(page.locator("#whoami")).to_contain_text(user)
    page.errors = errors  # type: ignore[attr-defined]
    page.refusals = refusals  # type: ignore[attr-defined]
    return page


# The page's own state (window.spacesim): what its receivers got, and the loudest
# frequency of the first listen slot (WebAudio: the analyser the page meters it with).
HEARD_JS = """async () => {
  const audio = window.spacesim.room.audio;
  const stats = await audio.received();
  const a = audio.slotMeters[0];
  const bins = new Float32Array(a.frequencyBinCount);
  a.getFloatFrequencyData(bins);
  let best = 0;
  for (let i = 1; i < bins.length; i++) if (bins[i] > bins[best]) best = i;
  return {stats, peak_hz: best * a.context.sampleRate / a.fftSize, level: audio.levels().slots[0]};
}"""


async def heard(page: Page, timeout: float = 10.0) -> dict[str, Any]:
    """Wait until the page's first slot has decoded audio energy; its figures."""
    deadline = time.monotonic() + timeout
    await expect(page.locator("#room")).to_have_attribute("data-audio", "connected")
    while True:
        got: dict[str, Any] = await page.evaluate(HEARD_JS)
        stats = got["stats"]
        # a second of packets (50 x 20 ms), decoded to sound in the page
        if stats and stats[0]["packets"] >= 50 and stats[0]["energy"] > 0 and got["level"] > 0.01:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"no audio heard: {got}")
        await page.wait_for_timeout(200)


async def test_a_new_user_opens_the_page_and_hears_the_demo_space(
    browser: Browser, tmp_path: Path
) -> None:
    """`spacesim serve --demo-space`, then the address in a browser: the demo space is
    listed, one click joins it, and its host's speech plays."""
    from spacesim.server.demo_space import DEMO_TITLE

    with launch.embedded_server(tmp_path, args=["--demo-space"]) as url:
        page = await open_as(browser, url, "zoë")  # a name that is not ASCII
        row = page.locator("#spaces li", has_text=DEMO_TITLE)
        await row.locator("button").click()
        got = await heard(page, timeout=15)
        assert got["stats"][0]["bytes"] > 1000, got
        await expect(page.locator("#stage li[data-user='demo-host']")).to_have_class("speaking")
        await page.screenshot(path=tmp_path / "demo.png", full_page=True)
        assert page.errors == [], page.errors  # type: ignore[attr-defined]
        assert page.refusals == [], page.refusals  # type: ignore[attr-defined]
        # gone before the server stops: it waits for open event streams (aiohttp's
        # shutdown_timeout) and the launcher would wait 10 s, then kill it
        await page.context.close()


async def crowd(url: str, space: str, users: list[str]) -> None:
    """`users` join the space at once over HTTP, without audio."""
    async with aiohttp.ClientSession() as http:

        async def one(user: str) -> None:
            r = await http.post(f"{url}/v1/dev/token", json={"user": user})
            token = (await r.json())["token"]
            r = await http.post(
                f"{url}/v1/spaces/{space}/join",
                json={},
                headers={"Authorization": f"Bearer {token}"},
            )
            assert r.status == 200, await r.text()

        await asyncio.gather(*(one(u) for u in users))


async def test_a_host_and_two_listeners_in_chromium(
    browser: Browser, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    started = time.monotonic()
    shots = tmp_path / "screenshots"
    shots.mkdir()
    with launch.embedded_server(tmp_path) as url:
        host = await open_as(browser, url, "hana")
        await host.fill("#new-title", "Browser test")
        await host.click("#create-form button[type=submit]")
        await expect(host.locator("#room")).to_have_attribute("data-role", "host")
        space = host.url.split("space=")[1]
        await expect(host.locator("#meters meter[data-mic]")).to_have_count(1)

        listeners = []
        for name in ("lee", "lou"):
            page = await open_as(browser, url, name)
            row = page.locator(f"#spaces li[data-space='{space}']")
            await expect(row).to_contain_text("Browser test")
            await row.locator("button").click()
            await expect(page.locator("#room")).to_have_attribute("data-audio", "connected")
            await expect(page.locator("#room")).to_have_attribute("data-role", "listener")
            listeners.append(page)
        lee, lou = listeners

        # both listeners hear the host's tone and see the host on stage, speaking
        for page in listeners:
            got = await heard(page)
            assert got["stats"][0]["bytes"] > 1000, got
            assert abs(got["peak_hz"] - TONE_HZ) < 2 * RATE / 1024, got  # within 2 FFT bins
            stage_host = page.locator("#stage li[data-user='hana']")
            await expect(stage_host).to_have_attribute("data-role", "host")
            await expect(stage_host).to_have_class("speaking")
        await expect(host.locator("#listeners li")).to_have_count(2)
        await lee.screenshot(path=shots / "listener.png", full_page=True)

        # a crowd of 30 joins (HTTP, no audio): the host's page gets an event for each
        # and lists them with a GET a second, not a GET an event
        lists: list[str] = []
        host.on("request", lambda r: lists.append(r.url) if "/participants" in r.url else None)
        crowd_started = time.monotonic()
        await crowd(url, space, [f"fan{i}" for i in range(30)])
        await expect(host.locator("#listeners li")).to_have_count(32)
        crowd_s = time.monotonic() - crowd_started
        assert len(lists) <= crowd_s + 2, (len(lists), crowd_s)

        # a hand raised on lee's page, approved on the host's: lee is on stage everywhere
        await lee.click("#hand")
        approve = host.locator("#hands li[data-user='lee'] button.approve")
        await approve.click()
        await expect(lee.locator("#room")).to_have_attribute("data-role", "speaker")
        for page in (host, lou):
            await expect(page.locator("#stage li[data-user='lee']")).to_have_attribute(
                "data-role", "speaker"
            )
        await expect(lee.locator("#meters meter[data-mic]")).to_have_count(1)  # lee's mic is on
        # what lee's browser publishes reaches lou's: lee lights up as speaking there
        lee_on_lou = lou.locator("#stage li[data-user='lee']")
        await expect(lee_on_lou).to_have_class("speaking")

        # mute all from the host's page: lee is muted (and silent), then unmutes
        await host.click("#controls button:text('Mute all')")
        await expect(lee.locator("#controls button:text('Unmute me')")).to_be_visible()
        await expect(lee_on_lou.locator(".muted")).to_have_text("muted")
        await expect(lee_on_lou).not_to_have_class("speaking")
        await lee.click("#controls button:text('Unmute me')")
        await expect(lee_on_lou.locator(".muted")).to_have_count(0)
        await expect(lee_on_lou).to_have_class("speaking")

        # a reaction from lou reaches the host and lee
        await lou.click("#react button[data-emoji='👏']")
        for page in (host, lee):
            await expect(page.locator("#reactions li[data-user='lou']")).to_contain_text("👏")

        await host.screenshot(path=shots / "host.png", full_page=True)
        # lee reports lou; the host acts on the report from its page: lou is removed and
        # lou's page says so and stops
        await lee.locator("#listeners li[data-user='lou'] button", has_text="Report").click()
        report = host.locator("#reports li", has_text="lee reported lou")
        await report.locator("button", has_text="remove").click()
        await expect(report).to_contain_text("handled: remove")
        await expect(lou.locator("#notice")).to_have_text("You were removed from the space.")
        await expect(lou.locator("#room")).to_have_attribute("data-over", "true")
        await expect(host.locator("#listeners li[data-user='lou']")).to_have_count(0)
        await lou.screenshot(path=shots / "removed.png", full_page=True)

        for page in (host, lee, lou):
            assert page.errors == [], page.errors  # type: ignore[attr-defined]
        for page in (host, lee):  # lou's last requests may meet the removal: a 403
            assert page.refusals == [], page.refusals  # type: ignore[attr-defined]
    elapsed = time.monotonic() - started
    print(f"browser test: {elapsed:.1f} s; screenshots in {shots}")


def write_clip(path: Path, name: str, pause_s: float = 1.5) -> None:
    """A shipped speech clip (Opus) as a mono 16-bit WAV, with a pause after it so each
    loop of Chromium's fake capture ends an utterance."""
    import av
    import numpy as np

    from spacesim.client.speaker import load_clip

    codec: Any = av.CodecContext.create("libopus", "r")
    chunks = [
        frame.to_ndarray().reshape(-1, 2)[:, 0]  # packed s16 stereo: the left channel
        for payload in load_clip(name)
        for frame in codec.decode(av.Packet(payload))
    ]
    samples = np.concatenate([*chunks, np.zeros(int(pause_s * RATE), np.int16)])
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(RATE)
        w.writeframes(samples.astype("<i2").tobytes())


@pytest.mark.slow
async def test_a_scheduled_space_with_captions_invites_cohosts_and_moderation(
    chromium: str, tmp_path: Path
) -> None:
    """The rest of the page: a scheduled space started from the host's page, live
    captions of the host's speech, an invite accepted, a co-host made, a report resolved by
    a platform moderator, a block, and the end seen by everyone."""
    from spacesim.client.speaker import transcripts

    started = time.monotonic()
    wav = tmp_path / "garden.wav"
    write_clip(wav, "garden")
    said = set(transcripts()["garden"].lower().replace(".", "").split())
    shots = tmp_path / "screenshots"
    shots.mkdir()
    async with async_playwright() as p:
        browser = await p.chromium.launch(
            executable_path=chromium, args=[*FLAGS, f"--use-file-for-fake-audio-capture={wav}"]
        )
        with launch.embedded_server(tmp_path) as url:
            host = await open_as(browser, url, "hana")
            await host.fill("#new-title", "Later today")
            await host.fill("#new-in", "30")
            await host.check("#new-captions")
            await host.click("#create-form button[type=submit]")
            await expect(host.locator("#room")).to_have_attribute("data-status", "scheduled")
            space = host.url.split("space=")[1]

            lee = await open_as(browser, url, "lee")
            row = lee.locator(f"#spaces li[data-space='{space}']")
            await expect(row).to_have_attribute("data-status", "scheduled")
            await row.locator("button").click()
            await expect(lee.locator("#notice")).to_contain_text("not_started")
            await lee.click("#leave")

            await host.click("#controls button:text('Start')")
            await expect(host.locator("#room")).to_have_attribute("data-status", "live")
            pages = {"hana": host, "lee": lee}
            await lee.locator(f"#spaces li[data-space='{space}'] button").click()
            for name in ("lou", "mo"):
                page = await open_as(browser, url, name, moderator=name == "mo")
                await page.locator(f"#spaces li[data-space='{space}'] button").click()
                pages[name] = page
            lou, mo = pages["lou"], pages["mo"]
            for page in pages.values():
                await expect(page.locator("#room")).to_have_attribute("data-audio", "connected")

            # captions of what the host says, on a listener's page
            words: set[str] = set()
            deadline = time.monotonic() + 40
            while len(words & said) < 3 and time.monotonic() < deadline:
                lines = await lee.locator("#captions p[data-speaker='hana']").all_inner_texts()
                words = {w for line in lines for w in line.lower().split()}
                await lee.wait_for_timeout(500)
            assert len(words & said) >= 3, (words, said)

            # an invite accepted, then a co-host who can approve hands
            await host.locator("#listeners li[data-user='lou'] button", has_text="Invite").click()
            await lou.click('#controls button:text("Accept hana\'s invite")')
            await expect(lou.locator("#room")).to_have_attribute("data-role", "speaker")
            await host.locator("#stage li[data-user='lou'] button", has_text="Make co-host").click()
            await expect(lou.locator("#room")).to_have_attribute("data-role", "cohost")
            await lee.click("#hand")
            await expect(lou.locator("#hands li[data-user='lee'] button.approve")).to_be_visible()
            await lee.click("#hand")  # lowered again
            await expect(lou.locator("#hands li")).to_have_count(0)

            # lee reports the space; the platform moderator resolves it from the page
            await lee.click("#controls button:text('Report space')")
            report = mo.locator("#reports li", has_text="lee reported the space")
            await report.locator("button", has_text="dismiss").click()
            await expect(report).to_contain_text("resolved: dismiss")
            await host.screenshot(path=shots / "host-captions.png", full_page=True)

            # the host blocks lee, then ends the space: everyone's page says so
            await host.locator("#listeners li[data-user='lee'] button", has_text="Block").click()
            await expect(lee.locator("#notice")).to_have_text("You were blocked from the space.")
            await host.click("#controls button:text('End space')")
            for page in (lou, mo):
                await expect(page.locator("#notice")).to_have_text("The space has ended.")
            for page in pages.values():
                assert page.errors == [], page.errors  # type: ignore[attr-defined]
        await browser.close()
    print(f"browser test (slow): {time.monotonic() - started:.1f} s; screenshots in {shots}")


@pytest.mark.slow
async def test_pages_come_back_after_the_server_is_killed_and_restarted(
    browser: Browser, tmp_path: Path
) -> None:
    """kill -9 and a restart on the same address: the pages join again with new offers
    (keeping their roles), the listener hears the host again and events flow again."""
    started = time.monotonic()
    port = launch.free_port()
    db = tmp_path / "server.db"
    proc, url = launch.start(db, port)
    try:
        launch.wait_up(proc, url)
        host = await open_as(browser, url, "hana")
        await host.click("#create-form button[type=submit]")
        await expect(host.locator("#room")).to_have_attribute("data-role", "host")
        space = host.url.split("space=")[1]
        lee = await open_as(browser, url, "lee")
        await lee.locator(f"#spaces li[data-space='{space}'] button").click()
        await heard(lee)
        first_pc = await lee.evaluate("() => window.spacesim.room.audio.pc.localDescription.sdp")

        proc.kill()  # SIGKILL: no goodbye to anyone
        proc.wait(10)
        proc, _ = launch.start(db, port)
        launch.wait_up(proc, url)

        await expect(lee.locator("#notice")).to_have_text("Reconnected.", timeout=30_000)
        await expect(host.locator("#notice")).to_have_text("Reconnected.", timeout=30_000)
        again = await lee.evaluate("() => window.spacesim.room.audio.pc.localDescription.sdp")
        assert again != first_pc  # a new connection, not the old one revived
        await expect(lee.locator("#room")).to_have_attribute("data-role", "listener")
        await expect(host.locator("#room")).to_have_attribute("data-role", "host")
        await heard(lee, timeout=15)
        await host.click("#react button[data-emoji='🎉']")  # the event stream is back too
        await expect(lee.locator("#reactions li[data-user='hana']")).to_contain_text("🎉")
        for page in (host, lee):
            assert page.errors == [], page.errors  # type: ignore[attr-defined]
    finally:
        launch.stop(proc)
    print(f"browser restart test: {time.monotonic() - started:.1f} s")
