"""Browser probes (`load.browser_probes`): Chromium listeners beside the swarm.

The run test drives `spacesim load` (Locust in its subprocess, the probes' helper in
another); the rest checks the records a probe's samples become, without a browser.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest

from spacesim.load import browser
from spacesim.load.run import main
from spacesim.results import KINDS, Recorder, load_run, summarise

TINY = """\
name: tiny-browser
duration: 10s
rooms: {count: 1, speakers: 1}
speaking: {active_speakers: 2}
arrivals: {kind: constant, rate: 1/s}
session: {kind: fixed, mean: 60s}
load: {probe_fraction: 100%}
"""


@pytest.mark.timeout(90)
def test_a_load_run_with_a_browser_probe_reports_browser_mouth_to_ear(tmp_path: Path) -> None:
    """`--set load.browser_probes=1`: the probe joins the swarm's space in Chromium and its
    records (attrs.client=browser) sit in the run beside the aiortc probes'."""
    path = tmp_path / "tiny.yaml"
    path.write_text(TINY)
    out = tmp_path / "run"
    rc = main(path, users=3, duration=10, out=out, shape="steady", network="none",
              overrides=["load.browser_probes=1"])  # fmt: skip
    assert rc == 0, (out / "browser.log").read_text()
    rec = load_run(out).records
    ours = rec[rec["kind"].astype(str).str.startswith("browser_")]
    assert set(ours["source"].astype(str)) == {"load"}
    assert all(json.loads(a)["client"] == "browser" for a in ours["attrs"])
    assert ours["participant"].astype(str).isin({"browser-probe-0", ""}).all()
    s = summarise(rec).loc
    # On loopback: NetEq holds tens of ms; the probe hears the speaker within a second.
    assert s["browser_mouth_to_ear", "count"] >= 20, (out / "browser.log").read_text()
    assert 0.005 < s["browser_jitter_buffer", "p50"] < 0.5
    assert s["browser_jitter_buffer", "p50"] < s["browser_mouth_to_ear", "p50"] < 1.0
    assert 0 <= s["browser_concealed", "p50"] <= 1
    assert s["browser_packets_lost", "value"] == 0  # loopback, no netem
    assert 0 < s["browser_probe_cpu", "p50"] < 2.0
    # Beside the aiortc probes' of the same run, within a few hundred ms of it.
    assert abs(s["browser_mouth_to_ear", "p50"] - s["mouth_to_ear", "p50"]) < 0.3


def _take(
    delay: float,
    emitted: float,
    concealed: float,
    total: float,
    lost: float,
    marks: list[list[object]],
    playout: tuple[float, float] | None = None,
) -> dict[str, object]:
    """What probe.js's take() answers: cumulative counters of one listen slot (mid 1)."""
    return {
        "marks": marks,
        "inbound": [
            {
                "mid": "1",
                "jitterBufferDelay": delay,
                "jitterBufferEmittedCount": emitted,
                "concealedSamples": concealed,
                "totalSamplesReceived": total,
                "packetsLost": lost,
                "packetsReceived": 50,
            },
        ],
        "playout": None
        if playout is None
        else {"totalPlayoutDelay": playout[0], "totalSamplesCount": playout[1]},
    }


def test_tick_records_use_deltas_of_the_cumulative_counters() -> None:
    prev = _take(100.0, 2000.0, 10.0, 48_000.0, 3.0, [], (10.0, 1000.0))
    # Next second: 48,000 samples emitted after 2,400 s of summed delay -> 50 ms each;
    # 480 concealed of 48,000 -> 1 %; 2 more packets lost; playout 20 ms per sample.
    marks = [["1", 7, seq, 1_000_000_000, 1_030_000_000] for seq in range(50)]
    now = _take(2500.0, 50_000.0, 490.0, 96_000.0, 5.0, marks, (30.0, 2000.0))
    rows = browser.tick_records(3.0, "s-1", "browser-probe-0", now, prev)
    by = pd.DataFrame(rows, columns=["kind", "t", "room", "participant", "role", "value", "a"])
    value = by.groupby("kind")["value"]
    assert value.first()["browser_jitter_buffer"] == pytest.approx(0.05)
    assert value.first()["browser_concealed"] == pytest.approx(0.01)
    assert value.first()["browser_packets_lost"] == 2
    assert value.first()["browser_playout"] == pytest.approx(0.02)
    m2e = by[by["kind"] == "browser_mouth_to_ear"]["value"]
    assert len(m2e) == browser.MARK_SAMPLES  # sampled as the aiortc probes are
    assert m2e.to_list() == pytest.approx([0.03 + 0.05 + 0.02] * browser.MARK_SAMPLES)
    assert set(by["kind"]) <= set(KINDS) and (by["t"] == 3.0).all()
    assert (by["room"] == "s-1").all() and set(by["a"]) == {'{"client": "browser"}'}


