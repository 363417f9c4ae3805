"""spacesim regress: the statistics, the baseline file, the reports and the gate end to end."""

from __future__ import annotations

import json
import shutil
import statistics
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest

from spacesim import regress
from spacesim.cli import main
from spacesim.regress import (
    FIGURES,
    Baseline,
    BaselineError,
    Options,
    RegressError,
    compare,
    compare_all,
    junit_xml,
    markdown,
    read_baseline,
    write_baseline,
)

ROOT = Path(__file__).resolve().parents[1]
FIG = {f.name: f for f in FIGURES}
CPU = FIG["cpu_per_packet"]

# --------------------------------------------------------------------------- statistics


def noisy(center: float, n: int, cv: float, seed: int) -> list[float]:
    rng = np.random.default_rng(seed)
    return list(center * rng.lognormal(0.0, cv, n))


def test_a_clear_30_percent_shift_is_a_regression() -> None:
    base = noisy(50e-6, 5, 0.04, 1)
    now = noisy(65e-6, 5, 0.04, 2)
    c = compare(CPU, base, now)
    assert c.verdict == "regression" and c.regressed
    assert 0.2 < c.change < 0.4
    assert CPU.tolerance < c.low <= c.change <= c.high


def test_identical_distributions_pass() -> None:
    same = noisy(50e-6, 5, 0.04, 1)
    c = compare(CPU, same, same)
    assert c.verdict == "ok" and c.change == 0.0 and c.low <= 0.0 <= c.high


def test_the_interval_is_deterministic_for_a_seed() -> None:
    base, now = noisy(50e-6, 9, 0.1, 3), noisy(55e-6, 9, 0.1, 4)
    first, again = compare(CPU, base, now, seed=7), compare(CPU, base, now, seed=7)
    assert (first.low, first.high) == (again.low, again.high)
    other = compare(CPU, base, now, seed=8)
    assert (other.low, other.high) != (first.low, first.high)


def test_a_shift_inside_the_noise_is_not_a_regression() -> None:
    # a 30 % shift with 25 % run-to-run noise and two runs a side: not proven
    base, now = [40e-6, 60e-6], [52e-6, 78e-6]
    assert compare(CPU, base, now).verdict == "ok"


def test_lower_is_worse_for_the_delivery_ratio() -> None:
    ratio = FIG["delivery_ratio"]
    assert compare(ratio, [1.0, 0.999, 1.0], [0.95, 0.96, 0.955]).verdict == "regression"
    assert compare(ratio, [0.95, 0.96, 0.955], [1.0, 0.999, 1.0]).verdict == "better"
    assert compare(CPU, [60e-6, 61e-6, 62e-6], [40e-6, 41e-6, 40e-6]).verdict == "better"


def test_the_floor_ignores_tiny_absolute_changes() -> None:
    latency = FIG["audio_latency_p95"]  # +100 % but only 1 ms: below the 2 ms floor
    assert compare(latency, [1e-3, 1.01e-3, 0.99e-3], [2e-3, 2.01e-3, 1.99e-3]).verdict == "ok"
    assert compare(latency, [10e-3, 10.1e-3, 9.9e-3], [20e-3, 20.1e-3, 19.9e-3]).regressed


def test_too_few_values_give_no_data() -> None:
    c = compare(CPU, [50e-6], [65e-6, 66e-6])
    assert c.verdict == "no data" and not c.regressed
    assert compare(CPU, [float("nan")] * 3, [1e-6] * 3).verdict == "no data"
    assert [c.verdict for c in compare_all(FIGURES, {}, {})] == ["no data"] * len(FIGURES)


def test_false_alarm_rate_on_synthetic_noise() -> None:
    # 12 % run-to-run noise (what a busy 2-core machine gave), 3 runs a side
    alarms = sum(
        compare(CPU, noisy(50e-6, 3, 0.12, 2 * i), noisy(50e-6, 3, 0.12, 2 * i + 1)).regressed
        for i in range(300)
    )
    assert alarms <= 3  # <= 1 %


# --------------------------------------------------------------------------- baseline


def baseline(values: dict[str, list[float]] | None = None) -> Baseline:
    return Baseline(
        scenario="ci-regression",
        scenario_hash="abc123",
        values=values or {f.name: [1.0, 2.0, 3.0] for f in FIGURES},
        machine=regress.machine_description(),
        versions=regress.versions(),
        created_at="2026-01-01T00:00:00",
    )


