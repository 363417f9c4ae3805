"""Tests for the `spacesim` command line, called in-process (plus one real subprocess)."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pandas as pd
import pytest
import yaml

from spacesim import cli
from spacesim.cli import main
from spacesim.results import COLUMNS, load_run

ROOT = Path(__file__).resolve().parents[1]
SCENARIOS = ROOT / "scenarios"
SMOKE = SCENARIOS / "smoke.yaml"
SHIPPED = sorted(str(p) for p in SCENARIOS.glob("*.yaml"))

BAD_SCENARIO = """\
# a scenario with a bad unit in a nested field
name: bad
duration: 1m
arrivals: {kind: poisson, rate: 5/x}
session: {kind: exponential, mean: 1m}
"""


@pytest.fixture
def bad_file(tmp_path: Path) -> Path:
    path = tmp_path / "bad.yaml"
    path.write_text(BAD_SCENARIO, encoding="utf-8")
    return path


def squeezed(text: object) -> str:
    """`text` without whitespace: Rich wraps long lines, so compare with line breaks removed.

    (Rich even folds a long path mid-name; see test_check_bad_file_long_path_is_not_folded.)
    """
    return "".join(str(text).split())


def mentions(stream: str, *needles: object) -> bool:
    return all(squeezed(n) in squeezed(stream) for n in needles)


# --------------------------------------------------------------------------- scenario check/show


def test_check_shipped_scenarios(capsys: pytest.CaptureFixture[str]) -> None:
    assert SHIPPED
    assert main(["scenario", "check", *SHIPPED]) == 0
    captured = capsys.readouterr()
    assert captured.err == ""
    assert captured.out.count(": ok (") == len(SHIPPED)


def test_check_bad_file(bad_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["scenario", "check", str(SMOKE), str(bad_file)]) == 1
    captured = capsys.readouterr()
    assert mentions(captured.err, bad_file, "arrivals.rate")
    assert "smoke" in captured.out  # the good file is still reported


def test_check_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "missing.yaml"
    assert main(["scenario", "check", str(missing)]) == 1
    assert mentions(capsys.readouterr().err, missing, "cannot read file")


def test_check_bad_file_long_path_is_not_folded(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    width = cli.err.width  # read, not changed: the path must be longer than a line
    if width > 3000:
        pytest.skip(f"stderr console is {width} columns wide; cannot build a longer path")
    deep = tmp_path
    while len(str(deep)) <= width + 20:
        deep = deep / ("d" + "x" * 150)
    deep.mkdir(parents=True)
    path = deep / "bad.yaml"
    path.write_text(BAD_SCENARIO, encoding="utf-8")
    assert main(["scenario", "check", str(path)]) == 1
    assert str(path) in capsys.readouterr().err


def test_show_smoke(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["scenario", "show", str(SMOKE)]) == 0
    text = capsys.readouterr().out
    assert text.startswith("#")
    data = yaml.safe_load(text)
    assert data["duration"] == 120.0
    assert data["name"] == "smoke"
    assert data["arrivals"] == {"kind": "poisson", "rate": 1.0}


def test_show_with_set(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["scenario", "show", str(SMOKE), "--set", "server.nodes=4"]) == 0
    assert yaml.safe_load(capsys.readouterr().out)["server"]["nodes"] == 4


def test_show_bad_file_exits_2(bad_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["scenario", "show", str(bad_file)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert mentions(captured.err, bad_file, "arrivals.rate")


def test_check_via_subprocess() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "spacesim.cli", "scenario", "check", *SHIPPED],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count(": ok (") == len(SHIPPED)


# --------------------------------------------------------------------------- simulate


def simulate(out: Path, *extra: str) -> int:
    return main(["simulate", str(SMOKE), "--quiet", "--out", str(out), *extra])


def test_simulate_smoke(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    assert simulate(out) == 0
    assert (out / "meta.json").is_file()
    assert (out / "records.parquet").is_file()
    stdout = capsys.readouterr().out
    assert "join_time" in stdout
    assert "SLOs" in stdout

    run = load_run(out)
    assert tuple(run.records.columns) == COLUMNS
    assert len(run.records) > 0
    assert run.meta.scenario_name == "smoke"
    assert run.meta.source == "sim"
    assert run.meta.seed == 1
    assert run.meta.scenario is not None
    assert run.meta.scenario["server"]["nodes"] == 1


def test_simulate_bad_scenario(
    bad_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    assert main(["simulate", str(bad_file), "--quiet", "--out", str(out)]) == 2
    assert not out.exists()
    assert mentions(capsys.readouterr().err, bad_file, "arrivals.rate")


def test_simulate_bad_set_value(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    assert simulate(out, "--set", "server.nodes=lots") == 2
    assert not out.exists()
    assert mentions(capsys.readouterr().err, "server.nodes")


def test_simulate_set_is_honoured(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    assert simulate(out, "--set", "server.nodes=2") == 0
    capsys.readouterr()
    scenario = load_run(out).meta.scenario
    assert scenario is not None
    assert scenario["server"]["nodes"] == 2


def test_simulate_same_seed_is_reproducible(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    assert simulate(a, "--seed", "3") == 0
    assert simulate(b, "--seed", "3") == 0
    capsys.readouterr()
    run_a, run_b = load_run(a), load_run(b)
    assert run_a.meta.seed == run_b.meta.seed == 3
    assert run_a.meta.scenario_hash == run_b.meta.scenario_hash
    pd.testing.assert_frame_equal(run_a.records, run_b.records)


def test_simulate_refuses_to_overwrite_other_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    assert simulate(out, "--seed", "1") == 0
    first = load_run(out).meta.run_id
    assert simulate(out, "--seed", "2") == 2
    assert mentions(capsys.readouterr().err, "pick another --out", out)
    assert load_run(out).meta.run_id == first


def test_check_slo_fails_the_exit_code_when_an_objective_fails(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["simulate", str(SMOKE), "--quiet", "--check-slo"]
    assert main([*args, "--out", str(tmp_path / "ok")]) == 0
    strict = ["--set", "slo.audio_latency_p95=1ms"]
    assert main([*args, "--out", str(tmp_path / "bad"), *strict]) == 1
    assert "audio_latency.p95" in capsys.readouterr().err


@pytest.mark.parametrize("seed", ["-1", "x"])
def test_bad_seed_is_a_usage_error(seed: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["simulate", str(SMOKE), "--seed", seed])
    assert info.value.code == 2
    assert "--seed" in capsys.readouterr().err


def test_existing_out_is_refused_before_simulating(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    assert main(["simulate", str(SMOKE), "--quiet", "--out", str(out)]) == 0
    before = (out / "records.parquet").stat().st_mtime_ns
    assert main(["simulate", str(SMOKE), "--quiet", "--out", str(out), "--seed", "9"]) == 2
    assert "already holds a run" in capsys.readouterr().err
    assert (out / "records.parquet").stat().st_mtime_ns == before


@pytest.mark.parametrize(
    ("override", "field"),
    [("arrivals=[1,2", "--set arrivals=[1,2"), ("name=../../escape", "name"), ("seed=-5", "seed")],
)
def test_bad_overrides_name_the_field(
    override: str, field: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["simulate", str(SMOKE), "--quiet", "--set", override]) == 2
    assert f"{field}:" in capsys.readouterr().err


def test_non_utf8_file_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes("name: caf\xe9\n".encode("latin-1"))
    assert main(["scenario", "check", str(path)]) == 1
    assert "not UTF-8" in capsys.readouterr().err


def test_demo_scenario_is_the_town_hall_cut_to_the_swarm() -> None:
    from spacesim.scenario import load_scenario

    full = load_scenario(Path(__file__).resolve().parents[1] / "scenarios" / "town-hall.yaml")
    small = cli.demo_scenario(full, 30, 60.0)
    assert small.duration == 60 and small.server.nodes == 1 and small.server.cores == 1
    assert small.audience_curve(60).max() == pytest.approx(30, rel=0.05)
    assert small.session == full.session and small.speaking == full.speaking


def live_spaces(url: str, timeout: float = 20.0) -> list[dict[str, object]]:
    """The live spaces `url` lists (as the page asks for them), once there is one."""
    req = urllib.request.Request(
        f"{url}/v1/dev/token", data=json.dumps({"user": "visitor"}).encode(), method="POST"
    )
    req.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(req, timeout=5) as resp:
        token = json.load(resp)["token"]
    deadline = time.monotonic() + timeout
    while True:
        req = urllib.request.Request(f"{url}/v1/spaces?status=live")
        req.add_header("Authorization", f"Bearer {token}")
        with urllib.request.urlopen(req, timeout=5) as resp:
            spaces: list[dict[str, object]] = json.load(resp)["spaces"]
        if spaces or time.monotonic() > deadline:
            return spaces
        time.sleep(0.5)


def page_html(url: str) -> str:
    with urllib.request.urlopen(f"{url}/", timeout=5) as resp:
        return str(resp.read().decode())


@pytest.mark.timeout(300)
def test_demo_runs_swarm_simulations_and_reports(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The README's first command, cut short: server + swarm, its replay and independent
    draws, the full-size simulation, reports. While the swarm runs, the address the demo
    prints serves the page and lists the swarm's live space (what a browser shows)."""
    seen: dict[str, object] = {}
    announce = cli.announce_page

    def look(url: str, seconds: float) -> None:
        announce(url, seconds)

        def visit() -> None:
            seen["html"] = page_html(url)
            seen["spaces"] = live_spaces(url)

        threading.Thread(target=visit, daemon=True).start()

    monkeypatch.setattr(cli, "announce_page", look)
    out = tmp_path / "demo"
    argv = ["demo", "--out", str(out), "-t", "12s", "--listeners", "4", "--independent", "2"]
    assert main(argv) == 0
    assert "inabrowser" in squeezed(capsys.readouterr().out)
    assert "<html" in str(seen["html"]).lower()
    assert seen["spaces"], "no live space on the demo's server while the swarm ran"
    load = load_run(out / "load")
    assert load.meta.source == "load"
    replayed = load_run(out / "sim")  # the swarm's replay, by default
    assert replayed.meta.scenario_name == "town-hall-demo"
    assert replayed.meta.extra["replay_of"] == load.meta.run_id
    for seed in (1, 2):
        drawn = load_run(out / f"sim-independent-s{seed}").meta
        assert drawn.seed == seed and drawn.extra["draws"] == "independent"
    assert load_run(out / "sim-full").meta.scenario_name == "town-hall"
    for page in ("report.html", "full-size.html"):
        html = (out / page).read_text()
        assert "data:image/png;base64," in html
    html = (out / "report.html").read_text()
    assert "Swarm against its simulation" in html and "replay gap" in html
    assert "independent draws, min to max (2 seeds)" in html
    assert main(["demo", "--out", str(out)]) == 2  # not empty: refuses to mix runs


