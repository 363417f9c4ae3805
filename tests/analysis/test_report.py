"""`spacesim report`: one self-contained HTML file, one run or several side by side."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from spacesim.cli import main
from spacesim.results import write_run
from spacesim.scenario import load_scenario
from spacesim.sim import simulate
from tests.analysis import synthetic

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def sim_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    sc = load_scenario(ROOT / "scenarios" / "smoke.yaml", ["duration=30s"])
    run = simulate(sc)
    return write_run(tmp_path_factory.mktemp("runs") / "smoke", run.records, run.meta)


def _images(page: str) -> list[str]:
    return re.findall(r'<img alt="[^"]*" src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)


def test_report_on_one_sim_run(sim_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "one.html"
    assert main(["report", str(sim_run), "-o", str(out)]) == 0
    page = out.read_text(encoding="utf-8")
    assert len(_images(page)) == 7
    assert all(len(b64) > 1000 for b64 in _images(page))
    assert 'src="http' not in page and "<script" not in page  # nothing fetched
    for objective in ("join_time.p95", "first_audio.p95", "audio_latency.p95"):
        assert objective in page
    assert '<span class="pass">pass</span>' in page
    assert "excludes the listener&#x27;s jitter buffer" in page  # plain words, escaped
    assert "name: smoke" in page  # the scenario itself
    assert "Linux" in page or "Darwin" in page or "Windows" in page  # machine from meta


def test_report_compares_a_load_run_and_a_sim_run(sim_run: Path, tmp_path: Path) -> None:
    load = synthetic.write(tmp_path / "load", "load", "load-1")
    synthetic.write_server(load)
    out = tmp_path / "two.html"
    assert main(["report", str(sim_run), str(load), "-o", str(out)]) == 0
    page = out.read_text(encoding="utf-8")
    assert "2 runs compared side by side" in page
    assert "sim (independent draw): smoke (" in page and "load: unit (load-1)" in page
    assert '<span class="fail">FAIL</span>' in page  # the synthetic run misses its latency SLO
    assert "different scenarios" in page
    assert "(server&#x27;s own)" not in page  # legends live in the images, not the HTML
    assert len(_images(page)) == 7


def test_bad_input_exits_2_naming_the_path(
    sim_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "no-such-run"
    assert main(["report", str(sim_run), str(missing), "-o", str(tmp_path / "x.html")]) == 2
    assert str(missing) in capsys.readouterr().err
    assert not (tmp_path / "x.html").exists()
    assert main(["report", str(tmp_path), "-o", str(tmp_path / "x.html")]) == 2
    assert "not a run directory" in capsys.readouterr().err


def test_report_shows_browser_mouth_to_ear_beside_the_aiortc_probes(tmp_path: Path) -> None:
    """A load run with browser probes gets its own section: both probes' mouth-to-ear,
    both jitter buffers, the reason they differ, and their distributions in one figure;
    a run without browser probes gets none of it."""
    from spacesim.results import write_run as write

    rec = synthetic.recorder("load", "load-b")
    for i, v in enumerate((0.150, 0.160, 0.170)):
        rec.add("mouth_to_ear", 10.0 + i, "room-0", "L1", "listener", v)
        rec.add("client_buffer", 10.0 + i, "room-0", "L1", "listener", 0.080)
        rec.add("browser_mouth_to_ear", 10.0 + i, "room-0", "browser-probe-0", "listener",
                v + 0.100, {"client": "browser"})  # fmt: skip
        rec.add("browser_jitter_buffer", 10.0 + i, "room-0", "browser-probe-0", "listener",
                0.120, {"client": "browser"})  # fmt: skip
    run = write(tmp_path / "load", rec.to_frame(), synthetic.meta("load", "load-b"))
    out = tmp_path / "browser.html"
    assert main(["report", str(run), "-o", str(out)]) == 0
    page = out.read_text(encoding="utf-8")
    assert "Mouth to ear: aiortc probes and browser probes" in page
    assert "NetEq" in page and "prefetch=4" in page
    row = re.search(r"<td>load: unit \(load-b\)</td>(.*?)</tr>", page)
    assert row is not None
    cells = re.findall(r'<td class="num">([^<]*)</td>', row.group(1))
    # aiortc p50, p95; browser p50, p95; aiortc buffer; NetEq (nearest-rank percentiles)
    assert cells == ["160 ms", "169 ms", "260 ms", "269 ms", "80 ms", "120 ms"]
    assert len(_images(page)) == 8
    plain = synthetic.write(tmp_path / "plain", "load", "load-p")
    assert main(["report", str(plain), "-o", str(tmp_path / "plain.html")]) == 0
    assert "browser probes" not in (tmp_path / "plain.html").read_text(encoding="utf-8")