def test_baseline_round_trip_keeps_values_machine_and_versions(tmp_path: Path) -> None:
    path = write_baseline(tmp_path / "b" / "base.json", baseline())
    back = read_baseline(path)
    assert back.values == baseline().values
    assert back.scenario_hash == "abc123"
    assert back.machine["cpus"] and back.versions["aiortc"]
    assert [f.name for f in back.figures] == [f.name for f in FIGURES]
    doc = json.loads(path.read_text())
    doc["figures"]["cpu_per_packet"]["tolerance"] = 0.2  # a team may tune a tolerance
    path.write_text(json.dumps(doc))
    assert read_baseline(path).figures[0].tolerance == 0.2


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (None, "no such baseline file"),
        ("{not json", "invalid JSON at line 1 column 2"),
        ("[1, 2]", "expected a JSON object"),
        ('{"format": "other/9"}', "format: expected 'spacesim-regress-baseline/1'"),
        ("FIGURES", "figures: expected an object"),
        ("VALUES", "figures.cpu_per_packet.values: expected a list of numbers"),
        ("UNKNOWN", "figures.cpu_time: unknown figure"),
        ("TOLERANCE", "figures.cpu_per_packet.tolerance: expected a number >= 0"),
    ],
)
def test_a_missing_or_malformed_baseline_names_the_file_and_the_problem(
    tmp_path: Path, content: str | None, problem: str
) -> None:
    path = tmp_path / "base.json"
    good = json.loads(write_baseline(path, baseline()).read_text())
    if content is None:
        path.unlink()
    elif content == "FIGURES":
        path.write_text(json.dumps({**good, "figures": [1, 2]}))
    elif content == "VALUES":
        good["figures"]["cpu_per_packet"]["values"] = ["fast"]
        path.write_text(json.dumps(good))
    elif content == "UNKNOWN":
        good["figures"]["cpu_time"] = {"values": [1.0]}
        path.write_text(json.dumps(good))
    elif content == "TOLERANCE":
        good["figures"]["cpu_per_packet"]["tolerance"] = "ten percent"
        path.write_text(json.dumps(good))
    else:
        path.write_text(content)
    with pytest.raises(BaselineError) as info:
        read_baseline(path)
    assert str(info.value).startswith(f"{path}: ")
    assert problem in str(info.value)