def test_tick_records_without_emitted_audio_give_no_mouth_to_ear() -> None:
    """A slot NetEq emitted nothing from (not played yet) has no jitter buffer delay to add:
    its marks give no mouth-to-ear rather than a network-only figure."""
    first = _take(0.0, 0.0, 0.0, 0.0, 0.0, [["1", 1, 1, 0, 20_000_000]])
    kinds = [r[0] for r in browser.tick_records(1.0, "s", "p", first, None)]
    assert "browser_mouth_to_ear" not in kinds and "browser_jitter_buffer" not in kinds
    assert kinds == ["browser_packets_lost"]
    assert browser.tick_records(1.0, "s", "p", {"marks": [], "inbound": [], "playout": None},
                                None) == []  # fmt: skip


def test_summarise_shows_browser_figures_beside_the_aiortc_probes() -> None:
    rec = Recorder("r", "load")
    for v in (0.10, 0.12, 0.14):
        rec.add("mouth_to_ear", 1.0, "s", "l1", "listener", v)
        rec.add("browser_mouth_to_ear", 1.0, "s", "b", "listener", v + 0.05, {"client": "browser"})
    rec.add("browser_jitter_buffer", 1.0, "s", "b", "listener", 0.06, {"client": "browser"})
    rec.add("browser_packets_lost", 1.0, "s", "b", "listener", 2, {"client": "browser"})
    rec.add("browser_cpu", 1.0, value=0.5, attrs={"client": "browser", "probes": 2})
    s = summarise(rec.to_frame()).loc
    assert s["browser_mouth_to_ear", "p50"] == pytest.approx(s["mouth_to_ear", "p50"] + 0.05)
    assert s["browser_jitter_buffer", "p50"] == pytest.approx(0.06)
    assert s["browser_packets_lost", "value"] == 2
    assert s["browser_probe_cpu", "p50"] == pytest.approx(0.25)  # per probe
    plain = summarise(Recorder("r", "load").to_frame())
    assert not any(name.startswith("browser_") for name in plain.index)
    assert all(math.isfinite(s[k, "p50"]) for k in ("browser_mouth_to_ear", "mouth_to_ear"))


def test_chromium_cpu_counts_only_chromium_descendants() -> None:
    """The helper itself (python) is not a Chromium process: nothing under a process
    without Chromium children."""
    import os

    assert browser.chromium_cpu_seconds(os.getpid()) == 0.0


def test_no_chromium_and_no_setup_script_fails_clearly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(browser, "CANDIDATES", ())
    monkeypatch.delenv("SPACESIM_CHROMIUM", raising=False)
    with pytest.raises(browser.BrowserUnavailable, match="install it"):
        browser.ensure_chromium(tmp_path / "missing.sh")
    failing = tmp_path / "setup.sh"
    failing.write_text("echo cannot install >&2; exit 1\n")
    with pytest.raises(browser.BrowserUnavailable, match="cannot install"):
        browser.ensure_chromium(failing)
    monkeypatch.setenv("SPACESIM_CHROMIUM", "/bin/true")
    assert browser.ensure_chromium(failing) == "/bin/true"


def test_a_run_asking_for_browser_probes_without_chromium_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """No Chromium and none installable: exit 2 with the reason, before anything starts."""

    def missing(setup: Path = browser.SETUP) -> str:
        raise browser.BrowserUnavailable("browser probes need Chromium: install it")

    monkeypatch.setattr(browser, "ensure_chromium", missing)
    path = tmp_path / "tiny.yaml"
    path.write_text(TINY)
    out = tmp_path / "run"
    assert main(path, users=3, duration=5, out=out, overrides=["load.browser_probes=1"]) == 2
    assert "browser probes need Chromium" in capsys.readouterr().err
    assert not (out / "parts").exists()