def test_simulate_with_captions_and_recording_prices_them(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The issue's switches: caption cores and recording bytes in the summary."""
    out = tmp_path / "run"
    on = ["--set", "features.captions=1", "--set", "features.recording=1"]
    assert simulate(out, *on) == 0
    stdout = capsys.readouterr().out
    for metric in ("asr_cores", "recording_bytes", "recording_write_rate"):
        assert metric in stdout
    assert simulate(tmp_path / "off") == 0
    assert "asr_cores" not in capsys.readouterr().out


def test_load_takes_set_and_names_a_bad_field(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    args = ["load", str(SMOKE), "--out", str(out), "--target", "http://127.0.0.1:9"]
    assert main([*args, "--set", "features.captions=2"]) == 2  # refused before any request
    assert mentions(capsys.readouterr().err, "features.captions")
    assert not out.exists()


def test_demo_keep_serving_serves_the_demo_space(tmp_path: Path) -> None:
    """`spacesim demo --keep-serving`'s server: the page at / and the demo space, live."""
    from spacesim.server.demo_space import DEMO_TITLE
    from spacesim.server.launch import free_port

    assert cli.build_parser().parse_args(["demo", "--keep-serving"]).keep_serving
    port = free_port()
    with cli.demo_server(tmp_path / "serve", port) as url:
        assert url.endswith(f":{port}")
        assert "<html" in page_html(url).lower()
        assert [s["title"] for s in live_spaces(url)] == [DEMO_TITLE]


def test_cpu_lists_parse_as_taskset_takes_them() -> None:
    usable = sorted(os.sched_getaffinity(0))
    first, last = usable[0], usable[-1]
    assert cli._cpus(str(first)) == {first}
    if usable == list(range(first, last + 1)):
        assert cli._cpus(f"{first}-{last}") == set(usable)
    assert cli._cpus(f"{first},{last}") == {first, last}
    with pytest.raises(argparse.ArgumentTypeError, match="not a CPU list"):
        cli._cpus("zero")
    with pytest.raises(argparse.ArgumentTypeError, match="not all usable"):
        cli._cpus("4096")


def test_load_refuses_server_cpus_with_a_target(capsys: pytest.CaptureFixture[str]) -> None:
    cpu = sorted(os.sched_getaffinity(0))[0]
    rc = main(["load", "scenarios/smoke.yaml", "--target", "http://127.0.0.1:9",
               "--server-cpus", str(cpu)])  # fmt: skip
    assert rc == 2
    assert "--server-cpus pins the embedded server" in capsys.readouterr().err