def test_cli_fails_fast_and_clearly_without_a_baseline(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "nope.json"
    assert main(["regress", "--baseline", str(missing), "--out", str(tmp_path / "o")]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert f"{missing}: no such baseline file" in err and "--update-baseline" in err
    assert not (tmp_path / "o").exists()  # nothing ran


def test_a_baseline_of_another_scenario_is_refused(tmp_path: Path) -> None:
    path = write_baseline(tmp_path / "base.json", baseline())
    opts = Options(scenario=ROOT / "scenarios" / "ci-regression.yaml", baseline=path)
    with pytest.raises(BaselineError, match="re-record it with --update-baseline"):
        regress.gate(opts)


# --------------------------------------------------------------------------- reports


def comparisons() -> list[regress.Comparison]:
    base = {f.name: [1.0, 1.01, 0.99] for f in FIGURES}
    now = dict(base, cpu_per_packet=[1.3, 1.31, 1.29])
    return compare_all(FIGURES, base, now)


def test_markdown_table_has_one_row_per_figure_and_names_the_regression() -> None:
    md = markdown(comparisons(), "spacesim regress: ci", ["baseline: `HEAD~1`"])
    lines = md.splitlines()
    assert lines[0] == "### spacesim regress: ci: ❌ regression in cpu_per_packet"
    header = next(i for i, x in enumerate(lines) if x.startswith("| figure"))
    assert lines[header].split("|")[1:-1] == [
        " figure ", " baseline ", " now ", " change ", " 95 % interval ", " tolerance ",
        " verdict ",
    ]  # fmt: skip
    rows = lines[header + 2 : header + 2 + len(FIGURES)]
    assert all(r.startswith("| ") and r.count("|") == 8 for r in rows)
    assert "❌ **regression**" in rows[0] and "+30.0 %" in rows[0]
    assert all("✅ ok" in r for r in rows[1:])
    noisy_latency = compare(FIG["audio_latency_p95"], [0.01, 0.5, 0.02], [0.4, 0.01, 0.03])
    assert noisy_latency.inconclusive and not noisy_latency.regressed
    assert "✅ ok (too noisy to tell)" in markdown([noisy_latency], "t")


def test_junit_has_one_testcase_per_figure_and_a_failure_per_regression() -> None:
    root = ET.fromstring(junit_xml(comparisons(), "spacesim.regress.ci"))
    suite = root.find("testsuite")
    assert suite is not None and suite.get("tests") == "5" and suite.get("failures") == "1"
    cases = suite.findall("testcase")
    assert [c.get("name") for c in cases] == [f.name for f in FIGURES]
    failed = [c.get("name") for c in cases if c.find("failure") is not None]
    assert failed == ["cpu_per_packet"]


# --------------------------------------------------------------------------- REF


needs_git = pytest.mark.skipif(
    not (ROOT / ".git").exists() or shutil.which("git") is None, reason="not a git checkout"
)


@needs_git
def test_against_a_revision_that_does_not_exist(tmp_path: Path) -> None:
    with pytest.raises(RegressError, match="no-such-rev: no such git revision"):
        regress.checkout("no-such-rev", tmp_path)


def test_against_a_directory_without_a_server(tmp_path: Path) -> None:
    (tmp_path / "spacesim").mkdir()
    with pytest.raises(RegressError, match="has no spacesim server"):
        regress.checkout(str(tmp_path), tmp_path)


def test_against_outside_a_git_repository(tmp_path: Path) -> None:
    with pytest.raises(RegressError, match="is not a git repository"):
        regress.checkout("HEAD", tmp_path / "x", repo=tmp_path)


@needs_git
def test_against_a_git_revision_exports_its_tree(tmp_path: Path) -> None:
    tree, desc = regress.checkout("HEAD", tmp_path)
    assert (tree / "spacesim" / "server" / "app.py").is_file() and "HEAD (" in desc
    side = regress.Side("ref", tree, fault=False)
    regress.check_side(side)  # its server imports its own spacesim, not this checkout's


# --------------------------------------------------------------------------- fault hook


def test_the_fault_hook_is_loud_and_refused_in_production(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from spacesim.server import app, media

    monkeypatch.setenv(media.FAULT_ENV, "12.5")
    assert media._fault_from_env() == 12.5
    for bad, why in (("fast", "is not a number of microseconds"), ("-1", "within 0..10000")):
        monkeypatch.setenv(media.FAULT_ENV, bad)
        with pytest.raises(ValueError, match=why):
            media._fault_from_env()
    monkeypatch.setattr(media, "FAULT_BUSY_US", 12.5)
    config = app.ServerConfig(db=tmp_path / "x.db", secret=b"k" * 32, dev=False)
    with pytest.raises(ValueError, match="test-only fault hook; unset it to run --no-dev"):
        app.create_app(config)
    with caplog.at_level("WARNING", "spacesim.server"):
        app._check_fault_hook(app.ServerConfig(db=tmp_path / "x.db", secret=b"k" * 32))
    assert "TEST-ONLY FAULT INJECTED: SPACESIM_TEST_FAULT_BUSY_US=12.5" in caplog.text


def test_burn_spends_thread_cpu_time() -> None:
    from spacesim.server import media

    spent = []
    for _ in range(5):
        t = time_ns()
        media._burn(200_000)
        spent.append(time_ns() - t)
    assert 200_000 <= statistics.median(spent) < 400_000


def time_ns() -> int:
    import time

    return time.thread_time_ns()


# --------------------------------------------------------------------------- end to end

TINY = """\
name: tiny-regress
duration: 5s
rooms: {count: 1, speakers: 1, listener_cap: 4}
speaking: {active_speakers: 2}
arrivals: {kind: constant, rate: 10/s}
session: {kind: fixed, mean: 60s}
"""


@pytest.mark.timeout(240)
def test_gate_end_to_end_with_a_gross_fault(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Plumbing on a tiny scenario: two real runs with 400 µs/packet of fault against a
    baseline of 100 µs/packet are a regression in CPU per packet, reported everywhere."""
    from spacesim.scenario import load_scenario

    scenario = tmp_path / "tiny.yaml"
    scenario.write_text(TINY)
    base = write_baseline(
        tmp_path / "base.json",
        Baseline(
            scenario="tiny-regress",
            scenario_hash=load_scenario(scenario).content_hash(),
            values={"cpu_per_packet": [100e-6, 100e-6], "delivery_ratio": [1.0, 1.0]},
            figures=(CPU, FIG["delivery_ratio"]),
        ),
    )
    monkeypatch.setenv("SPACESIM_TEST_FAULT_BUSY_US", "400")
    monkeypatch.chdir(tmp_path)  # relative paths are the user's, not the server's
    junit, md = tmp_path / "r.xml", tmp_path / "r.md"
    args = ["regress", str(scenario), "--baseline", str(base), "--repeat", "2"]
    rc = main([*args, "--out", "g", "--junit", "r.xml", "--markdown", "r.md"])
    out = capsys.readouterr()
    assert rc == 1, out.out + out.err
    assert "TEST-ONLY FAULT" in out.err and "regression in cpu_per_packet" in out.out
    assert md.read_text() in out.out
    suite = ET.parse(junit).getroot().find("testsuite")
    assert suite is not None and suite.get("tests") == "2"
    failed = [c.get("name") for c in suite.iter("testcase") if c.find("failure") is not None]
    assert failed == ["cpu_per_packet"]
    runs = json.loads((tmp_path / "g" / "regress.json").read_text())["now"]
    assert len(runs["cpu_per_packet"]) == 2 and min(runs["cpu_per_packet"]) > 400e-6
    assert (tmp_path / "g" / "01-now" / "server" / "meta.json").is_file()


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_gate_catches_30_percent_and_passes_0_percent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The canonical scenario, A/B as in .ci/run (this checkout against itself):
    +0 % passes, then +30 % CPU per packet (calibrated on the clean runs) fails."""
    monkeypatch.delenv("SPACESIM_TEST_FAULT_BUSY_US", raising=False)
    args = ["regress", "--against", str(ROOT), "--repeat", "3"]
    assert main([*args, "--out", str(tmp_path / "clean")]) == 0
    runs = json.loads((tmp_path / "clean" / "regress.json").read_text())
    cpu = statistics.median(runs["baseline"]["cpu_per_packet"] + runs["now"]["cpu_per_packet"])
    monkeypatch.setenv("SPACESIM_TEST_FAULT_BUSY_US", f"{0.3 * cpu * 1e6:.2f}")
    assert main([*args, "--out", str(tmp_path / "slow")]) == 1
